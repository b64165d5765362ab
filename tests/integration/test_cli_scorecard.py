"""`prescaler scorecard` across scalers, from the decision log in a real PostgreSQL."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine

from prescaler import db
from prescaler.cli import main
from prescaler.planning import Decision

NOW = datetime(2024, 3, 11, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _rows(namespace: str, name: str, planned: int, mode: str, hours: int) -> list[dict[str, object]]:
    """Hourly decisions up to NOW: `planned` replicas against a target of 4, a load 3 replicas serve."""
    decision = Decision(desired=planned, current=planned, recommended=planned, direction="none", reason="seeded",
                        stale=False, observed_load=1500.0)
    score = db.ScoreInputs(mode=mode, target_replicas=4, ready_replicas=4, baseline_replicas=4, capacity=500.0,
                           step_seconds=300, lead_seconds=300, interval_seconds=3600)
    return [db.decision_row(namespace=namespace, name=name, target_kind="Deployment", target_name=name,
                            decision=decision, decided_at=NOW - (hours - i) * HOUR, applied=False, score=score)
            for i in range(hours)]


@pytest.fixture(scope="module", autouse=True)
def _decisions(engine: Engine) -> None:
    db.record_decisions(engine, [*_rows("shop", "api", 3, "ForecastOnly", 10 * 24),
                                 *_rows("shop", "web", 2, "Auto", 3 * 24),
                                 *_rows("blog", "web", 4, "ForecastOnly", 24)])
    # A row from before the scorecard's columns: left out.
    old = Decision(desired=9, current=9, recommended=9, direction="none", reason="old", stale=False)
    db.record_decisions(engine, [db.decision_row(namespace="shop", name="api", target_kind="Deployment",
                                                 target_name="api", decision=old, decided_at=NOW - 30 * HOUR,
                                                 applied=False)])


def _run(pg_url: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--database-url", pg_url, "scorecard", "--now", NOW.isoformat(), *args])
    return code, out.getvalue()


def test_json_has_every_scaler_with_its_windows_and_days(pg_url: str) -> None:
    code, text = _run(pg_url, "--json")
    assert code == 0
    scalers = {(s["namespace"], s["name"]): s for s in json.loads(text)["scalers"]}
    assert list(scalers) == [("blog", "web"), ("shop", "api"), ("shop", "web")]
    api = scalers[("shop", "api")]
    # 3 planned against 4 run, the last decision holding to NOW: 7 days of record in the 7-day window.
    assert api["windows"]["7d"] == {"coveredHours": 168, "plannedReplicaHours": "504.0",
                                    "baselineReplicaHours": "672.0", "plannedUnservedPercent": "0.000",
                                    "baselineUnservedPercent": "0.000", "costRatio": "0.75", "unservedRatio": "1.00",
                                    "baseline": "Observed"}
    assert api["days"] == 10 and api["summary"] == "cost 0.75× unserved 1.00× (7d)"
    assert len(api["daily"]) == 10 and api["daily"][-1]["date"] == "2024-03-10"
    # In charge, 2 replicas for 1,500 requests per 5 minutes leave a third unserved; the estimate's 4 serve all.
    web = scalers[("shop", "web")]
    assert web["windows"]["1d"]["baseline"] == "Estimated"
    assert web["windows"]["1d"]["plannedUnservedPercent"] == "33.333"
    assert web["summary"] == "cost 0.50× unserved 3333.33× (3d of 7d)"


def test_filters_and_the_table(pg_url: str) -> None:
    code, text = _run(pg_url, "--namespace", "shop", "--name", "web", "--daily")
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["SCALER", "SPAN", "PLANNED"]
    assert lines[1].startswith("shop/web") and " 1d " in lines[1]
    assert len(lines) == 1 + 3 + 3  # three windows, three days
    assert "blog" not in text and "shop/api" not in text
    code, text = _run(pg_url, "--namespace", "nobody")
    assert (code, text.strip()) == (0, "no decisions with a scorecard in the last 14 days")

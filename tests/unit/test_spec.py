"""Parsing PredictiveScaler specs: defaults, the planner units, and errors that name the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from prescaler.errors import InputError
from prescaler.reconcile import Cond, merge_conditions
from prescaler.sizing.service_level import parse_service_level
from prescaler.spec import parse_spec

MINIMAL: dict[str, Any] = {
    "scaleTargetRef": {"kind": "Deployment", "name": "web"},
    "maxReplicas": 10,
    "series": {"service": "web"},
    "capacity": {"requestsPerReplica": 1200},
}


def test_defaults_and_units() -> None:
    s = parse_spec(MINIMAL)
    assert s.min_replicas == 1 and s.mode == "Auto" and s.actuation == "Replicas" and s.model == "auto"
    assert s.step == timedelta(minutes=5) and s.per == timedelta(minutes=1)
    # 1200 requests per minute per replica = 6000 per 5-minute forecast step.
    assert s.capacity_per_step == 6000
    policy = s.policy()
    assert policy.capacity == 6000 and policy.lead_time == timedelta(minutes=5)


def test_service_level_reaches_the_planner() -> None:
    assert parse_spec(MINIMAL).policy().service_level is None
    s = parse_spec({**MINIMAL, "scaling": {"serviceLevel": "99.9%", "headroomPercent": 20}})
    assert s.service_level == 99.9
    policy = s.policy()
    # headroomPercent stays: the manual sizing until the calibration has its record.
    assert policy.service_level == 99.9 and policy.headroom_percent == 20


# Text → accepted by the CRD. The operator's parser accepts every one of these and more (a bare number, the
# CLI's form; "99.%"), never less: what the API server lets through always parses.
SERVICE_LEVELS = {
    "99.9%": True, "99.99%": True, "95%": True, "0.5%": True, "1%": True, "99%": True, "100%": False,
    "0%": False, "0.0%": False, "100.0%": False, "120%": False, "-1%": False, "99.9": False, "99,9%": False,
    "%": False, "abc": False, "": False, "007%": False, "99.9%%": False,
}


@pytest.mark.parametrize("text", SERVICE_LEVELS)
def test_the_crd_rule_for_service_level_agrees_with_the_operator(text: str) -> None:
    import re

    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "prescaler.dev_predictivescalers.yaml")
                         .read_text())
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "scaling"]["properties"]["serviceLevel"]
    (rule,) = node["x-kubernetes-validations"]
    assert "serviceLevel" in rule["message"] and "greater than 0%" in rule["message"]
    pattern = re.fullmatch(r"self\.matches\('(.*)'\)", rule["rule"])
    assert pattern is not None
    accepted_by_crd = re.search(pattern.group(1), text) is not None
    assert accepted_by_crd == SERVICE_LEVELS[text]
    if accepted_by_crd:
        assert 0 < parse_service_level(text) < 100
    elif text.endswith("%") and text not in ("007%",):
        with pytest.raises(InputError, match="serviceLevel"):
            parse_service_level(text)


def test_example_manifest_parses() -> None:
    example = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "workout-api.yaml"
    docs = list(yaml.safe_load_all(example.read_text()))
    ps = next(d for d in docs if d and d["kind"] == "PredictiveScaler")
    s = parse_spec(ps["spec"])
    assert s.max_replicas == 40 and s.service == "workout-api"


def test_forecast_key_changes_with_forecast_settings_only() -> None:
    a = parse_spec(MINIMAL)
    b = parse_spec({**MINIMAL, "maxReplicas": 20})
    c = parse_spec({**MINIMAL, "forecast": {"model": "prophet"}})
    assert a.forecast_key() == b.forecast_key() != c.forecast_key()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"minReplicas": 11}, "spec.minReplicas"),
        ({"maxReplicas": 0}, "spec.maxReplicas"),
        ({"mode": "Sometimes"}, "spec.mode"),
        ({"scaleTargetRef": {"kind": "Pod", "name": "x"}}, "spec.scaleTargetRef.kind"),
        ({"scaleTargetRef": {"kind": "Deployment"}}, "spec.scaleTargetRef.name"),
        ({"capacity": {"requestsPerReplica": 0}}, "spec.capacity.requestsPerReplica"),
        ({"forecast": {"step": "5 minutes"}}, "spec.forecast.step"),
        ({"forecast": {"model": "arima"}}, "spec.forecast.model"),
        ({"forecast": {"horizon": "5m"}, "scaling": {"leadTime": "10m"}}, "spec.forecast.horizon"),
        ({"fallback": {"staleAfter": "10m"}}, "spec.fallback.staleAfter"),
        ({"series": {}}, "spec.series.service"),
        ({"scaling": {"serviceLevel": "100%"}}, "spec.scaling.serviceLevel"),
        ({"scaling": {"serviceLevel": "0%"}}, "spec.scaling.serviceLevel"),
        ({"scaling": {"serviceLevel": "high"}}, "spec.scaling.serviceLevel"),
        ({"scaling": {"serviceLevel": 99.9}}, "spec.scaling.serviceLevel"),
        ({"schedules": [{"name": "x", "cron": "0 99 * * *", "duration": "1h"}]}, "spec.schedules[0].cron"),
        ({"schedules": [{"name": "x", "cron": "0 9 * * *", "duration": "1h", "timeZone": "Nowhere/Land"}]},
         "spec.schedules[0].timeZone"),
        ({"schedules": [{"name": "x", "cron": "0 9 * * *", "duration": "0s"}]}, "spec.schedules[0].duration"),
        ({"schedules": [{"name": "x", "cron": "0 9 * * *", "duration": "2d"}]}, "spec.schedules[0].duration"),
        ({"schedules": [{"name": "x", "cron": "0 9 * * *", "duration": "1h", "minReplicas": 11}]},
         "spec.schedules[0].minReplicas"),
    ],
)
def test_bad_specs_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError, match=field.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        parse_spec({**MINIMAL, **change})


def test_schedules_parse_into_the_spec() -> None:
    parsed = parse_spec({**MINIMAL, "schedules": [
        {"name": "prime-time", "cron": "0 19 * * *", "duration": "2h", "timeZone": "Europe/Berlin"},
        {"name": "batch", "cron": "0 2 * * 1-5", "duration": "30m", "minReplicas": 6},
    ]})
    first, second = parsed.schedules
    assert (first.name, first.duration, first.time_zone, first.min_replicas) == (
        "prime-time", timedelta(hours=2), "Europe/Berlin", None)
    assert (second.time_zone, second.min_replicas) == ("UTC", 6)
    assert parse_spec(MINIMAL).schedules == ()


def test_conditions_keep_transition_time_until_status_changes() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first, changed = merge_conditions(None, {"Ready": Cond("True", "Ready", "ok")}, 1, t0)
    assert changed and first[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    same, changed = merge_conditions(first, {"Ready": Cond("True", "Ready", "still ok")}, 2, t0 + timedelta(hours=1))
    assert not changed and same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same[0]["observedGeneration"] == 2 and same[0]["message"] == "still ok"
    flipped, changed = merge_conditions(same, {"Ready": Cond("False", "TargetNotFound", "gone")}, 2,
                                        t0 + timedelta(hours=2))
    assert [c for c, _ in changed] == ["Ready"] and flipped[0]["lastTransitionTime"] == "2026-01-01T02:00:00Z"


def test_reasons_speak_the_users_unit() -> None:
    import numpy as np
    import pandas as pd

    from prescaler.forecasting import Forecast
    from prescaler.planning import plan

    s = parse_spec(MINIMAL)  # 5-minute step, capacity per 1m
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    ds = pd.date_range(now - timedelta(minutes=5), periods=12, freq="5min")
    y = np.full(12, 60_000.0)  # per 5-minute step = 12,000 per minute
    fc = Forecast(ds=ds, yhat=y, lower=y, upper=y, model="test")
    d = plan(s.policy(), now=now, current_replicas=1, forecast=fc, forecast_generated_at=now, observed_load=None)
    assert "12,000 req/1m" in d.reason and d.desired == 10


def test_metrics_all_matches_metric_names() -> None:
    from prescaler import metrics

    families = [f for m in (*metrics.ALL, *metrics.OPERATOR_WIDE) for f in m.describe()]
    exposed = [f.name + ("_total" if f.type == "counter" else "") for f in families]
    assert exposed == list(metrics.METRIC_NAMES)


def test_forget_removes_every_series_of_a_deleted_scaler() -> None:
    from prescaler import handlers, metrics

    metrics.DESIRED_REPLICAS.labels("ns-x", "gone").set(3)
    metrics.FORECAST_LOAD.labels("ns-x", "gone", "upper").set(9)
    metrics.ERRORS.labels("ns-x", "gone", "TargetNotFound").inc()
    metrics.DESIRED_REPLICAS.labels("ns-x", "kept").set(4)
    handlers.forget(namespace="ns-x", name="gone")
    text = "\n".join(
        f"{s.name}{s.labels}" for m in metrics.REGISTRY.collect() for s in m.samples
    )
    # Other tests' scalers share the process-wide registry: look at this namespace only.
    assert "'namespace': 'ns-x', 'name': 'gone'" not in text
    assert "'namespace': 'ns-x', 'name': 'kept'" in text

"""The scorecard and the promotion gate in the reconcile tick, on a fixed clock against a real PostgreSQL.

A ForecastOnly scaler of a daily load cycle, ticking hourly, with a fixed count of 6 in charge: after the gate's
`after` of record its plan (cheaper, and serving the peaks the fixed count misses) takes charge; then forecasts
at a third of the load come in and the plan hands back to the fixed count. A second scaler starts from a record
read back from `scaling_decisions` and hands an HPA's floor back, but only once its data is current.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from prescaler import db, forecasting, history, metrics
from prescaler.actuation import HpaState, TargetState
from prescaler.clock import Clock
from prescaler.errors import DataUnavailable
from prescaler.planning import Decision
from prescaler.reconcile import Outcome, Reconciler, ScalerState, Services
from prescaler.spec import TargetRef

START = datetime(2024, 3, 4, 0, 2, tzinfo=UTC)
STEP = timedelta(minutes=5)
HOUR = timedelta(hours=1)
FIXED = 6  # the target's count while the plan only reports: 3,000 requests per 5 minutes


def load_at(ts: datetime) -> int:
    """Requests per 5 minutes: a daily cycle from 500 to 3,500, highest at 06:00 UTC."""
    day = (ts - ts.replace(hour=0, minute=0, second=0, microsecond=0)) / timedelta(days=1)
    return round(2000 + 1500 * math.sin(2 * math.pi * day))


@pytest.fixture(scope="module", autouse=True)
def _traffic(engine: Engine) -> None:
    first = START.replace(minute=0) - timedelta(days=4)
    rows = [{"ts": first + i * STEP, "service": "cycle", "endpoint": "*", "requests": load_at(first + i * STEP)}
            for i in range(int(timedelta(days=16) / STEP))]
    with engine.begin() as conn:
        conn.execute(db.traffic_log.insert(), rows)


class FixedClock(Clock):
    def __init__(self, t: datetime) -> None:
        super().__init__()
        self.t = t

    def now(self) -> datetime:
        return self.t


@dataclass
class Target:
    """A Deployment whose ready replicas follow its count at once; records the scales asked of it."""

    replicas: int = FIXED
    scaled: list[int] = field(default_factory=list)
    floors: list[tuple[str, int]] = field(default_factory=list)

    def read_target(self, namespace: str, ref: TargetRef) -> TargetState:
        return TargetState(ref.kind, ref.name, self.replicas, self.replicas, 1)

    def scale(self, namespace: str, ref: TargetRef, replicas: int) -> None:
        self.scaled.append(replicas)
        self.replicas = replicas

    def set_hpa_min(self, namespace: str, name: str, min_replicas: int) -> None:
        self.floors.append((name, min_replicas))


class ScaledPool:
    """Seasonal-naive fits, done at once, their forecasts times `factor`: 1 is the model's own forecast, a
    third is a forecast gone wrong."""

    def __init__(self) -> None:
        self.factor = 1.0

    def submit(self, name: str, history: Any, horizon: timedelta, events: Any = None,
               select_horizon: timedelta | None = None) -> Future[forecasting.FitResult]:
        result = forecasting.fit_predict("seasonal-naive", history, horizon)
        fc = result.forecast
        scaled = replace(fc, yhat=fc.yhat * self.factor, lower=fc.lower * self.factor, upper=fc.upper * self.factor)
        future: Future[forecasting.FitResult] = Future()
        future.set_result(replace(result, forecast=scaled))
        return future


def _body(namespace: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": namespace, "generation": 1}, "status": {}, "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 1, "maxReplicas": 20, "series": {"service": "cycle"},
        "capacity": {"requestsPerReplica": 100, "per": "1m"},
        "forecast": {"model": "seasonal-naive", "history": "3d", "horizon": "2d", "step": "5m",
                     "refreshInterval": "1d"},
        "fallback": {"staleAfter": "2d"},
        **spec,
    }}


def _patch_status(body: dict[str, Any], status: dict[str, Any]) -> None:
    """What kopf's merge patch does to the stored status: null removes a field."""
    def merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
        for key, value in patch.items():
            if value is None:
                into.pop(key, None)
            elif isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value
    merge(body["status"], status)


def _condition(body: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in body["status"]["conditions"] if c["type"] == ctype)


@dataclass
class Run:
    rec: Reconciler
    clock: FixedClock
    target: Target
    body: dict[str, Any]
    state: ScalerState = field(default_factory=ScalerState)
    hpas: list[HpaState] = field(default_factory=list)
    events: list[tuple[datetime, str, str, str]] = field(default_factory=list)

    def tick(self) -> Outcome:
        async def one() -> Outcome:
            meta = self.body["metadata"]
            outcome = await self.rec.tick(namespace=meta["namespace"], name=meta["name"], body=self.body,
                                          state=self.state, hpas=self.hpas, rival_owner=None)
            assert outcome is not None
            await self.rec.forecasts.drain()
            await self.rec.scorecards.drain()
            return outcome

        outcome = asyncio.run(one())
        _patch_status(self.body, outcome.status)
        self.events += [(self.clock.t, *e) for e in outcome.events]
        return outcome

    def until(self, end: datetime, step: timedelta = HOUR) -> None:
        while self.clock.t < end:
            self.tick()
            self.clock.t += step

    def changes(self) -> list[tuple[datetime, str]]:
        return [(t, reason) for t, _, reason, _ in self.events if reason in ("Promoted", "Demoted")]


@pytest.fixture
def run(engine: Engine) -> Iterator[Run]:
    clock, target, pool = FixedClock(START), Target(), ScaledPool()
    rec = Reconciler(Services(engine=engine, actuator=target, pool=pool,  # type: ignore[arg-type]
                              clock=clock, sources={"default": history.default_source()}))
    yield Run(rec, clock, target, _body("cycle", mode="ForecastOnly",
                                        scaling={"interval": "1h", "leadTime": "5m", "reactiveFloor": False},
                                        promotion={"after": "3d", "maxCostRatio": "1.0",
                                                   "maxUnservedRatio": "0.5"}))
    metrics.forget_scaler("cycle", "web")


def test_promotion_after_the_record_then_a_hand_back_after_bad_forecasts(run: Run) -> None:
    pool = run.rec.s.pool
    assert isinstance(pool, ScaledPool)

    # Two and a half days: the record is shorter than 90% of `after`; the plan only reports.
    run.until(START + timedelta(days=2, hours=12))
    assert run.changes() == [] and run.target.scaled == []
    status = run.body["status"]
    assert status["effectiveMode"] == "ForecastOnly"
    promoted = _condition(run.body, "Promoted")
    assert (promoted["status"], promoted["reason"]) == ("False", "NotPromoted")
    assert "awaiting the record" in promoted["message"]
    scorecard = status["scorecard"]
    assert scorecard["days"] == 2 and scorecard["window7d"]["baseline"] == "Observed"
    assert scorecard["summary"].endswith("(2d of 7d)")
    # The plan follows the cycle; the fixed 6 pays for the troughs and misses the peaks.
    week = scorecard["window7d"]
    assert float(week["costRatio"]) < 1.0
    assert float(week["plannedUnservedPercent"]) < float(week["baselineUnservedPercent"])

    # With 90% of three days on record the plan takes charge, and scales the target from then on.
    run.until(START + timedelta(days=3, hours=12))
    ((promoted_at, _),) = run.changes()
    assert START + timedelta(days=2, hours=16) <= promoted_at <= START + timedelta(days=2, hours=20)
    (message,) = [m for t, _, reason, m in run.events if reason == "Promoted"]
    assert message.startswith("the plan takes charge: over 3d: cost 0.")
    status = run.body["status"]
    assert status["effectiveMode"] == "Auto"
    assert status["promotion"] == {"specMode": "ForecastOnly", "since": promoted_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                   "handBackReplicas": FIXED}
    assert _condition(run.body, "Promoted")["status"] == "True"
    assert _condition(run.body, "ScalingActive")["reason"] == "Scaling"
    assert run.target.scaled and len(set(run.target.scaled)) > 1
    assert metrics.REGISTRY.get_sample_value("prescaler_effective_auto", {"namespace": "cycle", "name": "web"}) == 1

    # Good forecasts keep it in charge; in charge, the baseline is the fixed count it took over.
    run.until(START + timedelta(days=5))
    assert len(run.changes()) == 1
    assert run.body["status"]["scorecard"]["window1d"]["baseline"] == "Estimated"

    # Forecasts at a third of the load from the next refit: the plan leaves most of the peaks unserved and
    # hands back to the count it took over.
    pool.factor = 1 / 3
    scaled_before = len(run.target.scaled)
    run.until(START + timedelta(days=7, hours=12))
    assert [reason for _, reason in run.changes()] == ["Promoted", "Demoted"]
    demoted_at = run.changes()[1][0]
    assert START + timedelta(days=5) < demoted_at <= START + timedelta(days=7)
    (message,) = [m for _, kind, reason, m in run.events if reason == "Demoted" and kind == "Warning"]
    assert message.startswith("the plan hands back: over 3d:")
    handed = [m for t, _, reason, m in run.events if reason == "HandedBack"]
    assert len(handed) == 1 and handed[0].endswith(f"→ {FIXED}")
    assert run.target.replicas == FIXED
    # From the hand-back on, nothing is scaled: the count stays the fixed one.
    assert run.target.scaled[-1] == FIXED and len(run.target.scaled) > scaled_before
    after_hand_back = len(run.target.scaled)
    status = run.body["status"]
    assert status["effectiveMode"] == "ForecastOnly" and "handBackReplicas" not in status["promotion"]
    assert _condition(run.body, "Promoted")["status"] == "False"
    assert _condition(run.body, "ScalingActive")["reason"] == "ForecastOnly"
    assert float(status["scorecard"]["window1d"]["unservedRatio"]) > 1

    # The bad forecasts go on: it stays handed back.
    run.until(START + timedelta(days=8, hours=12))
    assert len(run.changes()) == 2 and len(run.target.scaled) == after_hand_back

    # Every decision is in the table with what the scorecard needs, in its effective mode.
    t = db.scaling_decisions.c
    with run.rec.s.engine.connect() as conn:
        modes = dict(conn.execute(sa.select(t.mode, sa.func.count()).where(t.namespace == "cycle")
                                  .group_by(t.mode)).all())
        missing = conn.execute(sa.select(sa.func.count()).where(t.namespace == "cycle", t.capacity.is_(None))
                               ).scalar_one()
    assert set(modes) == {"Auto", "ForecastOnly"} and missing == 0


def _seeded_rows(namespace: str, end: datetime, hours: int) -> list[dict[str, Any]]:
    """An HPA-floor plan in charge that provisioned 2 replicas for a load 8 ready replicas serve."""
    decision = Decision(desired=2, current=2, recommended=2, direction="none", reason="seeded", stale=False,
                        observed_load=3000.0)
    score = db.ScoreInputs(mode="Auto", target_replicas=8, ready_replicas=8, baseline_replicas=8, capacity=500.0,
                           step_seconds=300, lead_seconds=300, interval_seconds=3600)
    return [db.decision_row(namespace=namespace, name="web", target_kind="Deployment", target_name="web",
                            decision=decision, decided_at=end - (hours - i) * HOUR, applied=True, score=score)
            for i in range(hours)]


def test_a_record_read_back_hands_the_hpa_floor_back_once_the_data_is_current(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    db.record_decisions(engine, _seeded_rows("seeded", START, 72))
    clock, target = FixedClock(START), Target(replicas=8)
    rec = Reconciler(Services(engine=engine, actuator=target, pool=ScaledPool(),  # type: ignore[arg-type]
                              clock=clock, sources={"default": history.default_source()}))
    body = _body("seeded", mode="Auto", actuation="HPAMinReplicas", minReplicas=2,
                 promotion={"after": "2d"})
    # A previous operator promoted nothing: this scaler is Auto by its spec, and has been for days.
    body["status"] = {"effectiveMode": "Auto", "promotion": {"specMode": "Auto", "since": "2024-02-20T00:00:00Z"}}
    run = Run(rec, clock, target, body, hpas=[HpaState(name="web-hpa", min_replicas=7, max_replicas=20,
                                                       current_replicas=8)])

    # First tick: the record is still being read back; nothing changes.
    run.tick()
    assert _condition(body, "Promoted")["message"].endswith("held: the decision record is still being read back")
    assert body["status"]["effectiveMode"] == "Auto"

    # The traffic store is away: the record breaks the bounds, but nothing changes on stale data.
    async def away(*args: Any, **kwargs: Any) -> Any:
        raise DataUnavailable("the traffic store is away")

    with monkeypatch.context() as m:
        m.setattr(rec._reads, "read", away)
        clock.t += timedelta(minutes=1)
        run.tick()
    assert _condition(body, "Promoted")["message"].endswith("held: traffic data unavailable")
    assert run.changes() == []

    # Current data: the plan hands back, and the HPA's floor goes back to spec.minReplicas.
    clock.t += timedelta(minutes=1)
    target.floors.clear()
    run.tick()
    assert [reason for _, reason in run.changes()] == ["Demoted"]
    assert target.floors == [("web-hpa", 2)]
    assert ("HandedBack", "HPA web-hpa minReplicas 7 → 2") in [(r, m) for _, _, r, m in run.events]
    promoted = _condition(body, "Promoted")
    assert (promoted["status"], promoted["reason"]) == ("False", "Demoted")
    assert "unserved" in promoted["message"]
    assert body["status"]["scorecard"]["window7d"]["baseline"] == "Estimated"
    # Only reporting: the floor is left to the HPA from now on.
    clock.t += timedelta(minutes=1)
    run.tick()
    assert target.floors == [("web-hpa", 2)]
    metrics.forget_scaler("seeded", "web")


def test_without_a_gate_the_spec_mode_is_in_force_and_a_removed_gate_leaves_no_trace(engine: Engine) -> None:
    clock, target = FixedClock(START), Target()
    rec = Reconciler(Services(engine=engine, actuator=target, pool=ScaledPool(),  # type: ignore[arg-type]
                              clock=clock, sources={"default": history.default_source()}))
    body = _body("plain", mode="ForecastOnly", promotion={"after": "1d"})
    run = Run(rec, clock, target, body)
    run.tick()
    assert body["status"]["promotion"]["specMode"] == "ForecastOnly"
    assert _condition(body, "Promoted")["reason"] == "NotPromoted"
    del body["spec"]["promotion"]
    body["metadata"]["generation"] = 2
    clock.t += timedelta(minutes=1)
    run.tick()
    assert body["status"]["effectiveMode"] == "ForecastOnly"
    assert "promotion" not in body["status"]
    assert {c["type"] for c in body["status"]["conditions"]} >= {"Ready", "CapacityShortfall"}
    assert "Promoted" not in {c["type"] for c in body["status"]["conditions"]}
    metrics.forget_scaler("plain", "web")


def test_a_forecast_above_max_replicas_warns_and_clears(engine: Engine) -> None:
    clock, target = FixedClock(START), Target()
    rec = Reconciler(Services(engine=engine, actuator=target, pool=ScaledPool(),  # type: ignore[arg-type]
                              clock=clock, sources={"default": history.default_source()}))
    # The cycle's peak needs 8 replicas with 10% headroom on the upper band... more than 5.
    body = _body("short", maxReplicas=5, mode="ForecastOnly")
    run = Run(rec, clock, target, body)
    run.tick()
    cond = _condition(body, "CapacityShortfall")
    assert (cond["status"], cond["reason"]) == ("True", "ForecastAboveMaxReplicas")
    assert "more than maxReplicas 5" in cond["message"]
    warnings = [(kind, m) for _, kind, reason, m in run.events if reason == "ForecastAboveMaxReplicas"]
    assert len(warnings) == 1 and warnings[0][0] == "Warning"
    short = metrics.REGISTRY.get_sample_value("prescaler_capacity_shortfall_replicas",
                                              {"namespace": "short", "name": "web"})
    assert short is not None and short >= 1

    body["spec"]["maxReplicas"] = 20
    body["metadata"]["generation"] = 2
    clock.t += timedelta(minutes=1)
    run.tick()
    cond = _condition(body, "CapacityShortfall")
    assert (cond["status"], cond["reason"]) == ("False", "WithinMaxReplicas")
    assert [(k, r) for _, k, r, _ in run.events if r == "WithinMaxReplicas"] == [("Normal", "WithinMaxReplicas")]
    assert metrics.REGISTRY.get_sample_value("prescaler_capacity_shortfall_replicas",
                                             {"namespace": "short", "name": "web"}) == 0
    metrics.forget_scaler("short", "web")

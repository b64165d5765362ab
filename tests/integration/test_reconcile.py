"""One reconcile tick driven directly: a fake actuator and a fixed clock, real PostgreSQL for the history."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from prescaler import db, forecasting, history, metrics
from prescaler.actuation import HpaState, TargetState
from prescaler.clock import Clock
from prescaler.errors import DataUnavailable
from prescaler.reconcile import Reconciler, ScalerState, Services
from prescaler.spec import TargetRef

NOW = datetime(2024, 3, 4, 12, 2, tzinfo=UTC)
LOAD_PER_STEP = 2000  # requests per 5 minutes, every step of the history


class FixedClock(Clock):
    def __init__(self, t: datetime) -> None:
        super().__init__()
        self.t = t

    def now(self) -> datetime:
        return self.t


@dataclass
class FakeActuator:
    """Records what the tick asks of the cluster; the target has `replicas` until scaled."""

    replicas: int = 1
    scaled: list[tuple[str, str, int]] | None = None

    def read_target(self, namespace: str, ref: TargetRef) -> TargetState:
        return TargetState(ref.kind, ref.name, self.replicas, self.replicas, 1)

    def scale(self, namespace: str, ref: TargetRef, replicas: int) -> None:
        if self.scaled is None:
            self.scaled = []
        self.scaled.append((namespace, ref.name, replicas))
        self.replicas = replicas

    def set_hpa_min(self, namespace: str, name: str, replicas: int) -> None:
        raise AssertionError("this scaler does not use HPAMinReplicas")


@pytest.fixture(scope="module", autouse=True)
def _traffic(engine: Engine) -> None:
    start = NOW - timedelta(days=3)
    rows = [{"ts": start + timedelta(minutes=5 * i), "service": "web", "endpoint": "*", "requests": LOAD_PER_STEP}
            for i in range(int(timedelta(days=3) / timedelta(minutes=5)))]
    with engine.begin() as conn:
        conn.execute(db.traffic_log.insert(), rows)


@pytest.fixture
def pool() -> Iterator[forecasting.FitPool]:
    p = forecasting.FitPool(max_workers=1)
    yield p
    p.shutdown()


def _body(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 1, "maxReplicas": 20,
        "series": {"service": "web"},
        "capacity": {"requestsPerReplica": 100, "per": "1m"},
        "forecast": {"model": "seasonal-naive", "history": "3d", "horizon": "1d", "step": "5m"},
        "scaling": {"headroomPercent": 10},
        **spec_overrides,
    }
    return {"metadata": {"name": "web", "namespace": "shop", "generation": 1}, "spec": spec, "status": {}}


def _reconciler(engine: Engine, actuator: FakeActuator, pool: forecasting.FitPool) -> Reconciler:
    return Reconciler(Services(engine=engine, actuator=actuator, pool=pool,
                               clock=FixedClock(NOW), sources={"default": history.default_source()}))


def _tick(rec: Reconciler, body: dict[str, Any], state: ScalerState, hpas: list[HpaState] | None = None) -> Any:
    return asyncio.run(rec.tick(namespace="shop", name="web", body=body, state=state, hpas=hpas or [],
                                rival_owner=None))


def test_tick_scales_the_target_and_records_the_decision(engine: Engine, pool: forecasting.FitPool) -> None:
    actuator = FakeActuator()
    rec = _reconciler(engine, actuator, pool)
    state = ScalerState()
    outcome = _tick(rec, _body(), state)

    # 2,000 requests per 5 minutes with 10% headroom on 500 per replica per 5 minutes.
    want = math.ceil(LOAD_PER_STEP * 1.1 / 500)
    assert actuator.scaled == [("shop", "web", want)]
    assert outcome.decision.desired == want
    assert outcome.status["limitedBy"] == outcome.decision.limited_by == "None"
    assert outcome.status["desiredReplicas"] == want
    assert outcome.status["currentReplicas"] == want
    conds = {c["type"]: c for c in outcome.status["conditions"]}
    assert conds["Ready"]["status"] == "True"
    assert conds["DataAvailable"]["reason"] == "DataFresh"
    assert conds["ForecastReady"]["status"] == "True"
    assert conds["ScalingActive"]["reason"] == "Scaling"
    assert all(c["observedGeneration"] == 1 for c in conds.values())
    assert outcome.static_peak == want  # a flat history: the static fleet is the same size
    assert any(reason == "ScaledUp" for _, reason, _ in outcome.events)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.scaling_decisions.c.desired_replicas, db.scaling_decisions.c.applied)
                            .where(db.scaling_decisions.c.name == "web")).all()
    assert [tuple(r) for r in rows] == [(want, True)]

    # Within the interval the tick is skipped: nothing planned, nothing patched.
    assert _tick(rec, _body(), state) is None
    assert actuator.scaled == [("shop", "web", want)]


@dataclass
class FakeHpaActuator(FakeActuator):
    """Records the floors the tick writes to the HPA; the target itself is never scaled."""

    floors: list[tuple[str, int]] | None = None

    def scale(self, namespace: str, ref: TargetRef, replicas: int) -> None:
        raise AssertionError("this scaler uses HPAMinReplicas")

    def set_hpa_min(self, namespace: str, name: str, replicas: int) -> None:
        self.floors = [*(self.floors or []), (name, replicas)]


def test_the_hpa_cap_is_what_the_row_and_the_status_record(engine: Engine, pool: forecasting.FitPool) -> None:
    actuator = FakeHpaActuator()
    hpa = HpaState(name="web-hpa", min_replicas=1, max_replicas=3, current_replicas=1)
    outcome = asyncio.run(_reconciler(engine, actuator, pool).tick(
        namespace="capped", name="web", body=_named("capped", "web", actuation="HPAMinReplicas"),
        state=ScalerState(), hpas=[hpa], rival_owner=None))

    # The plan asks for 5 (2,000 requests per 5 minutes with 10% headroom on 500); the HPA allows 3.
    assert math.ceil(LOAD_PER_STEP * 1.1 / 500) == 5
    assert actuator.floors == [("web-hpa", 3)]
    assert outcome.status["desiredReplicas"] == outcome.status["currentReplicas"] == 3
    assert outcome.status["limitedBy"] == "HPAMaxReplicas"
    assert outcome.status["reason"].endswith("capped at HPA web-hpa's maxReplicas 3 → 3 replicas")
    assert outcome.decision.desired == 3
    t = db.scaling_decisions.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.current_replicas, t.desired_replicas, t.recommended_replicas, t.direction,
                                      t.reason, t.applied).where(t.namespace == "capped")).all()
    assert [tuple(r)[:4] + tuple(r)[5:] for r in rows] == [(1, 3, 5, "up", True)]
    assert rows[0].reason == outcome.status["reason"]


def test_without_traffic_data_a_scale_down_waits_and_says_why(engine: Engine, pool: forecasting.FitPool,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    actuator, clock = FakeActuator(replicas=16), FixedClock(NOW)
    rec = Reconciler(Services(engine=engine, actuator=actuator, pool=pool, clock=clock,
                              sources={"default": history.default_source()}))
    state = ScalerState()

    def tick() -> Any:
        return asyncio.run(rec.tick(namespace="nodata", name="web", body=_named("nodata", "web"), state=state,
                                    hpas=[], rival_owner=None))

    assert tick().decision.desired == 16  # after a start, a scale-down waits one stabilisation window

    async def away(*args: Any, **kwargs: Any) -> Any:
        raise DataUnavailable("the traffic store is away")

    monkeypatch.setattr(rec._reads, "read", away)
    clock.t = NOW + timedelta(minutes=16)  # the window has passed: the plan scales down, the data hold waits
    outcome = tick()
    assert actuator.scaled is None
    assert outcome.decision.recommended < 16 and outcome.status["desiredReplicas"] == 16
    assert outcome.status["limitedBy"] == "DataUnavailable"
    assert outcome.status["reason"].endswith("scale-down held: traffic data unavailable → 16 replicas")
    conds = {c["type"]: c for c in outcome.status["conditions"]}
    assert conds["DataAvailable"]["reason"] == "DataUnavailable"


def test_forecast_only_computes_but_never_patches(engine: Engine, pool: forecasting.FitPool) -> None:
    actuator = FakeActuator()
    outcome = _tick(_reconciler(engine, actuator, pool), _body(mode="ForecastOnly"), ScalerState())
    assert actuator.scaled is None
    assert outcome.status["desiredReplicas"] > 1
    assert outcome.status["currentReplicas"] == 1
    conds = {c["type"]: c for c in outcome.status["conditions"]}
    assert conds["ScalingActive"]["reason"] == "ForecastOnly"


def test_a_conflicting_hpa_stops_the_tick_with_a_condition(engine: Engine, pool: forecasting.FitPool) -> None:
    actuator = FakeActuator()
    hpa = HpaState(name="web-hpa", min_replicas=1, max_replicas=10, current_replicas=1)
    outcome = _tick(_reconciler(engine, actuator, pool), _body(), ScalerState(), [hpa])
    assert actuator.scaled is None
    assert outcome.decision is None
    conds = {c["type"]: c for c in outcome.status["conditions"]}
    assert conds["Ready"]["reason"] == "HPAConflict"
    assert "web-hpa" in conds["Ready"]["message"]


def test_an_unknown_source_is_reported_not_raised(engine: Engine, pool: forecasting.FitPool) -> None:
    actuator = FakeActuator()
    outcome = _tick(_reconciler(engine, actuator, pool), _body(series={"service": "web", "source": "nope"}),
                    ScalerState())
    conds = {c["type"]: c for c in outcome.status["conditions"]}
    assert conds["Ready"]["reason"] == "UnknownSource"
    assert "'nope'" in conds["Ready"]["message"]
    assert actuator.scaled is None


@pytest.mark.parametrize(("ahead", "replicas", "text"), [
    (timedelta(seconds=20), 1, "12:02 UTC (now) 1 replica"),
    (timedelta(minutes=25), 3, "12:27 UTC (in 25m) 3 replicas"),
    (timedelta(hours=17, minutes=40), 12, "05:42 UTC (in 17h) 12 replicas"),
])
def test_next_peak_summary_is_a_time_people_read(ahead: timedelta, replicas: int, text: str) -> None:
    from prescaler.reconcile.tick import peak_summary

    at = NOW + ahead
    assert peak_summary(at.replace(second=0), NOW, replicas) == text


def test_status_carries_the_next_peak_summary(engine: Engine, pool: forecasting.FitPool) -> None:
    outcome = _tick(_reconciler(engine, FakeActuator(), pool), _body(mode="ForecastOnly"), ScalerState())
    peak = outcome.status["nextPeak"]
    assert peak["summary"].endswith(f"{peak['replicas']} replicas")
    assert peak["summary"].startswith(peak["at"][11:16] + " UTC (")


def _minutes(values: Sequence[float | None], end: datetime) -> Any:
    import pandas as pd

    index = pd.date_range(end - timedelta(minutes=len(values)), periods=len(values), freq="1min", name="ds")
    return pd.Series([float("nan") if v is None else v for v in values], index=index, dtype=float)


def test_observed_load_reacts_to_the_last_minute() -> None:
    from prescaler.reconcile.tick import observed_load

    end = datetime(2024, 3, 4, 12, 7, tzinfo=UTC)
    # Steady 100/min, then a surprise: the last complete minute (12:06) carries 900.
    series = _minutes([100.0] * 14 + [900.0], end)
    assert observed_load(series, timedelta(minutes=5), end) == 4500.0
    # The newest minute not written yet (a collector's settle delay): the one before it counts.
    series = _minutes([100.0] * 13 + [900.0, None], end)
    assert observed_load(series, timedelta(minutes=5), end) == 4500.0


def test_coarse_traffic_falls_back_to_the_last_complete_step() -> None:
    from prescaler.reconcile.tick import observed_load

    end = datetime(2024, 3, 4, 12, 7, tzinfo=UTC)
    # One row per 5 minutes stamped at its start (11:55, 12:00, 12:05): not a burst in one minute.
    values: list[float | None] = [None] * 15
    for i, ts_minute in enumerate(range(52, 67)):
        if ts_minute % 5 == 0:
            values[i] = 500.0 if ts_minute < 60 else 700.0
    series = _minutes(values, end)
    # Last complete 5-minute bucket is 12:00-12:05.
    assert observed_load(series, timedelta(minutes=5), end) == 700.0
    assert observed_load(_minutes([None] * 15, end), timedelta(minutes=5), end) is None


# --- fleet scale: refit slots, work after the decision, one read of the stored forecasts at a start ------------

def test_refit_slots_are_per_forecast_key_bounded_and_spread() -> None:
    from collections import Counter

    from prescaler.reconcile.forecasts import floor_time, refit_due_at

    refresh, step, spread = timedelta(hours=1), timedelta(minutes=5), 0.5
    made = datetime(2024, 3, 4, 12, 0, tzinfo=UTC)  # a whole fleet's forecasts, made at one cold start
    keys = [f"{i:016x}" for i in range(200)]
    due = {k: refit_due_at(k, made, refresh, step, spread) for k in keys}

    # Deterministic per key: every scaler of a key (they share its fit) comes due at the same moment.
    assert all(refit_due_at(k, made, refresh, step, spread) == due[k] for k in keys)
    # Bounded: never later than the refresh interval, never earlier than (1 - spread) of it.
    assert all(made + (1 - spread) * refresh <= d <= made + refresh for d in due.values())
    # Spread: not the whole fleet in one minute (without it, all 200 would refit at 13:00).
    per_minute = Counter(floor_time(d, timedelta(minutes=1)) for d in due.values())
    assert max(per_minute.values()) <= 0.15 * len(keys)
    assert len(per_minute) >= 15
    assert refit_due_at(keys[0], made, refresh, step, 0.0) == made + refresh  # no spread: exactly on time

    # Each refit moves a key toward its slot and keeps it there: gaps stay within the bounds, and a key that
    # refit on its slot refits one refresh interval later.
    for k in keys[:50]:
        generated, gaps, aligned = made, [], False
        for _ in range(12):
            refit = floor_time(refit_due_at(k, generated, refresh, step, spread), step)
            gaps.append(refit - generated)
            if aligned:
                assert refit - generated == refresh
            aligned = refit == refit_due_at(k, generated, refresh, step, spread) and refit - generated < refresh
            generated = refit
        assert all((1 - spread) * refresh - step <= g <= refresh for g in gaps), gaps


class FakePool:
    """Records what is submitted; the test settles each fit when it wants, as a busy pool would."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, Any, timedelta, Future[forecasting.FitResult]]] = []

    def submit(self, name: str, history: Any, horizon: timedelta, events: Any = None,
               select_horizon: timedelta | None = None) -> Future[forecasting.FitResult]:
        future: Future[forecasting.FitResult] = Future()
        self.submitted.append((name, history, horizon, future))
        return future

    def finish(self, i: int) -> None:
        _, hist, horizon, future = self.submitted[i]
        future.set_running_or_notify_cancel()
        future.set_result(forecasting.fit_predict("seasonal-naive", hist, horizon))


def _fleet(engine: Engine, pool: Any, clock: FixedClock) -> Reconciler:
    return Reconciler(Services(engine=engine, actuator=FakeActuator(), pool=pool,
                               clock=clock, sources={"default": history.default_source()}))


def _named(namespace: str, name: str, **spec_overrides: Any) -> dict[str, Any]:
    body = _body(**spec_overrides)
    body["metadata"] = {"name": name, "namespace": namespace, "generation": 1}
    return body


def test_a_due_refit_is_shared_and_never_delays_the_decision(engine: Engine) -> None:
    from prescaler.reconcile.forecasts import floor_time

    pool, clock = FakePool(), FixedClock(NOW)
    rec = _fleet(engine, pool, clock)
    names = ["api-a", "api-b", "api-c"]  # one service, one spec: one forecast key
    states = {n: ScalerState() for n in names}

    async def tick_all() -> list[Any]:
        return [await rec.tick(namespace="refits", name=n, body=_named("refits", n), state=states[n], hpas=[],
                               rival_owner=None) for n in names]

    async def scenario() -> None:
        await tick_all()  # a cold start: seasonal-naive fitted here once, shared by the three
        await rec.drain()
        assert pool.submitted == []
        first = states["api-a"].forecast
        assert first is not None and all(s.forecast is not None and s.forecast.forecast is first.forecast
                                         for s in states.values())

        # An hour on, the key's refit is due: every scaler decides at once from the forecast it has, and one
        # fit for the three is queued after the decisions.
        clock.t = NOW + timedelta(hours=1, minutes=1)
        outcomes = await tick_all()
        assert all(o is not None and o.decision is not None for o in outcomes)
        assert all(s.forecast is not None and s.forecast.generated_at == first.generated_at
                   for s in states.values())
        await rec.drain()
        assert len(pool.submitted) == 1

        # The fleet keeps deciding while the fit waits in the pool's queue; nothing is submitted twice.
        clock.t += timedelta(minutes=1)
        assert all(o is not None and o.decision is not None for o in await tick_all())
        await rec.drain()
        assert len(pool.submitted) == 1

        pool.finish(0)
        clock.t += timedelta(minutes=1)
        await tick_all()
        await rec.drain()
        origin = floor_time(NOW + timedelta(hours=1, minutes=1), timedelta(minutes=5))
        refit = states["api-a"].forecast
        assert refit is not None and refit.generated_at == origin
        assert all(s.forecast is not None and s.forecast.forecast is refit.forecast for s in states.values())

    asyncio.run(scenario())
    stored = db.load_latest_forecasts(engine)
    assert all(stored[f"refits/{n}"].generated_at == floor_time(NOW + timedelta(hours=1, minutes=1),
                                                               timedelta(minutes=5)) for n in names)


def test_held_refits_wait_and_the_stored_forecast_serves_until_released(engine: Engine) -> None:
    pool, clock = FakePool(), FixedClock(NOW)
    rec = _fleet(engine, pool, clock)
    state = ScalerState()

    async def tick() -> Any:
        return await rec.tick(namespace="held", name="web", body=_named("held", "web"), state=state, hpas=[],
                              rival_owner=None)

    async def scenario() -> None:
        rec.forecasts.hold_refits = True
        await tick()  # no forecast at all: the first one is fitted even while refits are held
        await rec.drain()
        first = state.forecast
        assert first is not None
        clock.t = NOW + timedelta(hours=1, minutes=1)  # the refit is due
        outcome = await tick()
        await rec.drain()
        assert outcome is not None and outcome.decision is not None and pool.submitted == []
        assert state.forecast is first
        rec.forecasts.hold_refits = False
        clock.t += timedelta(minutes=1)
        await tick()
        await rec.drain()
        assert len(pool.submitted) == 1

    asyncio.run(scenario())


def _count_single_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Scaler keys that `db.load_latest_forecast` (one scaler's row) is called for from now on."""
    keys: list[str] = []
    real: Callable[..., db.StoredForecast | None] = db.load_latest_forecast

    def one(engine: Engine, key: str, params_hash: str | None = None) -> db.StoredForecast | None:
        keys.append(key)
        return real(engine, key, params_hash)

    monkeypatch.setattr(db, "load_latest_forecast", one)
    return keys


def test_a_restart_reads_every_stored_forecast_in_one_query(engine: Engine,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pool, clock = FakePool(), FixedClock(NOW)
    names = ["web-1", "web-2", "web-3"]

    async def tick_all(rec: Reconciler, states: dict[str, ScalerState]) -> list[Any]:
        out = [await rec.tick(namespace="restart", name=n, body=_named("restart", n), state=states[n], hpas=[],
                              rival_owner=None) for n in names]
        await rec.drain()
        return out

    before = asyncio.run(tick_all(_fleet(engine, pool, clock), {n: ScalerState() for n in names}))
    stored = db.load_latest_forecasts(engine)
    assert stored["restart/web-1"].forecast is stored["restart/web-2"].forecast  # one fit, converted once

    # The operator restarts: new memory, the same stored forecasts. No scaler reads its own row.
    one_by_one = _count_single_reads(monkeypatch)
    batches: list[int] = []
    real_all = db.load_latest_forecasts

    def read_all(engine: Engine) -> dict[str, db.StoredForecast]:
        batches.append(1)
        return real_all(engine)

    monkeypatch.setattr(db, "load_latest_forecasts", read_all)
    clock.t = NOW + timedelta(minutes=3)
    states = {n: ScalerState() for n in names}
    after = asyncio.run(tick_all(_fleet(engine, pool, clock), states))
    assert batches == [1] and one_by_one == []
    for old, new in zip(before, after, strict=True):
        assert new.status["forecastGeneratedAt"] == old.status["forecastGeneratedAt"]
        assert new.decision.desired == old.decision.desired
        conds = {c["type"]: c for c in new.status["conditions"]}
        assert "reused from the forecasts table" in conds["ForecastReady"]["message"]
    assert pool.submitted == []  # not due: nothing refit


def test_a_changed_spec_reads_its_own_stored_forecast(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FixedClock(NOW)
    asyncio.run(_fleet(engine, FakePool(), clock).tick(
        namespace="changed", name="web", body=_named("changed", "web"), state=ScalerState(), hpas=[],
        rival_owner=None))
    one_by_one = _count_single_reads(monkeypatch)
    other = {"model": "seasonal-naive", "history": "2d", "horizon": "1d", "step": "5m"}

    async def restart() -> Any:
        rec = _fleet(engine, FakePool(), clock)
        out = await rec.tick(namespace="changed", name="web", body=_named("changed", "web", forecast=other),
                             state=ScalerState(), hpas=[], rival_owner=None)
        await rec.drain()
        return out

    outcome = asyncio.run(restart())
    # The newest row has other inputs: that scaler alone asks for a row made with its own.
    assert one_by_one == ["changed/web"]
    assert outcome.decision is not None


def test_decisions_taken_together_share_one_commit(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from prescaler.errors import DataUnavailable
    from prescaler.planning import Decision
    from prescaler.reconcile.tick import DecisionLog

    commits: list[int] = []
    real = db.record_decisions

    def record(engine: Engine, rows: Sequence[dict[str, Any]], **kwargs: Any) -> int:
        commits.append(len(rows))
        return real(engine, rows, **kwargs)

    monkeypatch.setattr(db, "record_decisions", record)
    decision = Decision(desired=3, current=1, recommended=3, direction="up", reason="test", stale=False)
    rows = [db.decision_row(namespace="burst", name=f"app-{i}", target_kind="Deployment", target_name=f"app-{i}",
                            decision=decision, decided_at=NOW, applied=True) for i in range(5)]
    log = DecisionLog(engine)

    async def burst() -> None:
        await asyncio.gather(*(log.record(row) for row in rows))  # each returns once its row is committed

    asyncio.run(burst())
    assert commits == [5]
    with engine.connect() as conn:
        names = conn.execute(sa.select(db.scaling_decisions.c.name)
                             .where(db.scaling_decisions.c.namespace == "burst")).scalars().all()
    assert sorted(names) == [f"app-{i}" for i in range(5)]

    def down(engine: Engine, rows: Sequence[dict[str, Any]], **kwargs: Any) -> int:
        raise DataUnavailable("database unavailable while recording a scaling decision")

    monkeypatch.setattr(db, "record_decisions", down)

    async def failing() -> list[Any]:
        return await asyncio.gather(*(log.record(row) for row in rows[:2]), return_exceptions=True)

    assert all(isinstance(r, DataUnavailable) for r in asyncio.run(failing()))


def test_rows_decided_while_the_store_is_away_are_written_once_it_is_back(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The waiting tick hears of the outage, but its row is kept and goes first in the next write; a row whose
    commit went through although the answer was lost is not written twice."""
    from prescaler.errors import DataUnavailable
    from prescaler.planning import Decision
    from prescaler.reconcile.tick import DecisionLog

    real = db.record_decisions
    decision = Decision(desired=3, current=1, recommended=3, direction="up", reason="test", stale=False)
    rows = [db.decision_row(namespace="outage", name="app", target_kind="Deployment", target_name="app",
                            decision=decision, decided_at=NOW + timedelta(minutes=i), applied=False)
            for i in range(4)]
    log = DecisionLog(engine)

    def lost_answer(engine: Engine, rows: Sequence[dict[str, Any]], **kwargs: Any) -> int:
        real(engine, rows, **kwargs)  # committed, then the connection drops before the answer
        raise DataUnavailable("database unavailable while recording a scaling decision: connection reset")

    def down(engine: Engine, rows: Sequence[dict[str, Any]], **kwargs: Any) -> int:
        raise DataUnavailable("database unavailable while recording a scaling decision: connection refused")

    async def record(row: dict[str, Any]) -> None:
        await log.record(row)

    for fake, row in ((lost_answer, rows[0]), (down, rows[1]), (down, rows[2])):
        monkeypatch.setattr(db, "record_decisions", fake)
        with pytest.raises(DataUnavailable):
            asyncio.run(record(row))
    assert log.pending == 3
    monkeypatch.setattr(db, "record_decisions", real)
    asyncio.run(record(rows[3]))
    assert log.pending == 0
    with engine.connect() as conn:
        stored = conn.execute(sa.select(db.scaling_decisions.c.decided_at)
                              .where(db.scaling_decisions.c.namespace == "outage")
                              .order_by(db.scaling_decisions.c.decided_at)).scalars().all()
    assert stored == [r["decided_at"] for r in rows]


def test_the_row_is_written_before_the_patch_and_corrected_when_the_patch_fails(
        engine: Engine, pool: forecasting.FitPool) -> None:
    class Refusing(FakeActuator):
        def scale(self, namespace: str, ref: TargetRef, replicas: int) -> None:
            with engine.connect() as conn:  # the decision is already stored when the patch is sent
                seen.append(conn.execute(sa.select(sa.func.count()).select_from(db.scaling_decisions)
                                         .where(db.scaling_decisions.c.namespace == "refused")).scalar_one())
            raise RuntimeError("the API server said no")

    seen: list[int] = []
    rec = _reconciler(engine, Refusing(), pool)
    body = _body()
    body["metadata"]["namespace"] = "refused"
    with pytest.raises(RuntimeError, match="said no"):
        asyncio.run(rec.tick(namespace="refused", name="web", body=body, state=ScalerState(), hpas=[],
                             rival_owner=None))
    assert seen == [1]
    with engine.connect() as conn:
        row = conn.execute(sa.select(db.scaling_decisions.c.applied, db.scaling_decisions.c.reason)
                           .where(db.scaling_decisions.c.namespace == "refused")).one()
    assert row.applied is False and "not applied: RuntimeError: the API server said no" in row.reason


def test_a_deleted_scalers_series_go_and_a_new_one_of_the_name_is_exported_again() -> None:
    def desired() -> float | None:
        return metrics.REGISTRY.get_sample_value("prescaler_desired_replicas", {"namespace": "gone", "name": "web"})

    metrics.child(metrics.DESIRED_REPLICAS, "gone", "web").set(3)
    assert desired() == 3
    metrics.forget_scaler("gone", "web")
    assert desired() is None
    # Not the removed child, kept: a fresh one that /metrics shows.
    metrics.child(metrics.DESIRED_REPLICAS, "gone", "web").set(4)
    assert desired() == 4
    metrics.remove(metrics.DESIRED_REPLICAS, "gone", "web")
    assert desired() is None
    metrics.child(metrics.DESIRED_REPLICAS, "gone", "web").set(5)
    assert desired() == 5
    metrics.forget_scaler("gone", "web")  # leave the shared registry as found


# ---- scheduled windows ---------------------------------------------------------------------------------------


def test_a_schedule_floor_holds_in_its_window_with_status_and_events(engine: Engine,
                                                                      pool: forecasting.FitPool) -> None:
    actuator = FakeActuator()
    rec = _reconciler(engine, actuator, pool)
    state = ScalerState()
    body = _body(schedules=[{"name": "noon-batch", "cron": "0 12 * * *", "duration": "1h", "timeZone": "UTC",
                             "minReplicas": 15}])
    outcome = _tick(rec, body, state)
    assert outcome.decision.desired == 15 and actuator.replicas == 15
    assert outcome.status["limitedBy"] == "ScheduledWindow"
    assert "noon-batch" in outcome.status["reason"]
    window = outcome.status["nextWindow"]
    assert window["kind"] == "noon-batch" and window["start"] == "2024-03-04T12:00:00Z"
    assert window["sizing"] == "noon-batch: at least 15 replicas"
    assert window["summary"].startswith("noon-batch until 13:00 UTC")
    assert ("Normal", "WindowOpened", "scheduled window noon-batch 2024-03-04 12:00 UTC: "
            "noon-batch: at least 15 replicas") in outcome.events

    assert isinstance(rec.s.clock, FixedClock)
    rec.s.clock.t = NOW + timedelta(hours=1, minutes=5)
    after = _tick(rec, body, state)
    assert ("Normal", "WindowClosed", "scheduled window noon-batch 2024-03-04 12:00 UTC closed") in after.events
    assert after.status["nextWindow"]["start"] == "2024-03-05T12:00:00Z"
    assert after.status["limitedBy"] != "ScheduledWindow"


def test_a_window_kind_learned_from_past_windows_sizes_the_opening(engine: Engine,
                                                                   pool: forecasting.FitPool) -> None:
    # A service whose daily 11:00 launch jumps fourfold in its first five minutes, on a steady 2,000 per step.
    start = NOW.replace(minute=0) - timedelta(days=4)
    rows, events = [], []
    # On the 5-minute grid, up to the bucket before the second tick below (12:05).
    for i in range(int(timedelta(days=4, minutes=10) / timedelta(minutes=5))):
        ts = start + timedelta(minutes=5 * i)
        burst = ts.hour == 11 and ts.minute < 10
        rows.append({"ts": ts, "service": "launchy", "endpoint": "*", "requests": 8000 if burst else 2000})
    for day in (1, 2, 3):
        at = (NOW - timedelta(days=day)).replace(hour=11, minute=0)
        events.append({"name": f"launch {day}", "kind": "launch", "service": "launchy", "starts_at": at,
                       "ends_at": at + timedelta(minutes=30)})
    upcoming = NOW.replace(hour=12, minute=20)
    events.append({"name": "launch today", "kind": "launch", "service": "launchy", "starts_at": upcoming,
                   "ends_at": upcoming + timedelta(minutes=30)})
    with engine.begin() as conn:
        conn.execute(db.traffic_log.insert(), rows)
        conn.execute(db.traffic_events.insert(), events)

    actuator = FakeActuator()
    rec = _reconciler(engine, actuator, pool)
    state = ScalerState()
    body = _body(series={"service": "launchy"}, scaling={"headroomPercent": 10, "leadTime": "10m"},
                 forecast={"model": "seasonal-naive", "history": "4d", "horizon": "1d", "step": "5m"})

    async def run() -> tuple[Any, Any]:
        first = await rec.tick(namespace="shop", name="web", body=body, state=state, hpas=[], rival_owner=None)
        task = rec.windows._learned["shop/web"].task
        assert task is not None
        await task  # the background read and learning
        assert isinstance(rec.s.clock, FixedClock)
        rec.s.clock.t = upcoming - timedelta(minutes=10)  # one lead time before the opening
        second = await rec.tick(namespace="shop", name="web", body=body, state=state, hpas=[], rival_owner=None)
        return first, second

    _, second = asyncio.run(run())
    # The seasonal-naive forecast repeats yesterday's 11:00 burst at 11:00, not at today's 12:20: only the
    # window's learned rise can size today's opening.
    assert second.status["nextWindow"]["name"] == "launch today"
    assert "rise ×4.0 at the opening" in second.status["nextWindow"]["sizing"]
    assert second.status["limitedBy"] == "ScheduledWindow"
    # Observed 2,000 per step times the learned 4.0, with 10% headroom, on 500 per replica per step.
    assert second.decision.desired == math.ceil(2000 * 4.0 * 1.1 / 500)
    assert any(e[:2] == ("Normal", "WindowOpened") for e in second.events)

"""One reconcile tick of one PredictiveScaler: history → forecast (kept) → plan → actuate → status.

Kopf-free so it can be driven by the handlers, the tests and the fleet benchmark alike. Blocking work (SQL,
API calls) runs in threads; fits run in a process pool and are polled, never awaited on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from prescaler import db, forecasting, history, metrics
from prescaler.actuation import HpaState, TargetNotFound, TargetState
from prescaler.capacity import Shortfall, capacity_shortfall
from prescaler.clock import Clock
from prescaler.durations import format_duration
from prescaler.errors import DataUnavailable, InputError
from prescaler.planning import (
    Decision,
    Recommendation,
    cap_at_hpa_max_replicas,
    forecast_peak,
    hold_scale_down_without_data,
    plan,
)
from prescaler.promotion import Effective
from prescaler.reconcile.conditions import Cond, condition_event, merge_conditions, now_iso
from prescaler.reconcile.forecasts import CachedForecast, ForecastKeeper, ScalerRef, ScalerState, floor_time
from prescaler.reconcile.gate import Gate
from prescaler.reconcile.promotion import GateOutcome, run_gate
from prescaler.reconcile.scorecard import RECORD_SPAN, ScorecardKeeper, scorecard_status
from prescaler.reconcile.scorecard import export as export_scorecard
from prescaler.reconcile.scorecard import windows as scorecard_windows
from prescaler.reconcile.sizing_record import SizingRecordKeeper
from prescaler.reconcile.windows import WindowInForce, WindowKeeper
from prescaler.scorecard import reactive_count
from prescaler.sizing.calibration import SizingCalibration
from prescaler.spec import ScalerSpec, TargetRef, parse_spec

log = logging.getLogger("prescaler.reconcile")
T = TypeVar("T")


@dataclass
class Outcome:
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    decision: Decision | None = None
    conditions: dict[str, Cond] = field(default_factory=dict)  # merged into status.conditions by tick()
    static_peak: int | None = None  # replicas a static fleet sized for the forecast's peak would need
    record: dict[str, Any] | None = None  # the scaling_decisions row tick() writes before returning
    recorded: bool = False  # the row went to the decision log before the patch it announces
    drop_conditions: set[str] = field(default_factory=set)  # condition types to remove from the status


class ActuatorLike(Protocol):
    """What a tick asks of the cluster (prescaler.actuation.Actuator; fakes in tests)."""

    def read_target(self, namespace: str, ref: TargetRef) -> TargetState: ...

    def scale(self, namespace: str, ref: TargetRef, replicas: int) -> None: ...

    def set_hpa_min(self, namespace: str, name: str, min_replicas: int) -> None: ...


@dataclass
class Services:
    engine: Engine
    actuator: ActuatorLike
    pool: forecasting.FitPool
    clock: Clock
    sources: Mapping[str, history.TrafficSource]
    fit_timeout_s: float = 120.0
    max_concurrent: int = 8
    refit_spread: float = 0.5  # see forecasts.refit_due_at


class DecisionLog:
    """Decision rows written with group commit. Each tick still waits until its own row is committed (a decision
    is recorded once, before the status reports it), but ticks that decide together (an operator's start, a
    fleet on one cadence) share one transaction and one thread hop instead of one each.

    A row that cannot be written because PostgreSQL is away is not dropped: it waits in a bounded backlog and
    goes first in the next write, so the record is whole once the store is back (the waiting tick still hears of
    the outage, to report it). Only a restart of the operator while rows wait loses them."""

    MAX_BACKLOG = 100_000  # rows; at one decision a minute, a fleet of 1,000 scalers for over an hour and a half

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._backlog: list[dict[str, Any]] = []
        self._writer: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._backlog)

    async def record(self, row: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.append((row, done))
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._writer = loop.create_task(self._write())
        await done

    async def retract(self, row: dict[str, Any], why: str) -> None:
        """The patch that an already recorded row announced failed: the row says so (in the backlog, or stored)."""
        row["applied"] = False
        row["reason"] = f"{row['reason']}; not applied: {why}"
        if any(r is row for r in self._backlog):
            return
        try:
            await asyncio.to_thread(db.mark_decision_not_applied, self.engine, row)
        except DataUnavailable as exc:
            log.warning("could not mark the decision of %s/%s at %s as not applied: %s",
                        row["namespace"], row["name"], row["decided_at"], exc)

    async def _write(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            retried = len(self._backlog)
            rows = [*self._backlog, *(row for row, _ in batch)]
            try:
                await asyncio.to_thread(functools.partial(db.record_decisions, self.engine, rows,
                                                          skip_recorded=retried > 0))
            except DataUnavailable as exc:
                dropped = max(0, len(rows) - self.MAX_BACKLOG)
                if dropped:
                    metrics.DECISION_ROWS_DROPPED.inc(dropped)
                    log.error("decision backlog full: %d oldest rows dropped while the store is away", dropped)
                self._backlog = rows[dropped:]
                self._settle(batch, exc)
            except Exception as exc:  # not an outage (a row the store refuses): the batch is not kept for retry
                self._settle(batch, exc)
            else:
                if retried:
                    log.info("wrote %d decision rows kept while the store was away", retried)
                self._backlog = []
                self._settle(batch, None)
            metrics.DECISION_ROWS_PENDING.set(len(self._backlog))

    @staticmethod
    def _settle(batch: list[tuple[dict[str, Any], asyncio.Future[None]]], exc: Exception | None) -> None:
        """Each waiting tick hears what its own write would have said."""
        for _, done in batch:
            if done.done():
                continue
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)


# Reads a target from an informer-style cache; None means it does not exist. Without one, each tick GETs it.
TargetLookup = Callable[[str, TargetRef], TargetState | None]


@dataclass(frozen=True)
class _TickContext:
    """What every step of one decision works on: the scaler, its outcome so far, its spec and source, the time."""

    ref: ScalerRef
    out: Outcome
    spec: ScalerSpec
    source: history.TrafficSource
    now: datetime


def _conflict(spec: ScalerSpec, hpas: list[HpaState], rival_owner: str | None) -> tuple[str, str, str] | None:
    """Why this scaler stands down, as (reason, message, error kind); None when nothing is in its way."""
    target = f"{spec.target.kind} {spec.target.name}"
    if rival_owner is not None:
        return ("ConflictingScaler", f"{target} is already managed by PredictiveScaler {rival_owner}; this one "
                "stands down", "ConflictingScaler")
    if spec.actuation == "Replicas" and hpas:
        return ("HPAConflict", f"HorizontalPodAutoscaler {hpas[0].name} also scales {target}; use actuation: "
                "HPAMinReplicas to work with it", "HPAConflict")
    if spec.actuation == "HPAMinReplicas" and not hpas:
        return ("HPANotFound", f"actuation HPAMinReplicas needs a HorizontalPodAutoscaler targeting {target}; "
                "none found", "HPANotFound")
    return None


def _fail(ref: ScalerRef, out: Outcome, reason: str, message: str, kind: str) -> None:
    """The tick stops here: Ready (and ScalingActive, unless a step set it) say why, and the error is counted."""
    out.conditions["Ready"] = Cond("False", reason, message)
    out.conditions.setdefault("ScalingActive", Cond("False", reason, message))
    ref.error(kind)
    out.status["reason"] = message


class Reconciler:
    def __init__(self, services: Services) -> None:
        self.s = services
        self._gate = Gate(services.max_concurrent)
        self.forecasts = ForecastKeeper(services.engine, services.pool, services.fit_timeout_s,
                                        refit_spread=services.refit_spread)
        self._reads = history.SharedReads(services.engine)
        self._decisions = DecisionLog(services.engine)
        # Service level, trust and level correction from each scaler's own record.
        self.sizing_records = SizingRecordKeeper(self._reads)
        # Scheduled windows: each scaler's calendar and cron schedules, the rise learned from its past windows.
        self.windows = WindowKeeper(services.engine)
        # The scorecard: each scaler's plan against what ran, read back from the decision log, then fed each tick.
        self.scorecards = ScorecardKeeper(services.engine)
        # API calls wait on the API server, which a fleet's status patches can slow to seconds per call: in threads
        # of their own (one per admission slot), they never hold up the SQL of other ticks.
        self._api = ThreadPoolExecutor(max_workers=max(1, services.max_concurrent), thread_name_prefix="prescaler-api")

    async def _api_call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._api, functools.partial(fn, *args))

    def start(self) -> None:
        """At the operator's start, before the first ticks: read every stored forecast at once."""
        self.forecasts.start_prefetch()

    async def drain(self) -> None:
        """Wait for the work the ticks left running after their decisions (refit reads, forecast writes)."""
        await self.forecasts.drain()
        await self.windows.drain()
        await self.scorecards.drain()

    async def tick(
        self,
        *,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        state: ScalerState,
        hpas: list[HpaState],
        rival_owner: str | None,
        targets: TargetLookup | None = None,
    ) -> Outcome | None:
        """Run one reconcile if the spec's interval has passed (or the spec changed); None when skipped."""
        ref = ScalerRef(namespace, name, state)
        now = self.s.clock.now()
        meta = body.get("metadata", {})
        generation = int(meta.get("generation") or 0)
        spec_changed = generation != state.last_generation
        interval = state.interval if not spec_changed and state.interval is not None else _interval(body)
        if not spec_changed and state.last_tick is not None and now - state.last_tick < interval:
            self.forecasts.poll(ref, None)
            return None
        # The cadence counts from when the tick was due, so waiting for a slot does not push the next one.
        state.last_tick = now
        state.last_generation = generation
        state.interval = interval
        await self._gate.acquire(urgent=not state.decided)
        now = self.s.clock.now()
        started = time.perf_counter()
        try:
            try:
                outcome = await self._decide(ref, body, hpas, rival_owner, now, targets)
            finally:
                # The row is written after the slot is handed on, so the ticks of a burst share one commit.
                self._gate.release()
            if outcome.record is not None and not outcome.recorded:
                await self._record(outcome.record)
        finally:
            metrics.child(metrics.RECONCILE_DURATION, namespace, name).observe(time.perf_counter() - started)
        state.decided = True
        old = (body.get("status") or {}).get("conditions")
        merged, changed = merge_conditions(old, outcome.conditions, generation, now, drop=outcome.drop_conditions)
        outcome.status["conditions"] = merged
        outcome.status["observedGeneration"] = generation
        present = {c.get("type") for c in (old or [])}
        for ctype, cond in changed:
            if ctype == "Promoted":
                continue  # the gate posts its own Events, with the figures, when the mode changes
            event = condition_event(ctype, cond, first=ctype not in present)
            if event is not None:
                outcome.events.append(event)
        for c in merged:
            for status in ("True", "False", "Unknown"):
                metrics.child(metrics.CONDITION, namespace, name, c["type"], status).set(
                    1 if c["status"] == status else 0)
        return outcome

    async def _record(self, row: dict[str, Any]) -> None:
        try:
            await self._decisions.record(row)
        except DataUnavailable as exc:
            log.warning("decision for %s/%s kept until the store is back (%d rows waiting): %s",
                        row["namespace"], row["name"], self._decisions.pending, exc)

    async def _decide(
        self,
        ref: ScalerRef,
        body: Mapping[str, Any],
        hpas: list[HpaState],
        rival_owner: str | None,
        now: datetime,
        targets: TargetLookup | None,
    ) -> Outcome:
        """One decision, step by step: validate → observe → forecast → calibrate → gate (the effective mode) →
        plan → actuate → report (status, scorecard, scheduled window, capacity).

        A step that cannot go on leaves its conditions in the outcome, and the tick ends there."""
        out = Outcome()
        out.status["lastDecisionTime"] = now_iso(now)
        spec = self._validate(ref, out, body, hpas, rival_owner)
        if spec is None:
            return out
        t = _TickContext(ref, out, spec, self.s.sources[spec.source], now)
        target = await self._read_target(t, targets)
        observed, data_error = await self._observe(t)
        data_available = data_error is None
        # The forecast is kept and reported even while the target is missing: it is ready when the target is back.
        cached = await self._forecast(t, data_available=data_available)
        if target is None:
            out.conditions["Ready"] = Cond("False", "TargetNotFound", out.conditions["ScalingActive"].message)
            return out
        hpa = hpas[0] if spec.actuation == "HPAMinReplicas" else None
        current = hpa.min_replicas if hpa is not None else target.spec_replicas
        calibration, level_correction = await self._calibrate(t, cached, data_available=data_available)
        gate = await self._promotion(t, body.get("status") or {}, target, hpa, cached, data_available=data_available)
        window = self.windows.in_force(ref.key, spec, t.source, now)
        decision = self._plan(t, self._plan_from(t, current, gate.effective, body), hpa, cached, observed,
                              calibration, level_correction, window, data_available=data_available)
        # While the plan only reports, it goes on from its own last count, as it would have run it.
        ref.state.shadow = decision.desired if gate.effective == "ForecastOnly" else None
        out.decision = decision
        applied = await self._actuate(t, hpa, decision, gate.effective, self._score_inputs(t, target, gate, observed))
        if applied is None:
            return out
        self._report(t, target, hpa, decision, applied, gate.effective)
        self._report_score(t)
        _report_window(t, window)
        self._check_capacity(t, hpa, cached)
        return out

    def _validate(self, ref: ScalerRef, out: Outcome, body: Mapping[str, Any], hpas: list[HpaState],
                  rival_owner: str | None) -> ScalerSpec | None:
        """The spec, or None when this scaler must not act (invalid, paused, or in conflict): conditions say why."""
        try:
            spec = parse_spec(body.get("spec") or {})
        except InputError as exc:
            _fail(ref, out, "InvalidSpec", str(exc), "InvalidSpec")
            return None
        if spec.source not in self.s.sources:
            _fail(ref, out, "UnknownSource", f"spec.series.source {spec.source!r} is not configured by the "
                  f"administrator (known: {', '.join(sorted(self.s.sources))})", "InvalidSpec")
            return None
        if spec.mode == "Paused":
            out.conditions["Ready"] = Cond("True", "Paused", "mode is Paused: nothing is computed or changed")
            out.conditions["ScalingActive"] = Cond("False", "Paused", "mode is Paused")
            out.status["effectiveMode"] = "Paused"
            metrics.child(metrics.EFFECTIVE_AUTO, ref.namespace, ref.name).set(0)
            return None
        conflict = _conflict(spec, hpas, rival_owner)
        if conflict is not None:
            _fail(ref, out, *conflict)
            return None
        return spec

    async def _read_target(self, t: _TickContext, targets: TargetLookup | None) -> TargetState | None:
        """The scale target from the informer cache (or the API); None, with ScalingActive saying so, when gone."""
        namespace, ref = t.ref.namespace, t.spec.target
        try:
            if targets is not None:
                target = targets(namespace, ref)
                if target is None:
                    raise TargetNotFound(f"{ref.kind} {namespace}/{ref.name} not found")
                return target
            return await self._api_call(self.s.actuator.read_target, namespace, ref)
        except TargetNotFound as exc:
            t.out.conditions["ScalingActive"] = Cond("False", "TargetNotFound", str(exc))
            t.ref.error("TargetNotFound")
            return None

    async def _observe(self, t: _TickContext) -> tuple[float | None, str | None]:
        """The load now and the DataAvailable condition; the error when the history could not be read."""
        spec, conds = t.spec, t.out.conditions
        observed, data_error = await self._read_load(t.source, spec, t.now)
        if data_error is not None:
            conds["DataAvailable"] = Cond("False", "DataUnavailable", data_error)
            t.ref.error("DataUnavailable")
        elif observed is None:
            conds["DataAvailable"] = Cond("False", "NoRecentData",
                                          f"no traffic for series {spec.service!r} in the last "
                                          f"{format_duration(2 * spec.step)}")
        else:
            conds["DataAvailable"] = Cond("True", "DataFresh", f"observed {observed:,.0f} requests per "
                                          f"{format_duration(spec.step)} for {spec.service!r}")
        if observed is not None:
            metrics.child(metrics.OBSERVED_LOAD, t.ref.namespace, t.ref.name).set(observed)
        return observed, data_error

    async def _forecast(self, t: _TickContext, *, data_available: bool) -> CachedForecast | None:
        """The forecast in use (a refit started when due) and its status fields."""
        t.ref.state.series = t.spec.service
        cached = await self.forecasts.ensure(t.ref, t.spec, t.source, t.now, data_available, t.out.conditions)
        if cached is not None:
            t.out.static_peak = _forecast_status(t.out, t.ref, t.spec, cached, t.now)
        return cached

    async def _calibrate(self, t: _TickContext, cached: CachedForecast | None, *,
                         data_available: bool) -> tuple[SizingCalibration | None, float]:
        """The sizing's calibration on this scaler's own record and the level correction (1: none), with their
        status fields; none while the traffic cannot be read."""
        if not data_available:
            return None, 1.0
        calibration, level_correction, record_status = await self.sizing_records.for_tick(
            t.ref.namespace, t.ref.name, t.spec, t.source, cached.forecast if cached else None,
            cached.generated_at if cached else None, t.now, self.windows.rise_at(t.ref.key, t.spec, t.now))
        t.out.status.update(record_status)
        if t.spec.service_level is not None and calibration is not None and calibration.ready:
            t.out.conditions["ServiceLevelAtRisk"] = (
                Cond("True", "ServiceLevelAtRisk", calibration.at_risk) if calibration.at_risk
                else Cond("False", "ServiceLevelOnTrack",
                          f"the record supports {t.spec.service_level:g}% served at the calibrated sizing"))
        return calibration, level_correction

    async def _promotion(self, t: _TickContext, status: Mapping[str, Any], target: TargetState, hpa: HpaState | None,
                         cached: CachedForecast | None, *, data_available: bool) -> GateOutcome:
        """The effective mode (the promotion gate's, or the spec's without one), its status, condition and
        events. A hand-back returns the controller the plan took over from: with HPAMinReplicas the HPA's floor
        goes back to spec.minReplicas, with Replicas the target to its count at the promotion."""
        spec, now, out = t.spec, t.now, t.out
        keep = max(RECORD_SPAN, spec.promotion.after) if spec.promotion is not None else RECORD_SPAN
        self.scorecards.ensure(t.ref.namespace, t.ref.name, now, keep)
        stale_why = ""
        if not data_available:
            stale_why = "traffic data unavailable"
        elif cached is None or now - cached.generated_at > spec.stale_after:
            stale_why = "no forecast within spec.fallback.staleAfter"
        gate = run_gate(spec, status, self.scorecards.record(t.ref.key), now=now, fresh=not stale_why,
                        stale_why=stale_why, target_replicas=target.spec_replicas)
        out.status.update(gate.status)
        if gate.condition is not None:
            out.conditions["Promoted"] = gate.condition
        else:
            out.drop_conditions.add("Promoted")
        out.events.extend(gate.events)
        metrics.child(metrics.EFFECTIVE_AUTO, t.ref.namespace, t.ref.name).set(1 if gate.effective == "Auto" else 0)
        if gate.demoted:
            await self._hand_back(t, target, hpa, gate.hand_back)
        return gate

    async def _hand_back(self, t: _TickContext, target: TargetState, hpa: HpaState | None, count: int | None) -> None:
        """Return the target to the controller the plan took over from; an Event says what was done."""
        namespace, spec = t.ref.namespace, t.spec
        if hpa is not None:
            what, old, new = f"HPA {hpa.name} minReplicas", hpa.min_replicas, spec.min_replicas
            call: Callable[[], None] = functools.partial(self.s.actuator.set_hpa_min, namespace, hpa.name, new)
        elif count is not None:
            what, old, new = f"{spec.target.kind} {spec.target.name}", target.spec_replicas, count
            call = functools.partial(self.s.actuator.scale, namespace, spec.target, new)
        else:
            return  # the plan was in charge by the spec: the count it left stays
        if old == new:
            return
        try:
            await self._api_call(call)
        except Exception as exc:  # the plan only reports from now on; the count stays where it left it
            log.warning("%s/%s: %s not handed back: %s", namespace, t.ref.name, what, exc)
            t.out.events.append(("Warning", "HandBackFailed", f"{what} stays {old}: {type(exc).__name__}: {exc}"))
        else:
            t.out.events.append(("Normal", "HandedBack", f"{what} {old} → {new}"))

    def _plan_from(self, t: _TickContext, current: int, effective: Effective, body: Mapping[str, Any]) -> int:
        """The count the plan starts from: the target's, or while the plan only reports its own last count (after
        a restart, the status's desiredReplicas)."""
        if effective != "ForecastOnly":
            return current
        if t.ref.state.shadow is not None:
            return t.ref.state.shadow
        desired = (body.get("status") or {}).get("desiredReplicas")
        return desired if isinstance(desired, int) and not isinstance(desired, bool) and desired >= 1 else current

    def _score_inputs(self, t: _TickContext, target: TargetState, gate: GateOutcome,
                      observed: float | None) -> db.ScoreInputs:
        """The decision row's scorecard columns. Steps the reactive estimate (an HPA on the observed load), the
        baseline while the plan is in charge unless it took over a fixed count (`prescaler.scorecard`)."""
        spec, state = t.spec, t.ref.state
        reactive, state.reactive_recent = reactive_count(
            spec.policy(), observed, current=state.reactive if state.reactive is not None else target.spec_replicas,
            now=t.now, recent=state.reactive_recent)
        state.reactive = reactive
        estimate = gate.hand_back if gate.effective == "Auto" and gate.hand_back is not None else reactive
        return db.ScoreInputs(mode=gate.effective, target_replicas=target.spec_replicas,
                              ready_replicas=target.ready_replicas, baseline_replicas=estimate,
                              capacity=spec.capacity_per_step, step_seconds=int(spec.step.total_seconds()),
                              lead_seconds=int(spec.lead_time.total_seconds()),
                              interval_seconds=int(spec.interval.total_seconds()))

    def _report_score(self, t: _TickContext) -> None:
        """The decision into the scorecard; `status.scorecard` and its gauges once the record is read back."""
        if t.out.record is not None:
            self.scorecards.feed(t.ref.key, t.out.record)
        record = self.scorecards.record(t.ref.key)
        if record is not None:
            figures = scorecard_windows(record, t.now)
            t.out.status["scorecard"] = scorecard_status(figures)
            export_scorecard(t.ref.namespace, t.ref.name, figures)

    def _check_capacity(self, t: _TickContext, hpa: HpaState | None, cached: CachedForecast | None) -> None:
        """CapacityShortfall: whether the forecast within the horizon needs more than the scaler may ask for."""
        if cached is None:
            return
        found = capacity_shortfall(cached.forecast, t.spec.policy(), now=t.now, quantile=t.spec.quantile,
                                   hpa=(hpa.name, hpa.max_replicas) if hpa is not None else None)
        if found is None:
            return
        gauge = metrics.child(metrics.CAPACITY_SHORTFALL, t.ref.namespace, t.ref.name)
        if isinstance(found, Shortfall):
            reason = "ForecastAboveHPAMaxReplicas" if found.limit_name.startswith("HPA") else "ForecastAboveMaxReplicas"
            t.out.conditions["CapacityShortfall"] = Cond("True", reason, found.message(t.now))
            gauge.set(found.replicas)
        else:
            t.out.conditions["CapacityShortfall"] = Cond("False", "WithinMaxReplicas", found.message())
            gauge.set(0)

    def _plan(self, t: _TickContext, current: int, hpa: HpaState | None, cached: CachedForecast | None,
              observed: float | None, calibration: SizingCalibration | None, level_correction: float,
              window: WindowInForce, *, data_available: bool) -> Decision:
        """The decision to apply: the planner's, then the data hold and the HPA's cap (what gets applied is what
        the row and the status record). The stabilisation window is carried in the scaler's state."""
        state, now = t.ref.state, t.now
        if not state.started:
            # After a (re)start, scale-down waits one stabilisation window: no flap on a cold memory.
            state.recommendations = (Recommendation(now, current),)
            state.started = True
        decision = plan(
            t.spec.policy(),
            now=now,
            current_replicas=current,
            forecast=cached.forecast if cached else None,
            forecast_generated_at=cached.generated_at if cached else None,
            observed_load=observed,
            recent=state.recommendations,
            calibration=calibration,
            level_correction=level_correction,
            window=window.ask,
        )
        if not data_available:
            decision = hold_scale_down_without_data(decision)
        if hpa is not None:
            decision = cap_at_hpa_max_replicas(decision, hpa.name, hpa.max_replicas)
        state.recommendations = decision.recommendations
        return decision

    async def _actuate(self, t: _TickContext, hpa: HpaState | None, decision: Decision, effective: Effective,
                       score: db.ScoreInputs) -> bool | None:
        """The decision row, then the patch when the effective mode is Auto and the count changes. Whether it was
        applied; None when the target disappeared under the patch (the conditions say so)."""
        namespace, name, spec, out = t.ref.namespace, t.ref.name, t.spec, t.out
        desired, current = decision.desired, decision.current
        applied = effective == "Auto" and desired != current
        out.record = db.decision_row(namespace=namespace, name=name, target_kind=spec.target.kind,
                                     target_name=spec.target.name, decision=decision, decided_at=t.now,
                                     applied=applied, score=score)
        if not applied:
            return False
        # The row first, then the patch: an operator killed between the two leaves a row that announced a
        # scale (the next decision shows whether it happened), never a scale that no row explains.
        await self._record(out.record)
        out.recorded = True
        try:
            if hpa is not None:
                await self._api_call(self.s.actuator.set_hpa_min, namespace, hpa.name, desired)
            else:
                await self._api_call(self.s.actuator.scale, namespace, spec.target, desired)
        except TargetNotFound as exc:
            await self._decisions.retract(out.record, str(exc))
            _fail(t.ref, out, "TargetNotFound", str(exc), "TargetNotFound")
            return None
        except BaseException as exc:
            await asyncio.shield(self._decisions.retract(out.record, f"{type(exc).__name__}: {exc}"))
            raise
        direction = "up" if desired > current else "down"
        metrics.child(metrics.SCALE_ACTIONS, namespace, name, direction).inc()
        what = f"HPA {hpa.name} minReplicas" if hpa is not None else f"{spec.target.kind} {spec.target.name}"
        out.events.append(("Normal", "ScaledUp" if direction == "up" else "ScaledDown",
                           f"{what} {current} → {desired}: {decision.reason}"))
        out.status["lastScaleTime"] = now_iso(t.now)
        return True

    def _report(self, t: _TickContext, target: TargetState, hpa: HpaState | None, decision: Decision,
                applied: bool, effective: Effective) -> None:
        """The decision's metrics, status fields and conditions."""
        namespace, name, spec, out = t.ref.namespace, t.ref.name, t.spec, t.out
        desired, observed = decision.desired, decision.observed_load
        # What the target has: while the plan only reports, its decisions start from its own count instead.
        current = hpa.min_replicas if hpa is not None else target.spec_replicas
        conds = out.conditions
        tick_s = spec.interval.total_seconds()
        ready = target.ready_replicas if hpa is None else max(target.ready_replicas, 0)
        metrics.child(metrics.DESIRED_REPLICAS, namespace, name).set(desired)
        metrics.child(metrics.CURRENT_REPLICAS, namespace, name).set(desired if applied else current)
        metrics.child(metrics.READY_REPLICAS, namespace, name).set(ready)
        metrics.child(metrics.REPLICA_SECONDS, namespace, name).inc(desired * tick_s)
        under = metrics.child(metrics.UNDERPROVISIONED_SECONDS, namespace, name)  # exported at 0 from the first tick
        if observed is not None and observed > ready * spec.capacity_per_step:
            under.inc(tick_s)
        if out.static_peak is not None:
            metrics.child(metrics.STATIC_PEAK_REPLICAS, namespace, name).set(out.static_peak)
            metrics.child(metrics.STATIC_REPLICA_SECONDS, namespace, name).inc(out.static_peak * tick_s)

        out.status.update({
            "currentReplicas": desired if applied else current,
            "readyReplicas": ready,
            "desiredReplicas": desired,
            "reason": decision.reason,
            "limitedBy": decision.limited_by,
        })
        if effective == "ForecastOnly":
            why = "mode is ForecastOnly" if spec.promotion is None else \
                "effective mode is ForecastOnly (the Promoted condition says why)"
            conds["ScalingActive"] = Cond("False", "ForecastOnly", f"{why}: replicas are computed and reported, "
                                          "never changed")
        elif decision.stale:
            conds["ScalingActive"] = Cond("False", "FallbackActive", decision.reason)
        else:
            conds["ScalingActive"] = Cond("True", "Scaling", decision.reason)
        if decision.stale:
            conds["Ready"] = Cond("False", "FallbackActive", decision.reason)
        else:
            conds["Ready"] = Cond("True", "Ready", decision.reason)

    async def _read_load(
        self, source: history.TrafficSource, spec: ScalerSpec, now: datetime
    ) -> tuple[float | None, str | None]:
        """The load now (planner units: requests per step), or the reason the data is unavailable.

        Read at the minute, so the reactive floor sees a surprise one minute after it starts, as an HPA
        would, instead of up to two forecast steps later.
        """
        end = floor_time(now, MINUTE)
        start = min(end - 2 * spec.step, floor_time(now, spec.step) - 2 * spec.step)
        try:
            # Scalers of one service that tick together share the query.
            minutes = await self._reads.read(source, spec.service, start, end, MINUTE)
        except DataUnavailable as exc:
            return None, str(exc)
        return observed_load(minutes, spec.step, end), None


MINUTE = timedelta(minutes=1)


def observed_load(minutes: pd.Series, step: timedelta, end: datetime) -> float | None:
    """Requests per `step` now, from per-minute sums ending at `end` (NaN where no rows).

    Minute-resolution traffic (a collector, the simulator) gives the last complete minute scaled to the step.
    Coarser traffic (a CSV at 5 minutes: one row per step, stamped at its start) would read as a burst in
    one minute and silence in the others; when the last step's minutes are not dense, the last complete
    step bucket is used instead, as before.
    """
    # numpy, not pandas (resample): every scaler runs this on the event loop, a thousand at an operator's start.
    per_step = max(1, round(step / MINUTE))
    stamps = np.asarray(pd.DatetimeIndex(minutes.index).asi8)
    values = minutes.to_numpy(dtype=float)
    seen = ~np.isnan(values)
    step_ns = pd.Timedelta(step).value
    if per_step <= 1:
        return float(values[seen][-1]) if seen.any() else None
    recent = seen & (stamps >= pd.Timestamp(end).value - step_ns)
    if recent.sum() >= per_step - 1:
        return float(values[recent][-1]) * per_step
    complete = seen & (stamps < pd.Timestamp(floor_time(end, step)).value)
    if not complete.any():
        return None
    # The newest step bucket (on the epoch grid) that holds any data: its sum.
    newest = int(stamps[complete].max())
    bucket = newest - newest % step_ns
    return float(values[complete & (stamps >= bucket) & (stamps < bucket + step_ns)].sum())


def _report_window(t: _TickContext, window: WindowInForce) -> None:
    """`status.nextWindow`, and an Event when a window opens or closes for this scaler."""
    state = t.ref.state
    if window.window is not None:
        t.out.status["nextWindow"] = window.status(t.now)
        state.window_shown = True
    elif state.window_shown:
        t.out.status["nextWindow"] = None  # a merge patch's null removes the field
        state.window_shown = False
    name = window.window.name if window.in_force and window.window is not None else None
    if name != state.window_in_force:
        if state.window_in_force is not None:
            t.out.events.append(("Normal", "WindowClosed", f"scheduled window {state.window_in_force} closed"))
        if name is not None:
            t.out.events.append(("Normal", "WindowOpened", f"scheduled window {name}: {window.sizing}"))
        state.window_in_force = name


def _interval(body: Mapping[str, Any]) -> timedelta:
    try:
        return parse_spec(body.get("spec") or {}).interval
    except InputError:
        return timedelta(minutes=1)


def _forecast_status(out: Outcome, ref: ScalerRef, spec: ScalerSpec, cached: CachedForecast,
                     now: datetime) -> int:
    """Forecast fields of the status and their metrics; returns the static-peak replica count."""
    namespace, name, state = ref.namespace, ref.name, ref.state
    fc = cached.forecast
    out.status["model"] = cached.model
    out.status["forecastGeneratedAt"] = now_iso(cached.generated_at)
    if cached.smape is not None and math.isfinite(cached.smape):
        out.status["forecastError"] = f"{cached.smape:.1f}%"
        metrics.child(metrics.FORECAST_ERROR, namespace, name).set(cached.smape)
    metrics.child(metrics.FORECAST_AGE, namespace, name).set(max(0.0, (now - cached.generated_at).total_seconds()))
    if state.model_label != cached.model:
        if state.model_label is not None:  # auto may switch models: only the one in use reads 1
            metrics.remove(metrics.MODEL_INFO, namespace, name, state.model_label)
        state.model_label = cached.model
    metrics.child(metrics.MODEL_INFO, namespace, name, cached.model).set(1)
    idx = int(np.searchsorted(fc.ns, pd.Timestamp(now).value, side="right")) - 1
    if 0 <= idx < len(fc.ds):
        for band, arr in (("yhat", fc.yhat), ("lower", fc.lower), ("upper", fc.upper)):
            metrics.child(metrics.FORECAST_LOAD, namespace, name, band).set(float(arr[idx]))
    policy = spec.policy()
    lead_peak = forecast_peak(fc, now, now + spec.lead_time + spec.interval, spec.quantile)
    if lead_peak is not None:
        metrics.child(metrics.FORECAST_PEAK_LOAD, namespace, name).set(lead_peak.load)
    peak = forecast_peak(fc, now, now + timedelta(days=1), spec.quantile)
    if peak is not None:
        per_unit = peak.load * (spec.per / spec.step)
        replicas = policy.clamp(policy.replicas_for(peak.load))
        out.status["nextPeak"] = {
            "at": now_iso(peak.at),
            "requests": round(per_unit),
            "replicas": replicas,
            "summary": peak_summary(peak.at, now, replicas),
        }
    whole = float(max(fc.upper.max() if spec.quantile == "upper" else fc.yhat.max(), 0.0))
    return policy.clamp(policy.replicas_for(whole))


def peak_summary(at: datetime, now: datetime, replicas: int) -> str:
    """ "18:25 UTC (in 17h) 12 replicas": what `kubectl get psc` shows in its NEXT PEAK column."""
    ahead = max(timedelta(0), at - now)
    if ahead < timedelta(minutes=1):
        when = "now"
    elif ahead < timedelta(hours=1):
        when = f"in {int(ahead.total_seconds() // 60)}m"
    else:
        when = f"in {int(ahead.total_seconds() // 3600)}h"
    return f"{at:%H:%M} UTC ({when}) {replicas} replica{'s' if replicas != 1 else ''}"


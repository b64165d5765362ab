"""One reconcile tick of one PredictiveScaler: history → forecast (cached) → plan → actuate → status.

Kopf-free so it can be driven by the handlers, the tests and the fleet benchmark alike. Blocking work (SQL,
API calls) runs in threads; fits run in a process pool and are polled, never awaited on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine

from prescaler import db, forecasting, history, metrics
from prescaler.actuation import Actuator, HpaState, TargetNotFound, TargetState
from prescaler.clock import Clock
from prescaler.durations import format_duration
from prescaler.errors import DataUnavailable, InputError
from prescaler.forecasting import FitResult, Forecast
from prescaler.planning import Decision, Recommendation, forecast_peak, plan
from prescaler.spec import ScalerSpec, TargetRef, parse_spec

log = logging.getLogger("prescaler.reconcile")

CONDITION_TYPES = ("Ready", "DataAvailable", "ForecastReady", "ScalingActive")


@dataclass
class CachedForecast:
    forecast: Forecast
    generated_at: datetime
    model: str
    smape: float | None
    key: str
    reason: str = ""
    fit_seconds: float | None = None


@dataclass
class PendingFit:
    future: Future[FitResult]
    submitted_real: float
    origin: datetime
    key: str


@dataclass
class ScalerState:
    """Per-object memory between ticks (kept in kopf's memo; rebuilt after a restart)."""

    recommendations: tuple[Recommendation, ...] = ()
    last_tick: datetime | None = None
    last_generation: int | None = None
    forecast: CachedForecast | None = None
    store_checked_key: str | None = None
    pending: PendingFit | None = None
    started: bool = False
    interval: timedelta | None = None  # of last_generation, so a skipped wake-up does not parse the spec
    decided: bool = False
    series: str = ""  # spec.series.service, stored with each forecast for the dashboard's traffic panels
    model_label: str | None = None  # the model series exported in prescaler_model_info


@dataclass(frozen=True)
class Cond:
    status: str
    reason: str
    message: str


@dataclass
class Outcome:
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    decision: Decision | None = None


@dataclass
class Services:
    engine: Engine
    actuator: Actuator
    pool: forecasting.FitPool
    clock: Clock
    sources: Mapping[str, history.TrafficSource]
    fit_timeout_s: float = 120.0
    max_concurrent: int = 8


# Reads a target from an informer-style cache; None means it does not exist. Without one, each tick GETs it.
TargetLookup = Callable[[str, TargetRef], TargetState | None]
# Fits shared by scalers with the same forecast inputs are kept this long (real seconds) after they finish.
SHARED_FIT_TTL_S = 900.0


class _Gate:
    """At most `slots` reconciles run at once, each start to finish; scalers that never decided go first.

    Without it every due scaler starts at once and their blocking steps interleave in the thread pool, so
    after a restart no decision lands until the whole fleet has done every step.
    """

    def __init__(self, slots: int) -> None:
        self.free = max(1, slots)
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, urgent: bool) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (0 if urgent else 1, next(self._order), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            fut = heapq.heappop(self._waiters)[2]
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


def _now_iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    old: list[Mapping[str, Any]] | None, new: Mapping[str, Cond], generation: int, now: datetime
) -> tuple[list[dict[str, Any]], list[tuple[str, Cond]]]:
    """metav1.Conditions with lastTransitionTime kept unless the status changed; returns the changes."""
    previous = {c.get("type"): c for c in (old or [])}
    merged: list[dict[str, Any]] = []
    changed: list[tuple[str, Cond]] = []
    for ctype in CONDITION_TYPES:
        cond = new.get(ctype)
        prev = previous.get(ctype)
        if cond is None:
            if prev is not None:
                merged.append(dict(prev))
            continue
        transition = prev.get("lastTransitionTime") if prev and prev.get("status") == cond.status else None
        if prev is None or prev.get("status") != cond.status or prev.get("reason") != cond.reason:
            changed.append((ctype, cond))
        merged.append({
            "type": ctype,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message[:1024],
            "observedGeneration": generation,
            "lastTransitionTime": transition or _now_iso(now),
        })
    return merged, changed


class Reconciler:
    def __init__(self, services: Services) -> None:
        self.s = services
        self._gate = _Gate(services.max_concurrent)
        # Scalers whose forecasts have the same inputs (forecast key) and origin share one fit.
        self._fits: dict[tuple[str, datetime], tuple[FitResult, float]] = {}
        self._inflight: dict[tuple[str, datetime], Future[FitResult]] = {}

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
        now = self.s.clock.now()
        meta = body.get("metadata", {})
        generation = int(meta.get("generation") or 0)
        spec_changed = generation != state.last_generation
        interval = state.interval if not spec_changed and state.interval is not None else self._interval(body)
        if not spec_changed and state.last_tick is not None and now - state.last_tick < interval:
            await self._poll_fit(namespace, name, state, None)
            return None
        # The cadence counts from when the tick was due, so waiting for a slot does not push the next one.
        state.last_tick = now
        state.last_generation = generation
        state.interval = interval
        await self._gate.acquire(urgent=not state.decided)
        try:
            now = self.s.clock.now()
            started = time.perf_counter()
            try:
                outcome = await self._tick(namespace, name, body, state, hpas, rival_owner, now, generation,
                                           targets)
            finally:
                metrics.RECONCILE_DURATION.labels(namespace, name).observe(time.perf_counter() - started)
        finally:
            self._gate.release()
        state.decided = True
        old = (body.get("status") or {}).get("conditions")
        conds = outcome.status.pop("_conditions", {})
        merged, changed = merge_conditions(old, conds, generation, now)
        outcome.status["conditions"] = merged
        outcome.status["observedGeneration"] = generation
        for ctype, cond in changed:
            kind = "Normal" if cond.status == "True" else "Warning"
            outcome.events.append((kind, cond.reason, f"{ctype}={cond.status}: {cond.message}"))
        for c in merged:
            for status in ("True", "False", "Unknown"):
                metrics.CONDITION.labels(namespace, name, c["type"], status).set(1 if c["status"] == status else 0)
        return outcome

    def _interval(self, body: Mapping[str, Any]) -> timedelta:
        try:
            return parse_spec(body.get("spec") or {}).interval
        except InputError:
            return timedelta(minutes=1)

    async def _tick(
        self,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        state: ScalerState,
        hpas: list[HpaState],
        rival_owner: str | None,
        now: datetime,
        generation: int,
        targets: TargetLookup | None,
    ) -> Outcome:
        out = Outcome()
        conds: dict[str, Cond] = {}
        out.status["_conditions"] = conds
        out.status["lastDecisionTime"] = _now_iso(now)

        def fail(reason: str, message: str, kind: str, scaling: str = "False") -> Outcome:
            conds["Ready"] = Cond("False", reason, message)
            conds.setdefault("ScalingActive", Cond(scaling, reason, message))
            metrics.ERRORS.labels(namespace, name, kind).inc()
            out.status["reason"] = message
            return out

        try:
            spec = parse_spec(body.get("spec") or {})
        except InputError as exc:
            return fail("InvalidSpec", str(exc), "InvalidSpec")
        if spec.source not in self.s.sources:
            return fail("UnknownSource", f"spec.series.source {spec.source!r} is not configured by the "
                        f"administrator (known: {', '.join(sorted(self.s.sources))})", "InvalidSpec")
        if spec.mode == "Paused":
            conds["Ready"] = Cond("True", "Paused", "mode is Paused: nothing is computed or changed")
            conds["ScalingActive"] = Cond("False", "Paused", "mode is Paused")
            return out
        if rival_owner is not None:
            return fail("ConflictingScaler", f"{spec.target.kind} {spec.target.name} is already managed by "
                        f"PredictiveScaler {rival_owner}; this one stands down", "ConflictingScaler")
        if spec.actuation == "Replicas" and hpas:
            return fail("HPAConflict", f"HorizontalPodAutoscaler {hpas[0].name} also scales {spec.target.kind} "
                        f"{spec.target.name}; use actuation: HPAMinReplicas to work with it", "HPAConflict")
        if spec.actuation == "HPAMinReplicas" and not hpas:
            return fail("HPANotFound", f"actuation HPAMinReplicas needs a HorizontalPodAutoscaler targeting "
                        f"{spec.target.kind} {spec.target.name}; none found", "HPANotFound")

        target: TargetState | None = None
        try:
            if targets is not None:
                target = targets(namespace, spec.target)
                if target is None:
                    raise TargetNotFound(f"{spec.target.kind} {namespace}/{spec.target.name} not found")
            else:
                target = await asyncio.to_thread(self.s.actuator.read_target, namespace, spec.target)
        except TargetNotFound as exc:
            conds["ScalingActive"] = Cond("False", "TargetNotFound", str(exc))
            metrics.ERRORS.labels(namespace, name, "TargetNotFound").inc()

        source = self.s.sources[spec.source]
        observed, data_error = await self._observe(source, spec, now)
        if data_error is not None:
            conds["DataAvailable"] = Cond("False", "DataUnavailable", data_error)
            metrics.ERRORS.labels(namespace, name, "DataUnavailable").inc()
        elif observed is None:
            conds["DataAvailable"] = Cond("False", "NoRecentData",
                                          f"no traffic for series {spec.service!r} in the last "
                                          f"{format_duration(2 * spec.step)}")
        else:
            conds["DataAvailable"] = Cond("True", "DataFresh", f"observed {observed:,.0f} requests per "
                                          f"{format_duration(spec.step)} for {spec.service!r}")
        if observed is not None:
            metrics.OBSERVED_LOAD.labels(namespace, name).set(observed)

        key = spec.forecast_key()
        state.series = spec.service
        await self._ensure_forecast(namespace, name, spec, state, source, now, key, data_error is None, conds)
        cached = state.forecast if state.forecast is not None and state.forecast.key == key else None
        self._forecast_status(out, namespace, name, spec, state, cached, now)

        if target is None:
            conds["Ready"] = Cond("False", "TargetNotFound", conds["ScalingActive"].message)
            return out

        hpa = hpas[0] if spec.actuation == "HPAMinReplicas" else None
        current = hpa.min_replicas if hpa is not None else target.spec_replicas
        if not state.started:
            # After a (re)start, scale-down waits one stabilisation window: no flap on a cold memory.
            state.recommendations = (Recommendation(now, current),)
            state.started = True
        decision = plan(
            spec.policy(),
            now=now,
            current_replicas=current,
            forecast=cached.forecast if cached else None,
            forecast_generated_at=cached.generated_at if cached else None,
            observed_load=observed,
            recent=state.recommendations,
        )
        if data_error is not None and decision.desired < current:
            decision = _hold(decision, current, "scale-down held: traffic data unavailable")
        state.recommendations = decision.recommendations
        out.decision = decision

        desired = decision.desired
        if hpa is not None and desired > hpa.max_replicas:
            desired = hpa.max_replicas
        applied = False
        if spec.mode == "Auto" and desired != current:
            try:
                if hpa is not None:
                    await asyncio.to_thread(self.s.actuator.set_hpa_min, namespace, hpa.name, desired)
                else:
                    await asyncio.to_thread(self.s.actuator.scale, namespace, spec.target, desired)
                applied = True
            except TargetNotFound as exc:
                return fail("TargetNotFound", str(exc), "TargetNotFound")
        if applied:
            direction = "up" if desired > current else "down"
            metrics.SCALE_ACTIONS.labels(namespace, name, direction).inc()
            what = f"HPA {hpa.name} minReplicas" if hpa is not None else f"{spec.target.kind} {spec.target.name}"
            out.events.append(("Normal", "ScaledUp" if direction == "up" else "ScaledDown",
                               f"{what} {current} → {desired}: {decision.reason}"))
            out.status["lastScaleTime"] = _now_iso(now)

        if data_error is None:
            try:
                await asyncio.to_thread(
                    db.record_decision, self.s.engine, namespace=namespace, name=name,
                    target_kind=spec.target.kind, target_name=spec.target.name, decision=decision,
                    decided_at=now, applied=applied,
                )
            except DataUnavailable as exc:
                log.warning("could not record decision for %s/%s: %s", namespace, name, exc)

        tick_s = spec.interval.total_seconds()
        ready = target.ready_replicas if hpa is None else max(target.ready_replicas, 0)
        metrics.DESIRED_REPLICAS.labels(namespace, name).set(desired)
        metrics.CURRENT_REPLICAS.labels(namespace, name).set(desired if applied else current)
        metrics.READY_REPLICAS.labels(namespace, name).set(ready)
        metrics.REPLICA_SECONDS.labels(namespace, name).inc(desired * tick_s)
        under = metrics.UNDERPROVISIONED_SECONDS.labels(namespace, name)  # exported at 0 from the first tick
        if observed is not None and observed > ready * spec.capacity_per_step:
            under.inc(tick_s)
        static_peak = out.status.pop("_static_peak", None)
        if static_peak is not None:
            metrics.STATIC_PEAK_REPLICAS.labels(namespace, name).set(static_peak)
            metrics.STATIC_REPLICA_SECONDS.labels(namespace, name).inc(static_peak * tick_s)

        out.status.update({
            "currentReplicas": desired if applied else current,
            "readyReplicas": ready,
            "desiredReplicas": desired,
            "reason": decision.reason,
        })
        if spec.mode == "ForecastOnly":
            conds["ScalingActive"] = Cond("False", "ForecastOnly", "mode is ForecastOnly: replicas are "
                                          "computed and reported, never changed")
        elif decision.stale:
            conds["ScalingActive"] = Cond("False", "FallbackActive", decision.reason)
        else:
            conds["ScalingActive"] = Cond("True", "Scaling", decision.reason)
        if decision.stale:
            conds["Ready"] = Cond("False", "FallbackActive", decision.reason)
        else:
            conds["Ready"] = Cond("True", "Ready", decision.reason)
        return out

    async def _observe(
        self, source: history.TrafficSource, spec: ScalerSpec, now: datetime
    ) -> tuple[float | None, str | None]:
        """The last complete bucket's load (planner units), or the reason the data is unavailable."""
        step = spec.step
        end = _floor(now, step)
        try:
            series = await asyncio.to_thread(history.read_history, self.s.engine, source, spec.service,
                                             end - 2 * step, end, step)
        except DataUnavailable as exc:
            return None, str(exc)
        values = series.dropna()
        if values.empty:
            return None, None
        return float(values.iloc[-1]), None

    async def _ensure_forecast(
        self,
        namespace: str,
        name: str,
        spec: ScalerSpec,
        state: ScalerState,
        source: history.TrafficSource,
        now: datetime,
        key: str,
        data_ok: bool,
        conds: dict[str, Cond],
    ) -> None:
        scaler_key = f"{namespace}/{name}"
        if (state.forecast is None or state.forecast.key != key) and state.store_checked_key != key and data_ok:
            # A restart reuses the stored forecast instead of refitting the fleet.
            try:
                stored = await asyncio.to_thread(db.load_latest_forecast, self.s.engine, scaler_key, key)
                state.store_checked_key = key
            except DataUnavailable:
                stored = None
            if stored is not None:
                state.forecast = CachedForecast(stored.forecast, stored.generated_at, stored.model, stored.smape,
                                                key, reason="reused from the forecasts table")
        await self._poll_fit(namespace, name, state, conds)
        cached = state.forecast if state.forecast is not None and state.forecast.key == key else None
        due = cached is None or now - cached.generated_at >= spec.refresh_interval
        if due and data_ok and state.pending is None:
            await self._refit(namespace, name, spec, state, source, now, key, cached, conds)
        cached = state.forecast if state.forecast is not None and state.forecast.key == key else None
        if cached is not None and "ForecastReady" not in conds:
            age = now - cached.generated_at
            if age > spec.stale_after:
                conds["ForecastReady"] = Cond("False", "ForecastStale", f"forecast is {format_duration(age)} old")
            else:
                smape = f", backtest sMAPE {cached.smape:.1f}%" if cached.smape is not None else ""
                conds["ForecastReady"] = Cond("True", "ForecastFresh",
                                              f"{cached.model} forecast from {_now_iso(cached.generated_at)}"
                                              f"{smape}; {cached.reason}")
        elif cached is None and "ForecastReady" not in conds:
            conds["ForecastReady"] = Cond("False", "NoForecast", "no forecast yet")

    async def _refit(
        self,
        namespace: str,
        name: str,
        spec: ScalerSpec,
        state: ScalerState,
        source: history.TrafficSource,
        now: datetime,
        key: str,
        cached: CachedForecast | None,
        conds: dict[str, Cond],
    ) -> None:
        """A new forecast: shared with scalers of the same inputs and origin, else fitted (baseline first)."""
        scaler_key = f"{namespace}/{name}"
        origin = _floor(now, spec.step)
        shared = self._fits.get((key, origin))
        if shared is not None:
            # Same forecast key and origin means the same history, model and horizon: the same forecast.
            self._accept(namespace, name, state, shared[0], origin, key, fitted_here=False)
            await self._persist(state, scaler_key)
            return
        needs_model = spec.model != "seasonal-naive" or cached is not None
        quick_key = ("baseline:" + key, origin)
        quick_shared = self._fits.get(quick_key) if cached is None else None
        running = self._inflight.get((key, origin)) if needs_model else None
        if running is not None and running.cancelled():
            running = None
        if (cached is not None or quick_shared is not None) and running is not None:
            if quick_shared is not None:
                self._accept(namespace, name, state, quick_shared[0], origin, key, fitted_here=False)
            state.pending = PendingFit(running, time.monotonic(), origin, key)
            return
        try:
            hist = await asyncio.to_thread(history.read_history, self.s.engine, source, spec.service,
                                           origin - spec.history, origin, spec.step)
            events = await asyncio.to_thread(history.read_events, self.s.engine, spec.service,
                                             now - spec.history, now + spec.horizon)
        except DataUnavailable as exc:
            conds["ForecastReady"] = Cond("False", "DataUnavailable", str(exc))
            return
        if cached is None:
            # First decision fast: a baseline now, the configured model when the pool delivers.
            try:
                if quick_shared is not None:
                    self._accept(namespace, name, state, quick_shared[0], origin, key, fitted_here=False)
                else:
                    quick = await asyncio.to_thread(forecasting.fit_predict, "seasonal-naive", hist, spec.horizon)
                    self._accept(namespace, name, state, quick, origin, key)
                    self._remember_fit(quick_key, quick)
                    if not needs_model:
                        self._remember_fit((key, origin), quick)
            except forecasting.ForecastUnavailable as exc:
                conds["ForecastReady"] = Cond("False", "InsufficientData", str(exc))
                metrics.ERRORS.labels(namespace, name, "InsufficientData").inc()
                return
        if needs_model:
            if running is None:
                running = self.s.pool.submit(spec.model, hist, spec.horizon, events=events)
                self._inflight[(key, origin)] = running
            state.pending = PendingFit(running, time.monotonic(), origin, key)
        else:
            await self._persist(state, scaler_key)

    async def _poll_fit(
        self, namespace: str, name: str, state: ScalerState, conds: dict[str, Cond] | None
    ) -> None:
        p = state.pending
        if p is None:
            return
        if not p.future.done():
            if time.monotonic() - p.submitted_real > self.s.fit_timeout_s:
                p.future.cancel()
                self._forget_inflight(p)
                state.pending = None
                metrics.ERRORS.labels(namespace, name, "FitTimeout").inc()
                if conds is not None:
                    conds["ForecastReady"] = Cond("False", "FitTimeout",
                                                  f"fit exceeded {self.s.fit_timeout_s:.0f}s; keeping the "
                                                  "previous forecast")
            return
        state.pending = None
        if p.future.cancelled():  # a scaler sharing this fit gave up on it: the next due tick fits again
            self._forget_inflight(p)
            return
        try:
            result = p.future.result()
        except Exception as exc:  # a failed fit must not kill the tick: report and keep the old forecast
            self._forget_inflight(p)
            metrics.ERRORS.labels(namespace, name, "FitFailed").inc()
            if conds is not None:
                conds["ForecastReady"] = Cond("False", "FitFailed", f"{type(exc).__name__}: {exc}")
            return
        fitted_here = self._forget_inflight(p)
        if fitted_here:
            self._remember_fit((p.key, p.origin), result)
        self._accept(namespace, name, state, result, p.origin, p.key, fitted_here=fitted_here)
        await self._persist(state, f"{namespace}/{name}")

    def _forget_inflight(self, p: PendingFit) -> bool:
        """Drop a finished or abandoned shared fit; True for the first scaler that does so."""
        if self._inflight.get((p.key, p.origin)) is p.future:
            del self._inflight[(p.key, p.origin)]
            return True
        return False

    def _remember_fit(self, fit_key: tuple[str, datetime], result: FitResult) -> None:
        now = time.monotonic()
        for k in [k for k, (_, at) in self._fits.items() if now - at > SHARED_FIT_TTL_S]:
            del self._fits[k]
        self._fits[fit_key] = (result, now)

    def _accept(
        self,
        namespace: str,
        name: str,
        state: ScalerState,
        result: FitResult,
        origin: datetime,
        key: str,
        *,
        fitted_here: bool = True,
    ) -> None:
        state.forecast = CachedForecast(result.forecast, origin, result.model, result.smape, key, result.reason,
                                        result.fit_seconds)
        if fitted_here:  # a shared result was fitted (and timed) once, by the scaler that submitted it
            metrics.FIT_DURATION.labels(namespace, name, result.model).observe(result.fit_seconds)
        metrics.LAST_REFRESH.labels(namespace, name).set(time.time())
        state.store_checked_key = key

    async def _persist(self, state: ScalerState, scaler_key: str) -> None:
        cached = state.forecast
        if cached is None:
            return
        try:
            await asyncio.to_thread(
                db.save_forecast, self.s.engine, scaler_key=scaler_key, series=state.series or scaler_key,
                forecast=cached.forecast, generated_at=cached.generated_at, smape=cached.smape,
                fit_seconds=cached.fit_seconds, params_hash=cached.key, note=cached.reason,
            )
            await asyncio.to_thread(db.prune_forecasts, self.s.engine, scaler_key, 3)
        except DataUnavailable as exc:
            log.warning("could not store forecast for %s: %s", scaler_key, exc)

    def _forecast_status(
        self,
        out: Outcome,
        namespace: str,
        name: str,
        spec: ScalerSpec,
        state: ScalerState,
        cached: CachedForecast | None,
        now: datetime,
    ) -> None:
        if cached is None:
            return
        fc = cached.forecast
        out.status["model"] = cached.model
        out.status["forecastGeneratedAt"] = _now_iso(cached.generated_at)
        if cached.smape is not None and math.isfinite(cached.smape):
            out.status["forecastError"] = f"{cached.smape:.1f}%"
            metrics.FORECAST_ERROR.labels(namespace, name).set(cached.smape)
        metrics.FORECAST_AGE.labels(namespace, name).set(max(0.0, (now - cached.generated_at).total_seconds()))
        if state.model_label != cached.model:
            if state.model_label is not None:  # auto may switch models: only the one in use reads 1
                with contextlib.suppress(KeyError):
                    metrics.MODEL_INFO.remove(namespace, name, state.model_label)
            state.model_label = cached.model
        metrics.MODEL_INFO.labels(namespace, name, cached.model).set(1)
        idx = int(fc.ds.searchsorted(pd.Timestamp(now), side="right")) - 1
        if 0 <= idx < len(fc.ds):
            for band, arr in (("yhat", fc.yhat), ("lower", fc.lower), ("upper", fc.upper)):
                metrics.FORECAST_LOAD.labels(namespace, name, band).set(float(arr[idx]))
        policy = spec.policy()
        lead_peak = forecast_peak(fc, now, now + spec.lead_time + spec.interval, spec.quantile)
        if lead_peak is not None:
            metrics.FORECAST_PEAK_LOAD.labels(namespace, name).set(lead_peak.load)
        peak = forecast_peak(fc, now, now + timedelta(days=1), spec.quantile)
        if peak is not None:
            per_unit = peak.load * (spec.per / spec.step)
            out.status["nextPeak"] = {
                "at": _now_iso(peak.at),
                "requests": round(per_unit),
                "replicas": policy.clamp(policy.replicas_for(peak.load)),
            }
        whole = float(max(fc.upper.max() if spec.quantile == "upper" else fc.yhat.max(), 0.0))
        out.status["_static_peak"] = policy.clamp(policy.replicas_for(whole))


def _floor(t: datetime, step: timedelta) -> datetime:
    ts = pd.Timestamp(t)
    return ts.floor(pd.Timedelta(step)).to_pydatetime()


def _hold(decision: Decision, current: int, why: str) -> Decision:
    from dataclasses import replace

    return replace(decision, desired=current, direction="none", reason=f"{decision.reason}; {why}")

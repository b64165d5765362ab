"""One reconcile tick of one PredictiveScaler: history → forecast (cached) → plan → actuate → status.

Kopf-free so it can be driven by the handlers, the tests and the fleet benchmark alike. Blocking work (SQL,
API calls) runs in threads; fits run in a process pool and are polled, never awaited on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
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
from prescaler.spec import ScalerSpec, parse_spec

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

    async def tick(
        self,
        *,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        state: ScalerState,
        hpas: list[HpaState],
        rival_owner: str | None,
    ) -> Outcome | None:
        """Run one reconcile if the spec's interval has passed (or the spec changed); None when skipped."""
        now = self.s.clock.now()
        meta = body.get("metadata", {})
        generation = int(meta.get("generation") or 0)
        spec_changed = generation != state.last_generation
        interval = self._interval(body)
        if not spec_changed and state.last_tick is not None and now - state.last_tick < interval:
            await self._poll_fit(namespace, name, state, None)
            return None
        started = time.perf_counter()
        state.last_tick = now
        state.last_generation = generation
        try:
            outcome = await self._tick(namespace, name, body, state, hpas, rival_owner, now, generation)
        finally:
            metrics.RECONCILE_DURATION.labels(namespace, name).observe(time.perf_counter() - started)
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
        await self._ensure_forecast(namespace, name, spec, state, source, now, key, data_error is None, conds)
        cached = state.forecast if state.forecast is not None and state.forecast.key == key else None
        self._forecast_status(out, namespace, name, spec, cached, now)

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
        if observed is not None and observed > ready * spec.capacity_per_step:
            metrics.UNDERPROVISIONED_SECONDS.labels(namespace, name).inc(tick_s)
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
            try:
                hist = await asyncio.to_thread(history.read_history, self.s.engine, source, spec.service,
                                               _floor(now, spec.step) - spec.history, _floor(now, spec.step),
                                               spec.step)
                events = await asyncio.to_thread(history.read_events, self.s.engine, spec.service,
                                                 now - spec.history, now + spec.horizon)
            except DataUnavailable as exc:
                conds["ForecastReady"] = Cond("False", "DataUnavailable", str(exc))
                return
            if cached is None:
                # First decision fast: a baseline now, the configured model when the pool delivers.
                try:
                    quick = await asyncio.to_thread(forecasting.fit_predict, "seasonal-naive", hist, spec.horizon)
                    self._accept(namespace, name, state, quick, _floor(now, spec.step), key)
                except forecasting.ForecastUnavailable as exc:
                    conds["ForecastReady"] = Cond("False", "InsufficientData", str(exc))
                    metrics.ERRORS.labels(namespace, name, "InsufficientData").inc()
                    return
            if spec.model != "seasonal-naive" or cached is not None:
                fut = self.s.pool.submit(spec.model, hist, spec.horizon, events=events)
                state.pending = PendingFit(fut, time.monotonic(), _floor(now, spec.step), key)
            else:
                await self._persist(state, scaler_key)
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

    async def _poll_fit(
        self, namespace: str, name: str, state: ScalerState, conds: dict[str, Cond] | None
    ) -> None:
        p = state.pending
        if p is None:
            return
        if not p.future.done():
            if time.monotonic() - p.submitted_real > self.s.fit_timeout_s:
                p.future.cancel()
                state.pending = None
                metrics.ERRORS.labels(namespace, name, "FitTimeout").inc()
                if conds is not None:
                    conds["ForecastReady"] = Cond("False", "FitTimeout",
                                                  f"fit exceeded {self.s.fit_timeout_s:.0f}s; keeping the "
                                                  "previous forecast")
            return
        state.pending = None
        try:
            result = p.future.result()
        except Exception as exc:  # a failed fit must not kill the tick: report and keep the old forecast
            metrics.ERRORS.labels(namespace, name, "FitFailed").inc()
            if conds is not None:
                conds["ForecastReady"] = Cond("False", "FitFailed", f"{type(exc).__name__}: {exc}")
            return
        self._accept(namespace, name, state, result, p.origin, p.key)
        await self._persist(state, f"{namespace}/{name}")

    def _accept(
        self,
        namespace: str,
        name: str,
        state: ScalerState,
        result: FitResult,
        origin: datetime,
        key: str,
    ) -> None:
        state.forecast = CachedForecast(result.forecast, origin, result.model, result.smape, key, result.reason)
        metrics.FIT_DURATION.labels(namespace, name, result.model).observe(result.fit_seconds)
        metrics.LAST_REFRESH.labels(namespace, name).set(time.time())
        state.store_checked_key = key

    async def _persist(self, state: ScalerState, scaler_key: str) -> None:
        cached = state.forecast
        if cached is None:
            return
        try:
            await asyncio.to_thread(
                db.save_forecast, self.s.engine, scaler_key=scaler_key, series=scaler_key,
                forecast=cached.forecast, generated_at=cached.generated_at, smape=cached.smape,
                fit_seconds=None, params_hash=cached.key, note=cached.reason,
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

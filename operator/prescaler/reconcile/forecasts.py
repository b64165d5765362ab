"""Forecast keeping for the reconciler: reuse a stored forecast, fit when due, share fits, persist.

Scalers whose forecasts have the same inputs (forecast key) and origin share one fit. A scaler's first
decision does not wait for the pool: a seasonal-naive baseline serves until the configured model arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy.engine import Engine

from prescaler import db, forecasting, history, metrics
from prescaler.durations import format_duration
from prescaler.errors import DataUnavailable
from prescaler.forecasting import FitResult, Forecast
from prescaler.planning import Recommendation
from prescaler.reconcile.conditions import Cond, now_iso
from prescaler.spec import ScalerSpec

log = logging.getLogger("prescaler.reconcile")

# Fits shared by scalers with the same forecast inputs are kept this long (real seconds) after they finish.
SHARED_FIT_TTL_S = 900.0

FitKey = tuple[str, datetime]  # (forecast key, origin)


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

    def forecast_for(self, key: str) -> CachedForecast | None:
        """The cached forecast when it was made for these inputs."""
        return self.forecast if self.forecast is not None and self.forecast.key == key else None


@dataclass(frozen=True)
class ScalerRef:
    """One PredictiveScaler as the forecast keeping sees it: who it is and its memory."""

    namespace: str
    name: str
    state: ScalerState = field(compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def error(self, kind: str) -> None:
        metrics.ERRORS.labels(self.namespace, self.name, kind).inc()


def floor_time(t: datetime, step: timedelta) -> datetime:
    return pd.Timestamp(t).floor(pd.Timedelta(step)).to_pydatetime()


class ForecastKeeper:
    def __init__(self, engine: Engine, pool: forecasting.FitPool, fit_timeout_s: float) -> None:
        self.engine = engine
        self.pool = pool
        self.fit_timeout_s = fit_timeout_s
        self._fits: dict[FitKey, tuple[FitResult, float]] = {}
        self._inflight: dict[FitKey, Future[FitResult]] = {}

    async def ensure(self, ref: ScalerRef, spec: ScalerSpec, source: history.TrafficSource, now: datetime,
                     data_ok: bool, conds: dict[str, Cond]) -> CachedForecast | None:
        """The forecast to plan with (refitting when due), and the ForecastReady condition."""
        state, key = ref.state, spec.forecast_key()
        if state.forecast_for(key) is None and state.store_checked_key != key and data_ok:
            # A restart reuses the stored forecast instead of refitting the fleet.
            try:
                stored = await asyncio.to_thread(db.load_latest_forecast, self.engine, ref.key, key)
                state.store_checked_key = key
            except DataUnavailable:
                stored = None
            if stored is not None:
                state.forecast = CachedForecast(stored.forecast, stored.generated_at, stored.model, stored.smape,
                                                key, reason="reused from the forecasts table")
        await self.poll(ref, conds)
        cached = state.forecast_for(key)
        due = cached is None or now - cached.generated_at >= spec.refresh_interval
        if due and data_ok and state.pending is None:
            await self._refit(ref, spec, source, now, cached, conds)
        cached = state.forecast_for(key)
        if "ForecastReady" not in conds:
            conds["ForecastReady"] = _readiness(cached, spec, now)
        return cached

    async def _refit(self, ref: ScalerRef, spec: ScalerSpec, source: history.TrafficSource, now: datetime,
                     cached: CachedForecast | None, conds: dict[str, Cond]) -> None:
        """A new forecast: shared with scalers of the same inputs and origin, else fitted (baseline first)."""
        state, key = ref.state, spec.forecast_key()
        origin = floor_time(now, spec.step)
        shared = self._fits.get((key, origin))
        if shared is not None:
            # Same forecast key and origin means the same history, model and horizon: the same forecast.
            self._accept(ref, shared[0], origin, key, fitted_here=False)
            await self._persist(ref)
            return
        needs_model = spec.model != "seasonal-naive" or cached is not None
        quick_key = ("baseline:" + key, origin)
        quick_shared = self._fits.get(quick_key) if cached is None else None
        running = self._inflight.get((key, origin)) if needs_model else None
        if running is not None and running.cancelled():
            running = None
        if (cached is not None or quick_shared is not None) and running is not None:
            if quick_shared is not None:
                self._accept(ref, quick_shared[0], origin, key, fitted_here=False)
            state.pending = PendingFit(running, time.monotonic(), origin, key)
            return
        try:
            hist = await asyncio.to_thread(history.read_history, self.engine, source, spec.service,
                                           origin - spec.history, origin, spec.step)
            events = await asyncio.to_thread(history.read_events, self.engine, spec.service,
                                             now - spec.history, now + spec.horizon)
        except DataUnavailable as exc:
            conds["ForecastReady"] = Cond("False", "DataUnavailable", str(exc))
            return
        if cached is None:
            # First decision fast: a baseline now, the configured model when the pool delivers.
            try:
                if quick_shared is not None:
                    self._accept(ref, quick_shared[0], origin, key, fitted_here=False)
                else:
                    quick = await asyncio.to_thread(forecasting.fit_predict, "seasonal-naive", hist, spec.horizon)
                    self._accept(ref, quick, origin, key)
                    self._remember(quick_key, quick)
                    if not needs_model:
                        self._remember((key, origin), quick)
            except forecasting.ForecastUnavailable as exc:
                conds["ForecastReady"] = Cond("False", "InsufficientData", str(exc))
                ref.error("InsufficientData")
                return
        if needs_model:
            if running is None:
                running = self.pool.submit(spec.model, hist, spec.horizon, events=events)
                self._inflight[(key, origin)] = running
            state.pending = PendingFit(running, time.monotonic(), origin, key)
        else:
            await self._persist(ref)

    async def poll(self, ref: ScalerRef, conds: dict[str, Cond] | None) -> None:
        """Take a finished fit; give up on one that outlived the limit (the pool kills its process)."""
        state = ref.state
        p = state.pending
        if p is None:
            return
        if not p.future.done():
            if time.monotonic() - p.submitted_real > self.fit_timeout_s:
                p.future.cancel()
                self._forget_inflight(p)
                state.pending = None
                self._timed_out(ref, conds)
            return
        state.pending = None
        if p.future.cancelled():  # a scaler sharing this fit gave up on it: the next due tick fits again
            self._forget_inflight(p)
            return
        try:
            result = p.future.result()
        except forecasting.FitTimeout:
            self._forget_inflight(p)
            self._timed_out(ref, conds)
            return
        except Exception as exc:  # a failed fit must not kill the tick: report and keep the old forecast
            self._forget_inflight(p)
            ref.error("FitFailed")
            if conds is not None:
                conds["ForecastReady"] = Cond("False", "FitFailed", f"{type(exc).__name__}: {exc}")
            return
        fitted_here = self._forget_inflight(p)
        if fitted_here:
            self._remember((p.key, p.origin), result)
        self._accept(ref, result, p.origin, p.key, fitted_here=fitted_here)
        await self._persist(ref)

    def _timed_out(self, ref: ScalerRef, conds: dict[str, Cond] | None) -> None:
        ref.error("FitTimeout")
        if conds is not None:
            conds["ForecastReady"] = Cond("False", "FitTimeout", f"fit exceeded {self.fit_timeout_s:.0f}s; "
                                          "keeping the previous forecast")

    def _forget_inflight(self, p: PendingFit) -> bool:
        """Drop a finished or abandoned shared fit; True for the first scaler that does so."""
        if self._inflight.get((p.key, p.origin)) is p.future:
            del self._inflight[(p.key, p.origin)]
            return True
        return False

    def _remember(self, fit_key: FitKey, result: FitResult) -> None:
        now = time.monotonic()
        for k in [k for k, (_, at) in self._fits.items() if now - at > SHARED_FIT_TTL_S]:
            del self._fits[k]
        self._fits[fit_key] = (result, now)

    def _accept(self, ref: ScalerRef, result: FitResult, origin: datetime, key: str, *,
                fitted_here: bool = True) -> None:
        ref.state.forecast = CachedForecast(result.forecast, origin, result.model, result.smape, key,
                                            result.reason, result.fit_seconds)
        if fitted_here:  # a shared result was fitted (and timed) once, by the scaler that submitted it
            metrics.FIT_DURATION.labels(ref.namespace, ref.name, result.model).observe(result.fit_seconds)
        metrics.LAST_REFRESH.labels(ref.namespace, ref.name).set(time.time())
        ref.state.store_checked_key = key

    async def _persist(self, ref: ScalerRef) -> None:
        cached = ref.state.forecast
        if cached is None:
            return
        try:
            await asyncio.to_thread(
                db.save_forecast, self.engine, scaler_key=ref.key, series=ref.state.series or ref.key,
                forecast=cached.forecast, generated_at=cached.generated_at, smape=cached.smape,
                fit_seconds=cached.fit_seconds, params_hash=cached.key, note=cached.reason,
            )
            await asyncio.to_thread(db.prune_forecasts, self.engine, ref.key, 3)
        except DataUnavailable as exc:
            log.warning("could not store forecast for %s: %s", ref.key, exc)


def _readiness(cached: CachedForecast | None, spec: ScalerSpec, now: datetime) -> Cond:
    if cached is None:
        return Cond("False", "NoForecast", "no forecast yet")
    age = now - cached.generated_at
    if age > spec.stale_after:
        return Cond("False", "ForecastStale", f"forecast is {format_duration(age)} old")
    smape = f", backtest sMAPE {cached.smape:.1f}%" if cached.smape is not None else ""
    return Cond("True", "ForecastFresh",
                f"{cached.model} forecast from {now_iso(cached.generated_at)}{smape}; {cached.reason}")

"""Forecast keeping for the reconciler: reuse a stored forecast, refit on the key's slot, share fits, persist.

Scalers whose forecasts have the same inputs (forecast key) share one fit. A scaler's first decision does not
wait for the pool: a seasonal-naive baseline serves until the configured model arrives. A scaler that has a
forecast never waits for a refit either: the decision uses the forecast it has, and the refit's history read,
the fit and the write of its result happen after it, off the decision's path.

At fleet scale three things keep a start-up cheap: the newest stored forecast of every scaler is read in one
query (`prefetch`), refits of a fleet whose forecasts were all made at once are spread over the refresh
interval by a per-key slot (`refit_due_at`), and `auto` refits re-fit the model its last full selection chose,
re-running the whole selection only every `AUTO_RESELECT_AFTER`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Coroutine
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

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
# A prefetched table of stored forecasts serves the scalers' first ticks after a start; later the scalers it did
# not see (created since) read their own row.
PREFETCH_TTL_S = 600.0
# Background work (refit history reads, forecast writes) at once: decisions keep the rest of the database.
BACKGROUND_SLOTS = 2
# `auto` re-runs its whole backtest selection this often per forecast key; refits in between fit the model it
# chose (a fraction of the CPU: one model instead of every candidate on every backtest fold).
AUTO_RESELECT_AFTER = timedelta(hours=6)


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
    """A fit under way for one forecast key and origin, shared by every scaler waiting for it.

    `future` settles when the fit is done; `pool_future` is the pool's own once the history was read and the fit
    submitted (None before).
    """

    future: Future[FitResult]
    submitted_real: float
    origin: datetime
    key: str
    pool_future: Future[FitResult] | None = None
    running_since: float | None = None  # real time the keeper first saw the pool run it
    selection: str | None = None  # the model an `auto` refit keeps instead of selecting again


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
    window_in_force: str | None = None  # the scheduled window the last decision was in, for its Events
    window_shown: bool = False  # status.nextWindow was set, so clearing it takes a patch
    shadow: int | None = None  # while the plan only reports: its own last count, which it goes on from
    reactive: int | None = None  # the scorecard's reactive estimate: the count an HPA would have now
    reactive_recent: tuple[Recommendation, ...] = ()  # and its scale-down stabilisation window

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
        metrics.child(metrics.ERRORS, self.namespace, self.name, kind).inc()


@dataclass
class SharedFit:
    origin: datetime
    result: FitResult
    at: float  # time.monotonic() when it was remembered


@dataclass
class Selection:
    """What `auto`'s last full selection chose for a forecast key, and when."""

    model: str
    origin: datetime


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def floor_time(t: datetime, step: timedelta) -> datetime:
    """`t` down to the `step` grid counted from the Unix epoch (as pandas' floor; a tenth of its cost)."""
    since = t - (_EPOCH if t.tzinfo is not None else _EPOCH.replace(tzinfo=None))
    return t - since % step if step > timedelta(0) else t


def _unit(digest: bytes) -> float:
    return int.from_bytes(digest, "big") / 2 ** (8 * len(digest))


def refit_due_at(key: str, generated_at: datetime, refresh: timedelta, step: timedelta, spread: float) -> datetime:
    """When a forecast made for `key` at `generated_at` is to be refit: by `refresh` after it, at the latest.

    Each forecast key has a slot in the refresh period, a phase drawn from a hash of the key. The refit is due
    at the last slot before `generated_at + refresh` when that is at most `spread × refresh` earlier, else
    that much earlier than `generated_at + refresh` (less by a second per-key draw), so each refit moves a
    forecast toward its slot. A fleet whose forecasts were all made at once (a cold start, a restore) spreads
    its refits over `spread × refresh` at once and over the whole period within 1/spread refits; once on its
    slot a key refits every `refresh`. Deterministic per key, so scalers that share a fit stay together, and
    never later than `generated_at + refresh`, nor earlier than `(1 - spread) × refresh` after it.
    """
    period = refresh.total_seconds()
    nominal = generated_at + refresh
    if period <= 0 or spread <= 0:
        return nominal
    digest = hashlib.sha256(key.encode()).digest()
    step_s = step.total_seconds()
    phase = _unit(digest[:8]) * period
    if 0 < step_s < period:
        phase = math.floor(phase / step_s) * step_s  # slots on the step grid: a fit's origin is on it too
    end = nominal.timestamp()
    slot = phase + math.floor((end - phase) / period) * period
    earliest = end - min(spread, 1.0) * period * _unit(digest[8:16])
    return datetime.fromtimestamp(max(slot, earliest), tz=UTC)


class ForecastKeeper:
    def __init__(self, engine: Engine, pool: forecasting.FitPool, fit_timeout_s: float, *,
                 refit_spread: float = 0.5) -> None:
        self.engine = engine
        self.pool = pool
        self.fit_timeout_s = fit_timeout_s
        self.refit_spread = refit_spread
        self._fits: dict[str, SharedFit] = {}  # newest configured-model fit per forecast key
        self._baselines: dict[str, SharedFit] = {}  # newest first-decision baseline per forecast key
        self._inflight: dict[str, PendingFit] = {}
        self._selections: dict[str, Selection] = {}
        self._stored: dict[str, db.StoredForecast] | None = None
        self._stored_at = 0.0
        self._prefetch: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None
        # While set, a due refit waits and the stored forecast serves (the start-up pass: a fit process and its
        # 14-day read would take a core from the fleet's first decisions; docs/benchmarks.md measures it).
        self.hold_refits = False

    # --- stored forecasts -----------------------------------------------------------------------------------

    def start_prefetch(self) -> None:
        """Start reading the newest stored forecast of every scaler in one query (once per start; on failure
        each scaler reads its own)."""
        if self._prefetch is None or self._prefetch.get_loop() is not asyncio.get_running_loop():
            self._prefetch = asyncio.get_running_loop().create_task(self._read_all())

    async def prefetch(self) -> None:
        self.start_prefetch()
        assert self._prefetch is not None
        await asyncio.shield(self._prefetch)

    async def _read_all(self) -> None:
        started = time.perf_counter()
        try:
            stored = await asyncio.to_thread(db.load_latest_forecasts, self.engine)
        except DataUnavailable as exc:
            log.warning("could not prefetch stored forecasts (each scaler reads its own): %s", exc)
            return
        self._stored, self._stored_at = stored, time.monotonic()
        log.info("prefetched the stored forecasts of %d scalers in %.2fs", len(stored), time.perf_counter() - started)

    async def _load_stored(self, scaler_key: str, key: str) -> db.StoredForecast | None:
        if self._prefetch is None:
            await self.prefetch()
        elif not self._prefetch.done():
            await asyncio.shield(self._prefetch)
        table = self._stored
        if table is not None and time.monotonic() - self._stored_at < PREFETCH_TTL_S:
            found = table.pop(scaler_key, None)
            if found is None:
                return None  # none stored when the operator started
            if found.params_hash == key:
                return found
            # Its newest forecast has other inputs (the spec changed while the operator was away): an older one may
            # still match.
        return await asyncio.to_thread(db.load_latest_forecast, self.engine, scaler_key, key)

    # --- the forecast to plan with ---------------------------------------------------------------------------

    async def ensure(self, ref: ScalerRef, spec: ScalerSpec, source: history.TrafficSource, now: datetime,
                     data_ok: bool, conds: dict[str, Cond]) -> CachedForecast | None:
        """The forecast to plan with, and the ForecastReady condition. A due refit is started, not awaited."""
        state, key = ref.state, spec.forecast_key()
        if state.forecast_for(key) is None and state.store_checked_key != key and data_ok:
            # A restart reuses the stored forecast instead of refitting the fleet.
            try:
                stored = await self._load_stored(ref.key, key)
                state.store_checked_key = key
            except DataUnavailable:
                stored = None
            if stored is not None:
                state.forecast = CachedForecast(stored.forecast, stored.generated_at, stored.model, stored.smape,
                                                key, reason="reused from the forecasts table",
                                                fit_seconds=stored.fit_seconds)
        self.poll(ref, conds)
        cached = state.forecast_for(key)
        if data_ok and state.pending is None and self.due(cached, spec, key, now) \
                and not (cached is not None and self.hold_refits):
            if cached is None:
                await self._first(ref, spec, source, now, conds)
            else:
                self._refit(ref, spec, source, now, cached)
        cached = state.forecast_for(key)
        if "ForecastReady" not in conds:
            conds["ForecastReady"] = _readiness(cached, spec, now)
        return cached

    def due(self, cached: CachedForecast | None, spec: ScalerSpec, key: str, now: datetime) -> bool:
        """No forecast, or its key's refit slot has come (never twice for one origin)."""
        if cached is None:
            return True
        return self._stale_origin(cached.generated_at, spec, key, now)

    def _stale_origin(self, origin: datetime, spec: ScalerSpec, key: str, now: datetime) -> bool:
        if origin >= floor_time(now, spec.step):
            return False
        return now >= refit_due_at(key, origin, spec.refresh_interval, spec.step, self.refit_spread)

    def _refit(self, ref: ScalerRef, spec: ScalerSpec, source: history.TrafficSource, now: datetime,
               cached: CachedForecast) -> None:
        """Take a newer shared fit, join the key's fit under way, or start one in the background."""
        state, key = ref.state, spec.forecast_key()
        shared = self._fits.get(key)
        if shared is not None and shared.origin > cached.generated_at \
                and not self._stale_origin(shared.origin, spec, key, now):
            self._accept(ref, shared.result, shared.origin, key, fitted_here=False)
            self._persist_later(ref)
            return
        running = self._inflight.get(key)
        if running is not None and running.origin > cached.generated_at:
            state.pending = running
            return
        origin = floor_time(now, spec.step)
        keep = self._kept_model(spec, key, cached, origin)
        pending = PendingFit(Future(), time.monotonic(), origin, key, selection=keep)
        self._inflight[key] = pending
        state.pending = pending
        self._background(self._fit_in_background(pending, spec, source, now, keep or spec.model))

    def _kept_model(self, spec: ScalerSpec, key: str, cached: CachedForecast, origin: datetime) -> str | None:
        """The model an `auto` refit fits instead of selecting again, while its selection is recent."""
        chosen = self._selections.get(key)
        if spec.model != "auto" or chosen is None or chosen.model != cached.model:
            return None
        if chosen.model not in forecasting.MODEL_NAMES or origin - chosen.origin >= AUTO_RESELECT_AFTER:
            return None
        return chosen.model

    async def _fit_in_background(self, pending: PendingFit, spec: ScalerSpec, source: history.TrafficSource,
                                 now: datetime, model: str) -> None:
        try:
            async with self._background_slot():
                hist, events = await self._inputs(spec, source, pending.origin, now)
        except asyncio.CancelledError:
            pending.future.cancel()
            raise
        except Exception as exc:  # DataUnavailable mostly: the scalers waiting for it report it
            _fail(pending.future, exc)
            return
        if not pending.future.cancelled():
            self._submit(pending, model, hist, spec.horizon, events)

    def _submit(self, pending: PendingFit, model: str, hist: pd.Series, horizon: timedelta,
                events: pd.DataFrame | None) -> None:
        try:
            submitted = self.pool.submit(model, hist, horizon, events=events)
        except Exception as exc:  # a pool that was shut down: report it like a failed fit
            _fail(pending.future, exc)
            return
        pending.pool_future = submitted
        submitted.add_done_callback(lambda done: _settle_from(pending.future, done))

    async def _inputs(self, spec: ScalerSpec, source: history.TrafficSource, origin: datetime,
                      now: datetime) -> tuple[pd.Series, pd.DataFrame]:
        hist = await asyncio.to_thread(history.read_history, self.engine, source, spec.service,
                                       origin - spec.history, origin, spec.step)
        events = await asyncio.to_thread(history.read_events, self.engine, spec.service,
                                         now - spec.history, now + spec.horizon)
        return hist, events

    async def _first(self, ref: ScalerRef, spec: ScalerSpec, source: history.TrafficSource, now: datetime,
                     conds: dict[str, Cond]) -> None:
        """A scaler without any forecast: a shared one when fresh, else a baseline now and the model later."""
        state, key = ref.state, spec.forecast_key()
        shared = self._fits.get(key)
        if shared is not None and not self._stale_origin(shared.origin, spec, key, now):
            # Same forecast key means the same history, model and horizon: the same forecast.
            self._accept(ref, shared.result, shared.origin, key, fitted_here=False)
            self._persist_later(ref)
            return
        origin = floor_time(now, spec.step)
        needs_model = spec.model != "seasonal-naive"
        running = self._inflight.get(key) if needs_model else None
        baseline = self._baselines.get(key)
        if baseline is not None and self._stale_origin(baseline.origin, spec, key, now):
            baseline = None
        if baseline is not None and (running is not None or not needs_model):
            self._accept(ref, baseline.result, baseline.origin, key, fitted_here=False)
            if running is not None:
                state.pending = running
            else:
                self._persist_later(ref)
            return
        try:
            hist, events = await self._inputs(spec, source, origin, now)
        except DataUnavailable as exc:
            conds["ForecastReady"] = Cond("False", "DataUnavailable", str(exc))
            return
        # First decision fast: a baseline now, the configured model when the pool delivers.
        try:
            if baseline is not None:
                self._accept(ref, baseline.result, baseline.origin, key, fitted_here=False)
            else:
                quick = await asyncio.to_thread(forecasting.fit_predict, "seasonal-naive", hist, spec.horizon)
                self._accept(ref, quick, origin, key)
                self._remember(self._baselines, key, origin, quick)
                if not needs_model:
                    self._remember(self._fits, key, origin, quick)
        except forecasting.ForecastUnavailable as exc:
            conds["ForecastReady"] = Cond("False", "InsufficientData", str(exc))
            ref.error("InsufficientData")
            return
        if not needs_model:
            self._persist_later(ref)
            return
        if running is None:
            running = PendingFit(Future(), time.monotonic(), origin, key)
            self._inflight[key] = running
            self._submit(running, spec.model, hist, spec.horizon, events)
        state.pending = running

    def poll(self, ref: ScalerRef, conds: dict[str, Cond] | None) -> None:
        """Take a finished fit; give up on one the pool ran past its limit (the pool kills the process itself)."""
        state = ref.state
        p = state.pending
        if p is None:
            return
        if not p.future.done():
            if p.pool_future is not None and p.pool_future.running() and p.running_since is None:
                p.running_since = time.monotonic()
            # Only a fit that runs counts: fits queued behind others are not late. The pool enforces the limit;
            # this is the net for a pool that stopped answering.
            if p.running_since is not None and time.monotonic() - p.running_since > 2 * self.fit_timeout_s + 10:
                self._abandon(p)
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
        except DataUnavailable as exc:
            self._forget_inflight(p)
            if conds is not None:
                conds["ForecastReady"] = Cond("False", "DataUnavailable", str(exc))
            return
        except Exception as exc:  # a failed fit must not kill the tick: report and keep the old forecast
            self._forget_inflight(p)
            ref.error("FitFailed")
            if conds is not None:
                conds["ForecastReady"] = Cond("False", "FitFailed", f"{type(exc).__name__}: {exc}")
            return
        fitted_here = self._forget_inflight(p)
        if fitted_here:
            if p.selection is not None:
                result.reason = (f"auto: refit {p.selection}, the model its backtest selection chose "
                                 f"(selection again after {format_duration(AUTO_RESELECT_AFTER)}): {result.reason}")
            elif result.model != "seasonal-naive":  # also the fallback of a failed fit: select again next time
                self._selections[p.key] = Selection(result.model, p.origin)
            self._remember(self._fits, p.key, p.origin, result)
        self._accept(ref, result, p.origin, p.key, fitted_here=fitted_here)
        self._persist_later(ref)

    def _abandon(self, p: PendingFit) -> None:
        p.future.cancel()
        if p.pool_future is not None:
            p.pool_future.cancel()
        self._forget_inflight(p)

    def _timed_out(self, ref: ScalerRef, conds: dict[str, Cond] | None) -> None:
        ref.error("FitTimeout")
        if conds is not None:
            conds["ForecastReady"] = Cond("False", "FitTimeout", f"fit exceeded {self.fit_timeout_s:.0f}s; "
                                          "keeping the previous forecast")

    def _forget_inflight(self, p: PendingFit) -> bool:
        """Drop a finished or abandoned shared fit; True for the first scaler that does so."""
        if self._inflight.get(p.key) is p:
            del self._inflight[p.key]
            return True
        return False

    @staticmethod
    def _remember(table: dict[str, SharedFit], key: str, origin: datetime, result: FitResult) -> None:
        now = time.monotonic()
        for k in [k for k, shared in table.items() if now - shared.at > SHARED_FIT_TTL_S]:
            del table[k]
        known = table.get(key)
        if known is None or known.origin <= origin:
            table[key] = SharedFit(origin, result, now)

    def _accept(self, ref: ScalerRef, result: FitResult, origin: datetime, key: str, *,
                fitted_here: bool = True) -> None:
        ref.state.forecast = CachedForecast(result.forecast, origin, result.model, result.smape, key,
                                            result.reason, result.fit_seconds)
        if fitted_here:  # a shared result was fitted (and timed) once, by the scaler that submitted it
            metrics.child(metrics.FIT_DURATION, ref.namespace, ref.name, result.model).observe(result.fit_seconds)
        metrics.child(metrics.LAST_REFRESH, ref.namespace, ref.name).set(time.time())
        ref.state.store_checked_key = key

    # --- work after the decision -------------------------------------------------------------------------------

    def _persist_later(self, ref: ScalerRef) -> None:
        cached = ref.state.forecast
        if cached is not None:
            self._background(self._persist(ref.key, ref.state.series or ref.key, cached))

    async def _persist(self, scaler_key: str, series: str, cached: CachedForecast) -> None:
        try:
            async with self._background_slot():
                await asyncio.to_thread(self._save, scaler_key, series, cached)
        except DataUnavailable as exc:
            log.warning("could not store forecast for %s: %s", scaler_key, exc)

    def _save(self, scaler_key: str, series: str, cached: CachedForecast) -> None:
        db.save_forecast(self.engine, scaler_key=scaler_key, series=series, forecast=cached.forecast,
                         generated_at=cached.generated_at, smape=cached.smape, fit_seconds=cached.fit_seconds,
                         params_hash=cached.key, note=cached.reason)
        db.prune_forecasts(self.engine, scaler_key, 3)

    def _background_slot(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots_loop is not loop:
            self._slots, self._slots_loop = asyncio.Semaphore(BACKGROUND_SLOTS), loop
        return self._slots

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background forecast work failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for the background work started so far (history reads for refits, forecast writes)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _settle_from(target: Future[FitResult], done: Future[FitResult]) -> None:
    """Pass the pool's outcome on to the fit's own future (runs in the pool's thread)."""
    if done.cancelled():
        target.cancel()
    elif (exc := done.exception()) is not None:
        _fail(target, exc)
    else:
        with contextlib.suppress(InvalidStateError):  # a waiter gave up on it meanwhile
            target.set_result(done.result())


def _fail(target: Future[FitResult], exc: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):
        target.set_exception(exc)


def _readiness(cached: CachedForecast | None, spec: ScalerSpec, now: datetime) -> Cond:
    if cached is None:
        return Cond("False", "NoForecast", "no forecast yet")
    age = now - cached.generated_at
    if age > spec.stale_after:
        return Cond("False", "ForecastStale", f"forecast is {format_duration(age)} old")
    smape = f", backtest sMAPE {cached.smape:.1f}%" if cached.smape is not None else ""
    return Cond("True", "ForecastFresh",
                f"{cached.model} forecast from {now_iso(cached.generated_at)}{smape}; {cached.reason}")

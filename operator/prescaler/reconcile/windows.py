"""Scheduled windows for the reconciler: each scaler's calendar events and cron schedules, the rise learned
from its own past windows, and the window in force at a tick.

Learning reads the scaler's history (at its forecast step, over its forecast history) and its events, once
per refresh interval, in the background: a decision never waits for it. Until a scaler's first read is done,
its windows are sized as outside them (floors of schedules with `minReplicas` hold from the first tick: they
need no history). The planner applies what `in_force` returns (`prescaler.planning`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from prescaler import history
from prescaler.durations import format_duration
from prescaler.errors import DataUnavailable
from prescaler.schedules import windows_between
from prescaler.sizing.samples import CALIBRATION_WINDOW
from prescaler.spec import ScalerSpec
from prescaler.windows import Regime, Window, WindowAsk, learn_regimes, size_windows, windows_from_events

log = logging.getLogger("prescaler.reconcile")

# The longest calendar event the keeper looks back for: one that opened this long ago may still be running.
_EVENT_LOOKBACK = timedelta(days=2)
# How long a failed read rests before the next try.
RETRY_AFTER = timedelta(minutes=5)


@dataclass(frozen=True)
class WindowInForce:
    """What the scheduled windows ask of one decision, and the window to show."""

    rise: float  # factor on the observed load (1: none)
    min_replicas: int  # hard floor (0: none)
    window: Window | None  # in force at the decision, else the next to open
    in_force: bool
    sizing: str  # how `window` is sized, for the reason and the status

    @property
    def ask(self) -> WindowAsk | None:
        """What the planner's window step gets (None outside every window)."""
        if not self.in_force or self.window is None:
            return None
        return WindowAsk(self.rise, self.min_replicas, f"{self.window.name} ({self.sizing})")

    def status(self, now: datetime) -> dict[str, str]:
        """`status.nextWindow`."""
        assert self.window is not None
        return {"name": self.window.name, "kind": self.window.kind,
                "start": self.window.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "end": self.window.end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "sizing": self.sizing[:256], "summary": self.summary(now)[:128]}

    def summary(self, now: datetime) -> str:
        if self.window is None:
            return ""
        w = self.window
        if self.in_force:
            left = format_duration(_whole_minutes(w.end.to_pydatetime() - now))
            return f"{w.kind} until {w.end:%H:%M} UTC ({left} left)"
        ahead = format_duration(_whole_minutes(w.start.to_pydatetime() - now))
        return f"{w.kind} {w.start:%H:%M} UTC (in {ahead})"


NO_WINDOW = WindowInForce(1.0, 0, None, False, "")


def _whole_minutes(td: timedelta) -> timedelta:
    return timedelta(minutes=max(1, int(td.total_seconds() // 60)))


@dataclass
class _Learned:
    events: list[Window] = field(default_factory=list)
    regimes: dict[str, Regime] = field(default_factory=dict)
    learned_at: datetime | None = None
    spec_key: tuple[object, ...] = ()
    task: asyncio.Task[None] | None = None
    failed_at: datetime | None = None


def _spec_key(spec: ScalerSpec) -> tuple[object, ...]:
    return (spec.source, spec.service, spec.step, spec.history, spec.lead_time, spec.schedules)


class WindowKeeper:
    """Per scaler: the learned regimes and the calendar, refreshed every refresh interval off the tick."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._learned: dict[str, _Learned] = {}

    def forget(self, key: str) -> None:
        state = self._learned.pop(key, None)
        if state is not None and state.task is not None:
            state.task.cancel()

    def in_force(self, key: str, spec: ScalerSpec, source: history.TrafficSource, now: datetime) -> WindowInForce:
        """The windows' ask of a decision at `now`; starts a background refresh when one is due."""
        state = self._learned.setdefault(key, _Learned())
        due = (state.learned_at is None or state.spec_key != _spec_key(spec)
               or now - state.learned_at >= spec.refresh_interval)
        # After a failed read, wait before the next: an unreachable database is not asked again every tick.
        resting = state.failed_at is not None and now - state.failed_at < min(RETRY_AFTER, spec.refresh_interval)
        if due and not resting and (state.task is None or state.task.done()):
            state.task = asyncio.get_running_loop().create_task(self._refresh(state, spec, source, now))
        schedule_windows = windows_between(spec.schedules, now - _EVENT_LOOKBACK, now + timedelta(days=8))
        return decide(now, spec, [*state.events, *schedule_windows], state.regimes)

    def rise_at(self, key: str, spec: ScalerSpec, now: datetime) -> Callable[[np.ndarray], np.ndarray] | None:
        """The windows' factor on the observed load at any decision times (int64 ns) of the scaler's record, for
        the calibration; None when it has no learned regime."""
        state = self._learned.get(key)
        if state is None or not state.regimes:
            return None
        step_ns = int(spec.step.total_seconds() * 1e9)
        lead_steps = int(np.ceil(spec.lead_time / spec.step - 1e-9))
        regimes, events = state.regimes, state.events

        # Called only when the record is calibrated (once per forecast), not at every tick: the windows are
        # expanded then.
        def rise(decided_ns: np.ndarray) -> np.ndarray:
            windows = [*events, *windows_between(spec.schedules, now - CALIBRATION_WINDOW - _EVENT_LOOKBACK, now)]
            times = pd.DatetimeIndex(np.asarray(decided_ns, dtype=np.int64), tz="UTC")
            return size_windows(times, step_ns, lead_steps, windows, regimes).rise

        return rise

    async def _refresh(self, state: _Learned, spec: ScalerSpec, source: history.TrafficSource,
                       now: datetime) -> None:
        try:
            events = await asyncio.to_thread(history.read_events, self.engine, spec.service,
                                             now - max(spec.history, CALIBRATION_WINDOW) - _EVENT_LOOKBACK,
                                             now + spec.horizon)
            calendar = windows_from_events(events)
            past = windows_between(spec.schedules, now - spec.history, now)
            regimes: dict[str, Regime] = {}
            if calendar or past:
                hist = await asyncio.to_thread(history.read_history, self.engine, source, spec.service,
                                               now - spec.history, now, spec.step)
                lead_steps = int(np.ceil(spec.lead_time / spec.step - 1e-9))
                regimes = learn_regimes(hist.to_numpy(dtype=float), pd.DatetimeIndex(hist.index),
                                        [*calendar, *past], now=pd.Timestamp(now), lead_steps=lead_steps)
        except DataUnavailable as exc:
            log.warning("scheduled windows of %s not refreshed: %s", spec.service, exc)
            state.failed_at = now
            return
        state.failed_at = None
        # Past events too: the calibration sizes its record's decisions inside them as the planner did.
        state.events = calendar
        state.regimes = regimes
        state.learned_at = now
        state.spec_key = _spec_key(spec)

    async def drain(self) -> None:
        tasks = [s.task for s in self._learned.values() if s.task is not None and not s.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def decide(now: datetime, spec: ScalerSpec, windows: list[Window], regimes: dict[str, Regime]) -> WindowInForce:
    """The rise and floor for a decision at `now`, on the scaler's step grid; pure."""
    if not windows:
        return NO_WINDOW
    step_ns = int(spec.step.total_seconds() * 1e9)
    lead_steps = int(np.ceil(spec.lead_time / spec.step - 1e-9))
    t = pd.DatetimeIndex([pd.Timestamp(now)])
    sized = size_windows(t, step_ns, lead_steps, windows, regimes)
    reach_ns = lead_steps * step_ns + step_ns
    now_ns = pd.Timestamp(now).value
    reached = [w for w in windows if w.start.value < now_ns + reach_ns and w.end.value > now_ns]
    upcoming = sorted((w for w in windows if w.end.value > now_ns), key=lambda w: w.start)
    shown = reached[0] if reached else (upcoming[0] if upcoming else None)
    return WindowInForce(
        rise=float(sized.rise[0]),
        min_replicas=int(sized.min_replicas[0]),
        window=shown,
        in_force=bool(reached),
        sizing="" if shown is None else describe(shown, regimes),
    )


def describe(window: Window, regimes: dict[str, Regime]) -> str:
    if window.min_replicas is not None:
        return f"{window.kind}: at least {window.min_replicas} replicas"
    regime = regimes.get(window.kind)
    if regime is None:
        return f"{window.kind}: not learned yet; sized as outside"
    return regime.describe()

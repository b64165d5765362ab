"""Scheduled windows as a sizing regime: capacity that is Ready when a known window opens.

A window is a span known in advance: a calendar event (by kind) or a cron schedule (by name). Traffic inside
such windows often comes in bursts that a level forecast cannot place and a reactive floor sees too late: the
first minutes of a broadcast, its half-time. What does repeat is how far load rises, within one lead time,
over what was observed when the decision had to be made. That rise is learned here, per kind, from the kind's
past windows in the scaler's own history, and the planner sizes the reactive floor by it inside upcoming
windows. The forecast still moves the level (the event lift in `prescaler.events`); this moves capacity,
independent of how well the forecast did, so a poor in-window forecast record cannot throw it away.

The rise is the ratio, for a decision at `t` that covers [t, t + lead] (the planner's own look-ahead), of the
highest load in that span to the load observed when deciding (the last complete bucket before `t`). Each
decision falls in one phase of its window:
- `start`: the observation was made before the window opened: the jump into the window;
- `within` 1..WITHIN_BINS: equal parts of the window, by where the capacity becomes Ready (bursts inside).
Per past window and phase the largest ratio counts; per kind and phase, the RISE_QUANTILE of those across the
kind's windows is the factor. Fewer than MIN_WINDOWS past windows of a kind: its stated lift if it has one;
else the rise of all kinds' past windows together, when they are enough (a calendar whose every event has a
kind of its own still knows how its windows open); else no factor (today's sizing). The reason says which.

Pure: data, windows and `now` in; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Parts of a window after its opening, each with its own factor: a broadcast's half-time is not its end.
WITHIN_BINS = 4
PHASES = 1 + WITHIN_BINS  # index 0: the opening (`start`)
# Past windows of a kind before its rise is trusted over the stated lift.
MIN_WINDOWS = 3
# Across a kind's past windows, the rise to cover: bursts vary several-fold from one window to the next, and a
# median would leave every other one short.
RISE_QUANTILE = 0.9
# A rise beyond this says more about a near-zero observation (a night, an outage) than about the window.
MAX_RISE = 20.0


@dataclass(frozen=True)
class Window:
    """One scheduled span: [start, end) in UTC, the kind whose past windows size it."""

    kind: str
    name: str
    start: pd.Timestamp
    end: pd.Timestamp
    lift_percent: float | None = None  # stated lift, used while too few windows of the kind are past
    min_replicas: int | None = None  # a hard floor for the window (a schedule's `minReplicas`)


@dataclass(frozen=True)
class Regime:
    """How load rises in one kind's windows: a factor on the observed load per phase."""

    kind: str
    rise: tuple[float, ...]  # PHASES factors, each ≥ 1
    windows: int  # past windows learned from
    source: str  # "learned" | "stated" | "pooled" | "too few windows"

    def describe(self) -> str:
        if self.source == "learned":
            inner = "/".join(f"{r:.1f}" for r in self.rise[1:])
            return (f"{self.kind}: rise ×{self.rise[0]:.1f} at the opening, ×{inner} within "
                    f"(from {self.windows} past windows)")
        if self.source == "pooled":
            return (f"{self.kind}: {self.windows} past windows of its own, sized by the rise of all kinds' "
                    f"windows together (×{self.rise[0]:.1f} at the opening)")
        if self.source == "stated":
            return (f"{self.kind}: stated lift ×{self.rise[0]:.2f} ({self.windows} past windows, "
                    f"{MIN_WINDOWS} needed to learn)")
        return f"{self.kind}: {self.windows} past windows, {MIN_WINDOWS} needed to learn; sized as outside"


def windows_from_events(events: pd.DataFrame | None) -> list[Window]:
    """Calendar events (name, kind, start, end[, lift_percent]; UTC) as windows."""
    from prescaler.events import normalise  # events imports the forecasters; keep this module light

    ev = normalise(events)
    return [
        Window(str(kind), str(name), pd.Timestamp(s), pd.Timestamp(e),
               None if lift is None or not math.isfinite(float(lift)) else float(lift))
        for name, kind, s, e, lift in zip(ev["name"], ev["kind"], ev["start"], ev["end"], ev["lift_percent"],
                                          strict=True)
    ]


def _utc_ns(ds: pd.DatetimeIndex) -> np.ndarray:
    idx = ds.tz_localize("UTC") if ds.tz is None else ds.tz_convert("UTC")
    return np.asarray(idx.as_unit("ns").asi8)


def _phases(t_ns: np.ndarray, step_ns: int, lead_ns: int, w: Window) -> np.ndarray:
    """The phase of each decision time for window `w` (-1: the decision does not reach the window).

    A decision at t covers [t, t + lead + step); it reaches `w` when that span overlaps it. Its observation is
    the bucket before t.
    """
    start, end = w.start.value, w.end.value
    reach = (t_ns < end) & (t_ns + lead_ns + step_ns > start)
    opening = (t_ns - step_ns) < start
    ready = np.clip(t_ns + lead_ns, start, end - 1)
    frac = (ready - start) / max(1, end - start)
    within = 1 + np.clip(np.floor(frac * WITHIN_BINS), 0, WITHIN_BINS - 1).astype(int)
    return np.where(reach, np.where(opening, 0, within), -1)


def rise_ratios(load: np.ndarray, lead_steps: int) -> np.ndarray:
    """For every bucket t: max(load[t .. t + lead_steps]) / load[t - 1] (NaN where either is unknown)."""
    n = len(load)
    ahead = np.full(n, np.nan)
    padded = np.concatenate([load, np.full(lead_steps, np.nan)])
    stack = np.vstack([padded[k : k + n] for k in range(lead_steps + 1)])
    with np.errstate(invalid="ignore"):
        complete = ~np.isnan(stack).any(axis=0)
        ahead[complete] = stack[:, complete].max(axis=0)
    observed = np.concatenate([[np.nan], load[:-1]]) if n else load
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(observed > 0, ahead / observed, np.nan)
    return np.clip(ratio, 1.0, MAX_RISE)


def learn_regimes(load: np.ndarray, ds: pd.DatetimeIndex, windows: Sequence[Window], *, now: pd.Timestamp,
                  lead_steps: int) -> dict[str, Regime]:
    """Per kind, the rise its past windows showed in `load` (per bucket of `ds`, NaN: missing) before `now`.

    Only decisions whose whole look-ahead ended by `now` count: a window still running teaches nothing yet.
    """
    if len(ds) < 2 or not windows:
        return {}
    t_ns = _utc_ns(ds)
    step_ns = int(np.median(np.diff(t_ns)))
    lead_ns = lead_steps * step_ns
    ratios = rise_ratios(np.asarray(load, dtype=float), lead_steps)
    known = t_ns + lead_ns + step_ns <= pd.Timestamp(now).value
    per_kind: dict[str, list[np.ndarray]] = {}
    stated: dict[str, float] = {}
    for w in windows:
        if w.lift_percent is not None:
            stated.setdefault(w.kind, w.lift_percent)
        if w.end.value + lead_ns > pd.Timestamp(now).value or w.end.value <= t_ns[0]:
            per_kind.setdefault(w.kind, [])
            continue
        lo = int(np.searchsorted(t_ns, w.start.value - lead_ns - step_ns))
        hi = int(np.searchsorted(t_ns, w.end.value))
        sl = slice(lo, hi)
        phase = _phases(t_ns[sl], step_ns, lead_ns, w)
        r = np.where(known[sl], ratios[sl], np.nan)
        row = np.full(PHASES, np.nan)
        for p in range(PHASES):
            sel = (phase == p) & ~np.isnan(r)
            if sel.any():
                row[p] = float(r[sel].max())
        if np.isnan(row).all():
            per_kind.setdefault(w.kind, [])
            continue
        per_kind.setdefault(w.kind, []).append(row)

    regimes: dict[str, Regime] = {}
    pooled = [row for rows in per_kind.values() for row in rows]
    for kind, rows in per_kind.items():
        if len(rows) >= MIN_WINDOWS:
            regimes[kind] = Regime(kind, _quantiles(rows), len(rows), "learned")
        elif kind in stated:
            factor = max(1.0, 1.0 + stated[kind] / 100.0)
            regimes[kind] = Regime(kind, (factor,) * PHASES, len(rows), "stated")
        elif len(pooled) >= MIN_WINDOWS:
            regimes[kind] = Regime(kind, _quantiles(pooled), len(rows), "pooled")
        else:
            regimes[kind] = Regime(kind, (1.0,) * PHASES, len(rows), "too few windows")
    return regimes


def _quantiles(rows: Sequence[np.ndarray]) -> tuple[float, ...]:
    """Per phase, the RISE_QUANTILE of the windows' largest rises."""
    table = np.vstack(rows)
    with np.errstate(invalid="ignore"):
        q = np.array([np.nanquantile(col, RISE_QUANTILE) if (~np.isnan(col)).any() else np.nan for col in table.T])
    # A part no past decision reached (a window shorter than its parts, or one whose first part lies within
    # the lead time) takes the largest of the other parts within; the opening stands alone.
    within = q[1:]
    within[np.isnan(within)] = np.nanmax(within) if (~np.isnan(within)).any() else 1.0
    q[0] = 1.0 if np.isnan(q[0]) else q[0]
    return tuple(np.clip(q, 1.0, MAX_RISE).tolist())

@dataclass(frozen=True)
class WindowAsk:
    """What the scheduled windows ask of one decision: the planner's window step (`prescaler.planning`)."""

    rise: float = 1.0  # factor on the observed load
    min_replicas: int = 0  # hard floor (0: none)
    note: str = ""  # the window and how it is sized, for the reason

    @property
    def asks(self) -> bool:
        return self.rise > 1.0 or self.min_replicas > 0


@dataclass(frozen=True)
class WindowSizing:
    """Per decision time: the factor on the observed load, and the hard replica floor (0: none)."""

    rise: np.ndarray
    min_replicas: np.ndarray
    active: tuple[str, ...] = ()  # names of the windows the decisions reach (for reasons)


def size_windows(times: pd.DatetimeIndex, step_steps_ns: int, lead_steps: int, windows: Iterable[Window],
                 regimes: dict[str, Regime]) -> WindowSizing:
    """The window factor and floor for decisions at `times` (a regular grid of `step_steps_ns`).

    Overlapping windows do not compound: the larger factor and floor win.
    """
    t_ns = _utc_ns(times)
    rise = np.ones(len(t_ns))
    floor = np.zeros(len(t_ns), dtype=np.int64)
    lead_ns = lead_steps * step_steps_ns
    names: list[str] = []
    for w in windows:
        phase = _phases(t_ns, step_steps_ns, lead_ns, w)
        reach = phase >= 0
        if not reach.any():
            continue
        names.append(w.name)
        regime = regimes.get(w.kind)
        if regime is not None:
            rise[reach] = np.maximum(rise[reach], np.asarray(regime.rise)[phase[reach]])
        if w.min_replicas is not None:
            floor[reach] = np.maximum(floor[reach], int(w.min_replicas))
    return WindowSizing(rise, floor, tuple(dict.fromkeys(names)))

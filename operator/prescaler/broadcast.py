"""The simulator's scheduled-broadcast workload: load that bursts at publicly scheduled times.

A streaming or second-screen service: a daily cycle, and on most days one to three broadcasts (matches,
shows) at times that move from day to day. Each broadcast lifts the load for its whole window, bursts
3–15× within its first minutes (everyone arrives at kick-off) and again around its middle (half-time), the
burst sizes varying from one broadcast to the next. The calendar carries only what a public schedule does:
name, kind, start and end — no lift.

The same arguments always give the same frames.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from prescaler.errors import InputError

# Requests per minute at the daily evening high, outside broadcasts.
BASE_RPM = 600.0
# Broadcast kinds: (name, duration in minutes, share of days with one, evening start hours to pick from).
KINDS: tuple[tuple[str, int, float, tuple[int, ...]], ...] = (
    ("match", 110, 0.55, (17, 18, 19, 20)),
    ("show", 60, 0.45, (19, 20, 21)),
)


def _daily(hour: np.ndarray) -> np.ndarray:
    """Relative load by hour: a quiet night, a day plateau, an evening high around 20:00."""
    evening = np.exp(-0.5 * ((hour - 20.0) / 2.5) ** 2)
    day = 1.0 / (1.0 + np.exp(-(hour - 8.0) * 1.2)) * (1.0 / (1.0 + np.exp((hour - 23.5) * 1.5)))
    return 0.12 + 0.45 * day + 0.5 * evening


def _burst(minutes: np.ndarray, at: float, rise: float, decay: float) -> np.ndarray:
    """A burst that peaks `at` minutes into the window: a fast rise, an exponential fade."""
    x = minutes - at
    return np.where(x < 0, np.exp(-0.5 * (np.maximum(x, -10 * rise) / rise) ** 2), np.exp(-np.maximum(x, 0) / decay))


def schedule(start: pd.Timestamp, days: int, rng: np.random.Generator) -> pd.DataFrame:
    """The broadcasts: per day and kind, maybe one, at an irregular quarter hour of the kind's evening."""
    rows: list[dict[str, object]] = []
    for day in range(days):
        midnight = start.normalize() + pd.Timedelta(days=day)
        taken: list[tuple[pd.Timestamp, pd.Timestamp]] = []
        for kind, minutes, share, hours in KINDS:
            if rng.random() >= share:
                continue
            at = midnight + pd.Timedelta(hours=int(rng.choice(hours)), minutes=15 * int(rng.integers(0, 4)))
            ends = at + pd.Timedelta(minutes=minutes)
            if any(at < e and ends > s for s, e in taken) or at < start:
                continue
            taken.append((at, ends))
            rows.append({"name": f"{kind} {at:%Y-%m-%d %H:%M}", "kind": kind, "start": at, "end": ends})
    frame = pd.DataFrame(rows, columns=["name", "kind", "start", "end"])
    return frame.sort_values("start").reset_index(drop=True)


def simulate_broadcast(*, start: datetime, days: int, seed: int) -> tuple[pd.Series, pd.DataFrame]:
    """(requests per minute, UTC index; the calendar: name, kind, start, end)."""
    if days < 1:
        raise InputError(f"days must be at least 1, got {days}")
    t0 = pd.Timestamp(start)
    t0 = t0.tz_localize(UTC) if t0.tzinfo is None else t0.tz_convert(UTC)
    rng = np.random.default_rng(seed)
    ts = pd.date_range(t0, periods=days * 1440, freq="1min")
    hour = ts.hour.to_numpy() + ts.minute.to_numpy() / 60.0
    weekly = np.where(ts.dayofweek.to_numpy() >= 5, 1.15, 1.0)
    level = BASE_RPM * _daily(hour) * weekly
    calendar = schedule(t0, days, rng)
    t_min = (ts.asi8 - t0.value) / 60e9
    lift = np.ones(len(ts))
    for s, e in zip(calendar["start"], calendar["end"], strict=True):
        a = (s.value - t0.value) / 60e9
        dur = (e.value - s.value) / 60e9
        m = t_min - a
        inside = (m >= 0) & (m < dur)
        plateau = rng.uniform(1.3, 2.2)
        kick = rng.uniform(3.0, 15.0)  # the opening burst, as a multiple of the level outside
        half = rng.uniform(3.0, 15.0) * 0.7
        kick_at = rng.uniform(1.0, 6.0)
        half_at = dur / 2 + rng.uniform(-8.0, 8.0)
        shape = (plateau + (kick - 1) * _burst(m, kick_at, 1.5, 4.0) + (half - 1) * _burst(m, half_at, 1.5, 3.0))
        # A trickle of early arrivals in the minutes before the start, so the opening is not a pure step.
        early = (m >= -10) & (m < 0)
        lift = np.where(inside, np.maximum(lift, shape), lift)
        lift = np.where(early, np.maximum(lift, 1.0 + 0.3 * (m + 10) / 10), lift)
    noise = rng.lognormal(0.0, 0.08, len(ts))
    y = np.round(level * lift * noise)
    return pd.Series(y, index=ts, name="requests"), calendar

"""The scheduled-window regime: what it learns from past windows and how it sizes upcoming ones."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from prescaler.broadcast import simulate_broadcast
from prescaler.windows import (
    MAX_RISE,
    MIN_WINDOWS,
    PHASES,
    Window,
    learn_regimes,
    rise_ratios,
    size_windows,
    windows_from_events,
)

T0 = pd.Timestamp("2026-03-02", tz="UTC")
STEP = pd.Timedelta(minutes=5)


def _grid(days: int) -> pd.DatetimeIndex:
    return pd.date_range(T0, periods=days * 288, freq=STEP)


def _daily_windows(days: int, *, hour: int = 20, minutes: int = 60, kind: str = "match") -> list[Window]:
    return [Window(kind, f"{kind} {d}", T0 + pd.Timedelta(days=d, hours=hour),
                   T0 + pd.Timedelta(days=d, hours=hour, minutes=minutes)) for d in range(days)]


def _load_with_bursts(ds: pd.DatetimeIndex, windows: list[Window], burst: float) -> np.ndarray:
    load = np.full(len(ds), 100.0)
    for w in windows:
        first = int(ds.searchsorted(w.start))
        load[first] = 100.0 * burst  # the opening bucket bursts
        load[first + 1 : int(ds.searchsorted(w.end))] = 150.0
    return load


def test_rise_ratio_is_the_lookahead_peak_over_the_last_observation() -> None:
    load = np.array([100.0, 100.0, 400.0, 100.0, 50.0])
    r = rise_ratios(load, lead_steps=1)
    assert np.isnan(r[0])  # nothing observed before the first bucket
    assert r[1] == 4.0  # observed 100, the next two buckets peak at 400
    assert r[2] == 4.0
    assert r[3] == 1.0  # a fall is no rise: clipped at 1
    assert np.isnan(r[4])  # the look-ahead runs past the data


def test_rise_is_capped_where_the_observation_is_near_zero() -> None:
    r = rise_ratios(np.array([0.001, 500.0, 500.0]), lead_steps=1)
    assert r[1] == MAX_RISE


def test_opening_burst_is_learned_from_past_windows_and_sizes_the_next_opening() -> None:
    ds = _grid(8)
    windows = _daily_windows(8)
    load = _load_with_bursts(ds, windows, burst=6.0)
    now = T0 + pd.Timedelta(days=7)
    regimes = learn_regimes(load, ds, windows, now=now, lead_steps=2)
    regime = regimes["match"]
    assert regime.source == "learned" and regime.windows == 7  # the eighth window is still ahead
    assert regime.rise[0] == 6.0  # the jump from 100 observed before the opening to the 600 burst
    assert all(r == 1.0 for r in regime.rise[1:])  # within: a flat 150, never above what was observed

    upcoming = windows[7]
    times = pd.date_range(upcoming.start - pd.Timedelta(minutes=30), upcoming.end + pd.Timedelta(minutes=30),
                          freq=STEP)
    sized = size_windows(times, STEP.value, 2, [upcoming], regimes)
    # Decisions from lead + one step before the opening reach it; before that, and after the end, nothing.
    reach = (times > upcoming.start - pd.Timedelta(minutes=15)) & (times < upcoming.end)
    assert np.all(sized.rise[~reach] == 1.0)
    assert np.all(sized.rise[reach] >= 1.0)
    assert sized.rise[times == upcoming.start - pd.Timedelta(minutes=10)][0] == 6.0
    assert sized.active == (upcoming.name,)


def test_too_few_windows_fall_back_to_the_stated_lift_or_to_nothing() -> None:
    ds = _grid(3)
    windows = _daily_windows(3)
    load = _load_with_bursts(ds, windows, burst=6.0)
    now = T0 + pd.Timedelta(days=2, hours=19)
    plain = learn_regimes(load, ds, windows, now=now, lead_steps=2)["match"]
    assert plain.windows == MIN_WINDOWS - 1 and plain.source == "too few windows"
    assert plain.rise == (1.0,) * PHASES
    assert "needed to learn" in plain.describe()
    stated = [Window(w.kind, w.name, w.start, w.end, lift_percent=50.0) for w in windows]
    lifted = learn_regimes(load, ds, stated, now=now, lead_steps=2)["match"]
    assert lifted.source == "stated" and lifted.rise == (1.5,) * PHASES


def test_nothing_after_now_is_learned() -> None:
    ds = _grid(8)
    windows = _daily_windows(8)
    quiet = _load_with_bursts(ds, windows, burst=2.0)
    loud = quiet.copy()
    cut = int(ds.searchsorted(T0 + pd.Timedelta(days=5)))
    loud[cut:] *= np.where(np.arange(len(loud) - cut) % 7 == 0, 9.0, 1.0)  # the future changes wildly
    now = T0 + pd.Timedelta(days=5)
    assert learn_regimes(quiet, ds, windows, now=now, lead_steps=2) == learn_regimes(loud, ds, windows, now=now,
                                                                                      lead_steps=2)


def test_hard_floor_holds_from_the_lead_before_the_opening_to_the_end() -> None:
    w = Window("nightly-batch", "nightly-batch", T0 + pd.Timedelta(hours=2), T0 + pd.Timedelta(hours=3),
               min_replicas=12)
    times = pd.date_range(T0, T0 + pd.Timedelta(hours=4), freq=STEP)
    sized = size_windows(times, STEP.value, 2, [w], {})
    held = times[sized.min_replicas == 12]
    assert held[0] == w.start - pd.Timedelta(minutes=10)
    assert held[-1] == w.end - STEP
    assert np.all(sized.min_replicas[(times < held[0]) | (times > held[-1])] == 0)
    assert np.all(sized.rise == 1.0)  # a floor alone learns nothing


def test_calendar_events_become_windows() -> None:
    _, calendar = simulate_broadcast(start=datetime(2026, 3, 2, tzinfo=UTC), days=5, seed=3)
    windows = windows_from_events(calendar)
    assert len(windows) == len(calendar) > 0
    assert {w.kind for w in windows} <= {"match", "show"}
    assert all(w.end > w.start and w.lift_percent is None for w in windows)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1e6), min_size=300, max_size=600),
       st.integers(min_value=0, max_value=4), st.integers(min_value=1, max_value=6))
def test_factors_stay_within_their_bounds(values: list[float], lead_steps: int, hour: int) -> None:
    load = np.asarray(values)
    ds = pd.date_range(T0, periods=len(load), freq=STEP)
    windows = [Window("k", f"k{d}", ds[0] + pd.Timedelta(minutes=70 * d + 5 * hour),
                      ds[0] + pd.Timedelta(minutes=70 * d + 5 * hour + 30)) for d in range(6)]
    regimes = learn_regimes(load, ds, windows, now=ds[-1], lead_steps=lead_steps)
    for regime in regimes.values():
        assert len(regime.rise) == PHASES
        assert all(1.0 <= r <= MAX_RISE for r in regime.rise)
    sized = size_windows(ds, STEP.value, lead_steps, windows, regimes)
    assert np.all((sized.rise >= 1.0) & (sized.rise <= MAX_RISE))


def test_kinds_with_few_windows_of_their_own_take_the_pooled_rise() -> None:
    ds = _grid(8)
    windows = [Window(f"final {d}", f"final {d}", w.start, w.end) for d, w in enumerate(_daily_windows(8))]
    load = _load_with_bursts(ds, windows, burst=6.0)
    regimes = learn_regimes(load, ds, windows, now=T0 + pd.Timedelta(days=7), lead_steps=2)
    assert regimes["final 0"].source == "pooled" and regimes["final 0"].windows == 1
    assert regimes["final 0"].rise[0] == 6.0
    assert "all kinds" in regimes["final 0"].describe()

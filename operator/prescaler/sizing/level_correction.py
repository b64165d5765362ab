"""The level correction: the forecast scaled toward the level the load ran at in the last hour.

Forecast errors persist for hours (a holiday, a regime change, a slow day), and a forecast refit once a day
or once an hour has not seen them. The planner scales the forecast by the square root of how far the load of
the last hour (three steps at least) ran above or below it, within [1/2, 2]: the square root corrects half
the way (in logs), since part of any hour's miss is noise that does not persist, and a full correction
chases it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta

import numpy as np

# The last hour, three steps at least; half the way in logs; within [1/2, 2] (see the module docstring).
LEVEL_CORRECTION_WINDOW = timedelta(hours=1)
LEVEL_CORRECTION_MIN_STEPS = 3
LEVEL_CORRECTION_DAMPING = 0.5
LEVEL_CORRECTION_BOUNDS = (0.5, 2.0)


def level_correction_steps(step: timedelta) -> int:
    """How many of the last buckets the level correction compares."""
    return max(LEVEL_CORRECTION_MIN_STEPS, math.ceil(LEVEL_CORRECTION_WINDOW / step - 1e-9))


def level_correction(observed: np.ndarray | Sequence[float], forecast: np.ndarray | Sequence[float]) -> float:
    """The factor on the forecast for the next decisions: (Σ observed / Σ forecast)^LEVEL_CORRECTION_DAMPING
    over the last buckets where both exist, within LEVEL_CORRECTION_BOUNDS; 1 when fewer than half do."""
    a, f = np.asarray(observed, dtype=float), np.asarray(forecast, dtype=float)
    ok = np.isfinite(a) & np.isfinite(f)
    if len(a) == 0 or 2 * ok.sum() < len(a) or f[ok].sum() <= 0:
        return 1.0
    ratio = float(np.clip(a[ok].sum() / f[ok].sum(), *LEVEL_CORRECTION_BOUNDS))
    return float(ratio**LEVEL_CORRECTION_DAMPING)


def level_corrections(load: np.ndarray, forecast: np.ndarray, steps: int) -> np.ndarray:
    """`level_correction` at every bucket t from buckets t − steps .. t − 1, at once (the backtest's replay)."""
    a, f = np.asarray(load, dtype=float), np.asarray(forecast, dtype=float)
    ok = np.isfinite(a) & np.isfinite(f)
    zero = np.zeros(1)
    count = np.concatenate([zero, np.cumsum(ok)])
    sum_a = np.concatenate([zero, np.cumsum(np.where(ok, a, 0.0))])
    sum_f = np.concatenate([zero, np.cumsum(np.where(ok, f, 0.0))])
    t = np.arange(len(a))
    lo = np.maximum(t - steps, 0)
    n_ok, sa, sf = count[t] - count[lo], sum_a[t] - sum_a[lo], sum_f[t] - sum_f[lo]
    # The same rule as `level_correction`: half of the window's buckets at least (a short start counts in full).
    enough = (2 * n_ok >= steps) & (sf > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.clip(np.where(enough, sa / np.where(sf > 0, sf, 1.0), 1.0), *LEVEL_CORRECTION_BOUNDS)
    return np.asarray(np.where(enough, ratio**LEVEL_CORRECTION_DAMPING, 1.0))

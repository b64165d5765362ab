"""Forecast bands calibrated on the model's own backtest errors: split-conformal by lead time.

A model's own band (in-sample residual quantiles, a random-walk guess) holds far fewer actual values on
real traces than it claims. Here the band is rebuilt from what the model (or `auto`'s combination)
actually got wrong in the rolling-origin windows just before the forecast (`calibrate_bands`):

- residuals are log1p(actual) - log1p(forecast): errors of web traffic scale with its level;
- they are pooled by lead time in bins (the first hour, up to 3 h, 6 h, 12 h, 1 day, 2, 4, 7, 14 days ahead),
  a bin too thin for its quantiles merged into the next, and every bin's quantiles taken with the
  split-conformal rank ⌈(n+1)·p⌉;
- the windows are few (three) and errors within one window move together (a holiday, a launch, a slow
  week), so the residuals are n correlated values, not n independent ones, and a plain split-conformal band
  holds too little. Two estimates correct for that, and the band is their mean:
  *cross-conformal*: the quantile level raised until, leaving each window out in turn, the band calibrated
  on the others misses the left-out window no more often than nominal;
  *envelope*: the widest of the windows' own quantiles, as if the next window could be like the worst one.
  The first is right when windows are alike and too narrow after a change of regime, the second the
  reverse; their mean holds close to nominal on real traces (`bench/bench_forecast.py` measures it), and
  over-covers where errors are alike from day to day: a band a little wide in calm times is the price of
  one that holds after a change;
- leads beyond the longest backtest window take the last bin's offsets: seasonal errors stop growing once
  the season repeats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

import numpy as np

from prescaler.forecasting.interface import Forecast

# Central band: lower = 10% quantile, upper = 90% quantile.
BAND_COVERAGE = 0.80
UPPER_QUANTILE = 0.5 + BAND_COVERAGE / 2
_LEAD_EDGES = tuple(timedelta(hours=h) for h in (1, 3, 6, 12, 24, 48, 96, 168, 336))
# A bin's tail quantiles need residuals beyond them: at least this many per bin.
_MIN_PER_BIN = 30


def log_residuals(actual: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    """log1p(actual) - log1p(forecast); NaN where the actual is missing."""
    a = np.asarray(actual, dtype=float)
    f = np.asarray(forecast, dtype=float)[: len(a)]
    return np.log1p(np.clip(a, 0, None)) - np.log1p(np.clip(f, 0, None))


def conformal_quantile(values: np.ndarray, level: float) -> float:
    """The split-conformal quantile of `values` at `level`: rank ⌈(n+1)·level⌉ from below (upper tail) or
    ⌊(n+1)·level⌋ (lower tail), held inside the sample. NaN values are ignored; 0 when none is left."""
    finite = np.sort(values[np.isfinite(values)])
    n = len(finite)
    if n == 0:
        return 0.0
    rank = math.ceil((n + 1) * level) if level >= 0.5 else math.floor((n + 1) * level)
    return float(finite[min(max(rank, 1), n) - 1])


def lead_bins(leads: int, step: timedelta, windows: int) -> list[tuple[int, int]]:
    """Half-open ranges of lead steps [a, b) that share their offsets, each with ≥ _MIN_PER_BIN residuals."""
    edges = sorted({round(e / step) for e in _LEAD_EDGES if 0 < round(e / step) < leads} | {leads})
    bins: list[tuple[int, int]] = []
    start = 0
    for end in edges:
        if (end - start) * windows >= _MIN_PER_BIN or end == leads:
            bins.append((start, end))
            start = end
    if len(bins) > 1 and (bins[-1][1] - bins[-1][0]) * windows < _MIN_PER_BIN:
        last, before = bins.pop(), bins.pop()
        bins.append((before[0], last[1]))
    return bins


def quantile_offsets(residuals: Sequence[np.ndarray], step: timedelta, level: float) -> np.ndarray:
    """Per lead step, the conformal quantile at `level` of the windows' log residuals in its lead bin."""
    leads = max(len(r) for r in residuals)
    stacked = np.full((len(residuals), leads), np.nan)
    for i, r in enumerate(residuals):
        stacked[i, : len(r)] = r
    out = np.zeros(leads)
    for a, b in lead_bins(leads, step, len(residuals)):
        out[a:b] = conformal_quantile(stacked[:, a:b].ravel(), level)
    return out


def cross_conformal_level(residuals: Sequence[np.ndarray], tail: float, upper: bool) -> float:
    """The quantile level whose band, calibrated on all windows but one, misses the left-out window at most
    `tail` of the time on average over the windows. `tail` itself when there is a single window."""
    nominal = 1 - tail if upper else tail
    if len(residuals) < 2:
        return nominal
    finite = [r[np.isfinite(r)] for r in residuals]
    held = [(f, np.concatenate([g for j, g in enumerate(finite) if j != i])) for i, f in enumerate(finite)]
    held = [(f, others) for f, others in held if f.size and others.size]
    if not held:
        return nominal
    # Moves the level from nominal towards the extreme, in steps of 1% of the tail.
    for shrink in np.linspace(1.0, 0.05, 96):
        level = 1 - tail * shrink if upper else tail * shrink
        misses = []
        for left_out, others in held:
            offset = conformal_quantile(others, level)
            misses.append(float(np.mean(left_out > offset) if upper else np.mean(left_out < offset)))
        if float(np.mean(misses)) <= tail:
            return level
    return 1 - tail * 0.05 if upper else tail * 0.05


@dataclass(frozen=True)
class BandCalibration:
    """Log offsets per lead step for the lower and upper band, and what they came from."""

    lower: np.ndarray
    upper: np.ndarray
    windows: int

    def bounds(self, yhat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper band around `yhat` (one value per lead step from the first), always containing it;
        leads beyond the calibration take the last lead's offsets."""
        idx = np.minimum(np.arange(len(yhat)), len(self.upper) - 1)
        base = np.log1p(np.clip(yhat, 0, None))
        lower = np.clip(np.expm1(base + np.minimum(self.lower[idx], 0)), 0, None)
        upper = np.expm1(base + np.maximum(self.upper[idx], 0))
        return np.minimum(lower, yhat), np.maximum(upper, yhat)

    def apply(self, forecast: Forecast) -> Forecast:
        """`forecast` with its band replaced by the calibrated one."""
        lower, upper = self.bounds(forecast.yhat)
        return replace(forecast, lower=lower, upper=upper)


def calibrate_bands(residuals: Sequence[np.ndarray], step: timedelta,
                    coverage: float = BAND_COVERAGE) -> BandCalibration | None:
    """The band's offsets from the log residuals of the backtest windows (oldest first); None without any."""
    windows = [np.asarray(r, dtype=float) for r in residuals if np.isfinite(r).any()]
    if not windows:
        return None
    tail = (1 - coverage) / 2
    sides = []
    for upper in (False, True):
        level = cross_conformal_level(windows, tail, upper)
        cross = quantile_offsets(windows, step, level)
        own = [quantile_offsets([w], step, 1 - tail if upper else tail) for w in windows]
        leads = len(cross)
        padded = np.vstack([np.pad(o, (0, leads - len(o)), mode="edge") for o in own])
        envelope = padded.max(axis=0) if upper else padded.min(axis=0)
        sides.append((cross + envelope) / 2)
    return BandCalibration(lower=sides[0], upper=sides[1], windows=len(windows))

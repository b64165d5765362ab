"""History on a regular grid, the checks every model shares, and the helpers that build forecast bands."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, cast

import numpy as np
import pandas as pd

from prescaler.errors import InputError
from prescaler.forecasting.interface import ForecastUnavailable

DAY = timedelta(days=1)
WEEK = timedelta(days=7)
MIN_HISTORY = timedelta(days=2)
# A window of "14d" whose newest buckets have not arrived yet still counts as two weeks.
SPAN_TOLERANCE = 0.95
# Central 80% prediction band.
_BAND_QUANTILES = (0.10, 0.90)


def days_text(delta: timedelta) -> str:
    days = delta / DAY
    if days >= 14 and days % 7 == 0:
        return f"{days / 7:g} weeks"
    return f"{days:.3g} day" + ("" if days == 1 else "s")


def prepare(history: pd.Series) -> pd.Series:
    """Sorted float series on a regular UTC grid (missing rows become NaN)."""
    if not isinstance(history.index, pd.DatetimeIndex):
        raise InputError("history must be indexed by timestamps (a DatetimeIndex)")
    series = history.astype(float).sort_index()
    index = time_index(series)
    series.index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    if series.index.has_duplicates:
        raise InputError("history has duplicate timestamps")
    if len(series) >= 2:
        step = infer_step(series)
        grid = pd.date_range(series.index[0], series.index[-1], freq=step)
        if len(grid) != len(series) or not grid.equals(series.index):
            series = series.reindex(grid)
    return series


def time_index(series: pd.Series) -> pd.DatetimeIndex:
    return cast(pd.DatetimeIndex, series.index)


def utc(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def infer_step(history: pd.Series) -> timedelta:
    index = time_index(history)
    if len(index) < 2:
        raise ForecastUnavailable(f"history has {len(index)} bucket(s): cannot tell the step")
    diffs = np.diff(index.asi8)
    step_ns = int(np.min(diffs[diffs > 0])) if (diffs > 0).any() else 0
    if step_ns <= 0:
        raise InputError("history timestamps are not increasing")
    return pd.Timedelta(step_ns, unit="ns").to_pytimedelta()


def steps(delta: timedelta, step: timedelta) -> int:
    return max(1, math.ceil(delta / step))


def valid_span(history: pd.Series, step: timedelta) -> timedelta:
    """Time between the first and the last non-missing bucket (inclusive)."""
    valid = history.dropna()
    if valid.empty:
        return timedelta(0)
    return (valid.index[-1] - valid.index[0]).to_pytimedelta() + step


def check_minimum(history: pd.Series, step: timedelta) -> None:
    observed = int(history.notna().sum()) * step
    if observed < MIN_HISTORY * SPAN_TOLERANCE:
        raise ForecastUnavailable(
            f"history has {days_text(observed)} of data < {days_text(MIN_HISTORY)} needed for any forecast")


def future_index(history: pd.Series, horizon: timedelta, step: timedelta) -> pd.DatetimeIndex:
    return pd.date_range(history.index[-1] + step, periods=steps(horizon, step), freq=step)


def fill_seasonal(values: np.ndarray, season: int) -> np.ndarray:
    """Fill gaps from one season earlier (then later), leftovers by interpolation."""
    out = values.astype(float).copy()
    if not np.isnan(out).any():
        return out
    for i in range(season, len(out)):
        if np.isnan(out[i]):
            out[i] = out[i - season]
    for i in range(len(out) - season - 1, -1, -1):
        if np.isnan(out[i]):
            out[i] = out[i + season]
    if np.isnan(out).any():
        out = pd.Series(out).interpolate(limit_direction="both").to_numpy()
    return out


def band(yhat: np.ndarray, lo_log: np.ndarray, hi_log: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply log-space error quantiles to a forecast: errors of web traffic scale with its level."""
    base = np.log1p(np.clip(yhat, 0, None))
    lower = np.clip(np.expm1(base + np.minimum(lo_log, 0)), 0, None)
    upper = np.expm1(base + np.maximum(hi_log, 0))
    return np.minimum(lower, yhat), np.maximum(upper, yhat)


def log_quantiles(errors: np.ndarray) -> tuple[float, float]:
    errors = errors[np.isfinite(errors)]
    if errors.size == 0:
        return 0.0, 0.0
    lo, hi = np.quantile(errors, _BAND_QUANTILES)
    return float(lo), float(hi)


def event_coverage(index: pd.DatetimeIndex, step: timedelta, events: pd.DataFrame | None
                   ) -> dict[str, tuple[np.ndarray, float]]:
    """Per event kind: which buckets an event overlaps, and the largest stated lift (fraction)."""
    result: dict[str, tuple[np.ndarray, float]] = {}
    if events is None or events.empty or len(index) == 0:
        return result
    starts = index.asi8
    ends = starts + int(pd.Timedelta(step).value)
    for row in events.itertuples(index=False):
        kind = str(getattr(row, "kind", None) or getattr(row, "name", "event"))
        start, end = utc(row.start), utc(row.end)
        covered = (starts < end.value) & (ends > start.value)
        lift = getattr(row, "lift_percent", None)
        lift_frac = float(lift) / 100 if lift is not None and pd.notna(lift) else 0.0
        mask, best = result.get(kind, (np.zeros(len(index), dtype=bool), 0.0))
        result[kind] = (mask | covered, max(best, lift_frac))
    return result

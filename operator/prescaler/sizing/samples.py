"""The scaler's record as samples: one per load bucket that has come, with what its decisions saw.

**Samples.** One per load bucket u that has come: the load A(u), and for each decision whose capacity can
serve u — those from u − leadTime to u: a scale-up takes leadTime to be ready, a scale-down applies at once,
so the capacity in u is the smallest any of them kept — the F and R that decision saw (NaN F: it had no
forecast and did not limit u). What a decision keeps is the highest of its own ask and those of the `held`
decisions before it within the scale-down stabilisation window (the planner's step 4), so the samples carry
those earlier decisions too; and the ask is whole replicas of `unit` requests (step 2 rounds up). Without
them the record would count bursts as missed that the held or rounded-up capacity served, and the
calibration would buy that coverage twice. The lead is u − generated_at of the forecast in force at the first of them.
Only the trailing `CALIBRATION_WINDOW` counts, and incidents (load over `INCIDENT_RATIO` times everything
its decisions saw and forecast) are left out of the fit and counted.

The backtest builds its samples from its own refits (`prescaler.backtest.track`); the operator from the
forecasts it used (`ForecastRecord`) and the traffic that came (`samples_from_forecasts`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from prescaler.forecasting.interface import Forecast
from prescaler.sizing.loads import sample_capacity

# Fourteen days hold two weekly cycles: enough to see a weekday and a weekend miss, short enough to follow
# a change of regime within two weeks.
CALIBRATION_WINDOW = timedelta(days=14)
# A bucket whose load exceeded three times what its decisions saw and forecast is an incident (a flash crowd
# at night, an attack), not a forecast error: covering it would raise the multiplier, and the cost,
# for two weeks without covering the next one. Incidents are left out of the calibration and counted; they
# still count against the realized served %.
INCIDENT_RATIO = 3.0
# Two days of hourly buckets: below this a bucket's tail is guesswork.
MIN_SAMPLES = 48


@dataclass(frozen=True)
class Samples:
    """Paired records, one row per load bucket (see the module docstring).

    `forecast` and `observed` have one column per decision that can serve the bucket (a 1-D array is one
    decision), after `held` columns of the decisions before them whose asks the stabilisation keeps; all have
    the same number of rows. `unit` is what one replica serves (0: asks are not rounded).
    """

    lead_s: np.ndarray  # seconds from the forecast's generation to the bucket
    actual: np.ndarray  # A: the load that came
    forecast: np.ndarray  # F per decision: the forecast's peak over its window (NaN: no forecast)
    observed: np.ndarray  # R per decision: what the reactive floor saw (NaN: nothing)
    clean: bool = field(default=False, compare=False)  # already `usable()`: the search calls it often
    held: int = 0
    unit: float = 0.0
    rise: np.ndarray | None = None  # per decision, the scheduled windows' factor on R (None: 1 everywhere)
    decided: np.ndarray | None = None  # per row, when its first serving decision was made (ns; None: unknown)

    def __post_init__(self) -> None:
        n = len(self.actual)
        if not len(self.lead_s) == len(self.forecast) == len(self.observed) == n:
            raise ValueError("samples must have one lead, forecast and observation per actual")
        if np.shape(self.forecast) != np.shape(self.observed):
            raise ValueError("samples need one observation per forecast")

    def __len__(self) -> int:
        return len(self.actual)

    def rows(self, pick: np.ndarray | slice) -> Samples:
        return Samples(lead_s=self.lead_s[pick], actual=self.actual[pick], forecast=self.forecast[pick],
                       observed=self.observed[pick], clean=self.clean, held=self.held, unit=self.unit,
                       rise=None if self.rise is None else self.rise[pick],
                       decided=None if self.decided is None else self.decided[pick])

    def usable(self) -> Samples:
        """Rows with an actual, a lead and a forecast at one decision at least, as 2-D arrays; negative
        values and missing observations count as zero."""
        if self.clean:
            return self
        f = np.asarray(self.forecast, dtype=float)
        r = np.asarray(self.observed, dtype=float)
        if f.ndim == 1:
            f, r = f[:, None], r[:, None]
        ok = np.isfinite(self.actual) & np.isfinite(self.lead_s) & np.isfinite(f[:, self.held:]).any(axis=1)
        f = f[ok]
        return Samples(
            lead_s=np.asarray(self.lead_s, dtype=float)[ok],
            actual=np.maximum(np.asarray(self.actual, dtype=float)[ok], 0.0),
            forecast=np.where(np.isfinite(f), np.maximum(f, 0.0), np.nan),
            observed=np.maximum(np.nan_to_num(r[ok], nan=0.0), 0.0),
            clean=True,
            held=self.held,
            unit=self.unit,
            rise=None if self.rise is None else np.asarray(self.rise, dtype=float).reshape(np.shape(r))[ok],
            decided=None if self.decided is None else np.asarray(self.decided)[ok],
        )

    def serving_only(self) -> Samples:
        """The same rows without the held decisions' columns: what the serving decisions alone asked for."""
        if self.held == 0:
            return self
        f, r = np.asarray(self.forecast), np.asarray(self.observed)
        return Samples(lead_s=self.lead_s, actual=self.actual, forecast=f[:, self.held:], observed=r[:, self.held:],
                       clean=self.clean, held=0, unit=self.unit,
                       rise=None if self.rise is None else np.asarray(self.rise)[:, self.held:], decided=self.decided)

    def incidents(self) -> np.ndarray:
        """Per usable row, whether it was an incident (see INCIDENT_RATIO): more than that many times the
        capacity the plain sizing max(F, R) left it (the least its decisions asked for)."""
        s = self.usable()
        return np.asarray(s.actual > INCIDENT_RATIO * sample_capacity(s, 1.0, 1.0))

    def calibratable(self) -> Samples:
        """The usable rows without incidents: what the calibration and the trust are fitted on."""
        return self.usable().rows(~self.incidents())


def samples_from_forecasts(
    forecasts: Sequence[tuple[datetime, Forecast]],
    actuals: pd.Series,
    *,
    now: datetime,
    lead_time: timedelta,
    window: timedelta = CALIBRATION_WINDOW,
    stabilization: timedelta = timedelta(0),
    unit: float = 0.0,
    rise_at: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Samples:
    """The operator's samples: the forecasts it used (generated_at, forecast) against the traffic that came.

    `actuals` is the load per forecast step (UTC bucket starts, NaN = missing). A bucket counts once it is
    complete (it ends by `now`) and lies within `window`. Its decisions are one per step from bucket start
    − `lead_time` to the bucket start, each with the newest forecast generated by then (its peak over the
    planner's window [t, t + lead_time + step)) and the last bucket complete by then (the floor). Before
    them come the decisions within `stabilization` (the scale-down window) whose asks they keep; `unit` is
    what one replica serves per step; `rise_at` gives the scheduled windows' factor at decision times (ns).
    """
    if len(actuals) < 2 or not forecasts:
        return _empty()
    idx = pd.DatetimeIndex(actuals.index)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    # All on int64 nanoseconds and whole arrays: a fleet's restart calibrates every scaler at its first tick,
    # and a loop over buckets and decisions would hold the event loop for each of them.
    at = np.asarray(idx.as_unit("ns").asi8)
    step = int(at[1] - at[0])
    values = np.asarray(actuals, dtype=float)
    now_ns, lead = pd.Timestamp(now).value, pd.Timedelta(lead_time).value
    rows = np.flatnonzero((at + step <= now_ns) & (at >= now_ns - pd.Timedelta(window).value))
    if len(rows) == 0:
        return _empty()
    ordered = sorted(forecasts, key=lambda gf: gf[0])
    generated = np.array([pd.Timestamp(g).value for g, _ in ordered], dtype=np.int64)
    k = max(0, math.ceil(lead / step - 1e-9)) + 1
    held = max(0, int(pd.Timedelta(stabilization).value // step))
    u = at[rows]
    # Decision j of a bucket: one per step from its start − lead_time, the last at its start; before them the
    # `held` ones whose asks the stabilisation keeps.
    serving = np.where(np.arange(k) < k - 1, np.arange(k) * step - lead, 0)
    offsets = np.concatenate([-lead - step * np.arange(held, 0, -1), serving])
    decided = u[:, None] + offsets[None, :]
    g = np.searchsorted(generated, decided, side="right") - 1
    seen = g >= 0
    forecast = np.full(decided.shape, np.nan)
    for e, (_, fc) in enumerate(ordered):
        cells = g == e
        if cells.any():
            forecast[cells] = _window_maxima(fc, decided[cells], decided[cells] + lead + step)
    # The floor saw the last bucket complete at the decision.
    b = np.searchsorted(at, decided - step, side="right") - 1
    observed = np.where(seen & (b >= 0) & (b < len(values)), values[np.clip(b, 0, len(values) - 1)], np.nan)
    forecast[~seen] = np.nan
    rise = None if rise_at is None else np.asarray(rise_at(decided.ravel()), dtype=float).reshape(decided.shape)
    keep = seen[:, held:].any(axis=1)
    if not keep.any():
        return _empty()
    first = generated[_first_valid(g[keep][:, held:])]
    return Samples(lead_s=(u[keep] - first) / 1e9, actual=values[rows][keep], forecast=forecast[keep],
                   observed=observed[keep], held=held, unit=unit, rise=None if rise is None else rise[keep],
                   decided=decided[keep, held])


def _first_valid(g: np.ndarray) -> np.ndarray:
    """Per row, the forecast of its earliest decision that had one (g is non-decreasing along a row)."""
    return g[np.arange(len(g)), np.argmax(g >= 0, axis=1)]


@dataclass
class ForecastRecord:
    """The forecasts a scaler used, kept only as far as calibration pairs them with what came.

    A forecast is in force from its generation until the next one (at most `keep_ahead`, the planner's
    staleAfter + leadTime + a step); only that slice is kept, and only within `window` of the newest, so
    the record stays a few hundred points per scaler however long the horizon.
    """

    keep_ahead: timedelta
    window: timedelta = CALIBRATION_WINDOW
    entries: list[tuple[datetime, Forecast]] = field(default_factory=list)

    def add(self, generated_at: datetime, forecast: Forecast) -> bool:
        """Keep `forecast` unless one generated at the same time is kept already (or it is older than the
        window); True when added."""
        if any(g == generated_at for g, _ in self.entries):
            return False
        if self.entries and generated_at < self.entries[-1][0] - self.window - self.keep_ahead:
            return False
        end = pd.Timestamp(generated_at) + pd.Timedelta(self.keep_ahead)
        keep = np.asarray(forecast.ds < end)
        sliced = Forecast(ds=forecast.ds[keep], yhat=np.asarray(forecast.yhat)[keep],
                          lower=np.asarray(forecast.lower)[keep], upper=np.asarray(forecast.upper)[keep],
                          model=forecast.model)
        self.entries.append((generated_at, sliced))
        self.entries.sort(key=lambda gf: gf[0])
        newest = self.entries[-1][0]
        self.entries = [(g, f) for g, f in self.entries if g >= newest - self.window - self.keep_ahead]
        return True


def _window_maxima(fc: Forecast, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per window [start, end) (int64 ns), the highest yhat over the forecast's buckets that overlap it; NaN
    where none or all are NaN."""
    out = np.full(len(start), np.nan)
    ds = fc.ns
    if len(ds) == 0 or len(start) == 0:
        return out
    fstep = int(ds[1] - ds[0]) if len(ds) > 1 else 0
    lo = np.searchsorted(ds, start - fstep, side="right")
    hi = np.searchsorted(ds, end, side="left")
    width = int((hi - lo).max(initial=0))
    if width <= 0:
        return out
    yhat = np.asarray(fc.yhat, dtype=float)
    pos = lo[:, None] + np.arange(width)[None, :]
    inside = pos < hi[:, None]
    raw = yhat[np.clip(pos, 0, len(yhat) - 1)]
    valid = inside & np.isfinite(raw)
    best = np.where(valid, raw, -np.inf).max(axis=1)
    return np.where(valid.any(axis=1), best, np.nan)


def _empty() -> Samples:
    e = np.zeros(0)
    return Samples(lead_s=e, actual=e, forecast=np.zeros((0, 1)), observed=np.zeros((0, 1)))

"""The forecasters, each `fit(history)` → self, `predict(horizon)`: seasonal-naive, Holt-Winters and Prophet,
which a scaler can name, and seasonal-median, MSTL and harmonic, which only `auto` uses.

Pure: takes data, returns data. statsmodels and prophet are imported by the fits that need them, so the
callers that only validate a model name stay light.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import warnings
from datetime import timedelta
from typing import Any, Literal, Self

import numpy as np
import pandas as pd

from prescaler.errors import InputError
from prescaler.forecasting.interface import MODEL_NAMES, Forecast, Forecaster, ForecastUnavailable
from prescaler.forecasting.series import (
    DAY,
    SPAN_TOLERANCE,
    WEEK,
    band,
    check_minimum,
    days_text,
    event_coverage,
    fill_seasonal,
    future_index,
    log_quantiles,
    prepare,
    steps,
    time_index,
    valid_span,
)

# Holt-Winters takes a weekly season up to this many steps per week (a 30-minute step).
_HW_WEEKLY_MAX_STEPS = 336


# Prophet and cmdstanpy log every fit at INFO, and prophet.plot complains about plotly at import.
for _logger in ("cmdstanpy", "prophet", "prophet.plot", "prophet.forecaster", "prophet.models"):
    logging.getLogger(_logger).setLevel(logging.CRITICAL)


def _quiet_stan() -> None:
    # cmdstanpy configures its logger (level DEBUG, own handler) on first use: do that first, then mute.
    from cmdstanpy.utils import get_logger

    get_logger()
    for name in ("cmdstanpy", "prophet"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def check_model_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise InputError(f"unknown forecast model {name!r}: choose one of {', '.join(MODEL_NAMES)}")


class _Base:
    name = "base"

    def __init__(self, *, step: timedelta) -> None:
        self.step = step
        self.steps_per_day = max(1, round(DAY / step))
        self._history: pd.Series | None = None

    def requirement(self, history: pd.Series) -> str | None:
        """None when this model can fit `history`, else the reason it cannot."""
        try:
            check_minimum(history, self.step)
        except ForecastUnavailable as exc:
            return str(exc)
        return None

    def _start_fit(self, history: pd.Series) -> pd.Series:
        history = prepare(history)
        reason = self.requirement(history)
        if reason is not None:
            raise ForecastUnavailable(reason)
        self._history = history
        return history

    def _fitted_history(self) -> pd.Series:
        if self._history is None:
            raise RuntimeError(f"{self.name}: predict() called before fit()")
        return self._history


class SeasonalNaiveForecaster(_Base):
    """The value one week earlier (one day earlier when history is shorter than eight days)."""

    name = "seasonal-naive"

    def __init__(self, *, step: timedelta, season: str = "auto") -> None:
        super().__init__(step=step)
        self.season = season
        self._season_steps = self.steps_per_day
        self._filled = np.empty(0)
        self._errors: list[tuple[float, float]] = []

    def _season_for(self, history: pd.Series) -> timedelta:
        if self.season == "day":
            return DAY
        if self.season == "week":
            return WEEK
        # A week-old copy beats yesterday's as soon as there is one: yesterday's Friday is a bad Saturday.
        return WEEK if valid_span(history, self.step) >= (WEEK + DAY) * SPAN_TOLERANCE else DAY

    def requirement(self, history: pd.Series) -> str | None:
        reason = super().requirement(history)
        if reason is not None:
            return reason
        season = self._season_for(history)
        span = valid_span(history, self.step)
        # One season to copy plus a day to measure the copy's errors (the band).
        if span < (season + DAY) * SPAN_TOLERANCE:
            return (f"history {days_text(span)} < {days_text(season + DAY)} needed for seasonal-naive "
                    f"({'weekly' if season == WEEK else 'daily'})")
        return None

    def fit(self, history: pd.Series, events: pd.DataFrame | None = None) -> Self:
        history = self._start_fit(history)
        season = self._season_for(history)
        s = steps(season, self.step)
        self._season_steps = s
        raw = history.to_numpy()
        self._filled = fill_seasonal(raw, s)
        # Empirical log errors of "same time k seasons earlier", k = 1, 2, ...: the band widens with the lead.
        logs = np.log1p(np.clip(raw, 0, None))
        self._errors = []
        k = 1
        while k * s < len(raw) and (k == 1 or np.isfinite(logs[k * s:] - logs[:-k * s]).sum() >= s):
            self._errors.append(log_quantiles(logs[k * s:] - logs[:-k * s]))
            k += 1
        return self

    def predict(self, horizon: timedelta) -> Forecast:
        history = self._fitted_history()
        ds = future_index(history, horizon, self.step)
        s = self._season_steps
        last = self._filled[-s:]
        h = np.arange(len(ds))
        yhat = np.clip(last[h % s], 0, None)
        k = h // s
        lo = np.empty(len(ds))
        hi = np.empty(len(ds))
        for i, kk in enumerate(k):
            if kk < len(self._errors):
                lo[i], hi[i] = self._errors[kk]
            else:
                # Beyond the measured leads, assume errors grow like a random walk over seasons.
                scale = math.sqrt((kk + 1) / len(self._errors))
                lo[i], hi[i] = (q * scale for q in self._errors[-1])
        lower, upper = band(yhat, lo, hi)
        note = "weekly" if s * self.step >= WEEK else "daily"
        return Forecast(ds=ds, yhat=yhat, lower=lower, upper=upper, model=self.name, note=note)


class HoltWintersForecaster(_Base):
    """Holt-Winters (statsmodels ExponentialSmoothing) on log1p(y).

    With two weeks of history at a step of 30 minutes or more: a weekly season, which carries each
    weekday's own daily shape (sMAPE 11.8% instead of 14.4% on the appserver trace, 4.0% instead of 4.2%
    on wikipedia). Otherwise (short history, or a weekly season of thousands of 5-minute states that the
    optimiser handles badly): damped trend and a daily season, after removing each weekday's mean level
    (from one week of history on).

    The optimiser starts from statsmodels' heuristic values, not its brute-force grid (`use_brute`): the grid
    cost most of a 5-minute fit and gave the same accuracy on every bench trace.
    """

    name = "holt-winters"

    def __init__(self, *, step: timedelta, use_brute: bool = False) -> None:
        super().__init__(step=step)
        self.use_brute = use_brute
        self._fit: Any = None
        self._dow = np.zeros(7)
        self._tail = 0
        self._resid_q = (0.0, 0.0)
        self._alpha = 0.5
        self._season = self.steps_per_day

    def _weekly(self, history: pd.Series) -> bool:
        return (7 * self.steps_per_day <= _HW_WEEKLY_MAX_STEPS
                and valid_span(history, self.step) >= 2 * WEEK * SPAN_TOLERANCE)

    def requirement(self, history: pd.Series) -> str | None:
        reason = super().requirement(history)
        if reason is not None:
            return reason
        span = valid_span(history, self.step)
        # statsmodels' heuristic start needs two full seasons of observed (not filled) buckets.
        if span < 2 * DAY:
            return f"history {days_text(span)} < 2 days needed for holt-winters daily season"
        return None

    def _day_of_week_levels(self, history: pd.Series, logs: np.ndarray) -> np.ndarray:
        """Mean log level of each weekday relative to a centred one-week average (0 below a full week).

        A daily season alone forecasts Monday from Sunday; removing each weekday's level first lets the
        daily season carry only the shape of the day.
        """
        if valid_span(history, self.step) < WEEK * SPAN_TOLERANCE:
            return np.zeros(7)
        week = 7 * self.steps_per_day
        smooth = pd.Series(logs).rolling(week, center=True, min_periods=1).mean().to_numpy()
        observed = history.notna().to_numpy()
        dow = time_index(history).dayofweek.to_numpy()
        levels = np.zeros(7)
        for day in range(7):
            keep = observed & (dow == day)
            if keep.any():
                levels[day] = float(np.mean(logs[keep] - smooth[keep]))
        return levels - levels.mean()

    def fit(self, history: pd.Series, events: pd.DataFrame | None = None) -> Self:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        history = self._start_fit(history)
        # Fit up to the newest observation: a smoother run over filled-in buckets would read them as data.
        observed_part = history.loc[history.first_valid_index():history.last_valid_index()]
        self._tail = len(history) - len(history.loc[:history.last_valid_index()])
        weekly = self._weekly(observed_part)
        self._season = 7 * self.steps_per_day if weekly else self.steps_per_day
        values = fill_seasonal(observed_part.to_numpy(), self._season)
        # Seasonal swings of web traffic scale with its level: model log1p(y) additively (= multiplicative).
        logs = np.log1p(np.clip(values, 0, None))
        self._dow = np.zeros(7) if weekly else self._day_of_week_levels(observed_part, logs)
        target = logs - self._dow[time_index(observed_part).dayofweek]
        # With a weekly season the damped trend fitted to about zero and cost several times the fit time.
        model = ExponentialSmoothing(
            target, trend=None if weekly else "add", damped_trend=not weekly, seasonal="add",
            seasonal_periods=self._season, initialization_method="heuristic",
        )
        self._fit = model.fit(optimized=True, use_brute=self.use_brute)
        resid = target - np.asarray(self._fit.fittedvalues)
        observed = observed_part.notna().to_numpy()
        self._resid_q = log_quantiles(resid[observed][self._season:])
        self._alpha = float(self._fit.params.get("smoothing_level", 0.5) or 0.5)
        return self

    def predict(self, horizon: timedelta) -> Forecast:
        history = self._fitted_history()
        ds = future_index(history, horizon, self.step)
        ahead = np.asarray(self._fit.forecast(self._tail + len(ds)), dtype=float)[self._tail:]
        pred = ahead + self._dow[ds.dayofweek]
        yhat = np.clip(np.expm1(pred), 0, None)
        # One-step residuals understate h-step errors: widen like simple exponential smoothing, at most
        # one season ahead (seasonal traffic errors stop growing once the season repeats).
        h = np.minimum(np.arange(len(ds)) + self._tail, self._season)
        widen = np.sqrt(1 + h * self._alpha**2)
        lower, upper = band(yhat, self._resid_q[0] * widen, self._resid_q[1] * widen)
        note = "weekly season" if self._season > self.steps_per_day else "daily season"
        return Forecast(ds=ds, yhat=yhat, lower=lower, upper=upper, model=self.name, note=note)


class SeasonalMedianForecaster(_Base):
    """The median of past seasons, in log1p space, shifted to the recent level.

    A one-off burst is one vote of several, so it is not copied into next week the way seasonal-naive copies
    it. From three weeks of history: each bucket of the week is the median of the same bucket in the last
    `weeks` weeks. Shorter history: each bucket of the day is the median over the last `days` days of the
    same kind (weekday or weekend), each day's weekday level removed first and the target day's put back,
    so a Saturday is forecast from weekend shapes at a Saturday level.

    The recent level: the median gap, over the newest day, between what came and what the profile fitted on
    the history before that day predicted. It moves the whole forecast, scaled by `level_weight` because one
    day's gap is partly noise (traffic 20% above its profile yesterday is forecast ~10% above it).

    Steps finer than `smooth` are averaged over a centred window of that length first: at 5 minutes the
    buckets jitter by ~10% around the shape of the day, and a median of a few days keeps that jitter.

    The band (replaced by `fit_local`'s calibration) is the quantiles of the newest day's errors.
    """

    name = "seasonal-median"

    def __init__(self, *, step: timedelta, weeks: int = 4, days: int = 7, level_weight: float = 0.5,
                 smooth: timedelta = timedelta(minutes=30)) -> None:
        super().__init__(step=step)
        self.smooth = smooth
        self.weeks = weeks
        self.days = days
        self.level_weight = level_weight
        self._level = 0.0
        self._resid_q = (0.0, 0.0)
        self._mode = "daily"
        self._tail = 0
        self._logs = np.empty(0)
        self._index = pd.DatetimeIndex([], tz="UTC")

    def requirement(self, history: pd.Series) -> str | None:
        reason = super().requirement(history)
        if reason is not None:
            return reason
        span = valid_span(history, self.step)
        # Two days to take a median of, and a newest day to measure the level on.
        if span < 3 * DAY * SPAN_TOLERANCE:
            return f"history {days_text(span)} < 3 days needed for seasonal-median"
        return None

    def _weekly(self, span: timedelta) -> bool:
        return span >= 3 * WEEK * SPAN_TOLERANCE

    def _profile(self, logs: np.ndarray, index: pd.DatetimeIndex, ahead: int) -> np.ndarray:
        """Log forecast of the `ahead` buckets after `logs` (NaN where no past season has data)."""
        n, per_day = len(logs), self.steps_per_day
        if self._mode == "weekly":
            week = 7 * per_day
            lags = min(self.weeks, n // week)
            stack = np.full((lags, week), np.nan)
            for k in range(lags):
                stack[k] = logs[n - (k + 1) * week:n - k * week]
            return _nanmedian(stack, axis=0)[np.arange(ahead) % week]
        # Daily shapes per kind of day (weekday, weekend), each bucket's weekday level taken out.
        levels = _weekday_levels(logs, index, per_day)
        rows = min(n // per_day, 3 * self.days)
        start = n - rows * per_day
        block = logs[start:].reshape(rows, per_day)
        block_dow = np.asarray(index[start:].dayofweek).reshape(rows, per_day)
        adjusted = block - levels[block_dow]
        seen = np.isfinite(adjusted)
        future_dow = np.asarray(pd.date_range(index[-1] + self.step, periods=ahead, freq=self.step).dayofweek)
        slot = np.arange(ahead) % per_day
        out = np.full(ahead, np.nan)
        for weekend in (False, True):
            of_kind = seen & ((block_dow >= 5) == weekend)
            if not of_kind.any():  # under a week of history: every day speaks for every kind
                of_kind = seen
            # Only the newest `days` observations of each bucket of the day.
            newest = np.cumsum(of_kind[::-1], axis=0)[::-1] <= self.days
            shape = _nanmedian(np.where(of_kind & newest, adjusted, np.nan), axis=0)
            targets = (future_dow >= 5) == weekend
            out[targets] = shape[slot[targets]] + levels[future_dow[targets]]
        return out

    def fit(self, history: pd.Series, events: pd.DataFrame | None = None) -> Self:
        history = self._start_fit(history)
        observed = history.loc[:history.last_valid_index()]
        self._tail = len(history) - len(observed)
        self._mode = "weekly" if self._weekly(valid_span(observed, self.step)) else "daily"
        logs = np.log1p(np.clip(observed.to_numpy(), 0, None))
        width = round(self.smooth / self.step)
        if width > 1:
            # Fine-grained buckets are noisy; a short centred mean keeps the day's shape and drops the jitter.
            smoothed = pd.Series(logs).rolling(width, center=True, min_periods=1).mean().to_numpy()
            logs = np.where(np.isfinite(logs), smoothed, np.nan)
        index = time_index(observed)
        per_day = self.steps_per_day
        # The newest day against the profile of the days before it.
        before = logs[:-per_day]
        backcast = self._profile(before, index[:-per_day], per_day)
        gaps = logs[-per_day:] - backcast
        gap = float(_nanmedian(gaps, axis=0))
        self._level = self.level_weight * gap if math.isfinite(gap) else 0.0
        self._resid_q = log_quantiles(gaps - self._level)
        self._logs, self._index = logs, index
        return self

    def predict(self, horizon: timedelta) -> Forecast:
        history = self._fitted_history()
        ds = future_index(history, horizon, self.step)
        ahead = self._profile(self._logs, self._index, self._tail + len(ds))[self._tail:]
        filler = float(_nanmedian(self._logs[-self.steps_per_day:], axis=0))
        ahead = np.where(np.isfinite(ahead), ahead, filler) + self._level
        yhat = np.clip(np.expm1(ahead), 0, None)
        lower, upper = band(yhat, np.full(len(ds), self._resid_q[0]), np.full(len(ds), self._resid_q[1]))
        return Forecast(ds=ds, yhat=yhat, lower=lower, upper=upper, model=self.name, note=self._mode)


class MSTLForecaster(_Base):
    """MSTL decomposition of log1p(y), exponential smoothing of what the seasons leave.

    Daily (and, from two weeks of history, weekly) seasons come from statsmodels' MSTL; with less than two
    weeks, each weekday's mean level is removed first, as for Holt-Winters. The seasonally adjusted rest
    (trend + remainder) is forecast by simple exponential smoothing (`trend=True`: Holt's damped trend, which
    fitted to about zero on the bench traces), the seasons by their last cycle. STL runs with its smoothers
    evaluated every tenth point of a day and interpolated (the `*_jump` settings): 50× faster on a 5-minute
    grid, and the seasons are smooth anyway.

    The band (replaced by `fit_local`'s calibration) is the quantiles of the one-step smoothing errors.
    """

    name = "mstl"

    def __init__(self, *, step: timedelta, trend: bool = False) -> None:
        super().__init__(step=step)
        self.trend = trend
        self._fit: Any = None
        self._seasons: list[np.ndarray] = []
        self._dow = np.zeros(7)
        self._tail = 0
        self._periods: list[int] = []
        self._resid_q = (0.0, 0.0)

    def requirement(self, history: pd.Series) -> str | None:
        reason = super().requirement(history)
        if reason is not None:
            return reason
        span = valid_span(history, self.step)
        if span < 3 * DAY * SPAN_TOLERANCE:
            return f"history {days_text(span)} < 3 days needed for mstl daily season"
        return None

    def fit(self, history: pd.Series, events: pd.DataFrame | None = None) -> Self:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing
        from statsmodels.tsa.seasonal import MSTL

        history = self._start_fit(history)
        observed = history.loc[history.first_valid_index():history.last_valid_index()]
        self._tail = len(history) - len(history.loc[:history.last_valid_index()])
        per_day = self.steps_per_day
        week = 7 * per_day
        values = fill_seasonal(observed.to_numpy(), per_day)
        logs = np.log1p(np.clip(values, 0, None))
        index = time_index(observed)
        # MSTL drops a period longer than half the series; below that, weekday levels stand in for it.
        periods = [per_day, week] if len(logs) >= 2 * week + per_day else [per_day]
        self._dow = _weekday_levels(logs, index, per_day) if len(periods) == 1 else np.zeros(7)
        target = logs - self._dow[index.dayofweek]
        jumps = {f"{name}_jump": max(1, per_day // 10) for name in ("seasonal", "trend", "low_pass")}
        decomposition = MSTL(target, periods=periods, stl_kwargs=jumps).fit()
        seasonal = np.asarray(decomposition.seasonal, dtype=float).reshape(len(target), -1)
        self._seasons = [seasonal[len(target) - p:, i] for i, p in enumerate(periods)]
        self._periods = periods
        adjusted = target - seasonal.sum(axis=1)
        self._fit = ExponentialSmoothing(adjusted, trend="add" if self.trend else None, damped_trend=self.trend,
                                         initialization_method="estimated").fit()
        resid = adjusted - np.asarray(self._fit.fittedvalues)
        self._resid_q = log_quantiles(resid[observed.notna().to_numpy()])
        return self

    def predict(self, horizon: timedelta) -> Forecast:
        history = self._fitted_history()
        ds = future_index(history, horizon, self.step)
        total = self._tail + len(ds)
        ahead = np.asarray(self._fit.forecast(total), dtype=float)
        for season, period in zip(self._seasons, self._periods, strict=True):
            ahead = ahead + season[np.arange(total) % period]
        pred = ahead[self._tail:] + self._dow[ds.dayofweek]
        yhat = np.clip(np.expm1(pred), 0, None)
        lower, upper = band(yhat, np.full(len(ds), self._resid_q[0]), np.full(len(ds), self._resid_q[1]))
        note = "daily+weekly" if len(self._periods) > 1 else "daily"
        return Forecast(ds=ds, yhat=yhat, lower=lower, upper=upper, model=self.name, note=note)


class HarmonicForecaster(_Base):
    """Daily and weekly Fourier terms fitted to log1p(y) by least absolute deviations, recent days weighted more.

    Prophet's shape (a weekday and a weekend day, a weekly cycle, a weekend level) without its trend: the
    level follows the newest weeks through weights halving every `half_life`, and the median fit (iteratively
    reweighted least squares) lets a burst pull the curve by its count, not by its height.
    """

    name = "harmonic"

    def __init__(self, *, step: timedelta, daily_order: int | None = None, weekly_order: int = 3,
                 half_life: timedelta = timedelta(days=7), iterations: int = 10) -> None:
        super().__init__(step=step)
        self.daily_order = daily_order or (6 if self.steps_per_day <= 24 else 10)
        self.weekly_order = weekly_order
        self.half_life = half_life
        self.iterations = iterations
        self._coef = np.zeros(0)
        self._weekly = False
        self._weekend_shape = True
        self._resid_q = (0.0, 0.0)

    def requirement(self, history: pd.Series) -> str | None:
        reason = super().requirement(history)
        if reason is not None:
            return reason
        span = valid_span(history, self.step)
        if span < 3 * DAY * SPAN_TOLERANCE:
            return f"history {days_text(span)} < 3 days needed for harmonic"
        return None

    def _design(self, index: pd.DatetimeIndex) -> np.ndarray:
        hours = np.asarray(index.hour + index.minute / 60 + index.second / 3600, dtype=float)
        dow = np.asarray(index.dayofweek)
        day_phase = 2 * np.pi * hours / 24
        week_phase = 2 * np.pi * (dow * 24 + hours) / 168
        weekend = (dow >= 5).astype(float)
        columns = [np.ones(len(index)), weekend]
        for k in range(1, self.daily_order + 1):
            for wave in (np.sin(k * day_phase), np.cos(k * day_phase)):
                columns += [wave * (1 - weekend), wave * weekend] if self._weekend_shape else [wave]
        if self._weekly:
            for k in range(1, self.weekly_order + 1):
                columns += [np.sin(k * week_phase), np.cos(k * week_phase)]
        return np.column_stack(columns)

    def fit(self, history: pd.Series, events: pd.DataFrame | None = None) -> Self:
        history = self._start_fit(history)
        observed = history.notna().to_numpy()
        index = time_index(history)
        self._weekly = valid_span(history, self.step) >= 2 * WEEK * SPAN_TOLERANCE
        self._weekend_shape = _covers_the_day(index[observed & (index.dayofweek >= 5)], index[observed])
        x = self._design(index)[observed]
        y = np.log1p(np.clip(history.to_numpy()[observed], 0, None))
        age = (index[-1] - index[observed]) / self.half_life
        recency = np.power(0.5, np.asarray(age, dtype=float))
        # A whisker of ridge keeps the weekend columns solvable on histories without a weekend.
        ridge = 1e-6 * np.eye(x.shape[1])
        weights = recency
        coef = np.zeros(x.shape[1])
        for _ in range(self.iterations):
            xw = x * weights[:, None]
            # einsum, not `@`: a multi-threaded BLAS product ran 7× slower on a busy two-core machine, and
            # the operator runs fits side by side.
            gram = np.einsum("ij,ik->jk", xw, x)
            coef = np.linalg.solve(gram + ridge, np.einsum("ij,i->j", xw, y))
            resid = y - x @ coef
            weights = recency / np.maximum(np.abs(resid), 1e-3)
        self._coef = coef
        self._resid_q = log_quantiles(y - x @ coef)
        return self

    def predict(self, horizon: timedelta) -> Forecast:
        history = self._fitted_history()
        ds = future_index(history, horizon, self.step)
        yhat = np.clip(np.expm1(self._design(ds) @ self._coef), 0, None)
        lower, upper = band(yhat, np.full(len(ds), self._resid_q[0]), np.full(len(ds), self._resid_q[1]))
        return Forecast(ds=ds, yhat=yhat, lower=lower, upper=upper, model=self.name,
                        note="daily+weekly" if self._weekly else "daily")


def _covers_the_day(weekend: pd.DatetimeIndex, every: pd.DatetimeIndex) -> bool:
    """Whether the weekend's buckets cover (nearly) every time of day the history has: a weekend curve fitted
    on part of a day is free over the rest of it and can explode there, so weekends then share the weekdays'
    curve (shifted by their own level)."""
    def times(index: pd.DatetimeIndex) -> set[int]:
        return set((index.hour * 60 + index.minute).tolist())

    return len(times(weekend)) >= SPAN_TOLERANCE * len(times(every)) > 0


def _weekday_levels(logs: np.ndarray, index: pd.DatetimeIndex, per_day: int) -> np.ndarray:
    """Mean log level of each weekday relative to a centred one-week average (zeros below a full week)."""
    week = 7 * per_day
    observed = np.isfinite(logs)
    if observed.sum() < week * SPAN_TOLERANCE:
        return np.zeros(7)
    smooth = pd.Series(logs).rolling(week, center=True, min_periods=1).mean().to_numpy()
    dow = np.asarray(index.dayofweek)
    levels = np.zeros(7)
    for day in range(7):
        keep = observed & (dow == day)
        if keep.any():
            levels[day] = float(np.mean(logs[keep] - smooth[keep]))
    return levels - levels.mean()


def _nanmedian(values: np.ndarray, axis: int) -> np.ndarray:
    """Median ignoring NaN; NaN where a slice has no data (a bucket no past season saw), without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmedian(values, axis=axis))


class _FastStanData:
    """Hands cmdstan its data as a JSON file written by the C encoder.

    cmdstanpy serialises the data element by element in Python, which costs more than the optimisation
    itself for a 4,000 × 50 feature matrix (~0.7 s of a 5-minute, 14-day fit).
    """

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def optimize(self, data: dict[str, Any], **kwargs: Any) -> Any:
        fd, path = tempfile.mkstemp(prefix="prescaler-stan-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(data, default=_json_scalar))
            return self._model.optimize(data=path, **kwargs)
        finally:
            os.unlink(path)


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


class ProphetForecaster(_Base):
    """Prophet configured for web traffic.

    - log1p(y) is fitted, so every seasonality and event is multiplicative and forecasts stay positive;
    - daily shapes differ between weekdays and weekends (conditional daily seasonalities) on top of a
      weekly cycle: the daily × weekly interaction of real traffic;
    - a much stiffer trend than the default (changepoint_prior_scale 0.003 on min-max scaled log values,
      about one changepoint per week of history): on two weeks of data a flexible trend soaks up the
      weekly cycle (sMAPE 12-21% instead of 4% on a clean synthetic series);
    - min-max scaling: log values span a narrow band near their maximum, and Prophet's default scaling
      leaves the optimiser badly conditioned (stalled line searches);
    - events (name, kind, start, end, lift_percent) become per-bucket regressors, one per kind. Prophet's
      holidays are whole days, which smears a two-hour push notification over its day; events of a kind
      never seen in the history apply their stated lift instead;
    - no sampling (uncertainty_samples=0): the band comes from in-sample residual quantiles, which keeps
      a fit of 14 days at 5 minutes well under a second.
    """

    name = "prophet"

    def __init__(self, *, step: timedelta, changepoint_prior_scale: float = 0.003,
                 daily_order: int | None = None, weekly_order: int = 4,
                 changepoints_per_week: float = 1.0, algorithm: str = "LBFGS",
                 scaling: Literal["absmax", "minmax"] = "minmax") -> None:
        super().__init__(step=step)
        self.scaling = scaling
        self.changepoint_prior_scale = changepoint_prior_scale
        self.changepoints_per_week = changepoints_per_week
        self.algorithm = algorithm
        self.daily_order = daily_order
        self.weekly_order = weekly_order
        self._model: Any = None
        self._events: pd.DataFrame | None = None
        self._kinds: list[str] = []
        self._resid_q = (0.0, 0.0)

    def requirement(self, history: pd.Series) -> str | None:
        reason = super().requirement(history)
        if reason is not None:
            return reason
        span = valid_span(history, self.step)
        # One full week makes weekly terms identifiable; requiring two would keep prophet out of the
        # backtest folds of the common 14-day history.
        if span < WEEK * SPAN_TOLERANCE:
            return f"history {days_text(span)} < 1 week needed for prophet weekly seasonality"
        return None

    def _frame(self, index: pd.DatetimeIndex) -> pd.DataFrame:
        naive = index.tz_convert("UTC").tz_localize(None)
        frame = pd.DataFrame({"ds": naive})
        weekend = naive.dayofweek >= 5
        frame["weekend"] = weekend
        frame["weekday"] = ~weekend
        frame["weekend_level"] = weekend.astype(float)
        coverage = event_coverage(index, self.step, self._events)
        for kind in self._kinds:
            mask = coverage.get(kind, (np.zeros(len(index), dtype=bool), 0.0))[0]
            frame[self._regressor(kind)] = mask.astype(float)
        return frame

    @staticmethod
    def _regressor(kind: str) -> str:
        return "event_" + "".join(c if c.isalnum() else "_" for c in kind)

    def _build(self, n_changepoints: int, daily_order: int) -> Any:
        from prophet import Prophet

        _quiet_stan()
        model: Any = Prophet(
            growth="linear", yearly_seasonality=False, weekly_seasonality=False, daily_seasonality=False,
            changepoint_prior_scale=self.changepoint_prior_scale, seasonality_prior_scale=10.0,
            n_changepoints=n_changepoints, changepoint_range=0.9, uncertainty_samples=0,
            scaling=self.scaling,
        )
        model.stan_backend.model = _FastStanData(model.stan_backend.model)
        model.stan_backend.newton_fallback = False
        model.add_seasonality("weekly", period=7, fourier_order=self.weekly_order)
        model.add_seasonality("daily_weekday", period=1, fourier_order=daily_order, condition_name="weekday")
        model.add_seasonality("daily_weekend", period=1, fourier_order=daily_order, condition_name="weekend")
        # Fourier terms have no mean and cannot step at midnight: the weekend's level is its own term.
        model.add_regressor("weekend_level", prior_scale=10.0, standardize=False)
        for kind in self._kinds:
            model.add_regressor(self._regressor(kind), prior_scale=10.0, standardize=False)
        return model

    def fit(self, history: pd.Series, events: pd.DataFrame | None = None) -> Self:

        history = self._start_fit(history)
        self._events = events
        observed = history.notna().to_numpy()
        coverage = event_coverage(time_index(history), self.step, events)
        # A regressor needs observed buckets both inside and outside the events to be estimable.
        self._kinds = sorted(k for k, (mask, _) in coverage.items()
                             if (mask & observed).any() and (~mask & observed).any())
        # Few changepoints: with two weeks of data, a flexible trend soaks up the weekly cycle.
        weeks = valid_span(history, self.step) / WEEK
        n_changepoints = max(1, min(25, round(weeks * self.changepoints_per_week)))
        daily_order = self.daily_order or (6 if self.steps_per_day <= 24 else 10)
        frame = self._frame(time_index(history))
        frame["y"] = np.log1p(history.clip(lower=0).to_numpy())
        train = frame[observed]
        try:
            model = self._build(n_changepoints, daily_order)
            model.fit(train, algorithm=self.algorithm, iter=10000)
        except RuntimeError:
            # A line search that stalls ends the fit with an error although the iterate is usually usable.
            # Prophet's own fallback (Newton) takes tens of seconds on 4,000 rows; accepting the stalled
            # iterate costs nothing, and the backtest still judges the result.
            model = self._build(n_changepoints, daily_order)
            model.fit(train, algorithm=self.algorithm, iter=10000, require_converged=False)
        self._model = model
        fitted = model.predict(train)["yhat"].to_numpy()
        self._resid_q = log_quantiles(train["y"].to_numpy() - fitted)
        return self

    def predict(self, horizon: timedelta) -> Forecast:
        history = self._fitted_history()
        ds = future_index(history, horizon, self.step)
        pred = self._model.predict(self._frame(ds))["yhat"].to_numpy()
        yhat = np.clip(np.expm1(pred), 0, None)
        # Events of kinds the model never saw: apply their stated lift.
        for kind, (mask, lift) in event_coverage(ds, self.step, self._events).items():
            if kind not in self._kinds and lift > 0:
                yhat = np.where(mask, yhat * (1 + lift), yhat)
        n = np.arange(len(ds))
        # In-sample residuals of a smooth model resemble its out-of-sample errors; add slow drift growth.
        widen = np.sqrt(1 + n / (len(history) or 1))
        lower, upper = band(yhat, self._resid_q[0] * widen, self._resid_q[1] * widen)
        extra = {"events": float(len(self._kinds))}
        return Forecast(ds=ds, yhat=yhat, lower=lower, upper=upper, model=self.name, extra=extra)


_CLASSES: dict[str, type[_Base]] = {
    "prophet": ProphetForecaster,
    "seasonal-naive": SeasonalNaiveForecaster,
    "holt-winters": HoltWintersForecaster,
    "seasonal-median": SeasonalMedianForecaster,
    "mstl": MSTLForecaster,
    "harmonic": HarmonicForecaster,
}


def make_forecaster(name: str, *, step: timedelta) -> Forecaster:
    check_model_name(name)
    if name == "auto":
        raise InputError("model 'auto' is a selection, not a forecaster: use fit_predict('auto', ...)")
    return make_candidate(name, step=step)


def make_candidate(name: str, *, step: timedelta) -> Forecaster:
    """Any forecaster `auto` may use, including those a scaler cannot name (seasonal-median, mstl, harmonic)."""
    if name not in _CLASSES:
        raise InputError(f"unknown forecaster {name!r}: choose one of {', '.join(_CLASSES)}")
    forecaster: Forecaster = _CLASSES[name](step=step)  # type: ignore[assignment]
    return forecaster


def requirement_of(name: str, history: pd.Series, step: timedelta) -> str | None:
    """None when model `name` can fit `history`, else the reason it cannot."""
    return _CLASSES[name](step=step).requirement(history)


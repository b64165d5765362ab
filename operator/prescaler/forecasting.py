"""Forecasters behind one interface. Pure: takes data, returns data; no kopf/kubernetes/sqlalchemy."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import multiprocessing
import multiprocessing.context
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, Protocol, Self, cast

import numpy as np
import pandas as pd

from prescaler.errors import InputError, PrescalerError


@dataclass(frozen=True)
class Forecast:
    """Predicted load per step; `ds` is a regular UTC DatetimeIndex (bucket starts)."""

    ds: pd.DatetimeIndex
    yhat: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    model: str
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"ds": self.ds, "yhat": self.yhat, "lower": self.lower, "upper": self.upper})


class Forecaster(Protocol):
    name: str

    def fit(self, history: pd.Series, events: pd.DataFrame | None = None) -> Self: ...

    def predict(self, horizon: timedelta) -> Forecast: ...


MODEL_NAMES = ("auto", "prophet", "seasonal-naive", "holt-winters")
# Order = preference when no backtest can decide.
CANDIDATES = ("prophet", "holt-winters", "seasonal-naive")
AUTO_FOLDS = 3
SCORE_FOLDS = 2
DAY = timedelta(days=1)
WEEK = timedelta(days=7)
MIN_HISTORY = timedelta(days=2)
# A window of "14d" whose newest buckets have not arrived yet still counts as two weeks.
_SPAN_TOLERANCE = 0.95
# Holt-Winters takes a weekly season up to this many steps per week (a 30-minute step).
_HW_WEEKLY_MAX_STEPS = 336
# Central 80% prediction band.
_BAND_QUANTILES = (0.10, 0.90)

# Prophet and cmdstanpy log every fit at INFO, and prophet.plot complains about plotly at import.
for _logger in ("cmdstanpy", "prophet", "prophet.plot", "prophet.forecaster", "prophet.models"):
    logging.getLogger(_logger).setLevel(logging.CRITICAL)


def _quiet_stan() -> None:
    # cmdstanpy configures its logger (level DEBUG, own handler) on first use: do that first, then mute.
    from cmdstanpy.utils import get_logger

    get_logger()
    for name in ("cmdstanpy", "prophet"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class ForecastUnavailable(PrescalerError):
    """No forecaster can fit this history (too little data); the message says why."""


class FitTimeout(PrescalerError):
    """A fit ran longer than its time budget and was killed."""


def check_model_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise InputError(f"unknown forecast model {name!r}: choose one of {', '.join(MODEL_NAMES)}")


# ---------------------------------------------------------------------------------------------------------
# History helpers


def _days(delta: timedelta) -> str:
    days = delta / DAY
    if days >= 14 and days % 7 == 0:
        return f"{days / 7:g} weeks"
    return f"{days:.3g} day" + ("" if days == 1 else "s")


def _prepare(history: pd.Series) -> pd.Series:
    """Sorted float series on a regular UTC grid (missing rows become NaN)."""
    if not isinstance(history.index, pd.DatetimeIndex):
        raise InputError("history must be indexed by timestamps (a DatetimeIndex)")
    series = history.astype(float).sort_index()
    index = _index(series)
    series.index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    if series.index.has_duplicates:
        raise InputError("history has duplicate timestamps")
    if len(series) >= 2:
        step = _infer_step(series)
        grid = pd.date_range(series.index[0], series.index[-1], freq=step)
        if len(grid) != len(series) or not grid.equals(series.index):
            series = series.reindex(grid)
    return series


def _index(series: pd.Series) -> pd.DatetimeIndex:
    return cast(pd.DatetimeIndex, series.index)


def _utc(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _infer_step(history: pd.Series) -> timedelta:
    index = _index(history)
    if len(index) < 2:
        raise ForecastUnavailable(f"history has {len(index)} bucket(s): cannot tell the step")
    diffs = np.diff(index.asi8)
    step_ns = int(np.min(diffs[diffs > 0])) if (diffs > 0).any() else 0
    if step_ns <= 0:
        raise InputError("history timestamps are not increasing")
    return pd.Timedelta(step_ns, unit="ns").to_pytimedelta()


def _steps(delta: timedelta, step: timedelta) -> int:
    return max(1, math.ceil(delta / step))


def _valid_span(history: pd.Series, step: timedelta) -> timedelta:
    """Time between the first and the last non-missing bucket (inclusive)."""
    valid = history.dropna()
    if valid.empty:
        return timedelta(0)
    return (valid.index[-1] - valid.index[0]).to_pytimedelta() + step


def _check_minimum(history: pd.Series, step: timedelta) -> None:
    observed = int(history.notna().sum()) * step
    if observed < MIN_HISTORY * _SPAN_TOLERANCE:
        raise ForecastUnavailable(
            f"history has {_days(observed)} of data < {_days(MIN_HISTORY)} needed for any forecast")


def _future_index(history: pd.Series, horizon: timedelta, step: timedelta) -> pd.DatetimeIndex:
    return pd.date_range(history.index[-1] + step, periods=_steps(horizon, step), freq=step)


def _fill_seasonal(values: np.ndarray, season: int) -> np.ndarray:
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


def _band(yhat: np.ndarray, lo_log: np.ndarray, hi_log: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply log-space error quantiles to a forecast: errors of web traffic scale with its level."""
    base = np.log1p(np.clip(yhat, 0, None))
    lower = np.clip(np.expm1(base + np.minimum(lo_log, 0)), 0, None)
    upper = np.expm1(base + np.maximum(hi_log, 0))
    return np.minimum(lower, yhat), np.maximum(upper, yhat)


def _log_quantiles(errors: np.ndarray) -> tuple[float, float]:
    errors = errors[np.isfinite(errors)]
    if errors.size == 0:
        return 0.0, 0.0
    lo, hi = np.quantile(errors, _BAND_QUANTILES)
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------------------
# Events → per-bucket indicators


def _event_coverage(index: pd.DatetimeIndex, step: timedelta, events: pd.DataFrame | None
                    ) -> dict[str, tuple[np.ndarray, float]]:
    """Per event kind: which buckets an event overlaps, and the largest stated lift (fraction)."""
    result: dict[str, tuple[np.ndarray, float]] = {}
    if events is None or events.empty or len(index) == 0:
        return result
    starts = index.asi8
    ends = starts + int(pd.Timedelta(step).value)
    for row in events.itertuples(index=False):
        kind = str(getattr(row, "kind", None) or getattr(row, "name", "event"))
        start, end = _utc(row.start), _utc(row.end)
        covered = (starts < end.value) & (ends > start.value)
        lift = getattr(row, "lift_percent", None)
        lift_frac = float(lift) / 100 if lift is not None and pd.notna(lift) else 0.0
        mask, best = result.get(kind, (np.zeros(len(index), dtype=bool), 0.0))
        result[kind] = (mask | covered, max(best, lift_frac))
    return result


# ---------------------------------------------------------------------------------------------------------
# Forecasters


class _Base:
    name = "base"

    def __init__(self, *, step: timedelta) -> None:
        self.step = step
        self.steps_per_day = max(1, round(DAY / step))
        self._history: pd.Series | None = None

    def requirement(self, history: pd.Series) -> str | None:
        """None when this model can fit `history`, else the reason it cannot."""
        try:
            _check_minimum(history, self.step)
        except ForecastUnavailable as exc:
            return str(exc)
        return None

    def _start_fit(self, history: pd.Series) -> pd.Series:
        history = _prepare(history)
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
        return WEEK if _valid_span(history, self.step) >= (WEEK + DAY) * _SPAN_TOLERANCE else DAY

    def requirement(self, history: pd.Series) -> str | None:
        reason = super().requirement(history)
        if reason is not None:
            return reason
        season = self._season_for(history)
        span = _valid_span(history, self.step)
        # One season to copy plus a day to measure the copy's errors (the band).
        if span < (season + DAY) * _SPAN_TOLERANCE:
            return (f"history {_days(span)} < {_days(season + DAY)} needed for seasonal-naive "
                    f"({'weekly' if season == WEEK else 'daily'})")
        return None

    def fit(self, history: pd.Series, events: pd.DataFrame | None = None) -> Self:
        history = self._start_fit(history)
        season = self._season_for(history)
        s = _steps(season, self.step)
        self._season_steps = s
        raw = history.to_numpy()
        self._filled = _fill_seasonal(raw, s)
        # Empirical log errors of "same time k seasons earlier", k = 1, 2, ...: the band widens with the lead.
        logs = np.log1p(np.clip(raw, 0, None))
        self._errors = []
        k = 1
        while k * s < len(raw) and (k == 1 or np.isfinite(logs[k * s:] - logs[:-k * s]).sum() >= s):
            self._errors.append(_log_quantiles(logs[k * s:] - logs[:-k * s]))
            k += 1
        return self

    def predict(self, horizon: timedelta) -> Forecast:
        history = self._fitted_history()
        ds = _future_index(history, horizon, self.step)
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
        lower, upper = _band(yhat, lo, hi)
        note = "weekly" if s * self.step >= WEEK else "daily"
        return Forecast(ds=ds, yhat=yhat, lower=lower, upper=upper, model=self.name, note=note)


class HoltWintersForecaster(_Base):
    """Holt-Winters (statsmodels ExponentialSmoothing) on log1p(y).

    With two weeks of history at a step of 30 minutes or more: a weekly season, which carries each
    weekday's own daily shape (sMAPE 11.8% instead of 14.4% on the appserver trace, 4.0% instead of 4.2%
    on wikipedia). Otherwise (short history, or a weekly season of thousands of 5-minute states that the
    optimiser handles badly): damped trend and a daily season, after removing each weekday's mean level
    (from one week of history on).
    """

    name = "holt-winters"

    def __init__(self, *, step: timedelta) -> None:
        super().__init__(step=step)
        self._fit: Any = None
        self._dow = np.zeros(7)
        self._tail = 0
        self._resid_q = (0.0, 0.0)
        self._alpha = 0.5
        self._season = self.steps_per_day

    def _weekly(self, history: pd.Series) -> bool:
        return (7 * self.steps_per_day <= _HW_WEEKLY_MAX_STEPS
                and _valid_span(history, self.step) >= 2 * WEEK * _SPAN_TOLERANCE)

    def requirement(self, history: pd.Series) -> str | None:
        reason = super().requirement(history)
        if reason is not None:
            return reason
        span = _valid_span(history, self.step)
        # statsmodels' heuristic start needs two full seasons of observed (not filled) buckets.
        if span < 2 * DAY:
            return f"history {_days(span)} < 2 days needed for holt-winters daily season"
        return None

    def _day_of_week_levels(self, history: pd.Series, logs: np.ndarray) -> np.ndarray:
        """Mean log level of each weekday relative to a centred one-week average (0 below a full week).

        A daily season alone forecasts Monday from Sunday; removing each weekday's level first lets the
        daily season carry only the shape of the day.
        """
        if _valid_span(history, self.step) < WEEK * _SPAN_TOLERANCE:
            return np.zeros(7)
        week = 7 * self.steps_per_day
        smooth = pd.Series(logs).rolling(week, center=True, min_periods=1).mean().to_numpy()
        observed = history.notna().to_numpy()
        dow = _index(history).dayofweek.to_numpy()
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
        values = _fill_seasonal(observed_part.to_numpy(), self._season)
        # Seasonal swings of web traffic scale with its level: model log1p(y) additively (= multiplicative).
        logs = np.log1p(np.clip(values, 0, None))
        self._dow = np.zeros(7) if weekly else self._day_of_week_levels(observed_part, logs)
        target = logs - self._dow[_index(observed_part).dayofweek]
        # With a weekly season the damped trend fitted to ~0 on the traces and cost 6x the fit time.
        model = ExponentialSmoothing(
            target, trend=None if weekly else "add", damped_trend=not weekly, seasonal="add",
            seasonal_periods=self._season, initialization_method="heuristic",
        )
        self._fit = model.fit(optimized=True)
        resid = target - np.asarray(self._fit.fittedvalues)
        observed = observed_part.notna().to_numpy()
        self._resid_q = _log_quantiles(resid[observed][self._season:])
        self._alpha = float(self._fit.params.get("smoothing_level", 0.5) or 0.5)
        return self

    def predict(self, horizon: timedelta) -> Forecast:
        history = self._fitted_history()
        ds = _future_index(history, horizon, self.step)
        ahead = np.asarray(self._fit.forecast(self._tail + len(ds)), dtype=float)[self._tail:]
        pred = ahead + self._dow[ds.dayofweek]
        yhat = np.clip(np.expm1(pred), 0, None)
        # One-step residuals understate h-step errors: widen like simple exponential smoothing, at most
        # one season ahead (seasonal traffic errors stop growing once the season repeats).
        h = np.minimum(np.arange(len(ds)) + self._tail, self._season)
        widen = np.sqrt(1 + h * self._alpha**2)
        lower, upper = _band(yhat, self._resid_q[0] * widen, self._resid_q[1] * widen)
        note = "weekly season" if self._season > self.steps_per_day else "daily season"
        return Forecast(ds=ds, yhat=yhat, lower=lower, upper=upper, model=self.name, note=note)


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
        span = _valid_span(history, self.step)
        # One full week makes weekly terms identifiable; requiring two would keep prophet out of the
        # backtest folds of the common 14-day history.
        if span < WEEK * _SPAN_TOLERANCE:
            return f"history {_days(span)} < 1 week needed for prophet weekly seasonality"
        return None

    def _frame(self, index: pd.DatetimeIndex) -> pd.DataFrame:
        naive = index.tz_convert("UTC").tz_localize(None)
        frame = pd.DataFrame({"ds": naive})
        weekend = naive.dayofweek >= 5
        frame["weekend"] = weekend
        frame["weekday"] = ~weekend
        frame["weekend_level"] = weekend.astype(float)
        coverage = _event_coverage(index, self.step, self._events)
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
        coverage = _event_coverage(_index(history), self.step, events)
        # A regressor needs observed buckets both inside and outside the events to be estimable.
        self._kinds = sorted(k for k, (mask, _) in coverage.items()
                             if (mask & observed).any() and (~mask & observed).any())
        # Few changepoints: with two weeks of data, a flexible trend soaks up the weekly cycle.
        weeks = _valid_span(history, self.step) / WEEK
        n_changepoints = max(1, min(25, round(weeks * self.changepoints_per_week)))
        daily_order = self.daily_order or (6 if self.steps_per_day <= 24 else 10)
        frame = self._frame(_index(history))
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
        self._resid_q = _log_quantiles(train["y"].to_numpy() - fitted)
        return self

    def predict(self, horizon: timedelta) -> Forecast:
        history = self._fitted_history()
        ds = _future_index(history, horizon, self.step)
        pred = self._model.predict(self._frame(ds))["yhat"].to_numpy()
        yhat = np.clip(np.expm1(pred), 0, None)
        # Events of kinds the model never saw: apply their stated lift.
        for kind, (mask, lift) in _event_coverage(ds, self.step, self._events).items():
            if kind not in self._kinds and lift > 0:
                yhat = np.where(mask, yhat * (1 + lift), yhat)
        n = np.arange(len(ds))
        # In-sample residuals of a smooth model resemble its out-of-sample errors; add slow drift growth.
        widen = np.sqrt(1 + n / (len(history) or 1))
        lower, upper = _band(yhat, self._resid_q[0] * widen, self._resid_q[1] * widen)
        extra = {"events": float(len(self._kinds))}
        return Forecast(ds=ds, yhat=yhat, lower=lower, upper=upper, model=self.name, extra=extra)


_CLASSES: dict[str, type[_Base]] = {
    "prophet": ProphetForecaster,
    "seasonal-naive": SeasonalNaiveForecaster,
    "holt-winters": HoltWintersForecaster,
}


def make_forecaster(name: str, *, step: timedelta) -> Forecaster:
    check_model_name(name)
    if name == "auto":
        raise InputError("model 'auto' is a selection, not a forecaster: use fit_predict('auto', ...)")
    forecaster: Forecaster = _CLASSES[name](step=step)  # type: ignore[assignment]
    return forecaster


def _requirement(name: str, history: pd.Series, step: timedelta) -> str | None:
    return _CLASSES[name](step=step).requirement(history)


# ---------------------------------------------------------------------------------------------------------
# Error metrics


def _aligned(actual: Any, predicted: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(actual, dtype=float).ravel()
    p = np.asarray(predicted, dtype=float).ravel()
    if a.shape != p.shape:
        raise ValueError(f"actual has {a.size} values, predicted {p.size}")
    keep = np.isfinite(a) & np.isfinite(p)
    return a[keep], p[keep]


def smape(actual: Any, predicted: Any) -> float:
    """Symmetric MAPE in percent (0-200); a bucket where both are 0 counts as a perfect forecast."""
    a, p = _aligned(actual, predicted)
    if a.size == 0:
        return float("nan")
    denom = np.abs(a) + np.abs(p)
    ratio = np.divide(2 * np.abs(a - p), denom, out=np.zeros_like(denom), where=denom > 0)
    return float(ratio.mean() * 100)


def mape(actual: Any, predicted: Any) -> float:
    """MAPE in percent over buckets whose actual is not zero."""
    a, p = _aligned(actual, predicted)
    keep = a != 0
    if not keep.any():
        return float("nan")
    return float(np.mean(np.abs(a[keep] - p[keep]) / np.abs(a[keep])) * 100)


def mase(actual: Any, predicted: Any, train: Any, season: int) -> float:
    """Mean absolute error scaled by the in-sample MAE of the seasonal-naive forecast (lag `season`)."""
    a, p = _aligned(actual, predicted)
    t = np.asarray(train, dtype=float).ravel()
    if a.size == 0 or season < 1 or t.size <= season:
        return float("nan")
    diffs = np.abs(t[season:] - t[:-season])
    diffs = diffs[np.isfinite(diffs)]
    scale = float(diffs.mean()) if diffs.size else 0.0
    if scale == 0:
        return float("nan")
    return float(np.mean(np.abs(a - p)) / scale)


# ---------------------------------------------------------------------------------------------------------
# Backtest and selection


@dataclass
class _Fold:
    """One backtest window: its first row in the history, the actual values and the forecast for them."""

    split: int
    actual: np.ndarray
    forecast: Forecast

    @property
    def smape(self) -> float:
        return smape(self.actual, self.forecast.yhat[: len(self.actual)])


def _fold_forecasts(history: pd.Series, name: str, horizon: timedelta, folds: int,
                    events: pd.DataFrame | None, reasons: list[str]) -> list[_Fold]:
    """Forecasts of the last `folds` windows of `horizon`, each from the data before it (oldest first).

    Windows whose training part is too short for the model are skipped, their reason added to `reasons`.
    """
    step = _infer_step(history)
    n = _steps(horizon, step)
    out: list[_Fold] = []
    for k in range(folds, 0, -1):
        split = len(history) - k * n
        if split <= 0:
            continue
        train, test = history.iloc[:split], history.iloc[split:split + n]
        if test.notna().sum() == 0:
            continue
        if name == "auto":
            try:
                forecast = fit_predict("auto", train, horizon, events=events).forecast
            except ForecastUnavailable as exc:
                reasons.append(str(exc))
                continue
        else:
            reason = _requirement(name, train, step)
            if reason is not None:
                reasons.append(reason)
                continue
            forecast = make_forecaster(name, step=step).fit(train, events=events).predict(horizon)
        out.append(_Fold(split, test.to_numpy(), forecast))
    return out


def _summarise(history: pd.Series, folds: list[_Fold]) -> dict[str, float]:
    season = max(1, round(DAY / _infer_step(history)))
    scores: list[tuple[float, float, float, float]] = []
    for fold in folds:
        actual, fc = fold.actual, fold.forecast
        pred = fc.yhat[: len(actual)]
        seen = np.isfinite(actual)
        inside = (actual >= fc.lower[: len(actual)]) & (actual <= fc.upper[: len(actual)])
        train = history.iloc[:fold.split].to_numpy()
        scores.append((smape(actual, pred), mape(actual, pred), mase(actual, pred, train, season),
                       float(inside[seen].mean() * 100) if seen.any() else float("nan")))
    arr = np.array(scores, dtype=float)
    with np.errstate(all="ignore"):
        means = [float(np.nanmean(col)) if np.isfinite(col).any() else float("nan") for col in arr.T]
    return {"smape": means[0], "mape": means[1], "mase": means[2], "coverage": means[3],
            "folds": float(len(scores))}


def rolling_origin_errors(history: pd.Series, name: str, *, horizon: timedelta, folds: int = 3,
                          events: pd.DataFrame | None = None) -> dict[str, float]:
    """Mean sMAPE/MAPE/MASE of `name` over the last `folds` windows of `horizon`, plus `coverage`: the
    percentage of actual values inside the forecast band, and `folds`: how many windows were scored.

    Each window's model sees only data before the window. "auto" backtests and combines inside each fold on
    that fold's own past, so its score is an honest out-of-sample score too. Folds whose training data is too short
    for the model are skipped; none left → ForecastUnavailable.
    """
    check_model_name(name)
    history = _prepare(history)
    reasons: list[str] = []
    scored = _fold_forecasts(history, name, horizon, folds, events, reasons)
    if not scored:
        why = reasons[-1] if reasons else f"history too short for a {_days(horizon)} backtest window"
        raise ForecastUnavailable(f"{name}: no backtest fold possible ({why})")
    return _summarise(history, scored)


@dataclass
class FitResult:
    forecast: Forecast
    model: str
    reason: str
    fit_seconds: float
    smape: float | None
    errors: dict[str, dict[str, float]] = field(default_factory=dict)


def _score(history: pd.Series, name: str, horizon: timedelta, folds: int,
           events: pd.DataFrame | None) -> dict[str, float] | None:
    """Backtest errors, or None when the model cannot fit the folds (too short, or its fit fails)."""
    try:
        return rolling_origin_errors(history, name, horizon=horizon, folds=folds, events=events)
    except Exception:
        # Too short, or its fit breaks on this series: not a candidate (the chosen model is refit anyway).
        return None


def _select(history: pd.Series, step: timedelta, names: list[str], horizon: timedelta, folds: int,
            events: pd.DataFrame | None, errors: dict[str, dict[str, float]]) -> str | None:
    """Lowest backtest sMAPE among `names`; fills `errors`. None when no model could be scored."""
    for name in names:
        if name not in errors:
            scored = _score(history, name, horizon, folds, events)
            if scored is not None and math.isfinite(scored["smape"]):
                errors[name] = scored
    ranked = sorted((n for n in names if n in errors), key=lambda n: errors[n]["smape"])
    return ranked[0] if ranked else None


def _ranking(names: list[str], errors: dict[str, dict[str, float]]) -> str:
    ranked = sorted((n for n in names if n in errors), key=lambda n: errors[n]["smape"])
    return " < ".join(f"{n} sMAPE {errors[n]['smape']:.1f}%" for n in ranked)


def _brief(exc: BaseException) -> str:
    """First line of an error, bounded: cmdstan failures carry its whole console log."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text[:200]}"


# ---------------------------------------------------------------------------------------------------------
# Auto: a combination of the models no other model beat in every backtest fold


@dataclass
class AutoPlan:
    """What `auto` decided from its backtest: members with weights (summing to 1), and why."""

    members: list[str]
    weights: list[float]
    horizon: timedelta
    dropped: dict[str, str]
    combined_smape: float


def _backtest_all(history: pd.Series, names: list[str], horizon: timedelta, folds: int,
                  events: pd.DataFrame | None) -> dict[str, dict[int, _Fold]]:
    """Per model, its backtest folds by first row; models whose fit breaks or that no fold fits are left out."""
    out: dict[str, dict[int, _Fold]] = {}
    for name in names:
        try:
            scored = _fold_forecasts(history, name, horizon, folds, events, [])
        except Exception:
            # Its fit breaks on this series: not a candidate.
            continue
        scored = [f for f in scored if math.isfinite(f.smape)]
        if scored:
            out[name] = {f.split: f for f in scored}
    return out


def _beaten_by(name: str, scored: dict[str, dict[int, _Fold]]) -> str | None:
    """The best model with a lower error than `name` in every fold both were scored on (two at least)."""
    mine = scored[name]
    ranked = sorted(scored.items(), key=lambda item: float(np.mean([f.smape for f in item[1].values()])))
    for other, theirs in ranked:
        common = sorted(mine.keys() & theirs.keys())
        if other != name and len(common) >= 2 and all(theirs[s].smape < mine[s].smape for s in common):
            return other
    return None


def combination_weights(scores: dict[str, float]) -> dict[str, float]:
    """Weights ∝ 1/backtest error (a model without any error takes all the weight, shared if several)."""
    perfect = [n for n, s in scores.items() if s <= 1e-9]
    if perfect:
        return {n: (1 / len(perfect) if n in perfect else 0.0) for n in scores}
    inverse = {n: 1 / s for n, s in scores.items()}
    total = sum(inverse.values())
    return {n: v / total for n, v in inverse.items()}


def combine(forecasts: list[Forecast], weights: list[float], model: str) -> Forecast:
    """Weighted mean of forecasts on the same grid; the band is the weighted mean of the members' bands,
    so it still contains yhat."""
    w = np.asarray(weights, dtype=float) / float(np.sum(weights))
    first = forecasts[0]
    for other in forecasts[1:]:
        if not other.ds.equals(first.ds):
            raise ValueError("forecasts to combine must share their timestamps")
    yhat = sum(wi * f.yhat for wi, f in zip(w, forecasts, strict=True))
    lower = sum(wi * f.lower for wi, f in zip(w, forecasts, strict=True))
    upper = sum(wi * f.upper for wi, f in zip(w, forecasts, strict=True))
    note = " + ".join(f"{wi:.2f} {f.model}" for wi, f in zip(w, forecasts, strict=True))
    return Forecast(ds=first.ds, yhat=np.asarray(yhat), lower=np.minimum(lower, yhat),
                    upper=np.maximum(upper, yhat), model=model, note=note)


def _auto_horizons(history: pd.Series, step: timedelta, names: list[str], horizon: timedelta,
                   select_horizon: timedelta | None) -> list[timedelta]:
    """Backtest windows as long as the forecast when every model fits the oldest one, else one day:
    1-day errors did not rank the models for a week ahead on the appserver trace."""
    if select_horizon is not None:
        return [select_horizon]
    short = min(horizon, DAY)
    if horizon <= short:
        return [short]
    oldest = history.iloc[: len(history) - AUTO_FOLDS * _steps(horizon, step)]
    if len(oldest) >= 2 and all(_requirement(n, oldest, step) is None for n in names):
        return [horizon, short]
    return [short]


def plan_auto(history: pd.Series, names: list[str], horizon: timedelta, *, events: pd.DataFrame | None = None,
              select_horizon: timedelta | None = None,
              errors: dict[str, dict[str, float]] | None = None) -> AutoPlan | None:
    """Backtest `names` on AUTO_FOLDS windows, drop every model that another beat in every window, and
    weight the rest by 1/sMAPE. None when no model could be backtested. Fills `errors` (per model)."""
    history = _prepare(history)
    step = _infer_step(history)
    errors = {} if errors is None else errors
    scored: dict[str, dict[int, _Fold]] = {}
    sel_h = horizon
    for sel_h in _auto_horizons(history, step, names, horizon, select_horizon):
        scored = _backtest_all(history, names, sel_h, AUTO_FOLDS, events)
        # Long windows only when every model got all of them; otherwise the ranking compares unlike folds.
        if all(len(scored.get(n, {})) == AUTO_FOLDS for n in names):
            break
    if not scored:
        return None
    for name, folds in scored.items():
        errors[name] = _summarise(history, list(folds.values()))
    dropped = {n: by for n in scored if (by := _beaten_by(n, scored)) is not None}
    kept = [n for n in scored if n not in dropped]
    if not kept:  # a cycle over different folds: fall back to the lowest mean error
        kept = [min(scored, key=lambda n: errors[n]["smape"])]
        dropped = {n: kept[0] for n in scored if n != kept[0]}
    weights = combination_weights({n: errors[n]["smape"] for n in kept})
    members = sorted((n for n in kept if weights[n] > 0), key=lambda n: -weights[n])
    common = set.intersection(*(set(scored[n]) for n in members))
    combined = [smape(scored[members[0]][s].actual,
                      sum(weights[n] * scored[n][s].forecast.yhat[: len(scored[n][s].actual)] for n in members))
                for s in sorted(common)]
    combined_smape = float(np.mean(combined)) if combined else errors[members[0]]["smape"]
    return AutoPlan(members=members, weights=[weights[n] for n in members], horizon=sel_h,
                    dropped=dropped, combined_smape=combined_smape)


def _auto_reason(plan: AutoPlan, names: list[str], errors: dict[str, dict[str, float]]) -> str:
    folds = int(max(errors[n]["folds"] for n in plan.members))
    text = f"auto: {_ranking(names, errors)} ({folds} backtest folds of {_days(plan.horizon)})"
    if len(plan.members) > 1:
        mix = " + ".join(f"{w:.2f} {n}" for n, w in zip(plan.members, plan.weights, strict=True))
        text += f"; combined {mix} (weights ∝ 1/sMAPE; combination sMAPE {plan.combined_smape:.1f}%)"
    else:
        text += f"; using {plan.members[0]}"
    if plan.dropped:
        text += "; dropped " + ", ".join(f"{n} (worse than {by} in every fold)" for n, by in plan.dropped.items())
    return text


def _fit_local(name: str, history: pd.Series, horizon: timedelta, events: pd.DataFrame | None,
               select_horizon: timedelta | None) -> FitResult:
    started = time.perf_counter()
    step = _infer_step(history)
    sel_h = select_horizon or min(horizon, DAY)
    errors: dict[str, dict[str, float]] = {}
    _check_minimum(history, step)
    requirements = {n: _requirement(n, history, step) for n in CANDIDATES}
    fittable = [n for n in CANDIDATES if requirements[n] is None]
    if not fittable:
        raise ForecastUnavailable("; ".join(r for r in requirements.values() if r))

    score: float | None = None
    if name == "auto":
        plan = plan_auto(history, fittable, horizon, events=events, select_horizon=select_horizon,
                         errors=errors)
        if plan is None:
            members, weights = [fittable[0]], [1.0]
            reason = f"auto: too little history to backtest a {_days(sel_h)} window: using {fittable[0]}"
        else:
            members, weights = plan.members, plan.weights
            reason = _auto_reason(plan, fittable, errors)
            score = plan.combined_smape
            skipped = [f"{n} ({requirements[n]})" for n in CANDIDATES if requirements[n]]
            if skipped:
                reason += "; not eligible: " + ", ".join(skipped)
    elif requirements[name] is None:
        members, weights, reason = [name], [1.0], f"{name} as configured"
    else:
        baselines = [n for n in fittable if n != "prophet"]
        chosen = _select(history, step, baselines, sel_h, SCORE_FOLDS, events, errors) or baselines[0]
        members, weights, reason = [chosen], [1.0], f"{requirements[name]}: using {chosen}"

    forecasts: list[Forecast] = []
    fitted: list[tuple[str, float]] = []
    failures: list[tuple[str, Exception]] = []
    for member, weight in zip(members, weights, strict=True):
        try:
            forecasts.append(make_forecaster(member, step=step).fit(history, events=events).predict(horizon))
            fitted.append((member, weight))
        except ForecastUnavailable:
            raise
        except Exception as exc:
            failures.append((member, exc))
    if not forecasts:
        member, error = failures[0]
        if member == "seasonal-naive":
            raise error
        reason = f"{member} fit failed ({_brief(error)}): using seasonal-naive"
        fitted = [("seasonal-naive", 1.0)]
        forecasts = [make_forecaster("seasonal-naive", step=step).fit(history, events=events).predict(horizon)]
        score = None
    elif failures:
        reason += "; " + ", ".join(f"{m} fit failed ({_brief(e)})" for m, e in failures)
        score = None
    if len(fitted) == 1:
        chosen = fitted[0][0]
        forecast = forecasts[0]
        if chosen == "seasonal-naive" and forecast.note:
            reason = reason.replace("using seasonal-naive", f"using seasonal-naive ({forecast.note})")
        if chosen not in errors:
            scored = _score(history, chosen, sel_h, SCORE_FOLDS, events)
            if scored is not None:
                errors[chosen] = scored
        if score is None:
            score = errors.get(chosen, {}).get("smape")
    else:
        chosen = "auto(" + "+".join(m for m, _ in fitted) + ")"
        forecast = combine(forecasts, [w for _, w in fitted], chosen)
    return FitResult(forecast=forecast, model=chosen, reason=reason,
                     fit_seconds=time.perf_counter() - started,
                     smape=score if score is not None and math.isfinite(score) else None, errors=errors)


# ---------------------------------------------------------------------------------------------------------
# Fits in a child process with a hard time limit


_PRELOAD = ["prescaler.forecasting"]


def _mp_context() -> multiprocessing.context.BaseContext:
    """Fork when single-threaded (instant start); else a forkserver with this module preloaded.

    Forking a multi-threaded process (the operator's event loop and its threads) can deadlock the child.
    The forkserver is a clean single-threaded process that imported prophet once, so its children start
    fast and never re-import the caller's __main__ (spawn-safe).
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def _child_main(conn: Any, args: tuple[Any, ...]) -> None:
    # Own process group, so a timeout can kill the fit and the cmdstan process it started together.
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    conn.send(("started", None))
    try:
        conn.send(("ok", _fit_local(*args)))
    except BaseException as exc:
        conn.send(("error", exc))
    finally:
        conn.close()


def _kill(process: multiprocessing.process.BaseProcess) -> None:
    pid = process.pid
    if pid is None:
        return
    try:
        if hasattr(os, "killpg"):
            os.killpg(pid, signal.SIGKILL)
        else:
            process.kill()
    except ProcessLookupError:
        pass
    process.join(5)


def _fit_with_timeout(args: tuple[Any, ...], timeout_s: float, start_limit_s: float = 60.0) -> FitResult:
    """Run `_fit_local(*args)` in a child; kill it when the fit takes longer than `timeout_s`.

    The clock starts once the child runs, so a cold forkserver start does not eat the fit's budget.
    """
    ctx = _mp_context()
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child_main, args=(child, args), daemon=True)  # type: ignore[attr-defined]
    process.start()
    child.close()
    try:
        if not parent.poll(start_limit_s):
            raise FitTimeout(f"fit process did not start within {start_limit_s:g}s")
        parent.recv()
        if not parent.poll(timeout_s):
            raise FitTimeout(f"fit exceeded the {timeout_s:g}s timeout")
        status, payload = parent.recv()
    except EOFError:
        raise RuntimeError(f"fit process died (exit code {process.exitcode})") from None
    finally:
        if process.is_alive():
            _kill(process)
        else:
            process.join()
        parent.close()
    if status == "error":
        raise payload
    result: FitResult = payload
    return result


def fit_predict(name: str, history: pd.Series, horizon: timedelta, *, events: pd.DataFrame | None = None,
                timeout_s: float | None = None, select_horizon: timedelta | None = None) -> FitResult:
    """Fit `name` on `history` and forecast `horizon`.

    "auto" backtests every eligible model (AUTO_FOLDS windows as long as the horizon when history allows,
    else 1-day windows), drops each model another beat in every window, and forecasts the 1/sMAPE-weighted
    mean of the rest (`model` "auto(a+b)"; a lone survivor keeps its own name).

    Falls back to a baseline, with the reason, when history is too short for the model, when the fit
    fails, or when it exceeds `timeout_s` (enforced in a child process; None = in-process, no limit).
    Raises ForecastUnavailable when no model can fit at all.
    """
    check_model_name(name)
    if horizon <= timedelta(0):
        raise InputError(f"forecast horizon must be positive, got {horizon}")
    history = _prepare(history)
    if history.notna().sum() == 0:
        raise ForecastUnavailable("history has no data")
    args = (name, history, horizon, events, select_horizon)
    if timeout_s is None:
        return _fit_local(*args)
    started = time.perf_counter()
    try:
        return _fit_with_timeout(args, timeout_s)
    except (ForecastUnavailable, InputError):
        raise
    except Exception as exc:
        why = str(exc) if isinstance(exc, FitTimeout) else f"fit failed ({_brief(exc)})"
        result = _fit_local("seasonal-naive", history, horizon, events, select_horizon)
        result.reason = f"{name}: {why}: using seasonal-naive ({result.forecast.note})"
        result.fit_seconds = time.perf_counter() - started
        return result


# ---------------------------------------------------------------------------------------------------------
# A process pool for the operator


def _pool_task(name: str, history: pd.Series, horizon: timedelta, events: pd.DataFrame | None,
               select_horizon: timedelta | None, timeout_s: float | None) -> FitResult:
    return fit_predict(name, history, horizon, events=events, timeout_s=timeout_s,
                       select_horizon=select_horizon)


class FitPool:
    """Fits in worker processes, so the caller's event loop never runs one.

    Workers come from a forkserver that preloaded this module (or spawn where there is none): safe to
    create from a multi-threaded process. With `timeout_s`, each fit is bounded as in `fit_predict`.
    """

    def __init__(self, max_workers: int = 2, *, timeout_s: float | None = None) -> None:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            ctx.set_forkserver_preload(_PRELOAD)
        self.timeout_s = timeout_s
        self._executor = concurrent.futures.ProcessPoolExecutor(max_workers=max_workers, mp_context=ctx)

    def submit(self, name: str, history: pd.Series, horizon: timedelta, events: pd.DataFrame | None = None,
               select_horizon: timedelta | None = None) -> concurrent.futures.Future[FitResult]:
        check_model_name(name)
        return self._executor.submit(_pool_task, name, history, horizon, events, select_horizon,
                                     self.timeout_s)

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> FitPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

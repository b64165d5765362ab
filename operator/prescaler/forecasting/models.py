"""The forecasters: seasonal-naive, Holt-Winters and Prophet, each `fit(history)` → self, `predict(horizon)`.

Pure: takes data, returns data. statsmodels and prophet are imported by the fits that need them, so the
callers that only validate a model name stay light.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
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
        # With a weekly season the damped trend fitted to ~0 on the traces and cost 6x the fit time.
        model = ExponentialSmoothing(
            target, trend=None if weekly else "add", damped_trend=not weekly, seasonal="add",
            seasonal_periods=self._season, initialization_method="heuristic",
        )
        self._fit = model.fit(optimized=True)
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
}


def make_forecaster(name: str, *, step: timedelta) -> Forecaster:
    check_model_name(name)
    if name == "auto":
        raise InputError("model 'auto' is a selection, not a forecaster: use fit_predict('auto', ...)")
    forecaster: Forecaster = _CLASSES[name](step=step)  # type: ignore[assignment]
    return forecaster


def requirement_of(name: str, history: pd.Series, step: timedelta) -> str | None:
    """None when model `name` can fit `history`, else the reason it cannot."""
    return _CLASSES[name](step=step).requirement(history)


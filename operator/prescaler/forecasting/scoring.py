"""Backtest windows and what they say about a model: forecasts of the last windows each fitted on the data
before it, the pinball loss and band coverage of those forecasts (cross-fitted: each window's quantile and
band calibrated on the other windows), and the check that rejects a fit gone wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from prescaler.forecasting.accuracy import mape, mase, pinball, smape
from prescaler.forecasting.bands import calibrate_bands, log_residuals, quantile_offsets
from prescaler.forecasting.interface import Forecast
from prescaler.forecasting.models import make_candidate, requirement_of
from prescaler.forecasting.series import DAY, infer_step, steps

# A forecast or band above this multiple of the history's maximum is a fit gone wrong, not a prediction.
EXPLOSION_FACTOR = 3.0


@dataclass
class Fold:
    """One backtest window: its first row in the history, the actual values and the forecast for them."""

    split: int
    actual: np.ndarray
    forecast: Forecast

    @property
    def yhat(self) -> np.ndarray:
        return self.forecast.yhat[: len(self.actual)]

    @property
    def smape(self) -> float:
        return smape(self.actual, self.yhat)


def explosion_limit(history: pd.Series) -> tuple[float, float]:
    """The history's maximum and the level above which a forecast has exploded."""
    observed = history.to_numpy(dtype=float)
    observed = observed[np.isfinite(observed)]
    peak = float(observed.max()) if observed.size else 0.0
    return peak, EXPLOSION_FACTOR * max(peak, 1.0)


def exploded(forecast: Forecast, history: pd.Series, *, band: bool = True) -> str | None:
    """Why `forecast` is a fit gone wrong (values, or with `band` its band, beyond EXPLOSION_FACTOR × the
    history's maximum, or not finite), or None."""
    peak, limit = explosion_limit(history)
    arrays = (forecast.yhat, forecast.lower, forecast.upper) if band else (forecast.yhat,)
    if not all(np.isfinite(a).all() for a in arrays):
        return "forecast has values that are not finite"
    top_yhat, top_band = float(np.max(forecast.yhat, initial=0)), float(np.max(forecast.upper, initial=0))
    if top_yhat > limit:
        return f"forecast peak {top_yhat:,.0f} > {EXPLOSION_FACTOR:g}× the history's maximum {peak:,.0f}"
    if band and top_band > limit:
        return f"forecast band {top_band:,.0f} > {EXPLOSION_FACTOR:g}× the history's maximum {peak:,.0f}"
    return None


class Exploded(Exception):
    """A candidate's backtest forecast exploded; the message says how."""


def candidate_folds(history: pd.Series, name: str, horizon: timedelta, folds: int,
                     events: pd.DataFrame | None, reasons: list[str]) -> list[Fold]:
    """The model's forecasts of the last `folds` windows of `horizon`, each fitted on the data before it
    (oldest first). Windows too short for the model are skipped, their reason added to `reasons`.
    Raises Exploded when a window's forecast explodes."""
    step = infer_step(history)
    n = steps(horizon, step)
    out: list[Fold] = []
    for k in range(folds, 0, -1):
        split = len(history) - k * n
        if split <= 0:
            continue
        train, test = history.iloc[:split], history.iloc[split:split + n]
        if test.notna().sum() == 0:
            continue
        reason = requirement_of(name, train, step)
        if reason is not None:
            reasons.append(reason)
            continue
        forecast = make_candidate(name, step=step).fit(train, events=events).predict(horizon)
        # Only yhat is scored: a window's own band is never used (its errors calibrate the band), and a
        # model's band on the short history of an old window says nothing of the one it would get now.
        boom = exploded(forecast, train, band=False)
        if boom is not None:
            raise Exploded(f"{boom} in the backtest window from {history.index[split]:%Y-%m-%d %H:%M}")
        out.append(Fold(split, test.to_numpy(), forecast))
    return out


def _pairs(folds: list[Fold]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(f.actual, f.yhat) for f in folds]


def _quantile_forecast(yhat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    idx = np.minimum(np.arange(len(yhat)), len(offsets) - 1)
    return np.expm1(np.log1p(np.clip(yhat, 0, None)) + offsets[idx])


def cross_losses(pairs: list[tuple[np.ndarray, np.ndarray]], step: timedelta,
                 quantile: float) -> list[tuple[float, float]]:
    """Per window, the pinball loss summed over its buckets of its `quantile` forecast (its yhat shifted by
    the `quantile` of the log errors of the other windows, of itself when it is the only one) and its load
    summed over the same buckets."""
    residuals = [log_residuals(a, y) for a, y in pairs]
    out = []
    for i, (a, y) in enumerate(pairs):
        others = [r for j, r in enumerate(residuals) if j != i] or residuals
        predicted = _quantile_forecast(y, quantile_offsets(others, step, quantile))
        seen = np.isfinite(a) & np.isfinite(predicted)
        loss = pinball(a[seen], predicted[seen], quantile) * int(seen.sum()) if seen.any() else 0.0
        out.append((loss, float(np.abs(a[seen]).sum())))
    return out


def cross_pinball(pairs: list[tuple[np.ndarray, np.ndarray]], step: timedelta, quantile: float) -> float:
    """Pinball loss, in % of the mean load, of each window's `quantile` forecast (see `cross_losses`)."""
    losses = cross_losses(pairs, step, quantile)
    load = sum(w for _, w in losses)
    return sum(x for x, _ in losses) / load * 100 if load > 0 else float("nan")


def cross_coverage(pairs: list[tuple[np.ndarray, np.ndarray]], step: timedelta) -> float:
    """% of actual values inside each window's band calibrated on the other windows (NaN with one window)."""
    if len(pairs) < 2:
        return float("nan")
    residuals = [log_residuals(a, y) for a, y in pairs]
    inside, seen = 0, 0
    for i, (a, y) in enumerate(pairs):
        cal = calibrate_bands([r for j, r in enumerate(residuals) if j != i], step)
        if cal is None:
            continue
        ok = np.isfinite(a)
        lower, upper = cal.bounds(y)
        inside += int(((a >= lower) & (a <= upper))[ok].sum())
        seen += int(ok.sum())
    return inside / seen * 100 if seen else float("nan")


def summarise(history: pd.Series, folds: list[Fold], quantile: float) -> dict[str, float]:
    """Mean sMAPE/MAPE/MASE over the windows, cross-fitted pinball loss and band coverage (see above)."""
    step = infer_step(history)
    season = max(1, round(DAY / step))
    scores = [(smape(f.actual, f.yhat), mape(f.actual, f.yhat),
               mase(f.actual, f.yhat, history.iloc[:f.split].to_numpy(), season)) for f in folds]
    arr = np.array(scores, dtype=float)
    with np.errstate(all="ignore"):
        means = [float(np.nanmean(col)) if np.isfinite(col).any() else float("nan") for col in arr.T]
    pairs = _pairs(folds)
    return {"smape": means[0], "mape": means[1], "mase": means[2],
            "pinball": cross_pinball(pairs, step, quantile), "coverage": cross_coverage(pairs, step),
            "folds": float(len(folds))}

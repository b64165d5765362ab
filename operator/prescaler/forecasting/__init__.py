"""Forecasters behind one interface, how to choose among them, and fits kept off the caller's process.

- `interface`: `Forecast`, the `Forecaster` protocol, `FitResult` and the errors callers map;
- `series`: history on a regular grid and the checks every model shares;
- `models`: seasonal-naive, Holt-Winters, Prophet (a scaler can name them), seasonal-median, MSTL and
  harmonic (`auto` uses them too); `make_forecaster`, `make_candidate`, `check_model_name`;
- `accuracy`: sMAPE, MAPE, MASE, pinball loss;
- `bands`: bands calibrated on the model's own backtest errors (split-conformal by lead time);
- `scoring`: backtest windows, their cross-fitted pinball loss and band coverage, exploding fits;
- `selection`: rolling-origin backtest errors, `auto`'s plan and combination (ranked by pinball loss at the
  provisioning quantile; exploding fits rejected), in-process fits;
- `isolation`: `mp_context`, worker processes that can be killed, `fit_predict` with a hard time limit;
- `pool`: `FitPool`, the operator's workers, each fit killed at its deadline.

The public names below load their module on first use (PEP 562): importing `prescaler.forecasting.interface`
runs this file, and the planner must not pay for numpy-heavy model code, statsmodels or prophet.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prescaler.forecasting.accuracy import mape, mase, pinball, relative_pinball, smape
    from prescaler.forecasting.bands import BAND_COVERAGE, UPPER_QUANTILE, BandCalibration, calibrate_bands
    from prescaler.forecasting.interface import (
        MODEL_NAMES,
        FitResult,
        FitTimeout,
        Forecast,
        Forecaster,
        ForecastUnavailable,
    )
    from prescaler.forecasting.isolation import fit_predict
    from prescaler.forecasting.models import (
        HarmonicForecaster,
        HoltWintersForecaster,
        MSTLForecaster,
        ProphetForecaster,
        SeasonalMedianForecaster,
        SeasonalNaiveForecaster,
        check_model_name,
        make_candidate,
        make_forecaster,
    )
    from prescaler.forecasting.pool import FitPool
    from prescaler.forecasting.scoring import EXPLOSION_FACTOR, exploded
    from prescaler.forecasting.selection import (
        AUTO_FOLDS,
        CANDIDATES,
        SCORE_FOLDS,
        AutoPlan,
        combination_weights,
        combine,
        plan_auto,
        rolling_origin_errors,
    )
    from prescaler.forecasting.series import DAY, MIN_HISTORY, WEEK

# Where each public name lives; `__all__` lists the same names (a test keeps the two in step).
_MODULE_OF = {
    "MODEL_NAMES": "interface", "FitResult": "interface", "FitTimeout": "interface", "Forecast": "interface",
    "Forecaster": "interface", "ForecastUnavailable": "interface",
    "DAY": "series", "MIN_HISTORY": "series", "WEEK": "series",
    "HoltWintersForecaster": "models", "ProphetForecaster": "models", "SeasonalNaiveForecaster": "models",
    "SeasonalMedianForecaster": "models", "MSTLForecaster": "models", "HarmonicForecaster": "models",
    "check_model_name": "models", "make_forecaster": "models", "make_candidate": "models",
    "mape": "accuracy", "mase": "accuracy", "smape": "accuracy", "pinball": "accuracy",
    "relative_pinball": "accuracy",
    "BAND_COVERAGE": "bands", "UPPER_QUANTILE": "bands", "BandCalibration": "bands", "calibrate_bands": "bands",
    "AUTO_FOLDS": "selection", "CANDIDATES": "selection", "SCORE_FOLDS": "selection", "AutoPlan": "selection",
    "combination_weights": "selection", "combine": "selection", "plan_auto": "selection",
    "rolling_origin_errors": "selection",
    "EXPLOSION_FACTOR": "scoring", "exploded": "scoring",
    "fit_predict": "isolation",
    "FitPool": "pool",
}

__all__ = [
    "AUTO_FOLDS", "BAND_COVERAGE", "CANDIDATES", "DAY", "EXPLOSION_FACTOR", "MIN_HISTORY", "MODEL_NAMES",
    "SCORE_FOLDS", "UPPER_QUANTILE", "WEEK", "AutoPlan", "BandCalibration", "FitPool", "FitResult", "FitTimeout",
    "Forecast", "ForecastUnavailable", "Forecaster", "HarmonicForecaster", "HoltWintersForecaster",
    "MSTLForecaster",
    "ProphetForecaster", "SeasonalMedianForecaster", "SeasonalNaiveForecaster", "calibrate_bands",
    "check_model_name",
    "combination_weights", "combine", "exploded", "fit_predict", "make_candidate", "make_forecaster", "mape",
    "mase", "pinball", "plan_auto", "relative_pinball", "rolling_origin_errors", "smape",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    # Cached, so later look-ups (and monkeypatch's restore) see a plain module attribute.
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

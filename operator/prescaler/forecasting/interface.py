"""What the rest of the operator needs to know about forecasts, and nothing that fits one.

The planner, the database layer and the CRD validation import this module alone: it must stay free of the
models (prophet, statsmodels) and of process handling.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol, Self

import numpy as np
import pandas as pd

from prescaler.errors import PrescalerError

# The values of a scaler's `model` field; "auto" is a selection among the others, not a forecaster.
MODEL_NAMES = ("auto", "prophet", "seasonal-naive", "holt-winters")


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

    @functools.cached_property
    def ns(self) -> np.ndarray:
        """`ds` as int64 nanoseconds since the epoch: searched by every tick of every scaler, where pandas'
        own searchsorted costs tens of microseconds a call."""
        return np.asarray(pd.DatetimeIndex(self.ds).as_unit("ns").asi8)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"ds": self.ds, "yhat": self.yhat, "lower": self.lower, "upper": self.upper})


class Forecaster(Protocol):
    name: str

    def fit(self, history: pd.Series, events: pd.DataFrame | None = None) -> Self: ...

    def predict(self, horizon: timedelta) -> Forecast: ...


class ForecastUnavailable(PrescalerError):
    """No forecaster can fit this history (too little data); the message says why."""


class FitTimeout(PrescalerError):
    """A fit ran longer than its time budget and was killed."""


@dataclass
class FitResult:
    forecast: Forecast
    model: str
    reason: str
    fit_seconds: float
    smape: float | None
    errors: dict[str, dict[str, float]] = field(default_factory=dict)

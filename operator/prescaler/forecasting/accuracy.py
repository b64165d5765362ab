"""Forecast error measures: sMAPE, MAPE, MASE and pinball loss, ignoring buckets where either side is missing."""

from __future__ import annotations

from typing import Any

import numpy as np


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



def pinball(actual: Any, predicted: Any, quantile: float) -> float:
    """Mean pinball (quantile) loss of `predicted` as the `quantile` of `actual`: under-forecasts cost
    `quantile` per unit, over-forecasts 1 - `quantile`. NaN when no bucket has both values."""
    a, p = _aligned(actual, predicted)
    if a.size == 0:
        return float("nan")
    diff = a - p
    return float(np.mean(np.maximum(quantile * diff, (quantile - 1) * diff)))


def relative_pinball(actual: Any, predicted: Any, quantile: float) -> float:
    """Pinball loss in percent of the mean actual load, comparable across series of any size."""
    a, p = _aligned(actual, predicted)
    mean = float(np.mean(np.abs(a))) if a.size else 0.0
    if mean == 0:
        return float("nan")
    return pinball(a, p, quantile) / mean * 100

"""The sizing formulas: what load each sizing provisions for, from the forecast F, the observed load R and
the trust w (see `prescaler.sizing`). Arrays or floats in, arrays out.

- `trust_weighted_mean`: B_w = w·F + (1 − w)·R;
- `floor_plus_trusted_rise`: max(B_w, R) = R + w·max(0, F − R), the headroom sizing's load;
- `calibrated_load`: max(m·B_w, R), the service level's, the multiplier m on B_w and the floor under it;
- `SampleCapacity`: what `calibrated_load` leaves each sample of the record, for many multipliers at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from prescaler.sizing.samples import Samples

Values = np.ndarray | float


def trust_weighted_mean(forecast: Values, observed: Values, trust: Values) -> np.ndarray:
    """B_w = w·F + (1 − w)·R: the forecast trusted `trust`, the rest the observation."""
    f, r = np.asarray(forecast, dtype=float), np.asarray(observed, dtype=float)
    return np.asarray(trust * f + (1 - trust) * r)


def floor_plus_trusted_rise(forecast: Values, observed: Values, trust: Values) -> np.ndarray:
    """max(B_w, R) = R + w·max(0, F − R): the headroom sizing's load, the floor plus the trusted rise."""
    f, r = np.asarray(forecast, dtype=float), np.asarray(observed, dtype=float)
    return np.asarray(r + trust * np.maximum(0.0, f - r))


def calibrated_load(forecast: Values, observed: Values, trust: Values, multiplier: Values) -> np.ndarray:
    """max(m·B_w, R): the service level's load, the calibrated mean with the observed load under it."""
    mean = trust_weighted_mean(forecast, observed, trust)
    return np.asarray(np.maximum(multiplier * mean, np.asarray(observed, dtype=float)))


class SampleCapacity:
    """`calibrated_load` of usable samples, one row per decision column, for many multipliers: the multiplier
    search (`prescaler.sizing.service_level`) evaluates it a dozen times per trust and lead bucket."""

    def __init__(self, s: Samples, trust: float) -> None:
        stale = np.isnan(s.forecast)
        b = trust_weighted_mean(np.where(stale, 0.0, s.forecast), s.observed, trust)
        # A decision without a forecast does not limit its bucket: infinite capacity.
        self.b = np.ascontiguousarray(np.where(stale, np.inf, b).T)
        self.r = np.ascontiguousarray(np.where(stale, np.inf, s.observed).T)

    def capacity(self, multiplier: float | np.ndarray) -> np.ndarray:
        """Per row, the smallest capacity any of its decisions asked for (`multiplier`: one, or one per row)."""
        m = np.asarray(multiplier, dtype=float)
        cap = np.maximum(m * self.b[0], self.r[0])
        for j in range(1, len(self.b)):
            cap = np.minimum(cap, np.maximum(m * self.b[j], self.r[j]))
        return np.asarray(cap)


def sample_capacity(s: Samples, trust: float, multiplier: float | np.ndarray) -> np.ndarray:
    """Per usable row, the capacity the sizing leaves: the smallest any of its decisions asked for."""
    return SampleCapacity(s, trust).capacity(multiplier)

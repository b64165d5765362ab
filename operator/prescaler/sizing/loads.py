"""The sizing formulas: what load each sizing provisions for, from the forecast F, the observed load R and
the trust w (see `prescaler.sizing`). Arrays or floats in, arrays out.

- `trust_weighted_mean`: B_w = w·F + (1 − w)·R;
- `floor_plus_trusted_rise`: max(B_w, R) = R + w·max(0, F − R), the headroom sizing's load;
- `calibrated_load`: max(m·B_w, R), the service level's, the multiplier m on B_w and the floor under it;
- `SampleCapacity`: what `calibrated_load` leaves Ready in each sample of the record, for many multipliers at
  once.
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


def window_floor(observed: Values, rise: Values, multiplier: Values = 1.0) -> np.ndarray:
    """R·rise inside a scheduled window, times the service level's multiplier there (`multiplier` NaN or
    outside a window: none): the window's own sizing, which the plan never goes below."""
    r, k = np.asarray(observed, dtype=float), np.asarray(rise, dtype=float)
    m = np.asarray(multiplier, dtype=float)
    scaled = np.where((k > 1.0) & np.isfinite(m), m, 1.0)
    return np.asarray(r * k * scaled)


class SampleCapacity:
    """`calibrated_load` of usable samples as the planner turns it into Ready capacity, for many multipliers:
    the multiplier search (`prescaler.sizing.service_level`) evaluates it a dozen times per trust and lead
    bucket.

    Each decision asks for max(m·B_w, R) (R times its scheduled window's rise, when it has one), in whole
    replicas of `Samples.unit` when it is set; it keeps the
    highest ask of the `Samples.held` decisions before it too (scale-down stabilisation); a bucket gets the
    least any of its serving decisions kept (a scale-down applies at once, a scale-up only after the lead).
    """

    def __init__(self, s: Samples, trust: float) -> None:
        stale = np.isnan(s.forecast)
        b = trust_weighted_mean(np.where(stale, 0.0, s.forecast), s.observed, trust)
        self.stale = np.ascontiguousarray(stale.T)
        self.b = np.ascontiguousarray(np.where(stale, 0.0, b).T)
        self.r = np.ascontiguousarray(np.where(stale, 0.0, s.observed).T)
        # Inside a scheduled window the floor under the ask is the observed load times the window's rise,
        # scaled by the multiplier there.
        self.rise = None if s.rise is None else np.ascontiguousarray(np.asarray(s.rise, dtype=float).T)
        self.held = int(s.held)
        self.unit = float(s.unit)

    def _ask(self, j: int, m: np.ndarray) -> np.ndarray:
        ask = np.maximum(m * self.b[j], self.r[j])
        if self.rise is not None:
            ask = np.maximum(ask, window_floor(self.r[j], self.rise[j], m))
        if self.unit > 0:
            ask = np.ceil(ask / self.unit - 1e-9) * self.unit
        return np.asarray(ask)

    def capacity(self, multiplier: float | np.ndarray) -> np.ndarray:
        """Per row, the capacity Ready in its bucket (`multiplier`: one, or one per row)."""
        m = np.asarray(multiplier, dtype=float)
        # A decision without a forecast asks for nothing of its own and does not limit its bucket.
        asks = [np.where(self.stale[j], -np.inf, self._ask(j, m)) for j in range(len(self.b))]
        cap: np.ndarray | None = None
        for j in range(self.held, len(asks)):
            kept = asks[j]
            for i in range(j - self.held, j):
                kept = np.maximum(kept, asks[i])
            kept = np.where(self.stale[j], np.inf, kept)
            cap = kept if cap is None else np.minimum(cap, kept)
        assert cap is not None  # samples have a serving decision at least
        return np.asarray(np.maximum(cap, 0.0))


def sample_capacity(s: Samples, trust: float, multiplier: float | np.ndarray) -> np.ndarray:
    """Per usable row, the capacity the sizing leaves Ready (see `SampleCapacity`)."""
    return SampleCapacity(s, trust).capacity(multiplier)

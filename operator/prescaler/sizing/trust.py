"""The trust weight w: how far the plan follows the forecast's rise above the observed load.

For each w of `TRUST_WEIGHTS` the trailing record gives its cost at equal service: the capacity max(m_w·B_w,
R) it would have held, with m_w calibrated to a service level. That service level is the configured one when
set, capped at `TRUST_SERVICE_LEVEL_CAP` so that one unforecastable spike does not decide the trust for two
weeks; by headroom it is what full trust with the headroom served on the same record. At equal service the
cheaper leaves less unserved at equal cost: the same comparison. w = 0 is reactive alone, so the chosen
weight is never worse than reactive on the record. The forecast keeps full trust unless a lower w was cheaper
by more than `TRUST_MARGIN`: a good forecast is never drowned by noise, and one that lost to reactive on its
own record is leaned away from, by rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prescaler.sizing.loads import sample_capacity
from prescaler.sizing.samples import MIN_SAMPLES, Samples
from prescaler.sizing.service_level import cost_at_service_level, served_and_coverage

# The weights w the record is priced at: 0 is reactive alone, 1 the forecast with the floor under it.
TRUST_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
# A lower trust must beat full trust by this share of its cost to be chosen.
TRUST_MARGIN = 0.05
# Trust is priced at the service level, but no higher than this: at 99.9% over two weeks the price is set
# by the single worst bucket, and an unforecastable spike would then decide the trust for two weeks.
TRUST_SERVICE_LEVEL_CAP = 99.5


@dataclass(frozen=True)
class Trust:
    """How much the plan trusts the forecast against the observed load, and why."""

    weight: float  # w of B_w; 1 = full trust
    reason: str
    # Per weight of TRUST_WEIGHTS: its cost at equal service on the record (what it was chosen by).
    scores: tuple[tuple[float, float], ...] = ()

    @property
    def leans_on_reactive(self) -> bool:
        return self.weight < 1.0


def choose_trust(samples: Samples, *, service_level: float | None, headroom_percent: float = 0.0,
                 min_samples: int = MIN_SAMPLES) -> Trust:
    """The trust weight the trailing record supports (see the module docstring); full trust without data."""
    # The weights are compared on what each decision asked for, without the stabilisation's hold: held asks
    # credit a blend with the floor's earlier bursts, which makes blends look cheaper on the record than the
    # plan finds them.
    s = samples.calibratable().serving_only()
    if len(s) < min_samples:
        return Trust(1.0, f"{len(s)} of {min_samples} samples: forecast trusted until the record is long enough")
    if service_level is not None:
        priced_at = min(service_level, TRUST_SERVICE_LEVEL_CAP)
        what = f"cost at {priced_at:g}% served"
    else:
        # The service full trust with the headroom gave on the record is the bar every weight must meet.
        # Priced by the same capacity model as every weight below (what the plan keeps Ready), or the bar
        # would be set by one model and met by another.
        full = sample_capacity(s, 1.0, 1 + headroom_percent / 100)
        served, _ = served_and_coverage(s.actual, full)
        priced_at = min(served if served is not None else 100.0, TRUST_SERVICE_LEVEL_CAP)
        what = f"cost at the {priced_at:.4g}% served full trust with {headroom_percent:g}% headroom gave"
    scores = [(w, cost_at_service_level(s, priced_at, w)[1]) for w in TRUST_WEIGHTS]
    full_cost = dict(scores)[1.0]
    best_w, best = min(scores, key=lambda ws: (ws[1], -ws[0]))
    if best_w < 1.0 and best < full_cost * (1 - TRUST_MARGIN):
        ratio = full_cost / best if best > 0 else math.inf
        return Trust(best_w, f"forecast trust {best_w:.0%}: over the last {len(s)} buckets, full trust's "
                             f"{what} was {ratio:.2f}× this blend's", tuple(scores))
    return Trust(1.0, f"forecast trusted: no blend with reactive beat it on {what} over {len(s)} buckets",
                 tuple(scores))

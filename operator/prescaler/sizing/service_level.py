"""The service level: the share of requests to serve, and the multiplier that meets it on the record.

**Conformal risk control on the shortfall.** For a service level s (the share of requests served), the
multiplier m is the smallest on the grid `MULTIPLIERS` with

    n/(n+1) · Σ max(0, A − provisioned(m))  ≤  (1 − s) · Σ A        over the samples,

i.e. the load-weighted unserved share is controlled, not the share of buckets covered (a 99.9% service
level needs a far lower quantile than 99.9% coverage when misses are small). This is split-conformal risk
control (Angelopoulos et al., "Conformal Risk Control", 2022) with a monotone loss, the unserved load,
without its worst-case term B/(n+1), which at 99.9% would need thousands of samples per bucket. The search
runs on a fixed grid, so a higher service level never yields a lower m. provisioned(m) is `calibrated_load`
(`prescaler.sizing.loads`) at the trust in use.
"""

from __future__ import annotations

import math

import numpy as np

from prescaler.errors import InputError
from prescaler.sizing.loads import SampleCapacity
from prescaler.sizing.samples import Samples

# A multiplier is kept within these: below, a forecast biased high would be trusted into starving the
# service; above, one broken bucket would scale to the moon. The grid steps by 0.25%.
MIN_MULTIPLIER = 0.5
MAX_MULTIPLIER = 10.0
MULTIPLIERS = MIN_MULTIPLIER * 1.0025 ** np.arange(int(math.log(MAX_MULTIPLIER / MIN_MULTIPLIER)
                                                          / math.log(1.0025)) + 1)


def parse_service_level(text: str, field: str = "serviceLevel") -> float:
    """"99.9%" (or "99.9") → 99.9; InputError naming `field` unless strictly between 0 and 100."""
    raw = str(text).strip()
    number = raw[:-1].strip() if raw.endswith("%") else raw
    try:
        value = float(number)
    except ValueError:
        raise InputError(f"{field} must be a percentage such as \"99.9%\", got {text!r}") from None
    check_service_level(value, field)
    return value


def check_service_level(percent: float, field: str = "serviceLevel") -> None:
    if not (math.isfinite(percent) and 0 < percent < 100):
        raise InputError(f"{field} must be a percentage greater than 0 and less than 100, got {percent:g}")


def _unserved_budget(actual: np.ndarray, service_level: float) -> float:
    """The unserved load the service level allows, with split conformal's finite-sample correction n/(n+1)."""
    n = len(actual)
    return (1 - service_level / 100) * float(np.sum(actual)) * (n + 1) / max(n, 1)


def needed_multiplier(samples: Samples, service_level: float, trust: float = 1.0) -> float:
    """Smallest m of `MULTIPLIERS` whose sizing max(m·B_w, R) leaves at most the service level's share of the
    load unserved on `samples` (see the module docstring); MAX_MULTIPLIER when none does.

    The unserved load falls as m grows, so a binary search over the fixed grid finds it, and a higher
    service level (a smaller budget) never yields a lower m.
    """
    s = samples.usable()
    return _search(s, SampleCapacity(s, trust), _unserved_budget(s.actual, service_level))


def _search(s: Samples, sizer: SampleCapacity, budget: float) -> float:
    if len(s) == 0 or budget < 0:
        return MIN_MULTIPLIER

    def meets(m: float) -> bool:
        return shortfall(s.actual, sizer.capacity(m)) <= budget

    lo, hi = 0, len(MULTIPLIERS) - 1
    if not meets(float(MULTIPLIERS[hi])):
        return MAX_MULTIPLIER
    while lo < hi:
        mid = (lo + hi) // 2
        if meets(float(MULTIPLIERS[mid])):
            hi = mid
        else:
            lo = mid + 1
    return float(MULTIPLIERS[lo])


def cost_at_service_level(samples: Samples, service_level: float, trust: float) -> tuple[float, float]:
    """The multiplier the trust needs for the service level, and what its capacity costs on the record (load
    units, i.e. replica-hours × capacity before whole replicas); cost inf when no multiplier meets it."""
    s = samples.usable()
    sizer, budget = SampleCapacity(s, trust), _unserved_budget(s.actual, service_level)
    m = _search(s, sizer, budget)
    capacity = sizer.capacity(m)
    if shortfall(s.actual, capacity) > budget * (1 + 1e-9) + 1e-9:
        return m, math.inf
    return m, float(capacity.sum())


def shortfall(actual: np.ndarray, provisioned: np.ndarray) -> float:
    """Unserved load: Σ max(0, A − provisioned)."""
    return float(np.maximum(0.0, np.asarray(actual, dtype=float) - np.asarray(provisioned, dtype=float)).sum())


def served_and_coverage(actual: np.ndarray, provisioned: np.ndarray) -> tuple[float | None, float | None]:
    """Served % of the load and coverage % of the buckets (A ≤ provisioned), over buckets with both."""
    a, p = np.asarray(actual, dtype=float), np.asarray(provisioned, dtype=float)
    ok = np.isfinite(a) & np.isfinite(p)
    if not ok.any():
        return None, None
    a, p = np.maximum(a[ok], 0.0), p[ok]
    total = float(a.sum())
    served = 100.0 * (1 - shortfall(a, p) / total) if total > 0 else 100.0
    return served, 100.0 * float(np.mean(a <= p + 1e-12))


# The record's own out-of-sample misses steer the level the next calibration aims at: the square root of the
# ratio of what was allowed to what was missed (a damped step, so one bad day does not swing the cost), the
# aim kept within these multiples of the target's unserved share.
FEEDBACK_DAMPING = 1.0
FEEDBACK_BOUNDS = (0.1, 1.0)
# Out-of-sample buckets needed before the aim moves: a day of 5-minute buckets, two of hourly ones.
FEEDBACK_MIN_SAMPLES = 48


def steered_service_level(target: float, aimed: float, actual: np.ndarray, provisioned: np.ndarray) -> float:
    """The service level the next calibration aims at, from how the calibrations in force did out of sample.

    A calibration meets the target on the record it was fitted on; the buckets that came after it are what
    it really served. Those misses (`actual` against what the calibrations in force `provisioned`, incidents
    included) against the target's allowance move the aim from `aimed` (the level those calibrations aimed
    at) by a damped step: more misses than allowed aim higher, fewer aim lower, so the realized level settles
    at the target instead of above or below it.
    """
    a, p = np.asarray(actual, dtype=float), np.asarray(provisioned, dtype=float)
    ok = np.isfinite(a) & np.isfinite(p)
    if ok.sum() < FEEDBACK_MIN_SAMPLES or float(np.maximum(a[ok], 0).sum()) <= 0:
        return aimed
    allowed = 1 - target / 100
    missed = shortfall(a[ok], p[ok]) / float(np.maximum(a[ok], 0).sum())
    lo, hi = FEEDBACK_BOUNDS
    step = (allowed / max(missed, allowed * lo)) ** FEEDBACK_DAMPING
    aim = float(np.clip((1 - aimed / 100) * step, allowed * lo, allowed * hi))
    return 100 * (1 - aim)

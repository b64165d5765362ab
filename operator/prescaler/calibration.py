"""Service-level calibration and the trust-weighted reactive blend: pure maths on the scaler's own record.

Data and `now` in, numbers out; no I/O. The backtest builds its samples from its own refits; the operator
from the forecasts it used and the traffic that came (`samples_from_forecasts`).

**The sizing these calibrate.** With a service level the planner provisions

    max(m · B_w, R),    B_w = w·F + (1 − w)·R,

where F is the forecast's peak over the lead window, R the load observed now (the reactive floor, never
scaled down), w the trust in the forecast and m the calibrated multiplier. At w = 1 this is the forecast
with the floor under it; at w = 0 reactive scaling with a calibrated headroom.

**Samples.** One per load bucket u that has come: the load A(u), and for each decision whose capacity can
serve u — those from u − leadTime to u: a scale-up takes leadTime to be ready, a scale-down applies at once,
so the capacity in u is the smallest any of them asked for — the F and R that decision saw (NaN F: it had no
forecast and did not limit u). The lead is u − generated_at of the forecast in force at the first of them.
Only the trailing `CALIBRATION_WINDOW` counts, and incidents (load over `INCIDENT_RATIO` times everything
its decisions saw and forecast) are left out of the fit and counted.

**Calibration (conformal risk control on the shortfall).** For a service level s (the share of requests
served), m is the smallest on the grid `MULTIPLIERS` with

    n/(n+1) · Σ max(0, A − provisioned(m))  ≤  (1 − s) · Σ A        over the bucket's samples,

i.e. the load-weighted unserved share is controlled, not the share of buckets covered (a 99.9% service
level needs a far lower quantile than 99.9% coverage when misses are small). This is split-conformal risk
control (Angelopoulos et al., "Conformal Risk Control", 2022) with a monotone loss, the unserved load,
without its worst-case term B/(n+1), which at 99.9% would need thousands of samples per bucket. The search
runs on a fixed grid, so a higher level never yields a lower m. The "calibrated quantile" reported beside
m is the share of samples whose load stayed within the sizing.

Per lead time: samples are grouped by lead into `LEAD_EDGES` buckets, since errors grow with lead. A bucket
with fewer than `MIN_SAMPLES` takes in the next longer buckets until it has enough (longer leads err more,
so widening this way errs on the safe side); with fewer than `MIN_SAMPLES` in all, there is no calibration
and the planner falls back to the manual sizing (quantile and headroomPercent), saying so.

**Trust (the blend with reactive).** For each w of `TRUST_LEVELS` the trailing record gives its cost at
equal service: the capacity max(m_w·B_w, R) it would have held, with m_w calibrated to the level. The level
is the service level when one is set, capped at `TRUST_LEVEL_CAP` so that one unforecastable spike does not
decide the trust for two weeks; in headroom mode it is what full trust with the headroom served on the same
record. At equal service the cheaper leaves less unserved at equal cost: the same comparison. w = 0 is
reactive alone, so the chosen blend is never worse than reactive on the record. The forecast keeps full
trust unless a lower w was cheaper by more than `TRUST_MARGIN`: a good forecast is never drowned by noise,
and one that lost to reactive on its own record is leaned away from, by rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from prescaler.durations import format_duration
from prescaler.errors import InputError
from prescaler.forecasting.interface import Forecast

# Fourteen days hold two weekly cycles: enough to see a weekday and a weekend miss, short enough to follow
# a change of regime within two weeks.
CALIBRATION_WINDOW = timedelta(days=14)
# The level correction: the forecast is scaled by the square root of how far the load of the last hour
# (three steps at least) ran above or below it, within [1/2, 2]. Forecast errors persist for hours (a
# holiday, a regime change, a slow day), and a forecast refit once a day or once an hour has not seen them;
# the square root corrects half the way (in logs), since part of any hour's miss is noise that does not
# persist. Measured on the bench traces, a full correction chased noise on the hourly ones.
LEVEL_WINDOW = timedelta(hours=1)
LEVEL_MIN_STEPS = 3
LEVEL_DAMPING = 0.5
LEVEL_BOUNDS = (0.5, 2.0)
# A bucket whose load exceeded three times what its decisions saw and forecast is an incident (a flash crowd
# at night, an attack), not a forecast error: covering it would raise the multiplier, and the cost,
# for two weeks without covering the next one. Incidents are left out of the calibration and counted; they
# still count against the realized served %.
INCIDENT_RATIO = 3.0
# Two days of hourly buckets: below this a bucket's tail is guesswork.
MIN_SAMPLES = 48
# Lead-time buckets (upper edges); the last bucket is open.
LEAD_EDGES: tuple[timedelta, ...] = (
    timedelta(hours=1), timedelta(hours=3), timedelta(hours=6), timedelta(hours=12), timedelta(days=1),
    timedelta(days=2),
)
TRUST_LEVELS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
# A lower trust must beat full trust by this share of its cost to be chosen.
TRUST_MARGIN = 0.05
# Trust is priced at the service level, but no higher than this: at 99.9% over two weeks the price is set
# by the single worst bucket, and an unforecastable spike would then decide the trust for two weeks.
TRUST_LEVEL_CAP = 99.5
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


# ---------------------------------------------------------------------------------------------------------
# Samples and the sizing


@dataclass(frozen=True)
class Samples:
    """Paired records, one row per load bucket (see the module docstring).

    `forecast` and `observed` have one column per decision that can serve the bucket (a 1-D array is one
    decision); all have the same number of rows.
    """

    lead_s: np.ndarray  # seconds from the forecast's generation to the bucket
    actual: np.ndarray  # A: the load that came
    forecast: np.ndarray  # F per decision: the forecast's peak over its window (NaN: no forecast)
    observed: np.ndarray  # R per decision: what the reactive floor saw (NaN: nothing)
    clean: bool = field(default=False, compare=False)  # already `usable()`: the search calls it often

    def __post_init__(self) -> None:
        n = len(self.actual)
        if not len(self.lead_s) == len(self.forecast) == len(self.observed) == n:
            raise ValueError("samples must have one lead, forecast and observation per actual")
        if np.shape(self.forecast) != np.shape(self.observed):
            raise ValueError("samples need one observation per forecast")

    def __len__(self) -> int:
        return len(self.actual)

    def rows(self, pick: np.ndarray | slice) -> Samples:
        return Samples(lead_s=self.lead_s[pick], actual=self.actual[pick], forecast=self.forecast[pick],
                       observed=self.observed[pick], clean=self.clean)

    def usable(self) -> Samples:
        """Rows with an actual, a lead and a forecast at one decision at least, as 2-D arrays; negative
        values and missing observations count as zero."""
        if self.clean:
            return self
        f = np.asarray(self.forecast, dtype=float)
        r = np.asarray(self.observed, dtype=float)
        if f.ndim == 1:
            f, r = f[:, None], r[:, None]
        ok = np.isfinite(self.actual) & np.isfinite(self.lead_s) & np.isfinite(f).any(axis=1)
        f = f[ok]
        return Samples(
            lead_s=np.asarray(self.lead_s, dtype=float)[ok],
            actual=np.maximum(np.asarray(self.actual, dtype=float)[ok], 0.0),
            forecast=np.where(np.isfinite(f), np.maximum(f, 0.0), np.nan),
            observed=np.maximum(np.nan_to_num(r[ok], nan=0.0), 0.0),
            clean=True,
        )

    def incidents(self) -> np.ndarray:
        """Per usable row, whether it was an incident (see INCIDENT_RATIO): more than that many times the
        capacity the plain sizing max(F, R) left it (the least its decisions asked for)."""
        s = self.usable()
        return np.asarray(s.actual > INCIDENT_RATIO * _capacity(s, 1.0, 1.0))

    def calibratable(self) -> Samples:
        """The usable rows without incidents: what the calibration and the trust are fitted on."""
        return self.usable().rows(~self.incidents())


def level_steps(step: timedelta) -> int:
    """How many of the last buckets the level correction compares."""
    return max(LEVEL_MIN_STEPS, math.ceil(LEVEL_WINDOW / step - 1e-9))


def level_factor(observed: np.ndarray | Sequence[float], forecast: np.ndarray | Sequence[float]) -> float:
    """The level correction for the next decisions: (Σ observed / Σ forecast)^LEVEL_DAMPING over the last
    buckets where both exist, within LEVEL_BOUNDS; 1 when fewer than half of them do."""
    a, f = np.asarray(observed, dtype=float), np.asarray(forecast, dtype=float)
    ok = np.isfinite(a) & np.isfinite(f)
    if len(a) == 0 or 2 * ok.sum() < len(a) or f[ok].sum() <= 0:
        return 1.0
    ratio = float(np.clip(a[ok].sum() / f[ok].sum(), *LEVEL_BOUNDS))
    return float(ratio**LEVEL_DAMPING)


def level_factors(load: np.ndarray, forecast: np.ndarray, steps: int) -> np.ndarray:
    """`level_factor` at every bucket t from buckets t − steps .. t − 1, at once (the backtest's replay)."""
    a, f = np.asarray(load, dtype=float), np.asarray(forecast, dtype=float)
    ok = np.isfinite(a) & np.isfinite(f)
    zero = np.zeros(1)
    count = np.concatenate([zero, np.cumsum(ok)])
    sum_a = np.concatenate([zero, np.cumsum(np.where(ok, a, 0.0))])
    sum_f = np.concatenate([zero, np.cumsum(np.where(ok, f, 0.0))])
    t = np.arange(len(a))
    lo = np.maximum(t - steps, 0)
    n_ok, sa, sf = count[t] - count[lo], sum_a[t] - sum_a[lo], sum_f[t] - sum_f[lo]
    # The same rule as `level_factor`: half of the window's buckets at least (a short start counts in full).
    enough = (2 * n_ok >= steps) & (sf > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.clip(np.where(enough, sa / np.where(sf > 0, sf, 1.0), 1.0), *LEVEL_BOUNDS)
    return np.asarray(np.where(enough, ratio**LEVEL_DAMPING, 1.0))


def blend(forecast: np.ndarray | float, observed: np.ndarray | float, trust: np.ndarray | float) -> np.ndarray:
    """B_w = w·F + (1 − w)·R: the forecast trusted `trust`, the rest the observation."""
    f, r = np.asarray(forecast, dtype=float), np.asarray(observed, dtype=float)
    return np.asarray(trust * f + (1 - trust) * r)


def blended(forecast: np.ndarray | float, observed: np.ndarray | float, trust: np.ndarray | float) -> np.ndarray:
    """max(B_w, R) = R + w·max(0, F − R): the headroom sizing's signal, the floor plus the trusted rise."""
    f, r = np.asarray(forecast, dtype=float), np.asarray(observed, dtype=float)
    return np.asarray(r + trust * np.maximum(0.0, f - r))


def provision(forecast: np.ndarray | float, observed: np.ndarray | float, trust: np.ndarray | float,
              multiplier: np.ndarray | float) -> np.ndarray:
    """The service-level sizing: max(m·B_w, R), the calibrated blend with the observed load under it."""
    return np.asarray(np.maximum(multiplier * blend(forecast, observed, trust), np.asarray(observed, dtype=float)))


class _Sizer:
    """The sizing max(m·B_w, R) of usable samples, one row per decision column, for many multipliers: the
    search below evaluates it a dozen times per trust and lead bucket."""

    def __init__(self, s: Samples, trust: float) -> None:
        stale = np.isnan(s.forecast)
        b = blend(np.where(stale, 0.0, s.forecast), s.observed, trust)
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


def _capacity(s: Samples, trust: float, multiplier: float | np.ndarray) -> np.ndarray:
    """Per usable row, the capacity the sizing leaves: the smallest any of its decisions asked for."""
    return _Sizer(s, trust).capacity(multiplier)


def samples_from_forecasts(
    forecasts: Sequence[tuple[datetime, Forecast]],
    actuals: pd.Series,
    *,
    now: datetime,
    lead_time: timedelta,
    window: timedelta = CALIBRATION_WINDOW,
) -> Samples:
    """The operator's samples: the forecasts it used (generated_at, forecast) against the traffic that came.

    `actuals` is the load per forecast step (UTC bucket starts, NaN = missing). A bucket counts once it is
    complete (it ends by `now`) and lies within `window`. Its decisions are one per step from bucket start
    − `lead_time` to the bucket start, each with the newest forecast generated by then (its peak over the
    planner's window [t, t + lead_time + step)) and the last bucket complete by then (the floor).
    """
    if len(actuals) < 2 or not forecasts:
        return _empty()
    idx = pd.DatetimeIndex(actuals.index)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    # All on int64 nanoseconds and whole arrays: a fleet's restart calibrates every scaler at its first tick,
    # and a loop over buckets and decisions cost ~10 ms of the event loop per scaler.
    at = np.asarray(idx.as_unit("ns").asi8)
    step = int(at[1] - at[0])
    values = np.asarray(actuals, dtype=float)
    now_ns, lead = pd.Timestamp(now).value, pd.Timedelta(lead_time).value
    rows = np.flatnonzero((at + step <= now_ns) & (at >= now_ns - pd.Timedelta(window).value))
    if len(rows) == 0:
        return _empty()
    ordered = sorted(forecasts, key=lambda gf: gf[0])
    generated = np.array([pd.Timestamp(g).value for g, _ in ordered], dtype=np.int64)
    k = max(0, math.ceil(lead / step - 1e-9)) + 1
    u = at[rows]
    # Decision j of a bucket: one per step from its start − lead_time, the last at its start.
    offsets = np.where(np.arange(k) < k - 1, np.arange(k) * step - lead, 0)
    decided = u[:, None] + offsets[None, :]
    g = np.searchsorted(generated, decided, side="right") - 1
    seen = g >= 0
    forecast = np.full(decided.shape, np.nan)
    for e, (_, fc) in enumerate(ordered):
        cells = g == e
        if cells.any():
            forecast[cells] = _window_maxima(fc, decided[cells], decided[cells] + lead + step)
    # The floor saw the last bucket complete at the decision.
    b = np.searchsorted(at, decided - step, side="right") - 1
    observed = np.where(seen & (b >= 0) & (b < len(values)), values[np.clip(b, 0, len(values) - 1)], np.nan)
    forecast[~seen] = np.nan
    keep = seen.any(axis=1)
    if not keep.any():
        return _empty()
    first = generated[_first_valid(g[keep])]
    return Samples(lead_s=(u[keep] - first) / 1e9, actual=values[rows][keep], forecast=forecast[keep],
                   observed=observed[keep])


def _first_valid(g: np.ndarray) -> np.ndarray:
    """Per row, the forecast of its earliest decision that had one (g is non-decreasing along a row)."""
    return g[np.arange(len(g)), np.argmax(g >= 0, axis=1)]


@dataclass
class ForecastRecord:
    """The forecasts a scaler used, kept only as far as calibration pairs them with what came.

    A forecast is in force from its generation until the next one (at most `keep_ahead`, the planner's
    staleAfter + leadTime + a step); only that slice is kept, and only within `window` of the newest, so
    the record stays a few hundred points per scaler however long the horizon.
    """

    keep_ahead: timedelta
    window: timedelta = CALIBRATION_WINDOW
    entries: list[tuple[datetime, Forecast]] = field(default_factory=list)

    def add(self, generated_at: datetime, forecast: Forecast) -> bool:
        """Keep `forecast` unless one generated at the same time is kept already (or it is older than the
        window); True when added."""
        if any(g == generated_at for g, _ in self.entries):
            return False
        if self.entries and generated_at < self.entries[-1][0] - self.window - self.keep_ahead:
            return False
        end = pd.Timestamp(generated_at) + pd.Timedelta(self.keep_ahead)
        keep = np.asarray(forecast.ds < end)
        sliced = Forecast(ds=forecast.ds[keep], yhat=np.asarray(forecast.yhat)[keep],
                          lower=np.asarray(forecast.lower)[keep], upper=np.asarray(forecast.upper)[keep],
                          model=forecast.model)
        self.entries.append((generated_at, sliced))
        self.entries.sort(key=lambda gf: gf[0])
        newest = self.entries[-1][0]
        self.entries = [(g, f) for g, f in self.entries if g >= newest - self.window - self.keep_ahead]
        return True


def _window_maxima(fc: Forecast, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per window [start, end) (int64 ns), the highest yhat over the forecast's buckets that overlap it; NaN
    where none or all are NaN."""
    out = np.full(len(start), np.nan)
    ds = fc.ns
    if len(ds) == 0 or len(start) == 0:
        return out
    fstep = int(ds[1] - ds[0]) if len(ds) > 1 else 0
    lo = np.searchsorted(ds, start - fstep, side="right")
    hi = np.searchsorted(ds, end, side="left")
    width = int((hi - lo).max(initial=0))
    if width <= 0:
        return out
    yhat = np.asarray(fc.yhat, dtype=float)
    pos = lo[:, None] + np.arange(width)[None, :]
    inside = pos < hi[:, None]
    raw = yhat[np.clip(pos, 0, len(yhat) - 1)]
    valid = inside & np.isfinite(raw)
    best = np.where(valid, raw, -np.inf).max(axis=1)
    return np.where(valid.any(axis=1), best, np.nan)


def _empty() -> Samples:
    e = np.zeros(0)
    return Samples(lead_s=e, actual=e, forecast=np.zeros((0, 1)), observed=np.zeros((0, 1)))


# ---------------------------------------------------------------------------------------------------------
# The maths


def _budget(actual: np.ndarray, level_percent: float) -> float:
    """The unserved load the level allows, with split conformal's finite-sample correction n/(n+1)."""
    n = len(actual)
    return (1 - level_percent / 100) * float(np.sum(actual)) * (n + 1) / max(n, 1)


def needed_multiplier(samples: Samples, level_percent: float, trust: float = 1.0) -> float:
    """Smallest m of `MULTIPLIERS` whose sizing max(m·B_w, R) leaves at most the level's share of the load
    unserved on `samples` (see the module docstring); MAX_MULTIPLIER when none does.

    The unserved load falls as m grows, so a binary search over the fixed grid finds it, and a higher
    level (a smaller budget) never yields a lower m.
    """
    s = samples.usable()
    return _search(s, _Sizer(s, trust), _budget(s.actual, level_percent))


def _search(s: Samples, sizer: _Sizer, budget: float) -> float:
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


def cost_at_level(samples: Samples, level_percent: float, trust: float) -> tuple[float, float]:
    """The multiplier the trust needs for the level, and what its capacity costs on the record (load units,
    i.e. replica-hours × capacity before whole replicas); cost inf when no multiplier meets the level."""
    s = samples.usable()
    sizer, budget = _Sizer(s, trust), _budget(s.actual, level_percent)
    m = _search(s, sizer, budget)
    capacity = sizer.capacity(m)
    if shortfall(s.actual, capacity) > budget * (1 + 1e-9) + 1e-9:
        return m, math.inf
    return m, float(capacity.sum())


def shortfall(actual: np.ndarray, provisioned: np.ndarray) -> float:
    """Unserved load: Σ max(0, A − provisioned)."""
    return float(np.maximum(0.0, np.asarray(actual, dtype=float) - np.asarray(provisioned, dtype=float)).sum())


@dataclass(frozen=True)
class Trust:
    """How much the plan trusts the forecast against the observed load, and why."""

    weight: float  # w of B_w; 1 = full trust
    reason: str
    # Per trust level: its cost at equal service on the record (what it was chosen by).
    scores: tuple[tuple[float, float], ...] = ()

    @property
    def leans_on_reactive(self) -> bool:
        return self.weight < 1.0


def choose_trust(samples: Samples, *, service_level: float | None, headroom_percent: float = 0.0,
                 min_samples: int = MIN_SAMPLES) -> Trust:
    """The trust weight the trailing record supports (see the module docstring); full trust without data."""
    s = samples.calibratable()
    if len(s) < min_samples:
        return Trust(1.0, f"{len(s)} of {min_samples} samples: forecast trusted until the record is long enough")
    if service_level is not None:
        level = min(service_level, TRUST_LEVEL_CAP)
        what = f"cost at {level:g}% served"
    else:
        # The service full trust with the headroom gave on the record is the bar every blend must meet.
        full = np.min(np.where(np.isnan(s.forecast), np.inf,
                               blended(s.forecast, s.observed, 1.0) * (1 + headroom_percent / 100)), axis=1)
        served, _ = realized(s.actual, full)
        level = min(served if served is not None else 100.0, TRUST_LEVEL_CAP)
        what = f"cost at the {level:.4g}% served full trust with {headroom_percent:g}% headroom gave"
    scores = [(w, cost_at_level(s, level, w)[1]) for w in TRUST_LEVELS]
    full_cost = dict(scores)[1.0]
    best_w, best = min(scores, key=lambda ws: (ws[1], -ws[0]))
    if best_w < 1.0 and best < full_cost * (1 - TRUST_MARGIN):
        ratio = full_cost / best if best > 0 else math.inf
        return Trust(best_w, f"forecast trust {best_w:.0%}: over the last {len(s)} buckets, full trust's "
                             f"{what} was {ratio:.2f}× this blend's", tuple(scores))
    return Trust(1.0, f"forecast trusted: no blend with reactive beat it on {what} over {len(s)} buckets",
                 tuple(scores))


@dataclass(frozen=True)
class LeadBucket:
    """The calibration of one lead-time bucket [start, end) (end None: open)."""

    start: timedelta
    end: timedelta | None
    multiplier: float
    quantile: float  # share of its samples whose load stayed within the sizing
    samples: int  # samples it was calibrated on (more than its own when widened)

    def holds(self, lead: timedelta) -> bool:
        return self.start <= lead and (self.end is None or lead < self.end)


@dataclass(frozen=True)
class Calibration:
    """What the planner needs from the record: the trust weight and, with a service level, a multiplier
    per lead-time bucket. `buckets` is empty in headroom mode (trust only)."""

    service_level: float | None
    trust: Trust
    buckets: tuple[LeadBucket, ...]
    samples: int
    incidents: int = 0  # buckets of the record left out as incidents (see INCIDENT_RATIO)

    @property
    def ready(self) -> bool:
        """True when a service level is set and the record was long enough to calibrate it."""
        return self.service_level is not None and bool(self.buckets)

    def bucket(self, lead: timedelta) -> LeadBucket | None:
        """The bucket of `lead`; a negative lead (a forecast from the future) counts as the shortest."""
        if not self.buckets:
            return None
        return next((b for b in self.buckets if b.holds(lead)), self.buckets[0])

    def multipliers(self, lead_s: np.ndarray) -> np.ndarray:
        """`multiplier` for leads in seconds, at once (the backtest's replay); needs `ready`."""
        starts = np.array([b.start.total_seconds() for b in self.buckets])
        values = np.array([b.multiplier for b in self.buckets])
        at = np.clip(np.searchsorted(starts, np.asarray(lead_s, dtype=float), side="right") - 1, 0, len(starts) - 1)
        return np.asarray(values[at])

    def quantiles(self, lead_s: np.ndarray) -> np.ndarray:
        """The calibrated quantile of each lead's bucket, like `multipliers`."""
        starts = np.array([b.start.total_seconds() for b in self.buckets])
        values = np.array([b.quantile for b in self.buckets])
        at = np.clip(np.searchsorted(starts, np.asarray(lead_s, dtype=float), side="right") - 1, 0, len(starts) - 1)
        return np.asarray(values[at])

    def multiplier(self, lead: timedelta) -> float | None:
        b = self.bucket(lead)
        return None if b is None else b.multiplier

    def describe(self, lead: timedelta) -> str:
        b = self.bucket(lead)
        if b is None:
            return ""
        span = (f"lead {format_duration(b.start)}–{format_duration(b.end)}" if b.end is not None
                else f"lead ≥ {format_duration(b.start)}")
        return (f"×{b.multiplier:.3f} (calibrated q{100 * b.quantile:.1f}, {span}, {b.samples} samples) "
                f"for {self.service_level:g}% served")


def calibrate_levels(samples: Samples, *, service_level: float, trust: float,
                     min_samples: int = MIN_SAMPLES,
                     edges: Sequence[timedelta] = LEAD_EDGES) -> tuple[LeadBucket, ...]:
    """Per lead bucket, the multiplier on B_trust that meets `service_level`; () with too few samples."""
    s = samples.calibratable()
    if len(s) < min_samples:
        return ()
    bounds = [timedelta(0), *edges]
    out: list[LeadBucket] = []
    for i, start in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else None
        lo = start.total_seconds()
        hi_i = i + 1
        while True:
            hi = bounds[hi_i].total_seconds() if hi_i < len(bounds) else math.inf
            pick = (s.lead_s >= lo) & (s.lead_s < hi)
            if pick.sum() >= min_samples or hi_i >= len(bounds):
                break
            hi_i += 1
        if pick.sum() < min_samples:
            pick = np.ones(len(s), dtype=bool)  # every lead at once: the pooled record
        part = s.rows(pick)
        m = needed_multiplier(part, service_level, trust)
        _, covered = realized(part.actual, _capacity(part, trust, m))
        out.append(LeadBucket(start, end, m, (covered or 0.0) / 100, int(pick.sum())))
    return tuple(out)


def calibrate(samples: Samples, *, service_level: float | None, headroom_percent: float = 0.0,
              min_samples: int = MIN_SAMPLES, edges: Sequence[timedelta] = LEAD_EDGES,
              trust: float | None = None) -> Calibration:
    """Trust (chosen, unless given) and, with a service level, the per-lead multipliers."""
    if service_level is not None:
        check_service_level(service_level)
    chosen = (Trust(trust, f"forecast trust {trust:.0%} (fixed)") if trust is not None
              else choose_trust(samples, service_level=service_level, headroom_percent=headroom_percent,
                                min_samples=min_samples))
    buckets: tuple[LeadBucket, ...] = ()
    if service_level is not None:
        buckets = calibrate_levels(samples, service_level=service_level, trust=chosen.weight,
                                   min_samples=min_samples, edges=edges)
    return Calibration(service_level=service_level, trust=chosen, buckets=buckets,
                       samples=len(samples.calibratable()), incidents=int(samples.incidents().sum()))


def calibrate_from_forecasts(
    forecasts: Sequence[tuple[datetime, Forecast]],
    actuals: pd.Series,
    *,
    now: datetime,
    lead_time: timedelta,
    service_level: float | None,
    headroom_percent: float = 0.0,
    window: timedelta = CALIBRATION_WINDOW,
) -> Calibration:
    """The reconciler's entry point: stored forecasts and the traffic since, at `now`."""
    samples = samples_from_forecasts(forecasts, actuals, now=now, lead_time=lead_time, window=window)
    return calibrate(samples, service_level=service_level, headroom_percent=headroom_percent)


@dataclass(frozen=True)
class RealizedSizing:
    """How the calibrated sizing did over the record's window, as numbers (status strings and gauges)."""

    quantile: float | None = None  # the calibrated quantile at the lead in use, 0-1
    multiplier: float | None = None
    served_percent: float | None = None  # of the window's load, had the calibrated sizing been provisioned
    coverage_percent: float | None = None  # of the window's buckets whose load it covered


def realized_sizing(calibration: Calibration, samples: Samples, *, lead: timedelta) -> RealizedSizing:
    bucket = calibration.bucket(lead)
    usable = samples.usable()
    if calibration.service_level is None or bucket is None or not len(usable):
        return RealizedSizing()
    sized = _capacity(usable, calibration.trust.weight, calibration.multipliers(usable.lead_s))
    served, coverage = realized(usable.actual, sized)
    return RealizedSizing(bucket.quantile, bucket.multiplier, served, coverage)


def status_fields(calibration: Calibration, samples: Samples, *, lead: timedelta,
                  window: timedelta = CALIBRATION_WINDOW,
                  sizing: RealizedSizing | None = None) -> dict[str, Any]:
    """The PredictiveScaler status fields of a calibration: `forecastTrust` and, with a service level,
    `serviceLevel` {target, realizedServedPercent, coveragePercent, calibratedQuantile, multiplier, samples,
    window}: how the calibrated sizing served the window's load and covered its buckets. Strings, since the
    API conventions keep floats out of resources."""
    out: dict[str, Any] = {"forecastTrust": f"{100 * calibration.trust.weight:.0f}%"}
    if calibration.service_level is None:
        return out
    level: dict[str, Any] = {"target": f"{calibration.service_level:g}%", "samples": calibration.samples,
                             "incidents": calibration.incidents, "window": format_duration(window)}
    r = sizing if sizing is not None else realized_sizing(calibration, samples, lead=lead)
    if r.quantile is not None and r.multiplier is not None:
        level.update({"calibratedQuantile": f"{100 * r.quantile:.1f}%", "multiplier": f"{r.multiplier:.3f}"})
    if r.served_percent is not None and r.coverage_percent is not None:
        level.update({"realizedServedPercent": f"{r.served_percent:.2f}%",
                      "coveragePercent": f"{r.coverage_percent:.1f}%"})
    out["serviceLevel"] = level
    return out


def realized(actual: np.ndarray, provisioned: np.ndarray) -> tuple[float | None, float | None]:
    """Served % of the load and coverage % of the buckets (A ≤ provisioned), over buckets with both."""
    a, p = np.asarray(actual, dtype=float), np.asarray(provisioned, dtype=float)
    ok = np.isfinite(a) & np.isfinite(p)
    if not ok.any():
        return None, None
    a, p = np.maximum(a[ok], 0.0), p[ok]
    total = float(a.sum())
    served = 100.0 * (1 - shortfall(a, p) / total) if total > 0 else 100.0
    return served, 100.0 * float(np.mean(a <= p + 1e-12))

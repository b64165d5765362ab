"""Service-level calibration and the trust-weighted reactive blend: pure maths on the scaler's own record.

Data and `now` in, numbers out; no I/O. The backtest builds its samples from its own refits; the operator
from its stored forecasts and the traffic that came (`samples_from_forecasts`).

**Samples.** One per load bucket u that has already come: the load A(u); what the forecast in force at the
decision that made u's capacity ready said, F(u) = its highest yhat over [u − leadTime, u] (the planner's
window); what the reactive floor saw at that decision, R(u) = the last complete bucket before it; and the
lead u − generated_at of that forecast. Only the trailing `CALIBRATION_WINDOW` counts.

**Trust (the blend with reactive).** The sizing signal is S_w = R + w·max(0, F − R): at w = 1 the planner's
usual max(F, R), at w = 0 the reactive floor alone, in between only w of the forecast's rise above what is
observed. For each w of `TRUST_LEVELS` the trailing window gives its cost at equal service: the multiplier
S_w needs to serve the level (below) times ΣS_w, i.e. the replica-hours it would have spent. The level is
the service level when one is set; in headroom mode it is what full trust with the headroom served on the
same record, so every blend is priced at the service the plan actually gave (at equal cost, the cheaper one
leaves less unserved: the same comparison). w = 0 is reactive alone, so the chosen blend is never worse
than reactive on the record. The forecast keeps full trust unless a lower w was cheaper by more than
`TRUST_MARGIN`: a good forecast is never drowned by noise, and one that lost to reactive on its own record
is leaned away from, by rule.

**Calibration (conformal risk control on the shortfall).** For a service level s (the share of requests
served), the multiplier m on S_w is the smallest with

    n/(n+1) · Σ max(0, A − m·S_w)  ≤  (1 − s) · Σ A        over the bucket's samples,

i.e. the load-weighted unserved share is controlled, not the share of buckets covered (a 99.9% service
level needs a far lower quantile than 99.9% coverage when misses are small). This is split-conformal risk
control (Angelopoulos et al., "Conformal Risk Control", 2022) with a monotone loss, the unserved load,
without its worst-case term B/(n+1), which at 99.9% would need thousands of samples per bucket. The
"calibrated quantile" reported beside m is the share of samples with A ≤ m·S_w.

Per lead time: samples are grouped by lead into `LEAD_EDGES` buckets, since errors grow with lead. A bucket
with fewer than `MIN_SAMPLES` takes in the next longer buckets until it has enough (longer leads err more,
so widening this way errs on the safe side); with fewer than `MIN_SAMPLES` in all, there is no calibration
and the planner falls back to the manual sizing (quantile and headroomPercent), saying so.
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
# Two days of hourly buckets: below this a bucket's tail is guesswork.
MIN_SAMPLES = 48
# Lead-time buckets (upper edges); the last bucket is open.
LEAD_EDGES: tuple[timedelta, ...] = (
    timedelta(hours=1), timedelta(hours=3), timedelta(hours=6), timedelta(hours=12), timedelta(days=1),
    timedelta(days=2),
)
TRUST_LEVELS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
# A lower trust must beat full trust by this share of its cost (or unserved load) to be chosen.
TRUST_MARGIN = 0.05
# A multiplier is kept within these: below, a forecast biased high would be trusted into starving the
# service; above, one broken bucket would scale to the moon.
MIN_MULTIPLIER = 0.5
MAX_MULTIPLIER = 10.0


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
# Samples


@dataclass(frozen=True)
class Samples:
    """Paired records, one per load bucket (see the module docstring); all arrays have the same length."""

    lead_s: np.ndarray  # seconds from the forecast's generation to the bucket
    actual: np.ndarray  # A: the load that came
    forecast: np.ndarray  # F: the forecast's peak over the decision's window (NaN: no forecast)
    observed: np.ndarray  # R: what the reactive floor saw at the decision (NaN: nothing)

    def __post_init__(self) -> None:
        n = len(self.actual)
        if not len(self.lead_s) == len(self.forecast) == len(self.observed) == n:
            raise ValueError("samples must have one lead, forecast and observation per actual")

    def __len__(self) -> int:
        return len(self.actual)

    def usable(self) -> Samples:
        """Samples with an actual and a forecast, negative values and missing observations set to zero."""
        ok = np.isfinite(self.actual) & np.isfinite(self.forecast) & np.isfinite(self.lead_s)
        return Samples(
            lead_s=np.asarray(self.lead_s, dtype=float)[ok],
            actual=np.maximum(np.asarray(self.actual, dtype=float)[ok], 0.0),
            forecast=np.maximum(np.asarray(self.forecast, dtype=float)[ok], 0.0),
            observed=np.maximum(np.nan_to_num(np.asarray(self.observed, dtype=float)[ok], nan=0.0), 0.0),
        )


def blended(forecast: np.ndarray | float, observed: np.ndarray | float, trust: np.ndarray | float) -> np.ndarray:
    """S_w = R + w·max(0, F − R): the reactive floor plus `trust` of the forecast's rise above it."""
    f, r = np.asarray(forecast, dtype=float), np.asarray(observed, dtype=float)
    return np.asarray(r + trust * np.maximum(0.0, f - r))


def samples_from_forecasts(
    forecasts: Sequence[tuple[datetime, Forecast]],
    actuals: pd.Series,
    *,
    now: datetime,
    lead_time: timedelta,
    window: timedelta = CALIBRATION_WINDOW,
) -> Samples:
    """The operator's samples: stored forecasts (generated_at, forecast) against the traffic that came.

    `actuals` is the load per forecast step (UTC bucket starts, NaN = missing). A bucket counts once it is
    complete (it ends by `now`) and lies within `window`; it is paired with the newest forecast generated
    by its decision time, bucket start − `lead_time`, as the planner would have used it.
    """
    if len(actuals) < 2 or not forecasts:
        return _empty()
    idx = pd.DatetimeIndex(actuals.index)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    step = pd.Timedelta(idx[1] - idx[0])
    values = np.asarray(actuals, dtype=float)
    now_ts = pd.Timestamp(now)
    keep = (idx + step <= now_ts) & (idx >= now_ts - pd.Timedelta(window))
    ordered = sorted(forecasts, key=lambda gf: gf[0])
    generated = pd.DatetimeIndex([pd.Timestamp(g) for g, _ in ordered])
    lead = pd.Timedelta(lead_time)
    rows: list[tuple[float, float, float, float]] = []
    for i in (int(k) for k in np.flatnonzero(keep)):
        u = idx[i]
        decided = u - lead
        k = int(generated.searchsorted(decided, side="right")) - 1
        if k < 0:
            continue
        fc = ordered[k][1]
        f = _window_max(fc, decided, u + step)
        # The floor saw the last bucket complete at the decision.
        j = int(idx.searchsorted(decided - step, side="right")) - 1
        r = values[j] if 0 <= j < len(values) else math.nan
        rows.append(((u - generated[k]).total_seconds(), values[i], f, r))
    if not rows:
        return _empty()
    arr = np.array(rows, dtype=float)
    return Samples(lead_s=arr[:, 0], actual=arr[:, 1], forecast=arr[:, 2], observed=arr[:, 3])


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


def _window_max(fc: Forecast, start: pd.Timestamp, end: pd.Timestamp) -> float:
    """Highest yhat over the forecast's buckets that overlap [start, end), NaN if none."""
    if len(fc.ds) == 0:
        return math.nan
    step = pd.Timedelta(fc.ds[1] - fc.ds[0]) if len(fc.ds) > 1 else pd.Timedelta(0)
    lo = int(fc.ds.searchsorted(start - step, side="right"))
    hi = int(fc.ds.searchsorted(end, side="left"))
    seg = np.asarray(fc.yhat[lo:hi], dtype=float)
    return float(np.nanmax(seg)) if len(seg) and np.isfinite(seg).any() else math.nan


def _empty() -> Samples:
    e = np.zeros(0)
    return Samples(lead_s=e, actual=e, forecast=e, observed=e)


# ---------------------------------------------------------------------------------------------------------
# The maths


def needed_multiplier(actual: np.ndarray, signal: np.ndarray, level_percent: float) -> float:
    """Smallest m with n/(n+1)·Σmax(0, A − m·S) ≤ (1 − level)·ΣA (see the module docstring), within
    [MIN_MULTIPLIER, MAX_MULTIPLIER]. Non-decreasing in `level_percent`."""
    a = np.maximum(np.asarray(actual, dtype=float), 0.0)
    s = np.maximum(np.asarray(signal, dtype=float), 0.0)
    n = len(a)
    total = float(a.sum())
    if n == 0 or total <= 0:
        return MIN_MULTIPLIER
    budget = (1 - level_percent / 100) * total * (n + 1) / n
    # Load no multiplier can reach (a zero signal) is unserved whatever m is.
    fixed = float(a[s <= 0].sum())
    a, s = a[s > 0], s[s > 0]
    if fixed > budget or len(a) == 0:
        return MAX_MULTIPLIER if fixed > budget else MIN_MULTIPLIER
    room = budget - fixed
    ratio = a / s
    order = np.argsort(-ratio, kind="stable")
    r, a_sorted, s_sorted = ratio[order], a[order], s[order]
    # Between consecutive ratios r[k] ≥ m ≥ r[k+1], the shortfall is A_k − m·S_k over the k+1 largest.
    cum_a, cum_s = np.cumsum(a_sorted), np.cumsum(s_sorted)
    nxt = np.append(r[1:], 0.0)
    at_next = cum_a - nxt * cum_s  # shortfall at m = r[k+1]
    over = at_next > room
    k = int(np.argmax(over)) if over.any() else len(r)
    # k == len(r): even m = 0 leaves the shortfall within budget.
    m = 0.0 if k >= len(r) else (cum_a[k] - room) / cum_s[k]
    return float(min(MAX_MULTIPLIER, max(MIN_MULTIPLIER, m)))


def cost_at_level(actual: np.ndarray, signal: np.ndarray, level_percent: float) -> float:
    """What sizing from `signal` costs to serve `level_percent` of `actual`: the needed multiplier × ΣS, in
    load units (replica-hours × capacity, before whole replicas); inf when no multiplier can."""
    m = needed_multiplier(actual, signal, level_percent)
    total = float(np.maximum(np.asarray(actual, dtype=float), 0.0).sum())
    n = len(actual)
    budget = (1 - level_percent / 100) * total * (n + 1) / max(n, 1)
    if shortfall(actual, m * np.asarray(signal, dtype=float)) > budget * (1 + 1e-9) + 1e-9:
        return math.inf
    return m * float(np.asarray(signal, dtype=float).sum())


def shortfall(actual: np.ndarray, provisioned: np.ndarray) -> float:
    """Unserved load: Σ max(0, A − provisioned)."""
    return float(np.maximum(0.0, np.asarray(actual, dtype=float) - np.asarray(provisioned, dtype=float)).sum())


@dataclass(frozen=True)
class Trust:
    """How much of the forecast's rise above the reactive floor the plan follows, and why."""

    weight: float  # w of S_w; 1 = full trust
    reason: str
    # Per trust level: the criterion it was chosen by (cost at the service level, or unserved at equal cost).
    scores: tuple[tuple[float, float], ...] = ()

    @property
    def leans_on_reactive(self) -> bool:
        return self.weight < 1.0


def choose_trust(samples: Samples, *, service_level: float | None, headroom_percent: float = 0.0,
                 min_samples: int = MIN_SAMPLES) -> Trust:
    """The trust weight the trailing record supports (see the module docstring); full trust without data."""
    s = samples.usable()
    if len(s) < min_samples:
        return Trust(1.0, f"{len(s)} of {min_samples} samples: forecast trusted until the record is long enough")
    if service_level is not None:
        level = service_level
        what = f"cost at {service_level:g}% served"
    else:
        # The service full trust with the headroom gave on the record is the bar every blend must meet.
        full_trust = blended(s.forecast, s.observed, 1.0) * (1 + headroom_percent / 100)
        served, _ = realized(s.actual, full_trust)
        level = served if served is not None else 100.0
        what = f"cost at the {level:.3g}% served full trust with {headroom_percent:g}% headroom gave"
    scores = [(w, cost_at_level(s.actual, blended(s.forecast, s.observed, w), level)) for w in TRUST_LEVELS]
    full = dict(scores)[1.0]
    best_w, best = min(scores, key=lambda ws: (ws[1], -ws[0]))
    if best_w < 1.0 and best < full * (1 - TRUST_MARGIN):
        ratio = full / best if best > 0 else math.inf
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
    quantile: float  # share of its samples with A ≤ multiplier × S
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
    """Per lead bucket, the multiplier on S_trust that meets `service_level`; () with too few samples."""
    s = samples.usable()
    if len(s) < min_samples:
        return ()
    signal = blended(s.forecast, s.observed, trust)
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
        m = needed_multiplier(s.actual[pick], signal[pick], service_level)
        covered = float(np.mean(s.actual[pick] <= m * signal[pick] + 1e-12))
        out.append(LeadBucket(start, end, m, covered, int(pick.sum())))
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
                       samples=len(samples.usable()))


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


def status_fields(calibration: Calibration, samples: Samples, *, lead: timedelta,
                  window: timedelta = CALIBRATION_WINDOW) -> dict[str, Any]:
    """The PredictiveScaler status fields of a calibration: `forecastTrust` and, with a service level,
    `serviceLevel` {target, realizedServedPercent, coveragePercent, calibratedQuantile, multiplier, samples,
    window}: how the calibrated sizing served the window's load and covered its buckets. Strings, since the
    API conventions keep floats out of resources."""
    out: dict[str, Any] = {"forecastTrust": f"{100 * calibration.trust.weight:.0f}%"}
    if calibration.service_level is None:
        return out
    level: dict[str, Any] = {"target": f"{calibration.service_level:g}%", "samples": calibration.samples,
                             "window": format_duration(window)}
    bucket = calibration.bucket(lead)
    usable = samples.usable()
    if bucket is not None and len(usable):
        sized = calibration.multipliers(usable.lead_s) * blended(usable.forecast, usable.observed,
                                                                 calibration.trust.weight)
        served, coverage = realized(usable.actual, sized)
        level.update({"calibratedQuantile": f"{100 * bucket.quantile:.1f}%", "multiplier": f"{bucket.multiplier:.3f}"})
        if served is not None and coverage is not None:
            level.update({"realizedServedPercent": f"{served:.2f}%", "coveragePercent": f"{coverage:.1f}%"})
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

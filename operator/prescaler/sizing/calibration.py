"""The sizing's calibration on the scaler's own record: the trust weight and, with a service level, the
multiplier per lead time; and how that sizing served the record.

Per lead time: samples are grouped by lead into `LEAD_EDGES` buckets, since errors grow with lead. A bucket
with fewer than `MIN_SAMPLES` takes in the next longer buckets until it has enough (longer leads err more,
so widening this way errs on the safe side); with fewer than `MIN_SAMPLES` in all, there is no calibration
and the planner falls back to the manual sizing (quantile and headroomPercent), saying so. The "calibrated
quantile" reported beside a multiplier is the share of samples whose load stayed within the sizing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from prescaler.durations import format_duration
from prescaler.forecasting.interface import Forecast
from prescaler.sizing.loads import sample_capacity
from prescaler.sizing.samples import CALIBRATION_WINDOW, MIN_SAMPLES, Samples, samples_from_forecasts
from prescaler.sizing.service_level import (
    FEEDBACK_MIN_SAMPLES,
    check_service_level,
    cost_at_service_level,
    needed_multiplier,
    served_and_coverage,
    steered_service_level,
)
from prescaler.sizing.trust import Trust, choose_trust

# Lead-time buckets (upper edges); the last bucket is open.
LEAD_EDGES: tuple[timedelta, ...] = (
    timedelta(hours=1), timedelta(hours=3), timedelta(hours=6), timedelta(hours=12), timedelta(days=1),
    timedelta(days=2),
)


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
class SizingCalibration:
    """What the planner needs from the record: the trust weight and, with a service level, a multiplier
    per lead-time bucket. `buckets` is empty in headroom mode (trust only)."""

    service_level: float | None
    trust: Trust
    buckets: tuple[LeadBucket, ...]
    samples: int
    incidents: int = 0  # buckets of the record left out as incidents (see samples.INCIDENT_RATIO)
    # Scheduled windows are a regime of their own: decisions inside one are sized by this multiplier (every
    # lead pooled), calibrated on the window buckets alone. None: too few of them, the buckets apply.
    window_multiplier: float | None = None
    window_samples: int = 0
    at_risk: str = ""  # why the record shows the service level out of reach ("" when it does not)

    @property
    def ready(self) -> bool:
        """True when a service level is set and the record was long enough to calibrate it."""
        return self.service_level is not None and bool(self.buckets)

    def bucket(self, lead: timedelta) -> LeadBucket | None:
        """The bucket of `lead`; a negative lead (a forecast from the future) counts as the shortest."""
        if not self.buckets:
            return None
        return next((b for b in self.buckets if b.holds(lead)), self.buckets[0])

    def multipliers(self, lead_s: np.ndarray, in_window: np.ndarray | None = None) -> np.ndarray:
        """`multiplier` for leads in seconds, at once (the backtest's replay); needs `ready`."""
        starts = np.array([b.start.total_seconds() for b in self.buckets])
        values = np.array([b.multiplier for b in self.buckets])
        at = np.clip(np.searchsorted(starts, np.asarray(lead_s, dtype=float), side="right") - 1, 0, len(starts) - 1)
        out = np.asarray(values[at])
        if in_window is not None and self.window_multiplier is not None:
            out = np.where(in_window, self.window_multiplier, out)
        return out

    def quantiles(self, lead_s: np.ndarray) -> np.ndarray:
        """The calibrated quantile of each lead's bucket, like `multipliers`."""
        starts = np.array([b.start.total_seconds() for b in self.buckets])
        values = np.array([b.quantile for b in self.buckets])
        at = np.clip(np.searchsorted(starts, np.asarray(lead_s, dtype=float), side="right") - 1, 0, len(starts) - 1)
        return np.asarray(values[at])

    def multiplier(self, lead: timedelta, in_window: bool = False) -> float | None:
        b = self.bucket(lead)
        if b is not None and in_window and self.window_multiplier is not None:
            return self.window_multiplier
        return None if b is None else b.multiplier

    def describe(self, lead: timedelta, in_window: bool = False) -> str:
        b = self.bucket(lead)
        if b is None:
            return ""
        if in_window and self.window_multiplier is not None:
            return (f"×{self.window_multiplier:.3f} in scheduled windows ({self.window_samples} samples) "
                    f"for {self.service_level:g}% served")
        span = (f"lead {format_duration(b.start)}–{format_duration(b.end)}" if b.end is not None
                else f"lead ≥ {format_duration(b.start)}")
        return (f"×{b.multiplier:.3f} (calibrated q{100 * b.quantile:.1f}, {span}, {b.samples} samples) "
                f"for {self.service_level:g}% served")


def calibrate_lead_buckets(samples: Samples, *, service_level: float, trust: float,
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
        _, covered = served_and_coverage(part.actual, sample_capacity(part, trust, m))
        out.append(LeadBucket(start, end, m, (covered or 0.0) / 100, int(pick.sum())))
    return tuple(out)


def in_windows(samples: Samples) -> np.ndarray:
    """Per row, whether a serving decision was inside a scheduled window (its rise above 1)."""
    if samples.rise is None:
        return np.zeros(len(samples), dtype=bool)
    rise = np.asarray(samples.rise, dtype=float)
    rise = rise[:, None] if rise.ndim == 1 else rise
    return np.asarray((rise[:, samples.held:] > 1.0).any(axis=1))


def calibrate_sizing(samples: Samples, *, service_level: float | None, headroom_percent: float = 0.0,
                     min_samples: int = MIN_SAMPLES, edges: Sequence[timedelta] = LEAD_EDGES,
                     trust: float | None = None, window_service_level: float | None = None) -> SizingCalibration:
    """Trust (chosen, unless given) and, with a service level, the per-lead multipliers; with scheduled
    windows in the record, a multiplier of their own calibrated on their buckets (at `window_service_level`,
    default the service level), and the lead buckets on the rest, so that quiet hours outside do not hide
    the misses inside nor do those misses raise the cost everywhere."""
    if service_level is not None:
        check_service_level(service_level)
    chosen = (Trust(trust, f"forecast trust {trust:.0%} (fixed)") if trust is not None
              else choose_trust(samples, service_level=service_level, headroom_percent=headroom_percent,
                                min_samples=min_samples))
    buckets: tuple[LeadBucket, ...] = ()
    window_m: float | None = None
    window_n = 0
    if service_level is not None:
        usable = samples.usable()
        inside = in_windows(usable)
        outside = usable.rows(~inside) if (~inside).sum() >= min_samples else usable
        buckets = calibrate_lead_buckets(outside, service_level=service_level, trust=chosen.weight,
                                         min_samples=min_samples, edges=edges)
        window_rows = usable.rows(inside).calibratable()
        if buckets and len(window_rows) >= min_samples:
            window_m = needed_multiplier(window_rows, window_service_level or service_level, chosen.weight)
            window_n = len(window_rows)
    return SizingCalibration(service_level=service_level, trust=chosen, buckets=buckets,
                             samples=len(samples.calibratable()), incidents=int(samples.incidents().sum()),
                             window_multiplier=window_m, window_samples=window_n)


@dataclass(frozen=True)
class InForce:
    """A calibration and when it took over (in the unit of `Samples.decided`), with the service levels it
    aimed at outside and inside scheduled windows."""

    since: int
    calibration: SizingCalibration
    aims: tuple[float, float]


@dataclass(frozen=True)
class Steering:
    """What the calibrations in force served out of sample, and the aims that follow (outside, inside windows)."""

    aims: tuple[float, float]
    served: float | None = None  # % of the load of the buckets judged, both regimes
    buckets: int = 0


def steered_aims(samples: Samples, history: Sequence[InForce], target: float) -> Steering:
    """Per regime (outside, inside scheduled windows), the service level the next calibration aims at: the
    calibrations in `history` judged on the record's buckets decided while each was in force (out of sample),
    through `steered_service_level`. Without such buckets, the last aims (the target at first)."""
    last = history[-1].aims if history else (target, target)
    s = samples.usable()
    if not history or s.decided is None or len(s) == 0:
        return Steering(last)
    since = np.array([h.since for h in history])
    which = np.searchsorted(since, np.asarray(s.decided), side="right") - 1
    inside = in_windows(s)
    aims = []
    judged_actual, judged_provisioned = [], []
    for regime, fallback in ((False, last[0]), (True, last[1])):
        actual, provisioned, weights = [], [], []
        for j in np.unique(which[which >= 0]):
            h = history[int(j)]
            if not h.calibration.ready:
                continue
            pick = (which == j) & (inside == regime)
            if not pick.any():
                continue
            part = s.rows(pick)
            cal = h.calibration
            actual.append(part.actual)
            provisioned.append(sample_capacity(part, cal.trust.weight,
                                               cal.multipliers(part.lead_s, in_windows(part))))
            weights.append((int(pick.sum()), h.aims[1 if regime else 0]))
        if not actual:
            aims.append(fallback)
            continue
        aimed = sum(n * a for n, a in weights) / sum(n for n, _ in weights)
        aims.append(steered_service_level(target, aimed, np.concatenate(actual), np.concatenate(provisioned)))
        judged_actual.extend(actual)
        judged_provisioned.extend(provisioned)
    if not judged_actual:
        return Steering((aims[0], aims[1]))
    a, p = np.concatenate(judged_actual), np.concatenate(judged_provisioned)
    served, _ = served_and_coverage(a, p)
    return Steering((aims[0], aims[1]), served, len(a))


# Out-of-sample served this far below the target (in points), over enough buckets, is a target at risk.
AT_RISK_MARGIN = 0.05


def at_risk(samples: Samples, steering: Steering, target: float, trust: float) -> str:
    """Why the record shows `target` out of reach ("" when it does not): what the calibrations in force served
    out of sample, and what the target would have cost on the record."""
    if steering.served is None or steering.buckets < FEEDBACK_MIN_SAMPLES:
        return ""
    if steering.served >= target - AT_RISK_MARGIN:
        return ""
    s = samples.usable()
    m, cost = cost_at_service_level(s, target, trust)
    load = float(s.actual.sum())
    price = ("no multiplier up to ×10 meets it" if not math.isfinite(cost) or load <= 0
             else f"it takes ×{m:.2f} the forecast, {cost / load:.2f}× the load")
    return (f"served {steering.served:.2f}% of the load over the last {steering.buckets} buckets against a "
            f"{target:g}% target; on the record {price}")


def calibrate_steered(samples: Samples, history: Sequence[InForce], *, service_level: float | None,
                      headroom_percent: float = 0.0, since: int, min_samples: int = MIN_SAMPLES) -> InForce:
    """`calibrate_sizing` at the aims the record steers to (`steered_aims`); the calibration reports the target,
    and whether the record shows it at risk (`at_risk`)."""
    if service_level is None:
        cal = calibrate_sizing(samples, service_level=None, headroom_percent=headroom_percent,
                               min_samples=min_samples)
        return InForce(since, cal, (0.0, 0.0))
    steering = steered_aims(samples, history, service_level)
    aim_out, aim_in = steering.aims
    cal = calibrate_sizing(samples, service_level=aim_out, headroom_percent=headroom_percent,
                           min_samples=min_samples, window_service_level=aim_in)
    risk = at_risk(samples, steering, service_level, cal.trust.weight) if cal.ready else ""
    return InForce(since, replace(cal, service_level=service_level, at_risk=risk), steering.aims)


def calibrate_sizing_from_forecasts(
    forecasts: Sequence[tuple[datetime, Forecast]],
    actuals: pd.Series,
    *,
    now: datetime,
    lead_time: timedelta,
    service_level: float | None,
    headroom_percent: float = 0.0,
    window: timedelta = CALIBRATION_WINDOW,
) -> SizingCalibration:
    """Stored forecasts and the traffic since, at `now`: `samples_from_forecasts` then `calibrate_sizing`."""
    samples = samples_from_forecasts(forecasts, actuals, now=now, lead_time=lead_time, window=window)
    return calibrate_sizing(samples, service_level=service_level, headroom_percent=headroom_percent)


@dataclass(frozen=True)
class RealizedSizing:
    """How the calibrated sizing did over the record's window, as numbers (status strings and gauges)."""

    quantile: float | None = None  # the calibrated quantile at the lead in use, 0-1
    multiplier: float | None = None
    served_percent: float | None = None  # of the window's load, had the calibrated sizing been provisioned
    coverage_percent: float | None = None  # of the window's buckets whose load it covered


def realized_sizing(calibration: SizingCalibration, samples: Samples, *, lead: timedelta) -> RealizedSizing:
    bucket = calibration.bucket(lead)
    usable = samples.usable()
    if calibration.service_level is None or bucket is None or not len(usable):
        return RealizedSizing()
    sized = sample_capacity(usable, calibration.trust.weight, calibration.multipliers(usable.lead_s))
    served, coverage = served_and_coverage(usable.actual, sized)
    return RealizedSizing(bucket.quantile, bucket.multiplier, served, coverage)


def status_fields(calibration: SizingCalibration, samples: Samples, *, lead: timedelta,
                  window: timedelta = CALIBRATION_WINDOW,
                  sizing: RealizedSizing | None = None) -> dict[str, Any]:
    """The PredictiveScaler status fields of a calibration: `forecastTrust` and, with a service level,
    `serviceLevel` {target, realizedServedPercent, coveragePercent, calibratedQuantile, multiplier, samples,
    window}: how the calibrated sizing served the window's load and covered its buckets. Strings, since the
    API conventions keep floats out of resources."""
    out: dict[str, Any] = {"forecastTrust": f"{100 * calibration.trust.weight:.0f}%"}
    if calibration.service_level is None:
        return out
    served: dict[str, Any] = {"target": f"{calibration.service_level:g}%", "samples": calibration.samples,
                              "incidents": calibration.incidents, "window": format_duration(window)}
    r = sizing if sizing is not None else realized_sizing(calibration, samples, lead=lead)
    if r.quantile is not None and r.multiplier is not None:
        served.update({"calibratedQuantile": f"{100 * r.quantile:.1f}%", "multiplier": f"{r.multiplier:.3f}"})
    if r.served_percent is not None and r.coverage_percent is not None:
        served.update({"realizedServedPercent": f"{r.served_percent:.2f}%",
                       "coveragePercent": f"{r.coverage_percent:.1f}%"})
    out["serviceLevel"] = served
    return out

"""The planner: pure maths from forecast, observation and policy to a replica count.

desired = clamp(ceil(max(P, R) * (1 + headroom) / capacity), min, max) where P is the forecast maxed over
[now, now + leadTime + tick] and R the load observed now. Scale-up is immediate; scale-down follows the
HPA's semantics (highest recommendation within the stabilisation window, bounded step). Stale or missing
forecasts take the fallback and never scale down. No I/O; `now` is an argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import pandas as pd

from prescaler.durations import format_duration
from prescaler.errors import InputError
from prescaler.forecasting.interface import Forecast

Quantile = Literal["yhat", "upper"]
Fallback = Literal["HoldCurrent", "ScaleToMax"]
Direction = Literal["up", "down", "none"]

# Guards ceil() against float noise: 2.0000000001 replicas is 2, not 3.
_EPS = 1e-9


@dataclass(frozen=True)
class ScalingPolicy:
    """Everything the planner needs from a PredictiveScaler spec, in planner units.

    `capacity` is the load one ready replica serves, in the same unit as forecast and observation
    (requests per forecast step).
    """

    min_replicas: int
    max_replicas: int
    capacity: float
    lead_time: timedelta
    tick: timedelta
    headroom_percent: float = 10.0
    quantile: Quantile = "upper"
    reactive_floor: bool = True
    scale_down_window: timedelta = timedelta(minutes=15)
    scale_down_max_step_percent: int = 50
    stale_after: timedelta = timedelta(hours=2)
    fallback: Fallback = "HoldCurrent"
    # Reasons show loads in the user's unit (e.g. requests per minute) rather than per forecast step.
    display_factor: float = 1.0
    display_unit: str = ""

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise InputError(f"minReplicas must be at least 1, got {self.min_replicas}")
        if self.max_replicas < self.min_replicas:
            raise InputError(f"minReplicas ({self.min_replicas}) must not exceed maxReplicas ({self.max_replicas})")
        if not self.capacity > 0:
            raise InputError(f"capacity must be greater than zero, got {self.capacity}")
        if self.headroom_percent < 0:
            raise InputError(f"headroomPercent must not be negative, got {self.headroom_percent}")
        if not 1 <= self.scale_down_max_step_percent <= 100:
            raise InputError(f"maxStepPercent must be within 1..100, got {self.scale_down_max_step_percent}")
        if self.quantile not in ("yhat", "upper"):
            raise InputError(f"quantile must be yhat or upper, got {self.quantile!r}")
        if self.fallback not in ("HoldCurrent", "ScaleToMax"):
            raise InputError(f"fallback action must be HoldCurrent or ScaleToMax, got {self.fallback!r}")
        if self.tick <= timedelta(0) or self.lead_time < timedelta(0):
            raise InputError("tick must be positive and leadTime not negative")

    def replicas_for(self, load: float) -> int:
        """Replicas that serve `load` with headroom, before bounds."""
        if load <= 0 or math.isnan(load):
            return 0
        return math.ceil(load * (1 + self.headroom_percent / 100) / self.capacity - _EPS)

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True)
class Recommendation:
    at: datetime
    replicas: int


@dataclass(frozen=True)
class Decision:
    desired: int
    current: int
    recommended: int
    direction: Direction
    reason: str
    stale: bool
    forecast_load: float | None = None
    observed_load: float | None = None
    peak_at: datetime | None = None
    peak_load: float | None = None
    recommendations: tuple[Recommendation, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class PeakWindow:
    at: datetime
    load: float


def forecast_peak(forecast: Forecast, start: datetime, end: datetime, quantile: Quantile) -> PeakWindow | None:
    """Highest forecast load over buckets that overlap [start, end).

    Half-open: a bucket starting exactly at `end` is the next decision's business, so capacity is not
    requested one tick earlier than the lead time needs.
    """
    if len(forecast.ds) == 0:
        return None
    step = _step_of(forecast.ds)
    values = forecast.upper if quantile == "upper" else forecast.yhat
    lo = int(forecast.ds.searchsorted(pd.Timestamp(start) - step, side="right"))
    hi = int(forecast.ds.searchsorted(pd.Timestamp(end), side="left"))
    if hi <= lo:
        return None
    window = np.asarray(values[lo:hi], dtype=float)
    if np.all(np.isnan(window)):
        return None
    i = int(np.nanargmax(window))
    return PeakWindow(at=forecast.ds[lo + i].to_pydatetime(), load=float(window[i]))


def covers(forecast: Forecast, start: datetime, end: datetime) -> bool:
    """True when the forecast has buckets spanning [start, end]."""
    if len(forecast.ds) == 0:
        return False
    step = _step_of(forecast.ds)
    return bool(forecast.ds[0] <= pd.Timestamp(start) and forecast.ds[-1] + step > pd.Timestamp(end))


def _step_of(ds: pd.DatetimeIndex) -> pd.Timedelta:
    if len(ds) >= 2:
        return pd.Timedelta(ds[1] - ds[0])
    return pd.Timedelta(0)


def _fmt_load(x: float, policy: ScalingPolicy | None = None) -> str:
    if policy is not None:
        x *= policy.display_factor
    text = f"{x:,.0f}" if x >= 100 else f"{x:,.2f}"
    return f"{text} {policy.display_unit}" if policy is not None and policy.display_unit else text


def plan(
    policy: ScalingPolicy,
    *,
    now: datetime,
    current_replicas: int,
    forecast: Forecast | None,
    forecast_generated_at: datetime | None,
    observed_load: float | None,
    recent: Sequence[Recommendation] = (),
) -> Decision:
    """Decide the replica count for `now`. `recent` carries the stabilisation window between calls."""
    current = max(0, int(current_replicas))
    observed = None if observed_load is None or math.isnan(observed_load) else max(0.0, float(observed_load))
    horizon_end = now + policy.lead_time + policy.tick

    stale_reason = _staleness(policy, now, horizon_end, forecast, forecast_generated_at)
    if stale_reason is not None:
        return _fallback(policy, now, current, observed, stale_reason, recent)
    assert forecast is not None  # _staleness returns a reason when it is None

    peak = forecast_peak(forecast, now, horizon_end, policy.quantile)
    p_load = max(0.0, peak.load) if peak is not None else 0.0
    r_load = observed if (policy.reactive_floor and observed is not None) else 0.0
    driver_is_forecast = p_load >= r_load
    raw = policy.replicas_for(max(p_load, r_load))
    recommended = policy.clamp(raw)

    recs = (*_in_window(recent, now, policy), Recommendation(now, recommended))

    lead = format_duration(policy.lead_time) if policy.lead_time > timedelta(0) else "0s"
    if driver_is_forecast and peak is not None:
        why = f"forecast peak {_fmt_load(p_load, policy)} at {peak.at:%Y-%m-%d %H:%M} within lead {lead}"
    elif observed is not None and policy.reactive_floor:
        why = (f"observed load {_fmt_load(r_load, policy)} above forecast {_fmt_load(p_load, policy)} "
               "(reactive floor)")
    else:
        why = f"forecast {_fmt_load(p_load, policy)} within lead {lead}"
    if raw != recommended:
        bound = "minReplicas" if raw < recommended else "maxReplicas"
        why += f"; {raw} replicas clamped to {bound} {recommended}"

    if current > policy.max_replicas:
        desired = policy.max_replicas
        why = f"current {current} above maxReplicas {policy.max_replicas}; " + why
    elif recommended >= current:
        desired = recommended
    else:
        stabilised = max(r.replicas for r in recs)
        step_floor = current - max(1, math.floor(current * policy.scale_down_max_step_percent / 100))
        desired = max(stabilised, step_floor, policy.min_replicas)
        desired = min(desired, current)
        if desired == current:
            why += (
                f"; scale-down to {recommended} held: highest recommendation within "
                f"{format_duration(policy.scale_down_window)} is {stabilised}"
            )
        elif desired > recommended:
            why += f"; scale-down limited to {desired} ({policy.scale_down_max_step_percent}% step, window)"

    return Decision(
        desired=desired,
        current=current,
        recommended=recommended,
        direction=_direction(desired, current),
        reason=f"{why} → {desired} replicas",
        stale=False,
        forecast_load=p_load if peak is not None else None,
        observed_load=observed,
        peak_at=peak.at if peak is not None else None,
        peak_load=peak.load if peak is not None else None,
        recommendations=recs,
    )


def _staleness(
    policy: ScalingPolicy,
    now: datetime,
    horizon_end: datetime,
    forecast: Forecast | None,
    generated_at: datetime | None,
) -> str | None:
    if forecast is None or generated_at is None:
        return "no forecast"
    age = now - generated_at
    if age > policy.stale_after:
        return f"forecast is {format_duration(age)} old (staleAfter {format_duration(policy.stale_after)})"
    if not covers(forecast, now, horizon_end):
        return "forecast does not cover now + leadTime"
    return None


def _fallback(
    policy: ScalingPolicy,
    now: datetime,
    current: int,
    observed: float | None,
    stale_reason: str,
    recent: Sequence[Recommendation],
) -> Decision:
    # Never scale down on data we cannot trust; the reactive floor may still raise capacity.
    if policy.fallback == "ScaleToMax":
        target = policy.max_replicas
        why = f"{stale_reason}: fallback ScaleToMax"
    else:
        target = current
        why = f"{stale_reason}: fallback HoldCurrent"
    if policy.reactive_floor and observed is not None:
        need = policy.replicas_for(observed)
        if need > target:
            target = need
            why += f", raised to observed load {_fmt_load(observed, policy)}"
    desired = policy.clamp(target)
    if current <= policy.max_replicas:
        desired = max(desired, min(current, policy.max_replicas))
    return Decision(
        desired=desired,
        current=current,
        recommended=desired,
        direction=_direction(desired, current),
        reason=f"{why} → {desired} replicas",
        stale=True,
        observed_load=observed,
        recommendations=(*_in_window(recent, now, policy), Recommendation(now, desired)),
    )


def _in_window(recent: Sequence[Recommendation], now: datetime, policy: ScalingPolicy) -> tuple[Recommendation, ...]:
    start = now - policy.scale_down_window
    return tuple(r for r in recent if start < r.at <= now)


def _direction(desired: int, current: int) -> Direction:
    return "up" if desired > current else "down" if desired < current else "none"

"""The planner: pure maths from forecast, observation and policy to a replica count.

desired = clamp(ceil(max(P, R) * (1 + headroom) / capacity), min, max) where P is the forecast maxed over
[now, now + leadTime + tick] and R the load observed now. Scale-up is immediate; scale-down follows the
HPA's semantics (highest recommendation within the stabilisation window, bounded step). Stale or missing
forecasts take the fallback and never scale down. No I/O; `now` is an argument.

`plan` composes one small function per step, in the order Kubernetes' HPA applies its own:

1. peak (`peak_load`): P, R and which of them drives the count;
   sizing (`size_load`): the load to provision for and the factor on it — max(P, R) with headroom by
   default; with a `SizingCalibration`, the floor plus the trusted share of the forecast's rise, and with a
   service level max(m·B, R): the trust-weighted mean B = w·P + (1 − w)·R scaled by the calibrated
   multiplier m instead of the headroom, the observed load under it (see `prescaler.sizing`);
   window (`size_for_window`): inside a scheduled window (`prescaler.windows`), at least the observed load
   times the rise its kind's past windows showed, and at least a schedule's minReplicas;
2. replicas (`ScalingPolicy.replicas_at`): that load times the factor over capacity, rounded up;
3. bounds (`apply_bounds`): into [minReplicas, maxReplicas];
4. stabilise (`stabilize_recommendation`): a scale-down goes no lower than the highest recommendation of the
   window;
5. step limit (`limit_scale_down_step`, within `normalize_desired`): a scale-down removes at most
   maxStepPercent of the current count.

Steps 3 to 5 are one sequence, `apply_replica_limits`, shared with every policy of the backtest that scales
like an HPA (reactive, predictive, the peers): a limit added there applies to all of them. Steps 1 and 2
have a whole-replay twin in `prescaler.backtest.policies.predictive_requests` (a test holds the two equal).

Two more steps need what only the reconciler knows, and it applies them, in this order, to the decision
`plan` returned:

6. data hold (`hold_scale_down_without_data`): while the traffic history cannot be read, a scale-down is
   held at the current count;
7. HPA cap (`cap_at_hpa_max_replicas`): with actuation HPAMinReplicas the count is the HPA's minReplicas,
   which the HPA's own maxReplicas bounds.

Every `Decision` says in words why (`reason`) and, for machines, which step set the count (`limited_by`):

- `None`: the forecast peak within the lead time set it; no limit bound;
- `ReactiveFloor`: the load observed now needs more replicas than the forecast, so the observation set it;
- `ScheduledWindow`: a scheduled window (a calendar event or a cron schedule) raised the count above the
  sizing: by the rise learned from its kind's past windows, or to a schedule's minReplicas;
- `ReactiveBlend`: the forecast's recent record was worse than the reactive floor's, so the plan followed
  only part of its rise above the observed load (the reason gives the trust and the record);
- `MinReplicas` / `MaxReplicas`: the count was raised to minReplicas or cut to maxReplicas (also when the
  target runs above maxReplicas and is brought back within bounds);
- `ScaleDownStabilization`: a scale-down was held, wholly or partly, by a higher recommendation made
  within the stabilisation window;
- `ScaleDownStepLimit`: a scale-down was cut to the largest step maxStepPercent allows;
- `StaleForecast`: the forecast is missing, older than staleAfter or does not cover the lead time, and the
  fallback action set the count (a reactive floor or the bounds may still override it, and then say so);
- `DataUnavailable`: the traffic history could not be read, so a scale-down was held at the current count;
- `HPAMaxReplicas`: the count was cut to the maxReplicas of the HPA whose minReplicas it sets.

When several steps bind, the last one to change the count names it: that is the limit to lift first.

Service level and headroom: with `service_level` set and a calibration that has enough samples, P is the
point forecast (yhat) and the calibrated multiplier replaces `headroom_percent` and `quantile`; until the
record is long enough (or without a calibration) the manual sizing, `quantile` and `headroom_percent`,
applies, and the reason says so. To size by hand, leave the service level unset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal, get_args

import numpy as np
import pandas as pd

from prescaler.durations import format_duration
from prescaler.errors import InputError
from prescaler.forecasting.interface import Forecast
from prescaler.sizing.calibration import SizingCalibration
from prescaler.sizing.loads import floor_plus_trusted_rise, trust_weighted_mean, window_floor
from prescaler.sizing.service_level import check_service_level
from prescaler.windows import WindowAsk

Quantile = Literal["yhat", "upper"]
Fallback = Literal["HoldCurrent", "ScaleToMax"]
Direction = Literal["up", "down", "none"]
LimitedBy = Literal[
    "None",
    "ReactiveFloor",
    "ReactiveBlend",
    "MinReplicas",
    "MaxReplicas",
    "ScaleDownStabilization",
    "ScaleDownStepLimit",
    "StaleForecast",
    "DataUnavailable",
    "HPAMaxReplicas",
    "ScheduledWindow",
]
LIMITED_BY: tuple[LimitedBy, ...] = get_args(LimitedBy)

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
    # Percent of requests to serve (e.g. 99.9); None sizes by quantile and headroom alone.
    service_level: float | None = None

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
        if self.service_level is not None:
            check_service_level(self.service_level)

    @property
    def headroom_factor(self) -> float:
        return 1 + self.headroom_percent / 100

    def replicas_for(self, load: float) -> int:
        """Replicas that serve `load` with headroom, before bounds."""
        return self.replicas_at(load, self.headroom_factor)

    def replicas_at(self, load: float, factor: float) -> int:
        """Replicas that serve `load` × `factor` (headroom or a calibrated multiplier), before bounds."""
        if load <= 0 or math.isnan(load):
            return 0
        return math.ceil(load * factor / self.capacity - _EPS)

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
    # Which step set `desired` (see the module's docstring); `reason` says the same in words.
    limited_by: LimitedBy = "None"
    # w: the weight of the forecast against the observed load in the sizing (1 = full trust).
    trust: float = 1.0
    # The calibrated multiplier that sized the load for the service level (None: headroom sized it).
    multiplier: float | None = None
    # The level correction the forecast was scaled by (1: none).
    level_correction: float = 1.0


@dataclass(frozen=True)
class PeakWindow:
    at: datetime
    load: float


@dataclass(frozen=True)
class Load:
    """What step 1 found: the forecast peak P, the observed floor R, and which of them drives the count."""

    forecast: float  # P, 0 when the window has no forecast value
    observed: float  # R, 0 when the reactive floor is off or nothing was observed
    peak: PeakWindow | None
    limited_by: LimitedBy  # ReactiveFloor when R beat P

    @property
    def value(self) -> float:
        return max(self.forecast, self.observed)


def forecast_peak(forecast: Forecast, start: datetime, end: datetime, quantile: Quantile) -> PeakWindow | None:
    """Highest forecast load over buckets that overlap [start, end).

    Half-open: a bucket starting exactly at `end` is the next decision's business, so capacity is not
    requested one tick earlier than the lead time needs.
    """
    ns = forecast.ns
    if len(ns) == 0:
        return None
    step = int(ns[1] - ns[0]) if len(ns) >= 2 else 0
    values = forecast.upper if quantile == "upper" else forecast.yhat
    lo = int(np.searchsorted(ns, pd.Timestamp(start).value - step, side="right"))
    hi = int(np.searchsorted(ns, pd.Timestamp(end).value, side="left"))
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


# ---------------------------------------------------------------------------------------------------------
# The steps


def peak_load(
    policy: ScalingPolicy,
    forecast: Forecast,
    *,
    now: datetime,
    end: datetime,
    observed: float | None,
    quantile: Quantile | None = None,
) -> Load:
    """Step 1: P = the forecast peak over [now, end); R = the load observed now, when the reactive floor is on.

    P is read from `quantile` (default: the policy's).
    """
    peak = forecast_peak(forecast, now, end, quantile or policy.quantile)
    p_load = max(0.0, peak.load) if peak is not None else 0.0
    r_load = observed if (policy.reactive_floor and observed is not None) else 0.0
    return Load(forecast=p_load, observed=r_load, peak=peak,
                limited_by="ReactiveFloor" if r_load > p_load else "None")


@dataclass(frozen=True)
class SizedLoad:
    """What step 2 sizes for: `load` × `factor` of capacity."""

    load: float  # max(P, R) or R + w·max(0, P − R) (headroom); max(m·B, R) (service level)
    factor: float  # 1 + headroom; 1 when the service level's multiplier is in `load` already
    trust: float  # w: the weight of the forecast against the observed load (1 = full trust)
    multiplier: float | None  # the calibrated multiplier, when the service level sized the load
    limited_by: LimitedBy  # ReactiveBlend when the trust held the count below the forecast's
    note: str  # the trust and the calibration in words ("" when neither applied)


def is_calibrated(policy: ScalingPolicy, calibration: SizingCalibration | None) -> bool:
    """True when a service level is set and the calibration can size it."""
    return policy.service_level is not None and calibration is not None and calibration.ready


def sizing_quantile(policy: ScalingPolicy, calibration: SizingCalibration | None) -> Quantile:
    """Where P is read: the point forecast when the calibration sizes it (the multiplier is the quantile)."""
    return "yhat" if is_calibrated(policy, calibration) else policy.quantile


def size_load(policy: ScalingPolicy, load: Load, calibration: SizingCalibration | None, lead: timedelta,
              level_correction: float = 1.0, in_window: bool = False) -> SizedLoad:
    """Step 1b: the trust in the forecast and the service level's multiplier, or max(P, R) with headroom.

    With a calibrated service level the load is max(m·B, R), B = w·P + (1 − w)·R: the trust-weighted mean of
    forecast and observation scaled by the multiplier m of `lead` (now + leadTime − generated_at: errors grow
    with it), with the observed load under it unscaled. By headroom it is R + w·max(0, P − R), times
    1 + headroom. Trust below 1 needs the reactive floor: without it there is nothing to lean on, and the
    forecast keeps full trust. P is first scaled by `level_correction`
    (`prescaler.sizing.level_correction`). Inside a scheduled window (`in_window`) the calibration's window
    multiplier applies, when it has one.
    """
    p, r = load.forecast * level_correction, load.observed
    trust, notes = 1.0, []
    if level_correction != 1.0:
        notes.append(f"forecast ×{level_correction:.2f} to the recent level")
    if calibration is not None and policy.reactive_floor and calibration.trust.leans_on_reactive:
        trust = calibration.trust.weight
    leaning: LimitedBy | None = "ReactiveBlend" if trust < 1.0 and p > r else None
    if calibration is not None and is_calibrated(policy, calibration):
        multiplier = calibration.multiplier(lead, in_window)
        assert multiplier is not None  # a ready calibration has buckets
        scaled = float(multiplier * trust_weighted_mean(p, r, trust))
        value = max(scaled, r)
        limited_by: LimitedBy = "ReactiveFloor" if r > scaled else (leaning or "None")
        if leaning:
            notes.append(f"{calibration.trust.reason}: sized for {_fmt_load(value, policy)}")
        notes.append(calibration.describe(lead, in_window))
        return SizedLoad(value, 1.0, trust, multiplier, limited_by, "; ".join(notes))
    value = max(p, r) if trust >= 1.0 else float(floor_plus_trusted_rise(p, r, trust))
    if leaning and calibration is not None:
        notes.append(f"{calibration.trust.reason}: sizing for {_fmt_load(value, policy)}")
    if policy.service_level is not None:
        have = calibration.samples if calibration is not None else 0
        notes.append(f"service level {policy.service_level:g}% not calibrated yet ({have} samples): "
                     f"{policy.quantile} + {policy.headroom_percent:g}% headroom")
    floor: LimitedBy = "ReactiveFloor" if r > p else "None"
    return SizedLoad(value, policy.headroom_factor, trust, None, leaning or floor, "; ".join(notes))


def size_for_window(policy: ScalingPolicy, sized: SizedLoad, observed: float, window: WindowAsk | None
                    ) -> tuple[SizedLoad, int]:
    """Step 1c: the scheduled windows' ask — the observed load times the window's rise under the sizing, and
    the floor the replica count may not go below (0: none). Whole-replay twin in `predictive_requests`."""
    if window is None or not window.asks:
        return sized, 0
    m = sized.multiplier if sized.multiplier is not None else math.nan
    lifted = float(window_floor(observed, window.rise, m))
    if lifted <= sized.load:
        return sized, window.min_replicas
    scaled = f" ×{m:.2f}" if window.rise > 1.0 and not math.isnan(m) else ""
    note = "; ".join(n for n in (sized.note, f"window {window.note}: observed ×{window.rise:.1f}{scaled}") if n)
    return replace(sized, load=lifted, limited_by="ScheduledWindow", note=note), window.min_replicas


def replicas_array(policy: ScalingPolicy, load: np.ndarray, factor: np.ndarray | float) -> np.ndarray:
    """`ScalingPolicy.replicas_at` for arrays, the same arithmetic in the same order (the backtest's replay)."""
    load = np.asarray(load, dtype=float)
    with np.errstate(invalid="ignore"):
        raw = np.ceil(load * factor / policy.capacity - _EPS)
    return np.where((load > 0) & ~np.isnan(load), raw, 0).astype(np.int64)


def apply_bounds(policy: ScalingPolicy, replicas: int) -> tuple[int, LimitedBy | None]:
    """Step 3: the count within [minReplicas, maxReplicas], and the bound that moved it (None if neither)."""
    bounded = policy.clamp(replicas)
    if bounded > replicas:
        return bounded, "MinReplicas"
    if bounded < replicas:
        return bounded, "MaxReplicas"
    return bounded, None


def stabilize_recommendation(
    recommended: int, *, now: datetime, recent: Sequence[Recommendation], window: timedelta
) -> tuple[int, tuple[Recommendation, ...]]:
    """Step 4, HPA's scale-down stabilisation: the highest recommendation not older than `window`.

    Returns that count (this recommendation included) and the window's recommendations with this one
    appended, which the caller passes back as `recent` next time. As in the HPA, a recommendation exactly
    `window` old still counts; recommendations dated after `now` are dropped.
    """
    start = now - window
    kept = (*(r for r in recent if start <= r.at <= now), Recommendation(now, recommended))
    return max(r.replicas for r in kept), kept


def limit_scale_down_step(policy: ScalingPolicy, current: int, replicas: int) -> int:
    """Step 5: a scale-down removes at most maxStepPercent of the current replicas, and at least one."""
    floor = current - max(1, math.floor(current * policy.scale_down_max_step_percent / 100))
    return max(replicas, floor)


def normalize_desired(
    policy: ScalingPolicy, *, current: int, recommended: int, stabilised: int
) -> tuple[int, LimitedBy | None]:
    """Steps 4 and 5 applied: up at once, down no lower than the window's highest and at most one step.

    Returns the desired count and the limit that set it (None when the recommendation stands).
    """
    if current > policy.max_replicas:
        return policy.max_replicas, "MaxReplicas"
    if recommended >= current:
        return recommended, None
    held = min(stabilised, current)
    desired = limit_scale_down_step(policy, current, held)
    if desired > held:
        return desired, "ScaleDownStepLimit"
    if desired > recommended:
        return desired, "ScaleDownStabilization"
    return desired, None


@dataclass(frozen=True)
class LimitedReplicas:
    """What steps 3 to 5 left of a raw count."""

    recommended: int  # the raw count within [minReplicas, maxReplicas]
    stabilised: int  # the highest recommendation of the window, this one included
    desired: int
    limited_by: LimitedBy | None  # the last limit that changed the count (None: none did)
    recommendations: tuple[Recommendation, ...]  # the window with this recommendation: the next call's `recent`


def apply_replica_limits(
    policy: ScalingPolicy, raw: int, *, current: int, now: datetime, recent: Sequence[Recommendation]
) -> LimitedReplicas:
    """Steps 3 to 5 in order: bounds, scale-down stabilisation, then up at once or down by at most a step."""
    recommended, bound = apply_bounds(policy, raw)
    stabilised, recommendations = stabilize_recommendation(recommended, now=now, recent=recent,
                                                           window=policy.scale_down_window)
    desired, limit = normalize_desired(policy, current=current, recommended=recommended, stabilised=stabilised)
    return LimitedReplicas(recommended, stabilised, desired, limit or bound, recommendations)


# ---------------------------------------------------------------------------------------------------------
# The plan


def plan(
    policy: ScalingPolicy,
    *,
    now: datetime,
    current_replicas: int,
    forecast: Forecast | None,
    forecast_generated_at: datetime | None,
    observed_load: float | None,
    recent: Sequence[Recommendation] = (),
    calibration: SizingCalibration | None = None,
    level_correction: float = 1.0,
    window: WindowAsk | None = None,
) -> Decision:
    """Decide the replica count for `now`. `recent` carries the stabilisation window between calls.

    `calibration` (`prescaler.sizing.calibration`, on the scaler's own recent record) brings the trust in
    the forecast and, with the policy's service level, the multipliers that size for it; `level_correction`
    the factor on the forecast (`prescaler.sizing.level_correction`, the last hour's load against it);
    `window` what the scheduled windows ask of this decision (`prescaler.windows`).
    """
    current = max(0, int(current_replicas))
    observed = None if observed_load is None or math.isnan(observed_load) else max(0.0, float(observed_load))
    horizon_end = now + policy.lead_time + policy.tick

    stale_reason = _staleness(policy, now, horizon_end, forecast, forecast_generated_at)
    if stale_reason is not None:
        return _hold_window_floor(_fallback(policy, now, current, observed, stale_reason, recent), policy, window)
    assert forecast is not None  # _staleness returns a reason when it is None

    assert forecast_generated_at is not None
    load = peak_load(policy, forecast, now=now, end=horizon_end, observed=observed,
                     quantile=sizing_quantile(policy, calibration))
    sized = size_load(policy, load, calibration, now + policy.lead_time - forecast_generated_at, level_correction,
                      in_window=window is not None and window.rise > 1.0)
    sized, window_floor = size_for_window(policy, sized, load.observed, window)
    raw = policy.replicas_at(sized.load, sized.factor)
    if window_floor > raw:
        raw = window_floor
        assert window is not None  # a floor comes from a window
        sized = replace(sized, limited_by="ScheduledWindow",
                        note="; ".join(n for n in (sized.note, f"window {window.note}") if n))
    limited = apply_replica_limits(policy, raw, current=current, now=now, recent=recent)

    desired = limited.desired
    why = _explain(policy, load, observed, raw=raw, recommended=limited.recommended, current=current,
                   stabilised=limited.stabilised, desired=desired, note=sized.note)
    return Decision(
        desired=desired,
        current=current,
        recommended=limited.recommended,
        direction=_direction(desired, current),
        reason=f"{why} → {desired} replicas",
        stale=False,
        forecast_load=load.forecast if load.peak is not None else None,
        observed_load=observed,
        peak_at=load.peak.at if load.peak is not None else None,
        peak_load=load.peak.load if load.peak is not None else None,
        recommendations=limited.recommendations,
        limited_by=limited.limited_by or sized.limited_by,
        trust=sized.trust,
        multiplier=sized.multiplier,
        level_correction=level_correction,
    )


def _explain(
    policy: ScalingPolicy,
    load: Load,
    observed: float | None,
    *,
    raw: int,
    recommended: int,
    current: int,
    stabilised: int,
    desired: int,
    note: str = "",
) -> str:
    """The human reason for a fresh-forecast decision, step by step."""
    lead = format_duration(policy.lead_time) if policy.lead_time > timedelta(0) else "0s"
    p_load, peak = load.forecast, load.peak
    if p_load >= load.observed and peak is not None:
        why = f"forecast peak {_fmt_load(p_load, policy)} at {peak.at:%Y-%m-%d %H:%M} within lead {lead}"
    elif observed is not None and policy.reactive_floor:
        why = (f"observed load {_fmt_load(load.observed, policy)} above forecast {_fmt_load(p_load, policy)} "
               "(reactive floor)")
    else:
        why = f"forecast {_fmt_load(p_load, policy)} within lead {lead}"
    if note:
        why += f"; {note}"
    if raw != recommended:
        bound = "minReplicas" if raw < recommended else "maxReplicas"
        why += f"; {raw} replicas clamped to {bound} {recommended}"

    if current > policy.max_replicas:
        why = f"current {current} above maxReplicas {policy.max_replicas}; " + why
    elif recommended < current:
        if desired == current:
            why += (
                f"; scale-down to {recommended} held: highest recommendation within "
                f"{format_duration(policy.scale_down_window)} is {stabilised}"
            )
        elif desired > recommended:
            why += f"; scale-down limited to {desired} ({policy.scale_down_max_step_percent}% step, window)"
    return why


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
    limited_by: LimitedBy = "StaleForecast"
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
            limited_by = "ReactiveFloor"
            why += f", raised to observed load {_fmt_load(observed, policy)}"
    desired, bound = apply_bounds(policy, target)
    limited_by = bound or limited_by
    if current <= policy.max_replicas and desired < current:
        desired, limited_by = current, "StaleForecast"
    _, recs = stabilize_recommendation(desired, now=now, recent=recent, window=policy.scale_down_window)
    return Decision(
        desired=desired,
        current=current,
        recommended=desired,
        direction=_direction(desired, current),
        reason=f"{why} → {desired} replicas",
        stale=True,
        observed_load=observed,
        recommendations=recs,
        limited_by=limited_by,
    )


# ---------------------------------------------------------------------------------------------------------
# The reconciler's steps


def _hold_window_floor(decision: Decision, policy: ScalingPolicy, window: WindowAsk | None) -> Decision:
    """A schedule's floor holds without a forecast too: it needs none."""
    if window is None or window.min_replicas <= decision.desired:
        return decision
    floor = min(window.min_replicas, policy.max_replicas)
    if floor <= decision.desired:
        return decision
    return replace(decision, desired=floor, direction=_direction(floor, decision.current),
                   limited_by="ScheduledWindow",
                   reason=f"{decision.reason}; window {window.note} → {floor} replicas")


def hold_scale_down_without_data(decision: Decision) -> Decision:
    """Step 6: while the traffic history cannot be read, a scale-down waits at the current count."""
    if decision.desired >= decision.current:
        return decision
    return replace(decision, desired=decision.current, direction="none", limited_by="DataUnavailable",
                   reason=f"{decision.reason}; scale-down held: traffic data unavailable → {decision.current} "
                          "replicas")


def cap_at_hpa_max_replicas(decision: Decision, hpa_name: str, max_replicas: int) -> Decision:
    """Step 7: a count written as an HPA's minReplicas is at most that HPA's maxReplicas."""
    if decision.desired <= max_replicas:
        return decision
    return replace(decision, desired=max_replicas, direction=_direction(max_replicas, decision.current),
                   limited_by="HPAMaxReplicas",
                   reason=f"{decision.reason}; capped at HPA {hpa_name}'s maxReplicas {max_replicas} "
                          f"→ {max_replicas} replicas")


def _direction(desired: int, current: int) -> Direction:
    return "up" if desired > current else "down" if desired < current else "none"

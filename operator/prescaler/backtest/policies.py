"""The four policies of the backtest. Each returns the replica count requested at the start of every bucket.

- `static`: one fleet sized for the evaluated window's peak, the baseline of the original demo;
- `reactive`: HPA-like, sized from the last observed bucket, with HPA's scale-down stabilisation;
- `predictive`: the operator's own planner, fed with forecasts refit on a rolling origin (and, at each
  refit, the calibration of its own record so far: the trust in the forecast and the service level's
  multipliers);
- `oracle`: sized from the true load of the bucket itself, with no delay: the lower bound on replica-hours.

`ready_from_requests` turns requests into ready replicas (the startup delay); the KPIs live in `results`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from prescaler.forecasting.interface import Forecast
from prescaler.planning import (
    Quantile,
    Recommendation,
    ScalingPolicy,
    apply_replica_limits,
    plan,
    replicas_array,
)
from prescaler.sizing.loads import calibrated_load, floor_plus_trusted_rise, window_floor
from prescaler.windows import WindowSizing

POLICIES = ("static", "reactive", "predictive", "oracle")
# HPA's default scale-down stabilisation window.
HPA_WINDOW = timedelta(minutes=5)
# Large enough never to bind: the backtest measures the policy, not the bounds.
_MAX_REPLICAS = 1_000_000
_NEVER_STALE = timedelta(days=3650)


def ready_from_requests(requested: np.ndarray, delay_steps: int) -> np.ndarray:
    """Ready replicas per bucket, given requests at each bucket start and a startup delay in steps.

    The fleet requested at the first bucket is taken as already running and ready (a warm start).
    Scale-down removes the youngest starting pods first, then ready ones, immediately.
    """
    n = len(requested)
    ready = np.zeros(n, dtype=np.int64)
    if n == 0:
        return ready
    r = int(requested[0])
    pending: deque[list[int]] = deque()  # [ready_at, count], oldest first
    n_pending = 0
    for t in range(n):
        while pending and pending[0][0] <= t:
            r += pending[0][1]
            n_pending -= pending.popleft()[1]
        target = int(requested[t])
        total = r + n_pending
        if target > total:
            if delay_steps <= 0:
                r += target - total
            else:
                pending.append([t + delay_steps, target - total])
                n_pending += target - total
        elif target < total:
            excess = total - target
            while excess and pending:
                take = min(excess, pending[-1][1])
                pending[-1][1] -= take
                n_pending -= take
                excess -= take
                if pending[-1][1] == 0:
                    pending.pop()
            r -= excess
        ready[t] = r
    return ready


def replay_policy(
    capacity: float,
    lead: timedelta,
    step: timedelta,
    headroom: float,
    quantile: Quantile,
    window: timedelta,
    service_level: float | None = None,
) -> ScalingPolicy:
    """The planner policy every sized policy shares: bounds that never bind, no step limit, never stale."""
    return ScalingPolicy(
        service_level=service_level,
        min_replicas=1,
        max_replicas=_MAX_REPLICAS,
        capacity=capacity,
        lead_time=lead,
        tick=step,
        headroom_percent=headroom,
        quantile=quantile,
        reactive_floor=True,
        scale_down_window=window,
        scale_down_max_step_percent=100,
        stale_after=_NEVER_STALE,
    )


def static_requests(load: np.ndarray, policy: ScalingPolicy) -> np.ndarray:
    fleet = max(1, policy.replicas_for(float(np.nanmax(load))))
    return np.full(len(load), fleet, dtype=np.int64)


def oracle_requests(load: np.ndarray, capacity: float) -> np.ndarray:
    exact = ScalingPolicy(min_replicas=1, max_replicas=_MAX_REPLICAS, capacity=capacity,
                          lead_time=timedelta(0), tick=timedelta(minutes=1), headroom_percent=0.0)
    out = np.zeros(len(load), dtype=np.int64)
    cur = max(1, exact.replicas_for(_first_valid(load)))
    for t, y in enumerate(load):
        if not math.isnan(y):  # a missing bucket carries no information: hold
            cur = max(1, exact.replicas_for(float(y)))
        out[t] = cur
    return out


def reactive_requests(
    ds: pd.DatetimeIndex, prev_load: np.ndarray, initial_load: float, policy: ScalingPolicy
) -> np.ndarray:
    """HPA-like: size from the last observed bucket; scale up at once, scale down as the planner does.

    The count goes through the planner's own limits (`apply_replica_limits`: bounds, HPA's stabilisation over
    `policy.scale_down_window`, then the step limit), so reactive and predictive differ only in what they size
    from.
    """
    out = np.zeros(len(prev_load), dtype=np.int64)
    cur = max(1, policy.replicas_for(initial_load))
    recent: tuple[Recommendation, ...] = ()
    for t, y in enumerate(prev_load):
        # A missing observation carries no recommendation: the fleet holds and the window ages.
        if not math.isnan(y):
            limited = apply_replica_limits(policy, policy.replicas_for(float(y)), current=cur,
                                           now=ds[t].to_pydatetime(), recent=recent)
            cur, recent = limited.desired, limited.recommendations
        out[t] = cur
    return out


@dataclass(frozen=True)
class Fit:
    """One refit of the rolling origin: the forecast the predictive policy uses until the next one."""

    origin: int  # evaluated-bucket index at which this forecast was made
    forecast: Forecast | None
    model: str | None
    seconds: float
    error: str | None


def predictive_requests(
    times: Sequence[datetime],
    prev_load: np.ndarray,
    peak: np.ndarray,
    stale: np.ndarray,
    trust: np.ndarray,
    multiplier: np.ndarray,
    policy: ScalingPolicy,
    windows: WindowSizing | None = None,
) -> np.ndarray:
    """The planner's decision at every bucket, with step 1 precomputed for the whole replay.

    `peak` is the forecast's highest value over each decision's lead window (what `peak_load` reads; NaN:
    none), `stale` marks decisions without a forecast in force (a failed fit: the planner's fallback),
    `trust` the trust weight and `multiplier` the calibrated service-level multiplier (NaN: sized by
    headroom), as `size_load` applies them; `windows` the scheduled windows' factor on the observed load and
    their replica floor (`prescaler.windows`). The rest goes through the planner's own steps, so a replay
    equals `plan` called per bucket (a test holds the two together) at a fraction of its cost: the frontier
    replays it once per headroom.
    """
    observed = np.where(np.isnan(prev_load), 0.0, np.maximum(prev_load, 0.0))
    forecast = np.where(np.isnan(peak), 0.0, np.maximum(peak, 0.0))
    calibrated = ~np.isnan(multiplier)
    # Full trust by headroom is max(P, R) exactly as the planner computes it.
    load = np.maximum(forecast, observed)
    leaning = (trust < 1.0) & ~calibrated
    load[leaning] = floor_plus_trusted_rise(forecast[leaning], observed[leaning], trust[leaning])
    load[calibrated] = calibrated_load(forecast[calibrated], observed[calibrated], trust[calibrated],
                                       multiplier[calibrated])
    if windows is not None:
        load = np.maximum(load, window_floor(observed, windows.rise, np.where(calibrated, multiplier, np.nan)))
    raw = replicas_array(policy, load, np.where(calibrated, 1.0, policy.headroom_factor))
    if windows is not None:
        raw = np.maximum(raw, windows.min_replicas)
    out = np.zeros(len(times), dtype=np.int64)
    cur = 0
    recent: tuple[Recommendation, ...] = ()
    for t, now in enumerate(times):
        if stale[t]:
            obs = None if math.isnan(prev_load[t]) else float(prev_load[t])
            dec = plan(policy, now=now, current_replicas=cur, forecast=None, forecast_generated_at=None,
                       observed_load=obs, recent=recent)
            cur, recent = dec.desired, dec.recommendations
            if windows is not None:
                cur = max(cur, int(windows.min_replicas[t]))  # a schedule's floor holds without a forecast too
        else:
            limited = apply_replica_limits(policy, int(raw[t]), current=cur, now=now, recent=recent)
            cur, recent = limited.desired, limited.recommendations
        out[t] = cur
    return out


def _first_valid(a: np.ndarray) -> float:
    valid = a[~np.isnan(a)]
    return float(valid[0]) if len(valid) else 0.0

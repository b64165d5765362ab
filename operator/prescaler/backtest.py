"""What-if backtest: replay a trace through static, reactive, predictive and oracle scaling policies.

Time model, per bucket t of the step grid (the load y[t] arrives during bucket t):
- every policy decides at the start of bucket t from buckets < t only (the oracle excepted);
- a replica requested at decision time t is ready at t + startup delay (rounded up to whole steps);
  scale-down is immediate and removes starting pods before ready ones (as a ReplicaSet does);
- ready capacity during bucket t is ready replicas x capacity; unserved = max(0, y[t] - capacity);
- a missing bucket counts as zero load and is left out of the percentages.
Replica-hours count every running pod, starting or ready: a starting pod costs as much as a ready one.
"""

from __future__ import annotations

import math
import sys
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from prescaler import forecasting
from prescaler.durations import format_duration
from prescaler.errors import InputError
from prescaler.forecasting import Forecast
from prescaler.planning import Quantile, Recommendation, ScalingPolicy, plan

POLICIES = ("static", "reactive", "predictive", "oracle")
# HPA's default scale-down stabilisation window.
HPA_WINDOW = timedelta(minutes=5)
# Fits see at most this much history: enough for weekly seasonality, cheap enough for daily refits.
FIT_WINDOW = timedelta(days=56)
# Below this the forecasters have not seen a single full day to learn from.
MIN_WARMUP = timedelta(days=2)
DEFAULT_WARMUP = timedelta(days=14)
DEFAULT_QUANTILE: Quantile = "yhat"
FIT_TIMEOUT_S = 120.0
# Large enough never to bind: the backtest measures the policy, not the bounds.
_MAX_REPLICAS = 1_000_000
_NEVER_STALE = timedelta(days=3650)


@dataclass(frozen=True)
class PolicyKpis:
    replica_hours: float
    unserved_pct: float
    underprovisioned_pct: float
    scale_actions: int
    saving_vs_static_pct: float
    ratio_to_oracle: float | None


@dataclass(frozen=True)
class FrontierPoint:
    headroom_pct: float
    replica_hours: float
    unserved_pct: float


@dataclass(frozen=True)
class ForecastQuality:
    model: str
    smape: float | None
    mape: float | None
    mase: float | None


@dataclass(frozen=True)
class FrontierComparison:
    """Predictive's frontier point against reactive's unserved interpolated at the same replica-hours."""

    headroom_pct: float
    replica_hours: float
    predictive_unserved_pct: float
    reactive_unserved_pct: float | None  # None when outside reactive's swept replica-hours range


@dataclass
class BacktestResult:
    ds: pd.DatetimeIndex  # evaluated buckets (UTC starts)
    load: np.ndarray  # requests per step, NaN = missing
    yhat: np.ndarray  # the forecast the predictive policy used for each bucket
    lower: np.ndarray
    upper: np.ndarray
    requested: dict[str, np.ndarray]  # replicas requested per policy per bucket
    ready: dict[str, np.ndarray]  # ready replicas per policy per bucket
    kpis: dict[str, PolicyKpis]
    forecast: ForecastQuality
    frontier: dict[str, list[FrontierPoint]]
    settings: dict[str, Any]
    refit_at: pd.DatetimeIndex = field(default_factory=lambda: pd.DatetimeIndex([], tz="UTC"))

    @property
    def capacity(self) -> float:
        return float(self.settings["capacity"])

    def ready_capacity(self, policy: str) -> np.ndarray:
        """Requests per step the policy's ready replicas can serve, per bucket."""
        return self.ready[policy] * self.capacity

    def actions(self, policy: str) -> np.ndarray:
        """Change of the requested replica count at each bucket (0 = no action)."""
        req = self.requested[policy]
        out = np.zeros(len(req), dtype=int)
        out[1:] = np.diff(req)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "policies": {
                name: {
                    "replica_hours": _num(k.replica_hours),
                    "unserved_pct": _num(k.unserved_pct),
                    "underprovisioned_pct": _num(k.underprovisioned_pct),
                    "scale_actions": int(k.scale_actions),
                    "saving_vs_static_pct": _num(k.saving_vs_static_pct),
                    "ratio_to_oracle": _num(k.ratio_to_oracle),
                }
                for name, k in self.kpis.items()
            },
            "forecast": {
                "model": self.forecast.model,
                "smape": _num(self.forecast.smape),
                "mape": _num(self.forecast.mape),
                "mase": _num(self.forecast.mase),
            },
            "frontier": {
                name: [
                    {
                        "headroom_pct": _num(p.headroom_pct),
                        "replica_hours": _num(p.replica_hours),
                        "unserved_pct": _num(p.unserved_pct),
                    }
                    for p in points
                ]
                for name, points in self.frontier.items()
            },
            "settings": {k: _jsonable(v) for k, v in self.settings.items()},
        }


def _num(x: float | None, digits: int = 4) -> float | None:
    if x is None:
        return None
    xf = float(x)
    return None if not math.isfinite(xf) else round(xf, digits)


def _jsonable(v: Any) -> Any:
    if isinstance(v, timedelta):
        return format_duration(v)
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, float | np.floating):
        return _num(float(v))
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


# ---------------------------------------------------------------------------------------------------------
# Input preparation


def _regularise(series: pd.Series, step: timedelta | None) -> tuple[pd.Series, pd.Timedelta]:
    """A float series on a regular UTC grid; gaps and DST holes become NaN rows."""
    if not isinstance(series.index, pd.DatetimeIndex):
        raise InputError("the series must be indexed by timestamps")
    if len(series) == 0:
        raise InputError("the series is empty")
    try:
        s = pd.to_numeric(series, errors="raise").astype(float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"the series has non-numeric values: {exc}") from exc
    idx = pd.DatetimeIndex(s.index)
    s.index = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    s = s.sort_index()
    if s.notna().sum() == 0:
        raise InputError("the series has no values: every bucket is missing")
    if (s < 0).any():
        first = s.index[int(np.argmax((s < 0).to_numpy()))]
        raise InputError(f"the series has negative request counts (first at {first.isoformat()})")
    if step is not None and step <= timedelta(0):
        raise InputError("step must be positive")

    diffs = np.diff(pd.DatetimeIndex(s.index).asi8)
    positive = diffs[diffs > 0]
    data_step = pd.Timedelta(int(np.median(positive)), unit="ns") if len(positive) else None
    if step is None:
        if data_step is None:
            raise InputError("cannot infer the step from a single timestamp; pass a step")
        if s.index.has_duplicates:
            raise InputError(f"duplicate timestamps, e.g. {s.index[s.index.duplicated()][0].isoformat()}")
        grid_step = data_step
    else:
        grid_step = pd.Timedelta(step)
        if data_step is not None and grid_step < data_step:
            raise InputError(
                f"step {format_duration(grid_step.to_pytimedelta())} is finer than the data's own step "
                f"{format_duration(data_step.to_pytimedelta())}"
            )
    # A sum with min_count=1 keeps all-missing buckets missing rather than zero.
    out = s.resample(grid_step, origin=s.index[0]).sum(min_count=1)
    out.name = series.name or "y"
    return out, grid_step


def _window(
    s: pd.Series, step: pd.Timedelta, last: timedelta | None, warmup: timedelta | None
) -> tuple[pd.Series, int]:
    """Trim to the history used and return the index of the first evaluated bucket."""
    start, end = s.index[0], s.index[-1] + step
    span = end - start
    if last is not None:
        if last <= timedelta(0):
            raise InputError("last must be positive")
        eval_start = _ceil_to_grid(end - pd.Timedelta(last), start, step)
        if warmup is not None:
            s = s[s.index >= eval_start - pd.Timedelta(warmup)]
    else:
        warm = pd.Timedelta(warmup) if warmup is not None else min(pd.Timedelta(DEFAULT_WARMUP), span * 0.25)
        eval_start = _ceil_to_grid(start + warm, start, step)
    warm_have = eval_start - s.index[0]
    if warm_have < pd.Timedelta(MIN_WARMUP):
        raise InputError(
            f"too little history to warm up: the forecaster needs at least {format_duration(MIN_WARMUP)} "
            f"before the evaluated window, but the series spans {_fmt_span(span)} and leaves "
            f"{_fmt_span(max(warm_have, pd.Timedelta(0)))}"
            + (" (shorten --last)" if last is not None else "")
        )
    e0 = int(s.index.searchsorted(eval_start))
    if e0 >= len(s):
        raise InputError("the evaluated window is empty")
    if s.iloc[e0:].notna().sum() == 0:
        raise InputError("every bucket of the evaluated window is missing")
    if s.iloc[:e0].notna().sum() == 0:
        raise InputError("every bucket of the warm-up history is missing")
    return s, e0


def _ceil_to_grid(t: pd.Timestamp, origin: pd.Timestamp, step: pd.Timedelta) -> pd.Timestamp:
    n = math.ceil((t - origin) / step)
    return origin + max(0, n) * step


def _fmt_span(td: pd.Timedelta) -> str:
    return format_duration(pd.Timedelta(td).to_pytimedelta())


# ---------------------------------------------------------------------------------------------------------
# Policies. Each returns the replica count requested at the start of every evaluated bucket.


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


def _static_requests(load: np.ndarray, sizing: ScalingPolicy) -> np.ndarray:
    fleet = max(1, sizing.replicas_for(float(np.nanmax(load))))
    return np.full(len(load), fleet, dtype=np.int64)


def _oracle_requests(load: np.ndarray, capacity: float) -> np.ndarray:
    exact = ScalingPolicy(min_replicas=1, max_replicas=_MAX_REPLICAS, capacity=capacity,
                          lead_time=timedelta(0), tick=timedelta(minutes=1), headroom_percent=0.0)
    out = np.zeros(len(load), dtype=np.int64)
    cur = max(1, exact.replicas_for(_first_valid(load)))
    for t, y in enumerate(load):
        if not math.isnan(y):  # a missing bucket carries no information: hold
            cur = max(1, exact.replicas_for(float(y)))
        out[t] = cur
    return out


def _reactive_requests(
    prev_load: np.ndarray, initial_load: float, sizing: ScalingPolicy, window_steps: int
) -> np.ndarray:
    """HPA-like: size from the last observed bucket; scale down to the highest recommendation in the window."""
    out = np.zeros(len(prev_load), dtype=np.int64)
    cur = max(1, sizing.replicas_for(initial_load))
    recs: deque[tuple[int, int]] = deque()
    for t, y in enumerate(prev_load):
        if not math.isnan(y):
            rec = max(1, sizing.replicas_for(float(y)))
            recs.append((t, rec))
            while recs and t - recs[0][0] > window_steps:
                recs.popleft()
            cur = rec if rec >= cur else min(cur, max(r for _, r in recs))
        out[t] = cur
    return out


@dataclass(frozen=True)
class _Fit:
    origin: int  # evaluated-bucket index at which this forecast was made
    forecast: Forecast | None
    model: str | None
    seconds: float
    error: str | None


def _predictive_requests(
    ds: pd.DatetimeIndex,
    prev_load: np.ndarray,
    fits: Sequence[_Fit],
    fit_of: np.ndarray,
    sizing: ScalingPolicy,
) -> np.ndarray:
    out = np.zeros(len(ds), dtype=np.int64)
    cur = 0
    recent: tuple[Recommendation, ...] = ()
    for t in range(len(ds)):
        fit = fits[fit_of[t]]
        now = ds[t].to_pydatetime()
        observed = None if math.isnan(prev_load[t]) else float(prev_load[t])
        dec = plan(
            sizing,
            now=now,
            current_replicas=cur,
            forecast=fit.forecast,
            forecast_generated_at=ds[fit.origin].to_pydatetime() if fit.forecast is not None else None,
            observed_load=observed,
            recent=recent,
        )
        cur = dec.desired
        recent = dec.recommendations
        out[t] = cur
    return out


def _first_valid(a: np.ndarray) -> float:
    valid = a[~np.isnan(a)]
    return float(valid[0]) if len(valid) else 0.0


# ---------------------------------------------------------------------------------------------------------
# KPIs


def _kpis(
    load: np.ndarray, requested: np.ndarray, ready: np.ndarray, capacity: float, step_hours: float
) -> tuple[float, float, float, int]:
    valid = ~np.isnan(load)
    y = np.where(valid, load, 0.0)
    unserved = np.maximum(0.0, y - ready * capacity)
    total = float(y.sum())
    replica_hours = float(requested.sum()) * step_hours
    unserved_pct = 100.0 * float(unserved.sum()) / total if total > 0 else 0.0
    n_valid = int(valid.sum())
    under_pct = 100.0 * float(((unserved > 0) & valid).sum()) / n_valid if n_valid else 0.0
    actions = int(np.count_nonzero(np.diff(requested))) if len(requested) > 1 else 0
    return replica_hours, unserved_pct, under_pct, actions


def _sizing(
    capacity: float, lead: timedelta, step: timedelta, headroom: float, quantile: Quantile, window: timedelta
) -> ScalingPolicy:
    return ScalingPolicy(
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


# ---------------------------------------------------------------------------------------------------------
# The run


def run_backtest(
    series: pd.Series,
    *,
    capacity: float,
    startup_delay: timedelta,
    step: timedelta | None = None,
    model: str = "auto",
    headroom_percent: float = 10.0,
    last: timedelta | None = None,
    progress: bool = True,
    refit_every: timedelta | None = None,
    warmup: timedelta | None = None,
    frontier_headrooms: Sequence[float] = (0, 5, 10, 20, 30, 50, 75, 100),
    quantile: Quantile = DEFAULT_QUANTILE,
    events: pd.DataFrame | None = None,
) -> BacktestResult:
    """Replay `series` (requests per step, UTC index, NaN = missing) through the four policies.

    `capacity` is the requests one ready replica serves per step. Only the final `last` is evaluated;
    without it, the first `warmup` (default min(14 days, 25% of the series)) is history only. With both,
    history starts `warmup` before the evaluated window. Predictive forecasts are refit every
    `refit_every` (default 1 day) on at most FIT_WINDOW of history. `events` are passed to the
    forecaster: they stand for scheduled launches known in advance.

    The default quantile is `yhat`: on the appserver trace its headroom frontier matched or beat `upper`
    at equal replica-hours, and at 10% headroom it costs less (see the bench).
    """
    if not capacity > 0 or not math.isfinite(capacity):
        raise InputError(f"capacity must be greater than zero, got {capacity}")
    if startup_delay < timedelta(0):
        raise InputError("startup delay must not be negative")
    if headroom_percent < 0 or any(h < 0 for h in frontier_headrooms):
        raise InputError("headroom must not be negative")
    if quantile not in ("yhat", "upper"):
        raise InputError(f"quantile must be yhat or upper, got {quantile!r}")
    forecasting.check_model_name(model)

    s, grid_step = _regularise(series, step)
    s, e0 = _window(s, grid_step, last, warmup)
    step_td = grid_step.to_pytimedelta()
    refit = refit_every if refit_every is not None else timedelta(days=1)
    if refit <= timedelta(0):
        raise InputError("refit interval must be positive")
    refit_steps = max(1, math.ceil(refit / step_td))
    delay_steps = math.ceil(startup_delay / step_td - 1e-9)
    lead = delay_steps * step_td
    window_steps = int(HPA_WINDOW // step_td)
    # The planner keeps recommendations strictly younger than its window; widen it by a hair so that it
    # keeps exactly the same decisions as the reactive policy (those at most 5 minutes old).
    planner_window = window_steps * step_td + timedelta(microseconds=1)

    values = s.to_numpy(dtype=float)
    ds = pd.DatetimeIndex(s.index[e0:])
    load = values[e0:]
    prev_load = values[e0 - 1 : len(values) - 1]
    n = len(ds)
    step_hours = step_td / timedelta(hours=1)
    initial_load = float(pd.Series(values[:e0]).ffill().iloc[-1])

    # Forecasts on a rolling origin: each fit sees only buckets before its origin.
    horizon = refit_steps * step_td + lead + step_td
    fit_steps = max(1, int(FIT_WINDOW / step_td))
    origins = list(range(0, n, refit_steps))
    fits: list[_Fit] = []
    iterator: Any = origins
    if progress:
        from tqdm import tqdm

        # tqdm's monitor thread would make the process multi-threaded, and fits with a timeout then start
        # through a forkserver instead of a plain fork: seconds per refit instead of milliseconds.
        tqdm.monitor_interval = 0
        iterator = tqdm(origins, desc=f"backtest {model}", unit="refit", file=sys.stderr, leave=False)
    for o in iterator:
        g = e0 + o
        hist = s.iloc[max(0, g - fit_steps) : g]
        try:
            res = forecasting.fit_predict(
                model, hist, horizon, events=events, timeout_s=FIT_TIMEOUT_S, select_horizon=horizon
            )
            fits.append(_Fit(o, res.forecast, res.model, float(res.fit_seconds), None))
        except forecasting.ForecastUnavailable as exc:
            fits.append(_Fit(o, None, None, 0.0, str(exc)))
    fit_of = np.arange(n) // refit_steps

    yhat, lower, upper = (np.full(n, np.nan) for _ in range(3))
    for i, fit in enumerate(fits):
        if fit.forecast is None:
            continue
        span = slice(fit.origin, min(n, fit.origin + refit_steps))
        pos = fit.forecast.ds.get_indexer(ds[span])
        ok = pos >= 0
        for dst, src in ((yhat, fit.forecast.yhat), (lower, fit.forecast.lower), (upper, fit.forecast.upper)):
            seg = np.full(len(pos), np.nan)
            seg[ok] = np.asarray(src, dtype=float)[pos[ok]]
            dst[span] = seg
        assert fit_of[fit.origin] == i

    def run_predictive(headroom: float) -> np.ndarray:
        return _predictive_requests(
            ds, prev_load, fits, fit_of,
            _sizing(capacity, lead, step_td, headroom, quantile, planner_window),
        )

    def run_reactive(headroom: float) -> np.ndarray:
        return _reactive_requests(
            prev_load, initial_load,
            _sizing(capacity, lead, step_td, headroom, quantile, planner_window), window_steps,
        )

    main_sizing = _sizing(capacity, lead, step_td, headroom_percent, quantile, planner_window)
    requested = {
        "static": _static_requests(load, main_sizing),
        "reactive": run_reactive(headroom_percent),
        "predictive": run_predictive(headroom_percent),
        "oracle": _oracle_requests(load, capacity),
    }
    ready = {
        "static": requested["static"].copy(),
        "reactive": ready_from_requests(requested["reactive"], delay_steps),
        "predictive": ready_from_requests(requested["predictive"], delay_steps),
        "oracle": requested["oracle"].copy(),
    }
    raw = {p: _kpis(load, requested[p], ready[p], capacity, step_hours) for p in POLICIES}
    static_rh, oracle_rh = raw["static"][0], raw["oracle"][0]
    kpis = {
        p: PolicyKpis(
            replica_hours=rh,
            unserved_pct=un,
            underprovisioned_pct=under,
            scale_actions=acts,
            saving_vs_static_pct=100.0 * (static_rh - rh) / static_rh if static_rh > 0 else 0.0,
            ratio_to_oracle=rh / oracle_rh if oracle_rh > 0 else None,
        )
        for p, (rh, un, under, acts) in raw.items()
    }

    frontier: dict[str, list[FrontierPoint]] = {"reactive": [], "predictive": []}
    for h in sorted(set(float(x) for x in frontier_headrooms)):
        for name, runner in (("reactive", run_reactive), ("predictive", run_predictive)):
            req = requested[name] if h == headroom_percent else runner(h)
            rdy = ready_from_requests(req, delay_steps)
            rh, un, _, _ = _kpis(load, req, rdy, capacity, step_hours)
            frontier[name].append(FrontierPoint(h, rh, un))

    quality = _forecast_quality(model, fits, load, yhat, values[:e0], grid_step)
    settings: dict[str, Any] = {
        "capacity": float(capacity),
        "startup_delay": startup_delay,
        "startup_delay_steps": delay_steps,
        "step": step_td,
        "model": model,
        "headroom_percent": float(headroom_percent),
        "quantile": quantile,
        "refit_every": refit_steps * step_td,
        "fit_window": FIT_WINDOW,
        "scale_down_window": HPA_WINDOW,
        "history_start": s.index[0],
        "evaluated_from": ds[0],
        "evaluated_to": ds[-1] + grid_step,
        "evaluated_steps": n,
        "missing_steps": int(np.isnan(load).sum()),
        "refits": len(fits),
        "failed_fits": sum(1 for f in fits if f.forecast is None),
        "fit_seconds_total": float(sum(f.seconds for f in fits)),
        "frontier_headrooms": [float(h) for h in frontier_headrooms],
    }
    return BacktestResult(
        ds=ds, load=load, yhat=yhat, lower=lower, upper=upper, requested=requested, ready=ready,
        kpis=kpis, forecast=quality, frontier=frontier, settings=settings,
        refit_at=pd.DatetimeIndex([ds[f.origin] for f in fits]),
    )


def _forecast_quality(
    requested_model: str,
    fits: Sequence[_Fit],
    load: np.ndarray,
    yhat: np.ndarray,
    train: np.ndarray,
    step: pd.Timedelta,
) -> ForecastQuality:
    used = Counter(f.model for f in fits if f.model is not None)
    label = _model_label(requested_model, used, failed=sum(1 for f in fits if f.forecast is None))
    ok = ~np.isnan(load) & ~np.isnan(yhat)
    if not ok.any():
        return ForecastQuality(label, None, None, None)
    actual, predicted = load[ok], yhat[ok]
    season = max(1, int(pd.Timedelta(days=1) / step))
    history = train[~np.isnan(train)]
    mase: float | None
    try:
        mase = float(forecasting.mase(actual, predicted, history, season))
    except (ValueError, ZeroDivisionError):
        mase = None
    return ForecastQuality(
        model=label,
        smape=float(forecasting.smape(actual, predicted)),
        mape=float(forecasting.mape(actual, predicted)),
        mase=mase,
    )


def _model_label(requested: str, used: Counter[str], failed: int) -> str:
    if not used:
        label = f"{requested} (no forecast)"
    elif list(used) == [requested]:
        label = requested
    else:
        parts = [m if len(used) == 1 else f"{m}×{c}" for m, c in used.most_common()]
        label = f"{requested}→{', '.join(parts)}"
    return label + (f"; {failed} failed fits" if failed else "")


# ---------------------------------------------------------------------------------------------------------
# Presentation helpers


def compare_frontiers(result: BacktestResult) -> list[FrontierComparison]:
    """Reactive's unserved % at each predictive point's replica-hours (linear interpolation, no extrapolation)."""
    reactive = sorted(result.frontier.get("reactive", []), key=lambda p: (p.replica_hours, -p.unserved_pct))
    xs = np.array([p.replica_hours for p in reactive])
    ys = np.array([p.unserved_pct for p in reactive])
    out = []
    for p in result.frontier.get("predictive", []):
        other: float | None = None
        if len(xs) and xs[0] <= p.replica_hours <= xs[-1]:
            other = float(np.interp(p.replica_hours, xs, ys))
        out.append(FrontierComparison(p.headroom_pct, p.replica_hours, p.unserved_pct, other))
    return out


def frontier_summary(result: BacktestResult) -> str:
    """One line per comparable predictive frontier point: "at equal replica-hours predictive leaves X% vs Y%"."""
    lines = []
    for c in compare_frontiers(result):
        if c.reactive_unserved_pct is None:
            lines.append(f"  headroom {c.headroom_pct:>5g}%: {c.replica_hours:>12,.0f} replica-h, predictive "
                         f"{c.predictive_unserved_pct:.3f}% unserved (outside reactive's range)")
        else:
            lines.append(f"  headroom {c.headroom_pct:>5g}%: at {c.replica_hours:>12,.0f} replica-h predictive "
                         f"leaves {c.predictive_unserved_pct:.3f}% vs reactive {c.reactive_unserved_pct:.3f}%")
    return "\n".join(lines)


def format_table(result: BacktestResult) -> str:
    """Fixed-width KPI table for the terminal."""
    head = f"{'policy':<11}{'replica-h':>12}{'vs static':>11}{'x oracle':>10}{'unserved':>11}" \
           f"{'under-prov':>12}{'actions':>9}"
    rows = [head, "-" * len(head)]
    for name, k in result.kpis.items():
        ratio = "-" if k.ratio_to_oracle is None else f"{k.ratio_to_oracle:.2f}"
        rows.append(
            f"{name:<11}{k.replica_hours:>12,.1f}{k.saving_vs_static_pct:>10.1f}%{ratio:>10}"
            f"{k.unserved_pct:>10.3f}%{k.underprovisioned_pct:>11.2f}%{k.scale_actions:>9d}"
        )
    q = result.forecast
    rows.append(
        f"forecast {q.model}: sMAPE {_fmt_opt(q.smape)}%  MAPE {_fmt_opt(q.mape)}%  MASE {_fmt_opt(q.mase, 3)}"
    )
    st = result.settings
    rows.append(
        f"{st['evaluated_steps']} steps of {format_duration(st['step'])} from {st['evaluated_from']:%Y-%m-%d %H:%M}"
        f" UTC; capacity {st['capacity']:,.0f}/step; startup delay {format_duration(st['startup_delay'])}; "
        f"headroom {st['headroom_percent']:g}%; quantile {st['quantile']}; refit every "
        f"{format_duration(st['refit_every'])}"
    )
    return "\n".join(rows)


def _fmt_opt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"

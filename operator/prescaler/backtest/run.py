"""The replay driver: the trace on a regular grid, forecasts refit on a rolling origin, every policy, the KPIs."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from prescaler import events as event_lift
from prescaler import forecasting
from prescaler.backtest import peers
from prescaler.backtest.policies import (
    HPA_WINDOW,
    POLICIES,
    Fit,
    oracle_requests,
    predictive_requests,
    reactive_requests,
    ready_from_requests,
    replay_policy,
    static_requests,
)
from prescaler.backtest.refits import cpu_seconds, default_workers, refit_all
from prescaler.backtest.results import (
    BacktestResult,
    BlendReport,
    FrontierPoint,
    PolicyKpis,
    ServiceLevelReport,
    forecast_quality,
    kpis,
)
from prescaler.backtest.track import (
    SizingInputs,
    build_track,
    calibrations,
    corrected,
    realized_coverage,
    samples_by_bucket,
    sizing_inputs,
)
from prescaler.durations import format_duration
from prescaler.errors import InputError
from prescaler.planning import Quantile
from prescaler.sizing.calibration import SizingCalibration
from prescaler.sizing.level_correction import (
    LEVEL_CORRECTION_WINDOW,
    level_correction_steps,
    level_corrections,
)
from prescaler.sizing.samples import CALIBRATION_WINDOW
from prescaler.sizing.service_level import check_service_level
from prescaler.windows import Regime, Window, WindowSizing, learn_regimes, size_windows, windows_from_events

# Fits see at most this much history: enough for weekly seasonality, cheap enough for daily refits ...
FIT_WINDOW = timedelta(days=56)
# ... and at most this many buckets: the operator's default history (14 days) at its default step (5
# minutes). A fit's cost grows with its points: eight weeks at 5 minutes took over a minute per `auto` refit
# here, four weeks half that. Coarser steps see up to FIT_WINDOW, finer ones never less than 14 days.
FIT_POINTS = 4032
MIN_FIT_WINDOW = timedelta(days=14)


def fit_window(step: timedelta) -> timedelta:
    """The history each refit sees at this step."""
    return max(MIN_FIT_WINDOW, min(FIT_WINDOW, FIT_POINTS * step))
# Below this the forecasters have not seen a single full day to learn from.
MIN_WARMUP = timedelta(days=2)
DEFAULT_WARMUP = timedelta(days=14)
# The operator's own default (spec.forecast.quantile): the backtest replays what a scaler does unconfigured.
DEFAULT_QUANTILE: Quantile = "upper"
# Refits before the evaluated window whose forecasts only feed the calibration (as far as history allows):
# the record an operator that has run for a week carries into the window.
CALIBRATION_WARMUP = timedelta(days=7)


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


def evaluated_window(series: pd.Series, *, step: timedelta | None, last: timedelta | None,
                     warmup: timedelta | None) -> tuple[pd.Series, pd.Timedelta, int]:
    """What `run_backtest` replays: the series on its regular grid trimmed to the history used, the grid's
    step and the index of the first evaluated bucket. Raises InputError as `run_backtest` does."""
    s, grid_step = _regularise(series, step)
    s, e0 = _window(s, grid_step, last, warmup)
    return s, grid_step, e0


def _ceil_to_grid(t: pd.Timestamp, origin: pd.Timestamp, step: pd.Timedelta) -> pd.Timestamp:
    n = math.ceil((t - origin) / step)
    return origin + max(0, n) * step


def _fmt_span(td: pd.Timedelta) -> str:
    return format_duration(pd.Timedelta(td).to_pytimedelta())


# ---------------------------------------------------------------------------------------------------------
# Refits


def _last_lifts(fits: Sequence[Fit]) -> dict[str, float]:
    """Per event kind, the lift the latest refit that learned one applied (kinds seen earlier keep theirs)."""
    out: dict[str, float] = {}
    for fit in fits:
        out.update(event_lift.lifts_of(fit.forecast))
    return {k: round(v, 3) for k, v in sorted(out.items())}


# ---------------------------------------------------------------------------------------------------------
# The run


def _window_sizing(s: pd.Series, span: pd.DatetimeIndex, starts: Sequence[int], lead_steps: int,
                   windows: Sequence[Window]) -> tuple[WindowSizing | None, dict[str, Regime]]:
    """The scheduled windows' sizing of every decision of the replay span, learned at each refit (`starts`:
    span indices) from the past only; the regimes of the last refit."""
    if not windows:
        return None, {}
    values = s.to_numpy(dtype=float)
    index = pd.DatetimeIndex(s.index)
    step_ns = int((index[1] - index[0]).value) if len(index) > 1 else 0
    bounds = sorted({0, *(o for o in starts if o >= 0)})
    rise = np.ones(len(span))
    floor = np.zeros(len(span), dtype=np.int64)
    regimes: dict[str, Regime] = {}
    names: list[str] = []
    for i, o in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else len(span)
        if end <= o:
            continue
        regimes = learn_regimes(values, index, windows, now=span[o], lead_steps=lead_steps)
        part = size_windows(span[o:end], step_ns, lead_steps, windows, regimes)
        rise[o:end], floor[o:end] = part.rise, part.min_replicas
        names.extend(part.active)
    return WindowSizing(rise, floor, tuple(dict.fromkeys(names))), regimes


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
    service_level: float | None = None,
    workers: int | None = None,
    calibration_warmup: timedelta = CALIBRATION_WARMUP,
    schedules: Sequence[Window] = (),
) -> BacktestResult:
    """Replay `series` (requests per step, UTC index, NaN = missing) through the four policies.

    `capacity` is the requests one ready replica serves per step. Only the final `last` is evaluated;
    without it, the first `warmup` (default min(14 days, 25% of the series)) is history only. With both,
    history starts `warmup` before the evaluated window. Predictive forecasts are refit every
    `refit_every` (default 1 day) on at most `fit_window(step)` of history, in `workers` processes (default: one
    per usable core). `events` are passed to the forecaster: they stand for scheduled launches known in
    advance. Events and `schedules` (windows expanded from cron schedules) are scheduled windows: at each
    refit the rise of each kind's past windows is learned (`prescaler.windows`) and sizes the reactive floor
    in the upcoming ones.

    At each refit the predictive policy calibrates on its own record so far (`prescaler.sizing`): the
    trust in the forecast always, and with `service_level` (percent of requests to serve) the multipliers
    that size for it instead of the headroom, which remains the fallback while the record is too short.
    Refits within `calibration_warmup` before the evaluated window build that record. The frontier sweeps
    the headroom (the manual sizing, with the trust weight) on the same forecasts.

    The default quantile is the CRD's, `upper` (the headroom sizing; the service level sizes from `yhat` and
    its calibrated multiplier): on noisy web traffic the band's frontier leaves clearly less of reactive's
    unserved load at equal cost than `yhat`'s (`bench/bench_backtest.py` measures both).
    """
    started = time.perf_counter()
    if not capacity > 0 or not math.isfinite(capacity):
        raise InputError(f"capacity must be greater than zero, got {capacity}")
    if startup_delay < timedelta(0):
        raise InputError("startup delay must not be negative")
    if headroom_percent < 0 or any(h < 0 for h in frontier_headrooms):
        raise InputError("headroom must not be negative")
    if quantile not in ("yhat", "upper"):
        raise InputError(f"quantile must be yhat or upper, got {quantile!r}")
    if service_level is not None:
        check_service_level(service_level, "service level")
    n_workers = default_workers() if workers is None else int(workers)
    if n_workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    forecasting.check_model_name(model)

    s, grid_step, e0 = evaluated_window(series, step=step, last=last, warmup=warmup)
    step_td = grid_step.to_pytimedelta()
    refit = refit_every if refit_every is not None else timedelta(days=1)
    if refit <= timedelta(0):
        raise InputError("refit interval must be positive")
    refit_steps = max(1, math.ceil(refit / step_td))
    delay_steps = math.ceil(startup_delay / step_td - 1e-9)
    lead = delay_steps * step_td

    values = s.to_numpy(dtype=float)
    ds = pd.DatetimeIndex(s.index[e0:])
    load = values[e0:]
    prev_load = values[e0 - 1 : len(values) - 1]
    n = len(ds)
    step_hours = step_td / timedelta(hours=1)
    initial_load = float(pd.Series(values[:e0]).ffill().iloc[-1])

    # Forecasts on a rolling origin, reused by every replay. Origins before the window (negative) only
    # feed the calibration; each needs the forecasters' minimum history before it.
    min_history = math.ceil(MIN_WARMUP / step_td)
    ahead = max(0, min(int(calibration_warmup / step_td), e0 - min_history)) // refit_steps
    origins = list(range(-ahead * refit_steps, n, refit_steps))
    horizon = refit_steps * step_td + lead + step_td
    fit_started = time.perf_counter()
    fits = refit_all(s, e0, origins, model=model, horizon=horizon, fit_steps=max(1, int(fit_window(step_td) / step_td)),
                     events=events, progress=progress, workers=n_workers)
    fit_wall = time.perf_counter() - fit_started

    # The replay span: from the first origin to the end; the evaluated window starts at `off`.
    off = ahead * refit_steps
    span_load = values[e0 - off :]
    span_prev = values[e0 - off - 1 : len(values) - 1]
    raw_track = build_track(pd.DatetimeIndex(s.index[e0 - off :]), fits, [o + off for o in origins], delay_steps)
    # The planner's level correction, from the last hour's load against the forecast that was in force.
    correction = level_corrections(span_load, raw_track.yhat, level_correction_steps(step_td))
    track = corrected(raw_track, correction)
    window_steps = max(1, int(CALIBRATION_WINDOW / step_td))
    held_steps = int(HPA_WINDOW / step_td)
    # Scheduled windows size the floor in their own regime; the calibration sees that floor in the record,
    # so quiet hours do not dilute the misses inside windows, nor do misses the windows cover raise the
    # multiplier everywhere.
    window_list = [*windows_from_events(events), *schedules]
    span_windows, regimes = _window_sizing(s, pd.DatetimeIndex(s.index[e0 - off :]), [o + off for o in origins],
                                           delay_steps, window_list)
    samples = {q: samples_by_bucket(track, span_load, span_prev, delay_steps, q, held_steps=held_steps,
                                    unit=capacity, rise=None if span_windows is None else span_windows.rise)
               for q in ("yhat", "upper")}
    times = list(ds.to_pydatetime())

    def calibrated(headroom: float, target: float | None) -> tuple[SizingInputs, list[SizingCalibration]]:
        base: Quantile = "yhat" if target is not None else quantile
        cals = calibrations(track, samples[base], window_steps=window_steps, service_level=target,
                            headroom_percent=headroom)
        return sizing_inputs(track, cals, quantile=quantile,
                             rise=None if span_windows is None else span_windows.rise), cals

    window_sizing = None if span_windows is None else WindowSizing(
        span_windows.rise[off : off + n], span_windows.min_replicas[off : off + n], span_windows.active)

    def run_predictive_with(sized: SizingInputs, headroom: float, target: float | None) -> np.ndarray:
        ev = slice(off, off + n)
        return predictive_requests(
            times, prev_load, sized.peak[ev], track.stale[ev], sized.trust[ev], sized.multiplier[ev],
            replay_policy(capacity, lead, step_td, headroom, quantile, HPA_WINDOW, target), window_sizing,
        )

    def run_predictive(headroom: float) -> np.ndarray:
        return run_predictive_with(calibrated(headroom, None)[0], headroom, None)

    def run_reactive(headroom: float) -> np.ndarray:
        return reactive_requests(
            ds, prev_load, initial_load, replay_policy(capacity, lead, step_td, headroom, quantile, HPA_WINDOW)
        )

    main_sized, main_cals = calibrated(headroom_percent, service_level)
    main_policy = replay_policy(capacity, lead, step_td, headroom_percent, quantile, HPA_WINDOW)
    requested = {
        "static": static_requests(load, main_policy),
        "reactive": run_reactive(headroom_percent),
        "predictive": run_predictive_with(main_sized, headroom_percent, service_level),
        "oracle": oracle_requests(load, capacity),
    }
    ready = {
        "static": requested["static"].copy(),
        "reactive": ready_from_requests(requested["reactive"], delay_steps),
        "predictive": ready_from_requests(requested["predictive"], delay_steps),
        "oracle": requested["oracle"].copy(),
    }
    # Peer autoscalers (Crane EffectiveHPA, PHPA) on the same sizing, forecasts at the same origins.
    peer_run = peers.PeerRun(values, e0, ds, step_td, refit_steps, initial_load)

    def peer_runner(name: str) -> Any:
        return lambda headroom: peer_run.requests(name, replay_policy(capacity, lead, step_td, headroom, quantile,
                                                                      HPA_WINDOW))

    peer_runners = [(name, peer_runner(name)) for name in peers.PEERS]
    for name, runner in peer_runners:
        requested[name] = runner(headroom_percent)
        ready[name] = ready_from_requests(requested[name], delay_steps)
    raw = {p: kpis(load, requested[p], ready[p], capacity, step_hours) for p in (*POLICIES, *peers.PEERS)}
    static_rh, oracle_rh = raw["static"][0], raw["oracle"][0]
    measured = {
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

    frontier: dict[str, list[FrontierPoint]] = {"reactive": [], "predictive": [], **{p: [] for p in peers.PEERS}}
    for h in sorted(set(float(x) for x in frontier_headrooms)):
        for name, runner in (("reactive", run_reactive), ("predictive", run_predictive), *peer_runners):
            # The main run is this frontier point only when it sized by headroom too.
            reuse = h == headroom_percent and not (name == "predictive" and service_level is not None)
            req = requested[name] if reuse else runner(h)
            rdy = ready_from_requests(req, delay_steps)
            rh, un, _, _ = kpis(load, req, rdy, capacity, step_hours)
            frontier[name].append(FrontierPoint(h, rh, un))

    evaluated_fits = [f for f in fits if f.origin >= 0]
    failed = sum(1 for f in evaluated_fits if f.forecast is None)
    used = Counter(f.model for f in evaluated_fits if f.model is not None)
    yhat, lower, upper = (a[off : off + n] for a in (track.yhat, track.lower, track.upper))
    quality = forecast_quality(model, used, failed, load, yhat, values[:e0], grid_step)
    service_level_report = None
    evaluated_cals = [c for c, f in zip(main_cals, fits, strict=True) if f.origin >= 0]
    if service_level is not None:
        served, coverage = realized_coverage(track, main_sized, span_load, span_prev, delay_steps, off)
        ev = slice(off, off + n)
        sized_here = ~np.isnan(main_sized.multiplier[ev])
        service_level_report = ServiceLevelReport(
            target_pct=float(service_level),
            served_pct=100.0 - measured["predictive"].unserved_pct,
            coverage_pct=coverage,
            calibrated_served_pct=served,
            calibrated_quantile_pct=(100 * float(np.mean(main_sized.quantile[ev][sized_here]))
                                     if sized_here.any() else None),
            multiplier_mean=float(np.mean(main_sized.multiplier[ev][sized_here])) if sized_here.any() else None,
            calibrated_pct=100 * float(np.mean(sized_here)),
            at_risk_refits=sum(1 for c in evaluated_cals if c.at_risk),
            at_risk=next((c.at_risk for c in reversed(evaluated_cals) if c.at_risk), ""),
        )
    leaning = [c for c, f in zip(main_cals, fits, strict=True) if f.origin >= 0 and c.trust.leans_on_reactive]
    blend = BlendReport(
        trust_mean=float(np.mean(main_sized.trust[off : off + n])),
        leaning_pct=100 * float(np.mean(main_sized.trust[off : off + n] < 1)),
        refits_leaning=len(leaning),
        refits=len(evaluated_fits),
        reason=(leaning[-1] if leaning else main_cals[-1]).trust.reason,
    )
    settings: dict[str, Any] = {
        "capacity": float(capacity),
        "startup_delay": startup_delay,
        "startup_delay_steps": delay_steps,
        "step": step_td,
        "model": model,
        "headroom_percent": float(headroom_percent),
        "quantile": quantile,
        "refit_every": refit_steps * step_td,
        "fit_window": fit_window(step_td),
        "scale_down_window": HPA_WINDOW,
        "history_start": s.index[0],
        "evaluated_from": ds[0],
        "evaluated_to": ds[-1] + grid_step,
        "evaluated_steps": n,
        "missing_steps": int(np.isnan(load).sum()),
        "refits": len(evaluated_fits),
        "calibration_refits": len(fits) - len(evaluated_fits),
        "failed_fits": failed,
        "fit_seconds_total": float(sum(f.seconds for f in fits)),
        "workers": n_workers,
        "service_level": None if service_level is None else float(service_level),
        "calibration_window": CALIBRATION_WINDOW,
        "level_window": max(LEVEL_CORRECTION_WINDOW, level_correction_steps(step_td) * step_td),
        "level_factor_range": [float(np.min(correction[off:])), float(np.max(correction[off:]))],
        "frontier_headrooms": [float(h) for h in frontier_headrooms],
        "events": 0 if events is None else len(events),
        "event_lifts": _last_lifts(fits),
        "event_windows": event_lift.windows_within(events, ds[0], ds[-1] + grid_step),
        "schedules": len(schedules),
        "window_regimes": {k: {"rise": [round(r, 3) for r in v.rise], "windows": v.windows, "source": v.source}
                           for k, v in sorted(regimes.items())},
        "peers": dict(peers.TITLES),
    }
    cpu = cpu_seconds(fits)
    settings["seconds"] = {"fits": round(fit_wall, 1), "total": round(time.perf_counter() - started, 1),
                           "fit_cpu": None if cpu is None else round(cpu, 1)}
    return BacktestResult(
        ds=ds, load=load, yhat=yhat, lower=lower, upper=upper, requested=requested, ready=ready,
        kpis=measured, forecast=quality, frontier=frontier, settings=settings,
        refit_at=pd.DatetimeIndex([ds[f.origin] for f in evaluated_fits]),
        service_level=service_level_report, blend=blend,
    )

"""What the predictive policy knew at each decision of the replay, computed once for every replay.

- `Track`: per decision bucket, the forecast in force (the latest refit), its values, its highest value over
  the decision's lead window (the planner's step 1, `peak_load`, for the whole replay at once), the lead of
  the capacity it sizes and whether the planner would find it stale;
- `calibrations`: at each refit, `prescaler.sizing.calibration` on the record so far (the past refits' forecasts
  against what came): the trust in the forecast and, with a service level, its multipliers;
- `SizingInputs`: per bucket, what the planner sizes from (peak), by how much (multiplier) and with which
  trust.

The span starts before the evaluated window when there are calibration warm-up refits: an operator that has
run for a while has its record, and the evaluated window should not begin with an uncalibrated one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from prescaler.backtest.policies import Fit
from prescaler.planning import Quantile
from prescaler.sizing.calibration import InForce, SizingCalibration, calibrate_steered
from prescaler.sizing.loads import calibrated_load
from prescaler.sizing.samples import Samples
from prescaler.sizing.service_level import served_and_coverage


@dataclass(frozen=True)
class Track:
    """Per bucket of the replay span (span index 0 = the first refit's origin)."""

    starts: tuple[int, ...]  # span index of each fit's origin
    yhat: np.ndarray  # the forecast in force, at the bucket
    lower: np.ndarray
    upper: np.ndarray
    peak: dict[str, np.ndarray]  # per quantile: highest value over [t, t + lead] (NaN: none)
    lead_s: np.ndarray  # seconds from the forecast's generation to t + lead, when the capacity is ready
    stale: np.ndarray  # no forecast in force, or one that does not reach t + lead + one step
    fit_of: np.ndarray  # index of the fit in force


def build_track(span: pd.DatetimeIndex, fits: Sequence[Fit], starts: Sequence[int], delay_steps: int) -> Track:
    """The track of `fits` (in origin order, fit i in force from span index starts[i]) over `span`."""
    n, d = len(span), delay_steps
    step = pd.Timedelta(span[1] - span[0]) if n > 1 else pd.Timedelta(0)
    # The last decisions look up to d steps beyond the span.
    grid = pd.DatetimeIndex(span[0] + step * np.arange(n + d + 1))
    yhat, lower, upper = (np.full(n, np.nan) for _ in range(3))
    peak = {q: np.full(n, np.nan) for q in ("yhat", "upper")}
    lead_s = np.full(n, np.nan)
    stale = np.ones(n, dtype=bool)
    fit_of = np.zeros(n, dtype=np.int64)
    bounds = [*starts, n]
    for i, fit in enumerate(fits):
        lo, hi = bounds[i], min(bounds[i + 1], n)
        if hi <= lo:
            continue
        fit_of[lo:hi] = i
        fc = fit.forecast
        if fc is None or len(fc.ds) == 0:
            continue
        ahead = grid[lo : hi + d]
        pos = fc.ds.get_indexer(ahead)
        ok = pos >= 0
        for name, src in (("yhat", fc.yhat), ("lower", fc.lower), ("upper", fc.upper)):
            vals = np.full(len(ahead), np.nan)
            vals[ok] = np.asarray(src, dtype=float)[pos[ok]]
            {"yhat": yhat, "lower": lower, "upper": upper}[name][lo:hi] = vals[: hi - lo]
            if name in peak:
                windows = np.lib.stride_tricks.sliding_window_view(vals, d + 1)[: hi - lo]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN window is "no peak"
                    peak[name][lo:hi] = np.nanmax(windows, axis=1)
        born = span[lo]
        lead_s[lo:hi] = ((span[lo:hi] + step * d) - born).total_seconds()
        # The planner's `covers`: the forecast starts by now and reaches past now + lead + one tick.
        first, last = fc.ds[0], fc.ds[-1]
        stale[lo:hi] = ~((first <= span[lo:hi]) & (last + step > span[lo:hi] + step * (d + 1)))
    return Track(tuple(starts), yhat, lower, upper, peak, lead_s, stale, fit_of)


def corrected(track: Track, level_correction: np.ndarray) -> Track:
    """The track with its peaks scaled by the level correction at each decision (what `size_load` does with
    `level_correction`), so the calibration sees the forecast as the planner will use it."""
    return replace(track, peak={q: p * level_correction for q, p in track.peak.items()})


def samples_by_bucket(track: Track, load: np.ndarray, prev_load: np.ndarray, delay_steps: int,
                      quantile: Quantile, *, held_steps: int = 0, unit: float = 0.0,
                      rise: np.ndarray | None = None) -> Samples:
    """One sample per span bucket u: A(u) against every decision that can serve it, u − delay to u, after the
    `held_steps` decisions before them that the scale-down stabilisation keeps (a stale decision, one without
    a forecast, does not limit it: NaN); asks in whole replicas of `unit`; `rise` the scheduled windows'
    factor on each decision's observed load (none: 1)."""
    n, d, h = len(load), delay_steps, held_steps
    forecast, observed = np.full((n, h + d + 1), np.nan), np.full((n, h + d + 1), np.nan)
    factor = np.ones((n, h + d + 1))
    for j in range(h + d + 1):
        t = np.arange(n) - h - d + j
        has = t >= 0
        tt = np.where(has, t, 0)
        forecast[:, j] = np.where(has & ~track.stale[tt], track.peak[quantile][tt], np.nan)
        observed[:, j] = np.where(has, prev_load[tt], np.nan)
        if rise is not None:
            factor[:, j] = np.where(has, rise[tt], 1.0)
    first = np.arange(n) - d
    lead = np.where(first >= 0, track.lead_s[np.maximum(first, 0)], np.nan)
    return Samples(lead_s=lead, actual=np.asarray(load, dtype=float), forecast=forecast, observed=observed,
                   held=h, unit=unit, rise=None if rise is None else factor, decided=first.astype(np.int64))


def calibrations(track: Track, samples: Samples, *, window_steps: int, service_level: float | None,
                 headroom_percent: float) -> list[SizingCalibration]:
    """At each refit, the calibration of the trailing `window_steps` buckets that had come by then, steered
    by how the earlier ones served (`calibrate_steered`), as the operator does."""
    history: list[InForce] = []
    for start in track.starts:
        lo = max(0, start - window_steps)
        history.append(calibrate_steered(samples.rows(slice(lo, start)), history, service_level=service_level,
                                         headroom_percent=headroom_percent, since=start))
    return [h.calibration for h in history]


@dataclass(frozen=True)
class SizingInputs:
    """Per span bucket, the planner's sizing inputs (see `predictive_requests`) and the calibration's."""

    peak: np.ndarray  # what P is read from: yhat when calibrated, else the policy's quantile
    trust: np.ndarray
    multiplier: np.ndarray  # NaN where the service level was not calibrated (yet): headroom sizes
    quantile: np.ndarray  # the calibrated quantile of the bucket's lead (NaN: not calibrated)


def sizing_inputs(track: Track, cals: Sequence[SizingCalibration], *, quantile: Quantile,
                  rise: np.ndarray | None = None) -> SizingInputs:
    """Per span bucket, what the calibration in force sizes with; `rise` marks decisions inside scheduled
    windows (above 1), which take the windows' multiplier."""
    n = len(track.lead_s)
    peak = track.peak[quantile].copy()
    trust = np.ones(n)
    multiplier, q = np.full(n, np.nan), np.full(n, np.nan)
    inside = np.zeros(n, dtype=bool) if rise is None else np.asarray(rise) > 1.0
    bounds = [*track.starts, n]
    for i, cal in enumerate(cals):
        lo, hi = bounds[i], min(bounds[i + 1], n)
        trust[lo:hi] = cal.trust.weight
        if cal.ready:
            peak[lo:hi] = track.peak["yhat"][lo:hi]
            multiplier[lo:hi] = cal.multipliers(track.lead_s[lo:hi], inside[lo:hi])
            q[lo:hi] = cal.quantiles(track.lead_s[lo:hi])
    return SizingInputs(peak, trust, multiplier, q)


def realized_coverage(track: Track, sizing: SizingInputs, load: np.ndarray, prev_load: np.ndarray, delay_steps: int,
                      first: int) -> tuple[float | None, float | None]:
    """Served % and coverage % of the calibrated sizing (before whole replicas) over buckets from span index
    `first` whose every deciding bucket was calibrated: out of sample, since each calibration saw only
    buckets before its refit. A bucket's capacity is the least its decisions (u − delay to u) asked for."""
    n, d = len(load), delay_steps
    u = np.arange(max(first, d), n)
    forecast = np.where(np.isnan(sizing.peak), 0.0, np.maximum(sizing.peak, 0.0))
    observed = np.where(np.isnan(prev_load), 0.0, np.maximum(prev_load, 0.0))
    asked = calibrated_load(forecast, observed, sizing.trust, sizing.multiplier)
    capacity = np.full(len(u), np.inf)
    ok = np.ones(len(u), dtype=bool)
    for j in range(d + 1):
        t = u - d + j
        ok &= ~np.isnan(sizing.multiplier[t]) & ~track.stale[t]
        capacity = np.minimum(capacity, asked[t])
    if not ok.any():
        return None, None
    return served_and_coverage(load[u[ok]], capacity[ok])

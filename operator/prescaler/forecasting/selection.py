"""Which model to trust: rolling-origin backtest errors, `auto`'s plan and combination, and `fit_local`,
which fits a model by name in this process with every fallback (short history, failing or exploding fit)
and a band calibrated on the model's own backtest errors (`bands`).

`auto` ranks its candidates by what provisioning pays for (`scoring.cross_pinball`): the pinball loss of each
backtest window's forecast of the provisioning quantile (the upper band's 90% by default, or a service
level's), that quantile calibrated on the other windows, so a model is judged out of sample on level and
spread alike. sMAPE only measures the middle of the forecast and ranked models differently from what
scaling needed. It mixes, weighted by 1/loss, the best and the candidates its backtest cannot tell from it:
within one standard error of the best's loss, window by window (`close_to_best`), and within NEAR_BEST.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta

import numpy as np
import pandas as pd

from prescaler.errors import InputError
from prescaler.forecasting.accuracy import mape, mase, relative_pinball, smape
from prescaler.forecasting.bands import UPPER_QUANTILE, BandCalibration, calibrate_bands, log_residuals
from prescaler.forecasting.interface import MODEL_NAMES, FitResult, Forecast, ForecastUnavailable
from prescaler.forecasting.models import check_model_name, make_candidate, requirement_of
from prescaler.forecasting.scoring import (
    EXPLOSION_FACTOR,
    Exploded,
    Fold,
    candidate_folds,
    cross_losses,
    cross_pinball,
    exploded,
    explosion_limit,
    summarise,
)
from prescaler.forecasting.series import DAY, check_minimum, days_text, infer_step, prepare, steps

# Order = preference when no backtest can decide. The last three are internal: a scaler cannot name them,
# `auto` uses them.
CANDIDATES = ("prophet", "holt-winters", "seasonal-naive", "seasonal-median", "mstl", "harmonic")
# When a configured model cannot fit its history: the cheap models that need two days.
BASELINES = ("holt-winters", "seasonal-naive")
# `auto`'s backtest windows longer than a day (a week's three cover three weeks). Its band is calibrated on
# its newest AUTO_FOLDS windows whatever their length: the calibration is built for a few recent windows, and
# the widest of more of them (a quiet Sunday's) would widen every day's band.
AUTO_FOLDS = 3
# `auto`'s windows of a day or less: a week of them, so that every weekday judges the candidates. Three days
# rank close models by their luck on those days, and a weekly pattern makes the next day unlike them. Each
# window costs a fit per candidate.
SHORT_FOLDS = 7
SCORE_FOLDS = 3
# `auto` leaves out every candidate whose backtest pinball loss is above this factor of the best one's, even
# where too few windows can tell them apart.
NEAR_BEST = 1.5
# A candidate stays in the mix unless its loss is above the best's by more than this many standard errors of
# their difference over the shared windows: the one-standard-error rule of cross-validation. With few windows
# or models alike it mixes, as an average of close models errs less than one picked by chance; with a week of
# windows where one model is steadily better it keeps that one alone.
STANDARD_ERRORS = 1.0


def check_candidate_name(name: str) -> None:
    if name not in MODEL_NAMES and name not in CANDIDATES:
        raise InputError(f"unknown forecast model {name!r}: choose one of {', '.join(MODEL_NAMES + CANDIDATES[3:])}")


def rolling_origin_errors(history: pd.Series, name: str, *, horizon: timedelta, folds: int = 3,
                          events: pd.DataFrame | None = None) -> dict[str, float]:
    """What the operator would have forecast with model `name` in each of the last `folds` windows of
    `horizon`, scored against what came: mean sMAPE/MAPE/MASE, `pinball` (loss of the upper band as the
    90% quantile, % of the mean load), `coverage` (% of actual values inside the band) and `folds`.

    Each window is forecast by `fit_local` from the data before it only, with its fallbacks, its own
    backtest and its calibrated band (auto also selects and combines there). Windows too short for any
    model are skipped; none left → ForecastUnavailable. `name` may be an internal candidate of auto too.
    """
    check_candidate_name(name)
    history = prepare(history)
    step = infer_step(history)
    n = steps(horizon, step)
    season = max(1, round(DAY / step))
    reasons: list[str] = []
    rows: list[tuple[float, ...]] = []
    actual_all: list[np.ndarray] = []
    upper_all: list[np.ndarray] = []
    for k in range(folds, 0, -1):
        split = len(history) - k * n
        if split <= 0:
            continue
        train, test = history.iloc[:split], history.iloc[split:split + n]
        if test.notna().sum() == 0 or train.notna().sum() == 0:
            continue
        try:
            forecast = fit_local(name, train, horizon, events, None).forecast
        except ForecastUnavailable as exc:
            reasons.append(str(exc))
            continue
        actual, m = test.to_numpy(), len(test)
        yhat, lower, upper = forecast.yhat[:m], forecast.lower[:m], forecast.upper[:m]
        seen = np.isfinite(actual)
        inside = ((actual >= lower) & (actual <= upper))[seen]
        rows.append((smape(actual, yhat), mape(actual, yhat), mase(actual, yhat, train.to_numpy(), season),
                     float(inside.mean() * 100) if seen.any() else float("nan")))
        actual_all.append(actual)
        upper_all.append(upper)
    if not rows:
        why = reasons[-1] if reasons else f"history too short for a {days_text(horizon)} backtest window"
        raise ForecastUnavailable(f"{name}: no backtest fold possible ({why})")
    arr = np.array(rows, dtype=float)
    with np.errstate(all="ignore"):
        means = [float(np.nanmean(col)) if np.isfinite(col).any() else float("nan") for col in arr.T]
    return {"smape": means[0], "mape": means[1], "mase": means[2],
            "pinball": relative_pinball(np.concatenate(actual_all), np.concatenate(upper_all), UPPER_QUANTILE),
            "coverage": means[3], "folds": float(len(rows))}


def brief_error(exc: BaseException) -> str:
    """First line of an error, bounded: cmdstan failures carry its whole console log."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text[:200]}"


def combination_weights(scores: dict[str, float]) -> dict[str, float]:
    """Weights ∝ 1/backtest error (a model without any error takes all the weight, shared if several)."""
    perfect = [n for n, s in scores.items() if s <= 1e-9]
    if perfect:
        return {n: (1 / len(perfect) if n in perfect else 0.0) for n in scores}
    inverse = {n: 1 / s for n, s in scores.items()}
    total = sum(inverse.values())
    return {n: v / total for n, v in inverse.items()}


def combine(forecasts: list[Forecast], weights: list[float], model: str) -> Forecast:
    """Weighted mean of forecasts on the same grid; the band is the weighted mean of the members' bands,
    so it still contains yhat (`fit_local` then replaces it with the mix's calibrated band)."""
    w = np.asarray(weights, dtype=float) / float(np.sum(weights))
    first = forecasts[0]
    for other in forecasts[1:]:
        if not other.ds.equals(first.ds):
            raise ValueError("forecasts to combine must share their timestamps")
    yhat = sum(wi * f.yhat for wi, f in zip(w, forecasts, strict=True))
    lower = sum(wi * f.lower for wi, f in zip(w, forecasts, strict=True))
    upper = sum(wi * f.upper for wi, f in zip(w, forecasts, strict=True))
    note = " + ".join(f"{wi:.2f} {f.model}" for wi, f in zip(w, forecasts, strict=True))
    return Forecast(ds=first.ds, yhat=np.asarray(yhat), lower=np.minimum(lower, yhat),
                    upper=np.maximum(upper, yhat), model=model, note=note)


@dataclass
class AutoPlan:
    """What `auto` decided from its backtest: members with weights (summing to 1), and why."""

    members: list[str]
    weights: list[float]
    horizon: timedelta
    dropped: dict[str, str]
    combined_smape: float
    combined_pinball: float = float("nan")
    quantile: float = UPPER_QUANTILE
    rejected: dict[str, str] = field(default_factory=dict)
    backtests: dict[str, dict[int, Fold]] = field(default_factory=dict)


def _backtest_all(history: pd.Series, names: list[str], horizon: timedelta, folds: int,
                  events: pd.DataFrame | None, rejected: dict[str, str]) -> dict[str, dict[int, Fold]]:
    """Per model, its backtest folds by first row. Models whose fit breaks or that no fold fits are left
    out; models whose forecast explodes are left out and named in `rejected` with the reason."""
    out: dict[str, dict[int, Fold]] = {}
    for name in names:
        try:
            scored = candidate_folds(history, name, horizon, folds, events, [])
        except Exploded as exc:
            rejected[name] = str(exc)
            continue
        except Exception:
            # Its fit breaks on this series: not a candidate.
            continue
        scored = [f for f in scored if math.isfinite(f.smape)]
        if scored:
            out[name] = {f.split: f for f in scored}
    return out


def _mix_pairs(backtests: dict[str, dict[int, Fold]], members: list[str], weights: list[float],
               notes: dict[str, str] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Actual and the weighted mix's yhat in every window all members were scored on (oldest first).

    With `notes` (each member's final forecast's note), only the windows where every member had the same
    structure as in its final fit, when two or more such windows exist: a seasonal-naive that copied a day
    in an early window (too short for a week) errs unlike the one that copies a week now, and its errors
    would widen the band for nothing.
    """
    common = sorted(set.intersection(*(set(backtests[m]) for m in members)))
    if notes is not None:
        alike = [s for s in common if all(backtests[m][s].forecast.note == notes[m] for m in members)]
        common = alike if len(alike) >= 2 else common
    pairs = []
    for split in common:
        actual = backtests[members[0]][split].actual
        mix = sum(w * backtests[m][split].yhat for m, w in zip(members, weights, strict=True))
        pairs.append((actual, np.asarray(mix, dtype=float)))
    return pairs


def mix_calibration(backtests: dict[str, dict[int, Fold]], members: list[str], weights: list[float],
                    step: timedelta, notes: dict[str, str] | None = None) -> BandCalibration | None:
    """The band calibration of a mix from its members' backtest windows (None when they share none);
    `notes` as for `_mix_pairs`."""
    pairs = _mix_pairs(backtests, members, weights, notes)
    return calibrate_bands([log_residuals(a, y) for a, y in pairs], step) if pairs else None


def auto_folds(window: timedelta) -> int:
    """How many backtest windows of this length `auto` scores its candidates on."""
    return SHORT_FOLDS if window <= DAY else AUTO_FOLDS


def newest(backtests: dict[str, dict[int, Fold]], count: int) -> dict[str, dict[int, Fold]]:
    """Each model's `count` newest backtest windows."""
    return {m: dict(sorted(folds.items())[-count:]) for m, folds in backtests.items()}


def close_to_best(best: dict[int, float], other: dict[int, float]) -> bool:
    """Whether the backtest cannot tell `other` from `best` (their losses by window's first row): the mean of
    other - best over the windows both were scored on is at most STANDARD_ERRORS standard errors of it.
    Fewer than two shared windows cannot tell."""
    shared = sorted(set(best) & set(other))
    if len(shared) < 2:
        return True
    diff = np.array([other[s] - best[s] for s in shared])
    return float(diff.mean()) <= STANDARD_ERRORS * float(diff.std(ddof=1)) / math.sqrt(len(diff))


def mix_candidates(scores: dict[str, float], losses: dict[str, dict[int, float]]
                   ) -> tuple[list[str], dict[str, str]]:
    """The models to mix, best first by `scores`: the best and each other within NEAR_BEST of it that
    `close_to_best` keeps on their `losses` per window (none given: NEAR_BEST alone decides); and why each
    of the others is left out."""
    ranked = sorted(scores, key=lambda n: scores[n])
    best = ranked[0]
    kept, dropped = [best], {}
    for name in ranked[1:]:
        if not scores[name] <= NEAR_BEST * scores[best]:
            dropped[name] = f"pinball {scores[name]:.2f}% > {NEAR_BEST:g}× the best's"
        elif name in losses and best in losses and not close_to_best(losses[best], losses[name]):
            dropped[name] = (f"pinball {scores[name]:.2f}%, more than {STANDARD_ERRORS:g} standard error above "
                             f"the best's")
        else:
            kept.append(name)
    return kept, dropped


def _window_losses(history: pd.Series, folds: dict[int, Fold], quantile: float) -> dict[int, float]:
    ordered = sorted(folds)
    pairs = [(folds[s].actual, folds[s].yhat) for s in ordered]
    losses = cross_losses(pairs, infer_step(history), quantile)
    return {s: loss for s, (loss, _) in zip(ordered, losses, strict=True)}


def _auto_horizons(history: pd.Series, step: timedelta, names: list[str], horizon: timedelta,
                   select_horizon: timedelta | None) -> list[timedelta]:
    """Backtest windows as long as the forecast when every model fits the oldest one, else one day:
    1-day errors did not rank the models for a week ahead on the appserver trace."""
    if select_horizon is not None:
        return [select_horizon]
    short = min(horizon, DAY)
    if horizon <= short:
        return [short]
    first_split = len(history) - AUTO_FOLDS * steps(horizon, step)
    oldest = history.iloc[: max(first_split, 0)]
    if len(oldest) >= 2 and all(requirement_of(n, oldest, step) is None for n in names):
        return [horizon, short]
    return [short]


def _score(errors: dict[str, float]) -> float:
    value = errors["pinball"]
    return value if math.isfinite(value) else math.inf


def plan_auto(history: pd.Series, names: list[str], horizon: timedelta, *, events: pd.DataFrame | None = None,
              select_horizon: timedelta | None = None, errors: dict[str, dict[str, float]] | None = None,
              quantile: float = UPPER_QUANTILE) -> AutoPlan | None:
    """Backtest `names` on `auto_folds` windows, reject exploding ones, and mix the best by cross-fitted
    pinball loss at `quantile` with every model within NEAR_BEST of it that `close_to_best` keeps, weighted
    by 1/loss. None when no model could be backtested. Fills `errors` (per model)."""
    history = prepare(history)
    step = infer_step(history)
    errors = {} if errors is None else errors
    scored: dict[str, dict[int, Fold]] = {}
    rejected: dict[str, str] = {}
    sel_h = horizon
    for sel_h in _auto_horizons(history, step, names, horizon, select_horizon):
        rejected = {}
        folds = auto_folds(sel_h)
        scored = _backtest_all(history, names, sel_h, folds, events, rejected)
        # Long windows only when every model got all of them; otherwise the ranking compares unlike folds.
        if all(len(scored.get(n, {})) == folds for n in names if n not in rejected):
            break
    if not scored:
        return None
    for name, scored_folds in scored.items():
        errors[name] = summarise(history, list(scored_folds.values()), quantile)
    scores = {n: _score(errors[n]) for n in scored}
    by_pinball = any(math.isfinite(s) for s in scores.values())
    if not by_pinball:  # no load at all in the windows
        scores = {n: errors[n]["smape"] for n in scored}
    ranked = sorted(scored, key=lambda n: scores[n])
    best = ranked[0]
    losses = {n: _window_losses(history, scored[n], quantile) for n in scored} if by_pinball else {}
    kept, dropped = mix_candidates(scores, losses)
    weights = combination_weights({n: scores[n] for n in kept})
    members = sorted((n for n in kept if weights[n] > 0), key=lambda n: -weights[n])
    if not set.intersection(*(set(scored[m]) for m in members)):
        members = [best]
    member_weights = [weights[m] for m in members] if len(members) > 1 else [1.0]
    for name in kept:
        if name not in members:
            dropped[name] = f"pinball {scores[name]:.2f}%, not mixable with {best}"
    dropped = {n: dropped[n] for n in ranked if n in dropped}
    pairs = _mix_pairs(scored, members, member_weights)
    combined_smape = float(np.mean([smape(a, y) for a, y in pairs])) if pairs else errors[best]["smape"]
    combined_pinball = cross_pinball(pairs, step, quantile) if pairs else errors[best]["pinball"]
    return AutoPlan(members=members, weights=member_weights, horizon=sel_h, dropped=dropped,
                    combined_smape=combined_smape, combined_pinball=combined_pinball, quantile=quantile,
                    rejected=rejected, backtests=scored)


def _ranking(names: list[str], errors: dict[str, dict[str, float]]) -> str:
    ranked = sorted((n for n in names if n in errors), key=lambda n: _score(errors[n]))
    return " < ".join(f"{n} pinball {errors[n]['pinball']:.2f}% (sMAPE {errors[n]['smape']:.1f}%)"
                      for n in ranked)


def _auto_reason(plan: AutoPlan, names: list[str], errors: dict[str, dict[str, float]]) -> str:
    folds = int(max(errors[n]["folds"] for n in plan.members))
    text = (f"auto: {_ranking(names, errors)} (pinball loss at q{plan.quantile:g}, {folds} backtest folds "
            f"of {days_text(plan.horizon)})")
    if len(plan.members) > 1:
        mix = " + ".join(f"{w:.2f} {n}" for n, w in zip(plan.members, plan.weights, strict=True))
        text += (f"; combined {mix} (models the backtest cannot tell from the best: within {STANDARD_ERRORS:g} "
                 f"standard error and {NEAR_BEST:g}× its pinball; weights ∝ 1/pinball; combination pinball "
                 f"{plan.combined_pinball:.2f}%, sMAPE {plan.combined_smape:.1f}%)")
    else:
        text += f"; using {plan.members[0]}"
    if plan.dropped:
        text += "; dropped " + ", ".join(f"{n} ({why})" for n, why in plan.dropped.items())
    if plan.rejected:
        text += "; rejected " + ", ".join(f"{n} ({why})" for n, why in plan.rejected.items())
    return text


_FoldCache = dict[tuple[str, timedelta], list[Fold]]


def _scored_folds(history: pd.Series, name: str, horizon: timedelta, events: pd.DataFrame | None,
                  cache: _FoldCache) -> list[Fold]:
    """`name`'s SCORE_FOLDS backtest windows of `horizon` with a finite error, once per fit; [] when its fit
    breaks or explodes in one of them."""
    key = (name, horizon)
    if key not in cache:
        try:
            folds = candidate_folds(history, name, horizon, SCORE_FOLDS, events, [])
        except Exception:
            # Too short, exploding, or its fit breaks on this series.
            folds = []
        cache[key] = [f for f in folds if math.isfinite(f.smape)]
    return cache[key]


def _select(history: pd.Series, names: list[str], horizon: timedelta, events: pd.DataFrame | None,
            errors: dict[str, dict[str, float]], quantile: float, cache: _FoldCache) -> str | None:
    """The lowest backtest pinball loss among `names`; fills `errors`. None when no model could be scored."""
    for name in names:
        scored = _scored_folds(history, name, horizon, events, cache)
        if scored and name not in errors:
            errors[name] = summarise(history, scored, quantile)
    ranked = sorted((n for n in names if n in errors), key=lambda n: _score(errors[n]))
    return ranked[0] if ranked else None


def _own_calibration(history: pd.Series, name: str, horizon: timedelta, select_horizon: timedelta | None,
                     events: pd.DataFrame | None, errors: dict[str, dict[str, float]], quantile: float,
                     cache: _FoldCache, note: str) -> BandCalibration | None:
    """Calibrate a lone model on its own SCORE_FOLDS backtest windows, as long as the forecast when the
    history allows (like auto's), those with the final fit's structure (`note`) when two or more have it;
    records its errors. None without any window (the model's own band stays)."""
    step = infer_step(history)
    window = _auto_horizons(history, step, [name], horizon, select_horizon)[0]
    folds = _scored_folds(history, name, window, events, cache)
    if len(folds) < SCORE_FOLDS and window != min(horizon, DAY):
        window = min(horizon, DAY)
        folds = _scored_folds(history, name, window, events, cache)
    if not folds:
        return None
    if name not in errors:
        errors[name] = summarise(history, folds, quantile)
    alike = [f for f in folds if f.forecast.note == note]
    folds = alike if len(alike) >= 2 else folds
    return calibrate_bands([log_residuals(f.actual, f.yhat) for f in folds], infer_step(history))


def fit_local(name: str, history: pd.Series, horizon: timedelta, events: pd.DataFrame | None,
              select_horizon: timedelta | None, quantile: float = UPPER_QUANTILE) -> FitResult:
    """Fit `name` in this process, without a time limit, with the fallbacks `fit_predict` documents, and
    calibrate the forecast's band on the backtest windows of what was fitted. `quantile` is the one
    provisioning uses (the upper band's by default): `auto` ranks its candidates by pinball loss there.

    `history` has passed `prepare_fit` (or is a candidate's, for `rolling_origin_errors`).
    """
    started = time.perf_counter()
    history = prepare(history)
    step = infer_step(history)
    sel_h = select_horizon or min(horizon, DAY)
    errors: dict[str, dict[str, float]] = {}
    check_minimum(history, step)
    requirements = {n: requirement_of(n, history, step) for n in CANDIDATES}
    fittable = [n for n in CANDIDATES if requirements[n] is None]
    if not fittable:
        raise ForecastUnavailable("; ".join(r for r in requirements.values() if r))

    score: float | None = None
    plan: AutoPlan | None = None
    cache: _FoldCache = {}
    if name == "auto":
        plan = plan_auto(history, fittable, horizon, events=events, select_horizon=select_horizon,
                         errors=errors, quantile=quantile)
        if plan is None:
            members, weights = [fittable[0]], [1.0]
            reason = f"auto: too little history to backtest a {days_text(sel_h)} window: using {fittable[0]}"
        else:
            members, weights = plan.members, plan.weights
            reason = _auto_reason(plan, fittable, errors)
            score = plan.combined_smape
            skipped = [f"{n} ({requirements[n]})" for n in CANDIDATES if requirements[n]]
            if skipped:
                reason += "; not eligible: " + ", ".join(skipped)
    elif requirements[name] is None:
        members, weights, reason = [name], [1.0], f"{name} as configured"
    else:
        baselines = [n for n in BASELINES if n in fittable]
        chosen = _select(history, baselines, sel_h, events, errors, quantile, cache) or baselines[0]
        members, weights, reason = [chosen], [1.0], f"{requirements[name]}: using {chosen}"

    forecasts: list[Forecast] = []
    fitted: list[tuple[str, float]] = []
    failures: list[tuple[str, str, Exception | None]] = []
    for member, weight in zip(members, weights, strict=True):
        try:
            forecast = make_candidate(member, step=step).fit(history, events=events).predict(horizon)
        except ForecastUnavailable:
            raise
        except Exception as exc:
            failures.append((member, f"fit failed ({brief_error(exc)})", exc))
            continue
        boom = exploded(forecast, history)
        # seasonal-naive copies the history: only its own band can exceed it, and calibration replaces that.
        if boom is not None and not (member == "seasonal-naive" and len(members) == 1):
            failures.append((member, f"rejected: {boom}", None))
            continue
        forecasts.append(forecast)
        fitted.append((member, weight))
    if not forecasts:
        member, why, error = failures[0]
        if member == "seasonal-naive" and error is not None:
            raise error
        reason = f"{member} {why}: using seasonal-naive"
        fitted = [("seasonal-naive", 1.0)]
        forecasts = [make_candidate("seasonal-naive", step=step).fit(history, events=events).predict(horizon)]
        plan, score = None, None
    elif failures:
        reason += "; " + ", ".join(f"{m} {why}" for m, why, _ in failures)
        score = None

    calibration: BandCalibration | None = None
    notes = {m: f.note for (m, _), f in zip(fitted, forecasts, strict=True)}
    if plan is not None and all(m in plan.backtests for m, _ in fitted):
        total = sum(w for _, w in fitted)
        calibration = mix_calibration(newest(plan.backtests, AUTO_FOLDS), [m for m, _ in fitted],
                                      [w / total for _, w in fitted], step, notes)
    if len(fitted) == 1:
        chosen = fitted[0][0]
        forecast = forecasts[0]
        if chosen == "seasonal-naive" and forecast.note:
            reason = reason.replace("using seasonal-naive", f"using seasonal-naive ({forecast.note})")
        if calibration is None:
            calibration = _own_calibration(history, chosen, horizon, select_horizon, events, errors, quantile,
                                           cache, forecast.note)
        if score is None:
            score = errors.get(chosen, {}).get("smape")
    else:
        chosen = "auto(" + "+".join(m for m, _ in fitted) + ")"
        forecast = combine(forecasts, [w for _, w in fitted], chosen)
    if calibration is not None:
        forecast = calibration.apply(forecast)
        reason += f"; band calibrated on {calibration.windows} backtest windows"
        peak, limit = explosion_limit(history)
        if float(np.max(forecast.upper, initial=0)) > limit:
            # Past errors that large are real, but a band beyond any load ever seen would size fleets for it.
            forecast = replace(forecast, upper=np.minimum(forecast.upper, np.maximum(limit, forecast.yhat)))
            reason += f" (upper band capped at {EXPLOSION_FACTOR:g}× the history's maximum {peak:,.0f})"
    return FitResult(forecast=forecast, model=chosen, reason=reason,
                     fit_seconds=time.perf_counter() - started,
                     smape=score if score is not None and math.isfinite(score) else None, errors=errors)


def prepare_fit(name: str, history: pd.Series, horizon: timedelta) -> pd.Series:
    """The checks every fit passes before any work; returns `history` on its regular grid."""
    check_model_name(name)
    if horizon <= timedelta(0):
        raise InputError(f"forecast horizon must be positive, got {horizon}")
    history = prepare(history)
    if history.notna().sum() == 0:
        raise ForecastUnavailable("history has no data")
    return history

"""Which model to trust: rolling-origin backtest errors, `auto`'s plan and combination, and `fit_local`,
which fits a model by name in this process with every fallback (short history, failing fit).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from prescaler.errors import InputError
from prescaler.forecasting.accuracy import mape, mase, smape
from prescaler.forecasting.interface import FitResult, Forecast, ForecastUnavailable
from prescaler.forecasting.models import check_model_name, make_forecaster, requirement_of
from prescaler.forecasting.series import DAY, check_minimum, days_text, infer_step, prepare, steps

# Order = preference when no backtest can decide.
CANDIDATES = ("prophet", "holt-winters", "seasonal-naive")
AUTO_FOLDS = 3
SCORE_FOLDS = 2


@dataclass
class _Fold:
    """One backtest window: its first row in the history, the actual values and the forecast for them."""

    split: int
    actual: np.ndarray
    forecast: Forecast

    @property
    def smape(self) -> float:
        return smape(self.actual, self.forecast.yhat[: len(self.actual)])


def _fold_forecasts(history: pd.Series, name: str, horizon: timedelta, folds: int,
                    events: pd.DataFrame | None, reasons: list[str]) -> list[_Fold]:
    """Forecasts of the last `folds` windows of `horizon`, each from the data before it (oldest first).

    Windows whose training part is too short for the model are skipped, their reason added to `reasons`.
    """
    step = infer_step(history)
    n = steps(horizon, step)
    out: list[_Fold] = []
    for k in range(folds, 0, -1):
        split = len(history) - k * n
        if split <= 0:
            continue
        train, test = history.iloc[:split], history.iloc[split:split + n]
        if test.notna().sum() == 0:
            continue
        if name == "auto":
            try:
                forecast = fit_local("auto", prepare_fit("auto", train, horizon), horizon, events, None).forecast
            except ForecastUnavailable as exc:
                reasons.append(str(exc))
                continue
        else:
            reason = requirement_of(name, train, step)
            if reason is not None:
                reasons.append(reason)
                continue
            forecast = make_forecaster(name, step=step).fit(train, events=events).predict(horizon)
        out.append(_Fold(split, test.to_numpy(), forecast))
    return out


def _summarise(history: pd.Series, folds: list[_Fold]) -> dict[str, float]:
    season = max(1, round(DAY / infer_step(history)))
    scores: list[tuple[float, float, float, float]] = []
    for fold in folds:
        actual, fc = fold.actual, fold.forecast
        pred = fc.yhat[: len(actual)]
        seen = np.isfinite(actual)
        inside = (actual >= fc.lower[: len(actual)]) & (actual <= fc.upper[: len(actual)])
        train = history.iloc[:fold.split].to_numpy()
        scores.append((smape(actual, pred), mape(actual, pred), mase(actual, pred, train, season),
                       float(inside[seen].mean() * 100) if seen.any() else float("nan")))
    arr = np.array(scores, dtype=float)
    with np.errstate(all="ignore"):
        means = [float(np.nanmean(col)) if np.isfinite(col).any() else float("nan") for col in arr.T]
    return {"smape": means[0], "mape": means[1], "mase": means[2], "coverage": means[3],
            "folds": float(len(scores))}


def rolling_origin_errors(history: pd.Series, name: str, *, horizon: timedelta, folds: int = 3,
                          events: pd.DataFrame | None = None) -> dict[str, float]:
    """Mean sMAPE/MAPE/MASE of `name` over the last `folds` windows of `horizon`, plus `coverage`: the
    percentage of actual values inside the forecast band, and `folds`: how many windows were scored.

    Each window's model sees only data before the window. "auto" backtests and combines inside each fold on
    that fold's own past, so its score is an honest out-of-sample score too. Folds whose training data is too short
    for the model are skipped; none left → ForecastUnavailable.
    """
    check_model_name(name)
    history = prepare(history)
    reasons: list[str] = []
    scored = _fold_forecasts(history, name, horizon, folds, events, reasons)
    if not scored:
        why = reasons[-1] if reasons else f"history too short for a {days_text(horizon)} backtest window"
        raise ForecastUnavailable(f"{name}: no backtest fold possible ({why})")
    return _summarise(history, scored)


def _score(history: pd.Series, name: str, horizon: timedelta, folds: int,
           events: pd.DataFrame | None) -> dict[str, float] | None:
    """Backtest errors, or None when the model cannot fit the folds (too short, or its fit fails)."""
    try:
        return rolling_origin_errors(history, name, horizon=horizon, folds=folds, events=events)
    except Exception:
        # Too short, or its fit breaks on this series: not a candidate (the chosen model is refit anyway).
        return None


def _select(history: pd.Series, step: timedelta, names: list[str], horizon: timedelta, folds: int,
            events: pd.DataFrame | None, errors: dict[str, dict[str, float]]) -> str | None:
    """Lowest backtest sMAPE among `names`; fills `errors`. None when no model could be scored."""
    for name in names:
        if name not in errors:
            scored = _score(history, name, horizon, folds, events)
            if scored is not None and math.isfinite(scored["smape"]):
                errors[name] = scored
    ranked = sorted((n for n in names if n in errors), key=lambda n: errors[n]["smape"])
    return ranked[0] if ranked else None


def _ranking(names: list[str], errors: dict[str, dict[str, float]]) -> str:
    ranked = sorted((n for n in names if n in errors), key=lambda n: errors[n]["smape"])
    return " < ".join(f"{n} sMAPE {errors[n]['smape']:.1f}%" for n in ranked)


def brief_error(exc: BaseException) -> str:
    """First line of an error, bounded: cmdstan failures carry its whole console log."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text[:200]}"


@dataclass
class AutoPlan:
    """What `auto` decided from its backtest: members with weights (summing to 1), and why."""

    members: list[str]
    weights: list[float]
    horizon: timedelta
    dropped: dict[str, str]
    combined_smape: float


def _backtest_all(history: pd.Series, names: list[str], horizon: timedelta, folds: int,
                  events: pd.DataFrame | None) -> dict[str, dict[int, _Fold]]:
    """Per model, its backtest folds by first row; models whose fit breaks or that no fold fits are left out."""
    out: dict[str, dict[int, _Fold]] = {}
    for name in names:
        try:
            scored = _fold_forecasts(history, name, horizon, folds, events, [])
        except Exception:
            # Its fit breaks on this series: not a candidate.
            continue
        scored = [f for f in scored if math.isfinite(f.smape)]
        if scored:
            out[name] = {f.split: f for f in scored}
    return out


def _beaten_by(name: str, scored: dict[str, dict[int, _Fold]]) -> str | None:
    """The best model with a lower error than `name` in every fold both were scored on (two at least)."""
    mine = scored[name]
    ranked = sorted(scored.items(), key=lambda item: float(np.mean([f.smape for f in item[1].values()])))
    for other, theirs in ranked:
        common = sorted(mine.keys() & theirs.keys())
        if other != name and len(common) >= 2 and all(theirs[s].smape < mine[s].smape for s in common):
            return other
    return None


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
    so it still contains yhat."""
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


def _auto_horizons(history: pd.Series, step: timedelta, names: list[str], horizon: timedelta,
                   select_horizon: timedelta | None) -> list[timedelta]:
    """Backtest windows as long as the forecast when every model fits the oldest one, else one day:
    1-day errors did not rank the models for a week ahead on the appserver trace."""
    if select_horizon is not None:
        return [select_horizon]
    short = min(horizon, DAY)
    if horizon <= short:
        return [short]
    oldest = history.iloc[: len(history) - AUTO_FOLDS * steps(horizon, step)]
    if len(oldest) >= 2 and all(requirement_of(n, oldest, step) is None for n in names):
        return [horizon, short]
    return [short]


def plan_auto(history: pd.Series, names: list[str], horizon: timedelta, *, events: pd.DataFrame | None = None,
              select_horizon: timedelta | None = None,
              errors: dict[str, dict[str, float]] | None = None) -> AutoPlan | None:
    """Backtest `names` on AUTO_FOLDS windows, drop every model that another beat in every window, and
    weight the rest by 1/sMAPE. None when no model could be backtested. Fills `errors` (per model)."""
    history = prepare(history)
    step = infer_step(history)
    errors = {} if errors is None else errors
    scored: dict[str, dict[int, _Fold]] = {}
    sel_h = horizon
    for sel_h in _auto_horizons(history, step, names, horizon, select_horizon):
        scored = _backtest_all(history, names, sel_h, AUTO_FOLDS, events)
        # Long windows only when every model got all of them; otherwise the ranking compares unlike folds.
        if all(len(scored.get(n, {})) == AUTO_FOLDS for n in names):
            break
    if not scored:
        return None
    for name, folds in scored.items():
        errors[name] = _summarise(history, list(folds.values()))
    dropped = {n: by for n in scored if (by := _beaten_by(n, scored)) is not None}
    kept = [n for n in scored if n not in dropped]
    if not kept:  # a cycle over different folds: fall back to the lowest mean error
        kept = [min(scored, key=lambda n: errors[n]["smape"])]
        dropped = {n: kept[0] for n in scored if n != kept[0]}
    weights = combination_weights({n: errors[n]["smape"] for n in kept})
    members = sorted((n for n in kept if weights[n] > 0), key=lambda n: -weights[n])
    common = set.intersection(*(set(scored[n]) for n in members))
    combined = [smape(scored[members[0]][s].actual,
                      sum(weights[n] * scored[n][s].forecast.yhat[: len(scored[n][s].actual)] for n in members))
                for s in sorted(common)]
    combined_smape = float(np.mean(combined)) if combined else errors[members[0]]["smape"]
    return AutoPlan(members=members, weights=[weights[n] for n in members], horizon=sel_h,
                    dropped=dropped, combined_smape=combined_smape)


def _auto_reason(plan: AutoPlan, names: list[str], errors: dict[str, dict[str, float]]) -> str:
    folds = int(max(errors[n]["folds"] for n in plan.members))
    text = f"auto: {_ranking(names, errors)} ({folds} backtest folds of {days_text(plan.horizon)})"
    if len(plan.members) > 1:
        mix = " + ".join(f"{w:.2f} {n}" for n, w in zip(plan.members, plan.weights, strict=True))
        text += f"; combined {mix} (weights ∝ 1/sMAPE; combination sMAPE {plan.combined_smape:.1f}%)"
    else:
        text += f"; using {plan.members[0]}"
    if plan.dropped:
        text += "; dropped " + ", ".join(f"{n} (worse than {by} in every fold)" for n, by in plan.dropped.items())
    return text


def fit_local(name: str, history: pd.Series, horizon: timedelta, events: pd.DataFrame | None,
              select_horizon: timedelta | None) -> FitResult:
    """Fit `name` in this process, without a time limit, with the fallbacks `fit_predict` documents.

    `history` has passed `prepare_fit`.
    """
    started = time.perf_counter()
    step = infer_step(history)
    sel_h = select_horizon or min(horizon, DAY)
    errors: dict[str, dict[str, float]] = {}
    check_minimum(history, step)
    requirements = {n: requirement_of(n, history, step) for n in CANDIDATES}
    fittable = [n for n in CANDIDATES if requirements[n] is None]
    if not fittable:
        raise ForecastUnavailable("; ".join(r for r in requirements.values() if r))

    score: float | None = None
    if name == "auto":
        plan = plan_auto(history, fittable, horizon, events=events, select_horizon=select_horizon,
                         errors=errors)
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
        baselines = [n for n in fittable if n != "prophet"]
        chosen = _select(history, step, baselines, sel_h, SCORE_FOLDS, events, errors) or baselines[0]
        members, weights, reason = [chosen], [1.0], f"{requirements[name]}: using {chosen}"

    forecasts: list[Forecast] = []
    fitted: list[tuple[str, float]] = []
    failures: list[tuple[str, Exception]] = []
    for member, weight in zip(members, weights, strict=True):
        try:
            forecasts.append(make_forecaster(member, step=step).fit(history, events=events).predict(horizon))
            fitted.append((member, weight))
        except ForecastUnavailable:
            raise
        except Exception as exc:
            failures.append((member, exc))
    if not forecasts:
        member, error = failures[0]
        if member == "seasonal-naive":
            raise error
        reason = f"{member} fit failed ({brief_error(error)}): using seasonal-naive"
        fitted = [("seasonal-naive", 1.0)]
        forecasts = [make_forecaster("seasonal-naive", step=step).fit(history, events=events).predict(horizon)]
        score = None
    elif failures:
        reason += "; " + ", ".join(f"{m} fit failed ({brief_error(e)})" for m, e in failures)
        score = None
    if len(fitted) == 1:
        chosen = fitted[0][0]
        forecast = forecasts[0]
        if chosen == "seasonal-naive" and forecast.note:
            reason = reason.replace("using seasonal-naive", f"using seasonal-naive ({forecast.note})")
        if chosen not in errors:
            scored = _score(history, chosen, sel_h, SCORE_FOLDS, events)
            if scored is not None:
                errors[chosen] = scored
        if score is None:
            score = errors.get(chosen, {}).get("smape")
    else:
        chosen = "auto(" + "+".join(m for m, _ in fitted) + ")"
        forecast = combine(forecasts, [w for _, w in fitted], chosen)
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

"""What a backtest measured: KPIs per policy, forecast error, the headroom frontier, and their JSON shape.

The JSON shape (`policies.<name>.<kpi>`, `forecast`, `frontier.<policy>[]`, `settings`) is read by the bench,
the demo and users' notebooks: keys are only ever added.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from prescaler import forecasting
from prescaler.durations import format_duration


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
    """Errors of the forecasts the predictive policy used, and which models made them.

    `model` lists every model (or mix) with its number of refits; `summary` is the short form for tables:
    each model's share of the refits it led (for a mix, the member with the largest weight).
    """

    model: str
    smape: float | None
    mape: float | None
    mase: float | None
    summary: str = ""
    models: dict[str, int] = field(default_factory=dict)  # refits per model or mix, most used first
    leading_models: dict[str, int] = field(default_factory=dict)  # refits per leading model, most first

    @property
    def label(self) -> str:
        """What a table prints: the summary, or the full list when there is none."""
        return self.summary or self.model


@dataclass(frozen=True)
class FrontierComparison:
    """Predictive's frontier point against reactive's unserved interpolated at the same replica-hours."""

    headroom_pct: float
    replica_hours: float
    predictive_unserved_pct: float
    reactive_unserved_pct: float | None  # None when outside reactive's swept replica-hours range


@dataclass(frozen=True)
class ServiceLevelReport:
    """How the service-level mode did over the evaluated window (its predictive policy)."""

    target_pct: float
    served_pct: float  # realized: 100 − predictive's unserved %, on whole ready replicas
    coverage_pct: float | None  # buckets whose load stayed within the calibrated sizing (m × S), out of sample
    calibrated_served_pct: float | None  # served % of that sizing before whole replicas and the startup delay
    calibrated_quantile_pct: float | None  # the quantile the calibrations aimed at, on average
    multiplier_mean: float | None
    calibrated_pct: float  # evaluated decisions sized by a calibration (the rest: the headroom fallback)
    at_risk_refits: int = 0  # evaluated refits whose record showed the target out of reach
    at_risk: str = ""  # the last such refit's reason


@dataclass(frozen=True)
class BlendReport:
    """The trust-weighted blend with reactive over the evaluated window (its predictive policy)."""

    trust_mean: float
    leaning_pct: float  # evaluated decisions made with less than full trust
    refits_leaning: int  # evaluated refits whose record chose less than full trust
    refits: int
    reason: str  # the last such refit's reason (or the last refit's, when none leaned)


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
    service_level: ServiceLevelReport | None = None  # None: sized by headroom
    blend: BlendReport | None = None

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
                "summary": self.forecast.label,
                "models": dict(self.forecast.models),
                "leading_models": dict(self.forecast.leading_models),
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
            "service_level": None if self.service_level is None else {
                k: _jsonable(v) for k, v in asdict(self.service_level).items()
            },
            "blend": None if self.blend is None else {k: _jsonable(v) for k, v in asdict(self.blend).items()},
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
# Measuring


def kpis(
    load: np.ndarray, requested: np.ndarray, ready: np.ndarray, capacity: float, step_hours: float
) -> tuple[float, float, float, int]:
    """Replica-hours, unserved %, under-provisioned buckets % and scale actions of one policy's run."""
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


def forecast_quality(
    requested_model: str,
    used: Counter[str],
    failed: int,
    load: np.ndarray,
    yhat: np.ndarray,
    train: np.ndarray,
    step: pd.Timedelta,
) -> ForecastQuality:
    """Errors of the forecasts the predictive policy used, over the evaluated window.

    `used` counts the model each refit reported; `failed` the refits that produced no forecast.
    """
    smape = mape = mase = None
    ok = ~np.isnan(load) & ~np.isnan(yhat)
    if ok.any():
        actual, predicted = load[ok], yhat[ok]
        smape = float(forecasting.smape(actual, predicted))
        mape = float(forecasting.mape(actual, predicted))
        season = max(1, int(pd.Timedelta(days=1) / step))
        try:
            mase = float(forecasting.mase(actual, predicted, train[~np.isnan(train)], season))
        except (ValueError, ZeroDivisionError):
            mase = None
    leading = leading_models(used)
    return ForecastQuality(
        model=_model_label(requested_model, used, failed=failed),
        smape=smape,
        mape=mape,
        mase=mase,
        summary=_model_summary(requested_model, used, leading, failed),
        models=dict(used.most_common()),
        leading_models=leading,
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


def mix_members(model: str) -> list[str]:
    """The members of a model name as a fit reports it: `auto(a+b)` is a mix of a and b, else one model.

    The forecasters list a mix's members by descending weight, so the first one leads.
    """
    if model.startswith("auto(") and model.endswith(")") and len(model) > len("auto()"):
        return model[len("auto(") : -1].split("+")
    return [model]


def leading_models(used: Counter[str]) -> dict[str, int]:
    """Refits per leading model (a mix counts for its member with the largest weight), most first, then by name."""
    out: Counter[str] = Counter()
    for model, refits in used.items():
        out[mix_members(model)[0]] += refits
    return dict(sorted(out.items(), key=lambda mn: (-mn[1], mn[0])))


def _model_summary(requested: str, used: Counter[str], leading: dict[str, int], failed: int) -> str:
    """E.g. "auto: holt-winters 60%, prophet 30%, seasonal-naive 10% of 24 refits (20 mixes, by leading model)"."""
    if not used:
        text = f"{requested} (no forecast)"
    elif list(used) == [requested]:
        text = requested
    else:
        total = sum(used.values())
        # A model that led one refit of hundreds still shows, as <1% rather than a misleading 0%.
        shares = ", ".join(f"{m} {f'{p}%' if p else '<1%'}" for m, p in _percentages(list(leading.items()), total))
        text = f"{requested}: {shares} of {total} refit{'s' if total != 1 else ''}"
        mixes = sum(n for m, n in used.items() if len(mix_members(m)) > 1)
        if mixes:
            text += f" ({mixes} mix{'es' if mixes != 1 else ''}, by leading model)"
    return text + (f"; {failed} failed fits" if failed else "")


def _percentages(counts: list[tuple[str, int]], total: int) -> list[tuple[str, int]]:
    """Whole percentages that add up to 100 (largest remainders round up), in the order given."""
    exact = [(m, 100 * n / total) for m, n in counts]
    out = {m: math.floor(x) for m, x in exact}
    by_remainder = sorted(exact, key=lambda mx: mx[1] - math.floor(mx[1]), reverse=True)
    for m, _ in by_remainder[: 100 - sum(out.values())]:
        out[m] += 1
    return [(m, out[m]) for m, _ in counts]


# ---------------------------------------------------------------------------------------------------------
# Presentation


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
        f"forecast {q.label}: sMAPE {_fmt_opt(q.smape)}%  MAPE {_fmt_opt(q.mape)}%  MASE {_fmt_opt(q.mase, 3)}"
    )
    if result.service_level is not None:
        rows.append(service_level_line(result.service_level))
    if result.blend is not None:
        rows.append(blend_line(result.blend))
    st = result.settings
    rows.append(
        f"{st['evaluated_steps']} steps of {format_duration(st['step'])} from {st['evaluated_from']:%Y-%m-%d %H:%M}"
        f" UTC; capacity {st['capacity']:,.0f}/step; startup delay {format_duration(st['startup_delay'])}; "
        f"headroom {st['headroom_percent']:g}%; quantile {st['quantile']}; refit every "
        f"{format_duration(st['refit_every'])}"
    )
    return "\n".join(rows)


def service_level_line(r: ServiceLevelReport) -> str:
    """E.g. "service level 99.9%: served 99.93%; calibrated q96.1 (×1.14) covered 96.4% of buckets …"."""
    text = f"service level {r.target_pct:g}%: served {r.served_pct:.3f}%"
    if r.calibrated_quantile_pct is not None:
        text += (f"; calibrated quantile q{r.calibrated_quantile_pct:.1f} (×{_fmt_opt(r.multiplier_mean, 3)}) "
                 f"covered {_fmt_opt(r.coverage_pct, 1)}% of buckets")
    if r.calibrated_pct < 100:
        text += f"; {r.calibrated_pct:.0f}% of decisions calibrated (headroom before)"
    if r.at_risk:
        text += f"\nservice level at risk at {r.at_risk_refits} refits: {r.at_risk}"
    return text


def blend_line(b: BlendReport) -> str:
    """E.g. "blend: leaned on reactive at 3 of 60 refits (5.0% of decisions, mean trust 0.96)"."""
    if b.refits_leaning == 0:
        return f"blend: forecast fully trusted at all {b.refits} refits"
    return (f"blend: leaned on reactive at {b.refits_leaning} of {b.refits} refits ({b.leaning_pct:.1f}% of "
            f"decisions, mean trust {b.trust_mean:.2f}); e.g. {b.reason}")


def _fmt_opt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"

"""Every Prometheus metric the operator exports. The single source of metric names: the dashboard,
the chart and docs/metrics.md are checked against `METRIC_NAMES`.

Labels are only `namespace` and `name`, plus small enums (direction, kind, condition, status).
"""

from __future__ import annotations

import contextlib
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)
_SCALER = ("namespace", "name")
_LABELS: dict[Any, tuple[str, ...]] = {}  # each metric's label names, in declaration order (for remove())
M = TypeVar("M", Gauge, Counter, Histogram)


def _scaler(kind: type[M], name: str, documentation: str, *, extra: tuple[str, ...] = (), **kwargs: Any) -> M:
    """A metric labelled by scaler (namespace, name) plus small enums, registered in REGISTRY."""
    labels = (*_SCALER, *extra)
    metric = kind(name, documentation, labels, registry=REGISTRY, **kwargs)
    _LABELS[metric] = labels
    return metric


FORECAST_LOAD = _scaler(Gauge, "prescaler_forecast_load",
                        "Forecast load (requests per step) for the current step, by band.", extra=("band",))
FORECAST_PEAK_LOAD = _scaler(Gauge, "prescaler_forecast_peak_load",
                             "Forecast peak load within now + leadTime (requests per step).")
OBSERVED_LOAD = _scaler(Gauge, "prescaler_observed_load", "Most recent observed load (requests per step).")
DESIRED_REPLICAS = _scaler(Gauge, "prescaler_desired_replicas", "Replicas the planner wants now.")
CURRENT_REPLICAS = _scaler(Gauge, "prescaler_current_replicas",
                           "Replicas the target has (spec) at the last reconcile.")
READY_REPLICAS = _scaler(Gauge, "prescaler_ready_replicas", "Ready replicas of the target at the last reconcile.")
STATIC_PEAK_REPLICAS = _scaler(Gauge, "prescaler_static_peak_replicas",
                               "Replicas a static fleet sized for the history's peak would need.")
FORECAST_ERROR = _scaler(Gauge, "prescaler_forecast_error_smape", "Backtest sMAPE (percent) of the model in use.")
REPLICA_SECONDS = _scaler(Counter, "prescaler_replica_seconds",
                          "Replica-seconds provisioned by prescaler (desired replicas x tick).")
STATIC_REPLICA_SECONDS = _scaler(Counter, "prescaler_static_replica_seconds",
                                 "Replica-seconds a static peak-sized fleet would have used.")
UNDERPROVISIONED_SECONDS = _scaler(Counter, "prescaler_underprovisioned_seconds",
                                   "Seconds during which observed load exceeded the capacity of ready replicas.")
FIT_DURATION = _scaler(Histogram, "prescaler_fit_duration_seconds", "Duration of forecast fits.", extra=("model",),
                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
FORECAST_AGE = _scaler(Gauge, "prescaler_forecast_age_seconds", "Age of the forecast in use at the last reconcile.")
LAST_REFRESH = _scaler(Gauge, "prescaler_last_refresh_timestamp_seconds",
                       "Unix time of the last successful forecast refresh.")
RECONCILE_DURATION = _scaler(Histogram, "prescaler_reconcile_duration_seconds", "Duration of one reconcile tick.",
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SCALE_ACTIONS = _scaler(Counter, "prescaler_scale_actions", "Scale actions applied, by direction (up, down).",
                        extra=("direction",))
ERRORS = _scaler(Counter, "prescaler_errors",
                 "Errors by kind (DataUnavailable, FitFailed, FitTimeout, TargetNotFound, InvalidSpec, ...).",
                 extra=("kind",))
CONDITION = _scaler(Gauge, "prescaler_condition", "1 when the condition has the status, else 0.",
                    extra=("condition", "status"))
SERVICE_LEVEL_TARGET = _scaler(Gauge, "prescaler_service_level_target_percent",
                               "spec.scaling.serviceLevel: the percent of requests to serve (absent without one).")
SERVICE_LEVEL_SERVED = _scaler(Gauge, "prescaler_service_level_served_percent",
                               "Percent of the calibration window's load the calibrated sizing served.")
SERVICE_LEVEL_COVERAGE = _scaler(Gauge, "prescaler_service_level_coverage_percent",
                                 "Percent of the calibration window's steps whose load the calibrated sizing covered.")
SERVICE_LEVEL_AT_RISK = _scaler(Gauge, "prescaler_service_level_at_risk",
                                "1 when the scaler's record shows its service level out of reach (the "
                                "ServiceLevelAtRisk condition), else 0; absent without a calibrated service level.")
CALIBRATED_QUANTILE = _scaler(Gauge, "prescaler_calibrated_quantile",
                              "The forecast quantile (0-1) the service level is sized at, calibrated online.")
MODEL_INFO = _scaler(Gauge, "prescaler_model_info", "1 for the forecast model in use.", extra=("model",))
SCORECARD_REPLICA_SECONDS = _scaler(
    Gauge, "prescaler_scorecard_replica_seconds",
    "Replica-seconds in the scorecard window (1d, 7d, 14d): planned by prescaler, or the baseline's (what the "
    "target ran; while prescaler was in charge, what the controller it took over from would have).",
    extra=("window", "side"))
SCORECARD_UNSERVED_PERCENT = _scaler(
    Gauge, "prescaler_scorecard_unserved_percent",
    "Percent of the window's observed load above ready capacity, planned or baseline (absent without load).",
    extra=("window", "side"))
SCORECARD_COST_RATIO = _scaler(Gauge, "prescaler_scorecard_cost_ratio",
                               "Planned over baseline replica-hours in the scorecard window.", extra=("window",))
SCORECARD_UNSERVED_RATIO = _scaler(
    Gauge, "prescaler_scorecard_unserved_ratio",
    "Planned over baseline unserved percent in the scorecard window, both floored at 0.01%.", extra=("window",))
EFFECTIVE_AUTO = _scaler(Gauge, "prescaler_effective_auto",
                         "1 while the plan is applied (mode Auto, by the spec or a promotion), 0 while it only "
                         "reports.")
CAPACITY_SHORTFALL = _scaler(
    Gauge, "prescaler_capacity_shortfall_replicas",
    "Replicas the forecast within the horizon needs above maxReplicas (or the HPA's maxReplicas); 0 when none.")

ALL: tuple[Any, ...] = tuple(_LABELS)

# Operator-wide, not per scaler (so not in ALL, which forget_scaler walks).
DECISION_ROWS_PENDING = Gauge("prescaler_decision_rows_pending",
                              "Decision rows waiting for PostgreSQL to come back (written first once it does).",
                              registry=REGISTRY)
DECISION_ROWS_DROPPED = Counter("prescaler_decision_rows_dropped",
                                "Decision rows dropped because the backlog kept while PostgreSQL was away was full.",
                                registry=REGISTRY)
OPERATOR_WIDE: tuple[Any, ...] = (DECISION_ROWS_PENDING, DECISION_ROWS_DROPPED)


def exposed_names(registry: CollectorRegistry = REGISTRY) -> tuple[str, ...]:
    """The metric family names as scraped (counters gain `_total`), read from the registry itself."""
    names = []
    for family in registry.collect():
        names.append(family.name + "_total" if family.type == "counter" else family.name)
    return tuple(names)


# The single list the dashboard, chart and docs tests check against: derived, never kept by hand.
METRIC_NAMES: tuple[str, ...] = exposed_names()


# Labelled children, kept: `labels()` validates and takes a lock, and each tick of each scaler makes ~30 calls.
_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: M, *values: str) -> M:
    """`metric.labels(*values)`, looked up once."""
    key = (id(metric), values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found


def remove(metric: Any, *values: str) -> None:
    """Drop one series (absent already: nothing to do)."""
    _children.pop((id(metric), values), None)
    with contextlib.suppress(KeyError):
        metric.remove(*values)


def forget_scaler(namespace: str, name: str) -> None:
    """Remove every series of one scaler (after its deletion), through the public collect/remove API."""
    for key in [k for k in _children if k[1][:2] == (namespace, name)]:
        _children.pop(key, None)
    for metric in ALL:
        label_names = _LABELS[metric]
        seen: set[tuple[str, ...]] = set()
        for family in metric.collect():
            for sample in family.samples:
                if sample.labels.get("namespace") == namespace and sample.labels.get("name") == name:
                    seen.add(tuple(sample.labels[n] for n in label_names))
        for values in seen:
            with contextlib.suppress(KeyError):
                metric.remove(*values)

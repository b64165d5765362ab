"""Every Prometheus metric the operator exports. The single source of metric names: the dashboard,
the chart and the README are checked against `METRIC_NAMES`.

Labels are only `namespace` and `name`, plus small enums (direction, kind, condition, status).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)
_SCALER = ("namespace", "name")

FORECAST_LOAD = Gauge(
    "prescaler_forecast_load", "Forecast load (requests per step) for the current step, by band.",
    [*_SCALER, "band"], registry=REGISTRY,
)
FORECAST_PEAK_LOAD = Gauge(
    "prescaler_forecast_peak_load", "Forecast peak load within now + leadTime (requests per step).",
    _SCALER, registry=REGISTRY,
)
OBSERVED_LOAD = Gauge(
    "prescaler_observed_load", "Most recent observed load (requests per step).", _SCALER, registry=REGISTRY,
)
DESIRED_REPLICAS = Gauge(
    "prescaler_desired_replicas", "Replicas the planner wants now.", _SCALER, registry=REGISTRY,
)
CURRENT_REPLICAS = Gauge(
    "prescaler_current_replicas", "Replicas the target has (spec) at the last reconcile.", _SCALER,
    registry=REGISTRY,
)
READY_REPLICAS = Gauge(
    "prescaler_ready_replicas", "Ready replicas of the target at the last reconcile.", _SCALER, registry=REGISTRY,
)
STATIC_PEAK_REPLICAS = Gauge(
    "prescaler_static_peak_replicas", "Replicas a static fleet sized for the history's peak would need.",
    _SCALER, registry=REGISTRY,
)
FORECAST_ERROR = Gauge(
    "prescaler_forecast_error_smape", "Backtest sMAPE (percent) of the model in use.", _SCALER, registry=REGISTRY,
)
REPLICA_SECONDS = Counter(
    "prescaler_replica_seconds", "Replica-seconds provisioned by prescaler (desired replicas x tick).",
    _SCALER, registry=REGISTRY,
)
STATIC_REPLICA_SECONDS = Counter(
    "prescaler_static_replica_seconds", "Replica-seconds a static peak-sized fleet would have used.",
    _SCALER, registry=REGISTRY,
)
UNDERPROVISIONED_SECONDS = Counter(
    "prescaler_underprovisioned_seconds",
    "Seconds during which observed load exceeded the capacity of ready replicas.",
    _SCALER, registry=REGISTRY,
)
FIT_DURATION = Histogram(
    "prescaler_fit_duration_seconds", "Duration of forecast fits.", [*_SCALER, "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=REGISTRY,
)
FORECAST_AGE = Gauge(
    "prescaler_forecast_age_seconds", "Age of the forecast in use at the last reconcile.", _SCALER,
    registry=REGISTRY,
)
LAST_REFRESH = Gauge(
    "prescaler_last_refresh_timestamp_seconds", "Unix time of the last successful forecast refresh.", _SCALER,
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "prescaler_reconcile_duration_seconds", "Duration of one reconcile tick.", _SCALER,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY,
)
SCALE_ACTIONS = Counter(
    "prescaler_scale_actions", "Scale actions applied, by direction (up, down).", [*_SCALER, "direction"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "prescaler_errors", "Errors by kind (DataUnavailable, FitFailed, TargetNotFound, InvalidSpec, ...).",
    [*_SCALER, "kind"], registry=REGISTRY,
)
CONDITION = Gauge(
    "prescaler_condition", "1 when the condition has the status, else 0.",
    [*_SCALER, "condition", "status"], registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "prescaler_model_info", "1 for the forecast model in use.", [*_SCALER, "model"], registry=REGISTRY,
)

ALL = (
    FORECAST_LOAD, FORECAST_PEAK_LOAD, OBSERVED_LOAD, DESIRED_REPLICAS, CURRENT_REPLICAS, READY_REPLICAS,
    STATIC_PEAK_REPLICAS, FORECAST_ERROR, REPLICA_SECONDS, STATIC_REPLICA_SECONDS, UNDERPROVISIONED_SECONDS,
    FIT_DURATION, FORECAST_AGE, LAST_REFRESH, RECONCILE_DURATION, SCALE_ACTIONS, ERRORS, CONDITION, MODEL_INFO,
)

# Counters are exposed with a _total suffix.
METRIC_NAMES: tuple[str, ...] = (
    "prescaler_forecast_load",
    "prescaler_forecast_peak_load",
    "prescaler_observed_load",
    "prescaler_desired_replicas",
    "prescaler_current_replicas",
    "prescaler_ready_replicas",
    "prescaler_static_peak_replicas",
    "prescaler_forecast_error_smape",
    "prescaler_replica_seconds_total",
    "prescaler_static_replica_seconds_total",
    "prescaler_underprovisioned_seconds_total",
    "prescaler_fit_duration_seconds",
    "prescaler_forecast_age_seconds",
    "prescaler_last_refresh_timestamp_seconds",
    "prescaler_reconcile_duration_seconds",
    "prescaler_scale_actions_total",
    "prescaler_errors_total",
    "prescaler_condition",
    "prescaler_model_info",
)

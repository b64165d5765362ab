"""A PredictiveScaler spec, parsed and checked into typed settings.

The CRD's schema and CEL rules reject most bad objects at the API server; this parser checks what the schema
cannot express (relations between durations) and re-applies defaults so an object created before a default
existed still parses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Literal, cast

from prescaler.durations import format_duration, parse_duration
from prescaler.errors import InputError
from prescaler.forecasting import MODEL_NAMES
from prescaler.planning import Fallback, Quantile, ScalingPolicy
from prescaler.promotion import Promotion, parse_promotion
from prescaler.schedules import Schedule, parse_schedules
from prescaler.sizing.service_level import parse_service_level

Mode = Literal["Auto", "ForecastOnly", "Paused"]
Actuation = Literal["Replicas", "HPAMinReplicas"]
MODES: tuple[str, ...] = ("Auto", "ForecastOnly", "Paused")
ACTUATIONS: tuple[str, ...] = ("Replicas", "HPAMinReplicas")
TARGET_KINDS: tuple[str, ...] = ("Deployment", "StatefulSet")


@dataclass(frozen=True)
class TargetRef:
    api_version: str
    kind: str
    name: str

    def key(self, namespace: str) -> tuple[str, str, str]:
        return (namespace, self.kind, self.name)


@dataclass(frozen=True)
class ScalerSpec:
    target: TargetRef
    min_replicas: int
    max_replicas: int
    mode: Mode
    actuation: Actuation
    source: str
    service: str
    requests_per_replica: int
    per: timedelta
    model: str
    history: timedelta
    horizon: timedelta
    step: timedelta
    refresh_interval: timedelta
    quantile: Quantile
    interval: timedelta
    lead_time: timedelta
    headroom_percent: int
    reactive_floor: bool
    stabilization_window: timedelta
    max_step_percent: int
    stale_after: timedelta
    fallback: Fallback
    # Percent of requests to serve; None sizes by quantile and headroomPercent (see `prescaler.planning`).
    service_level: float | None = None
    schedules: tuple[Schedule, ...] = ()
    # The promotion gate (`prescaler.promotion`); None: the spec's mode is the effective mode.
    promotion: Promotion | None = None

    @property
    def capacity_per_step(self) -> float:
        """Requests one ready replica serves per forecast step (the planner's unit)."""
        return self.requests_per_replica * self.step / self.per

    def policy(self) -> ScalingPolicy:
        return ScalingPolicy(
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            capacity=self.capacity_per_step,
            lead_time=self.lead_time,
            tick=self.interval,
            headroom_percent=float(self.headroom_percent),
            quantile=self.quantile,
            reactive_floor=self.reactive_floor,
            scale_down_window=self.stabilization_window,
            scale_down_max_step_percent=self.max_step_percent,
            stale_after=self.stale_after,
            fallback=self.fallback,
            display_factor=self.per / self.step,
            display_unit=f"req/{format_duration(self.per)}",
            service_level=self.service_level,
        )

    def forecast_key(self) -> str:
        """Hash of everything a stored forecast depends on: a change forces a refit."""
        relevant = {
            "source": self.source,
            "service": self.service,
            "model": self.model,
            "history": self.history.total_seconds(),
            "horizon": self.horizon.total_seconds(),
            "step": self.step.total_seconds(),
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _section(spec: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = spec.get(name) or {}
    if not isinstance(value, Mapping):
        raise InputError(f"spec.{name} must be an object")
    return value


def _int(section: Mapping[str, Any], key: str, path: str, default: int | None, lo: int, hi: int) -> int:
    value = section.get(key, default)
    if value is None:
        raise InputError(f"{path} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{path} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InputError(f"{path} must be within {lo}..{hi}, got {value}")
    return value


def _enum(section: Mapping[str, Any], key: str, path: str, default: str, allowed: tuple[str, ...]) -> str:
    value = section.get(key, default)
    if value not in allowed:
        raise InputError(f"{path} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _dur(section: Mapping[str, Any], key: str, path: str, default: str) -> timedelta:
    return parse_duration(str(section.get(key, default)), field=path)


def parse_spec(spec: Mapping[str, Any]) -> ScalerSpec:
    """Typed settings from `.spec`; InputError names the offending field."""
    ref = _section(spec, "scaleTargetRef")
    kind = _enum(ref, "kind", "spec.scaleTargetRef.kind", "", TARGET_KINDS)
    name = ref.get("name")
    if not name or not isinstance(name, str):
        raise InputError("spec.scaleTargetRef.name is required")
    target = TargetRef(api_version=str(ref.get("apiVersion", "apps/v1")), kind=kind, name=name)
    if target.api_version != "apps/v1":
        raise InputError(f"spec.scaleTargetRef.apiVersion must be apps/v1, got {target.api_version!r}")

    min_r = _int(spec, "minReplicas", "spec.minReplicas", 1, 1, 10000)
    max_r = _int(spec, "maxReplicas", "spec.maxReplicas", None, 1, 10000)
    if min_r > max_r:
        raise InputError(f"spec.minReplicas ({min_r}) must be less than or equal to spec.maxReplicas ({max_r})")

    series = _section(spec, "series")
    service = series.get("service")
    if not service or not isinstance(service, str):
        raise InputError("spec.series.service is required")
    capacity = _section(spec, "capacity")
    forecast = _section(spec, "forecast")
    scaling = _section(spec, "scaling")
    scale_down = scaling.get("scaleDown") or {}
    fallback = _section(spec, "fallback")

    parsed = ScalerSpec(
        target=target,
        min_replicas=min_r,
        max_replicas=max_r,
        mode=cast(Mode, _enum(spec, "mode", "spec.mode", "Auto", MODES)),
        actuation=cast(Actuation, _enum(spec, "actuation", "spec.actuation", "Replicas", ACTUATIONS)),
        source=str(series.get("source", "default")),
        service=service,
        requests_per_replica=_int(capacity, "requestsPerReplica", "spec.capacity.requestsPerReplica", None, 1,
                                  2**53),
        per=_dur(capacity, "per", "spec.capacity.per", "1m"),
        model=_enum(forecast, "model", "spec.forecast.model", "auto", MODEL_NAMES),
        history=_dur(forecast, "history", "spec.forecast.history", "14d"),
        horizon=_dur(forecast, "horizon", "spec.forecast.horizon", "1d"),
        step=_dur(forecast, "step", "spec.forecast.step", "5m"),
        refresh_interval=_dur(forecast, "refreshInterval", "spec.forecast.refreshInterval", "1h"),
        quantile=cast(Quantile, _enum(forecast, "quantile", "spec.forecast.quantile", "upper", ("yhat", "upper"))),
        interval=_dur(scaling, "interval", "spec.scaling.interval", "1m"),
        lead_time=_dur(scaling, "leadTime", "spec.scaling.leadTime", "5m"),
        headroom_percent=_int(scaling, "headroomPercent", "spec.scaling.headroomPercent", 10, 0, 1000),
        reactive_floor=bool(scaling.get("reactiveFloor", True)),
        stabilization_window=_dur(scale_down, "stabilizationWindow", "spec.scaling.scaleDown.stabilizationWindow",
                                  "15m"),
        max_step_percent=_int(scale_down, "maxStepPercent", "spec.scaling.scaleDown.maxStepPercent", 50, 1, 100),
        stale_after=_dur(fallback, "staleAfter", "spec.fallback.staleAfter", "2h"),
        fallback=cast(Fallback, _enum(fallback, "action", "spec.fallback.action", "HoldCurrent",
                                      ("HoldCurrent", "ScaleToMax"))),
        service_level=_service_level(scaling),
        schedules=tuple(parse_schedules(spec.get("schedules"), "spec.schedules", max_replicas=max_r)),
        promotion=parse_promotion(spec.get("promotion")),
    )
    _check_relations(parsed)
    return parsed


def _service_level(scaling: Mapping[str, Any]) -> float | None:
    value = scaling.get("serviceLevel")
    if value is None:
        return None
    if not isinstance(value, str):
        # No floats in spec: "99.9%" is a string, as the CRD requires.
        raise InputError(f"spec.scaling.serviceLevel must be a string such as \"99.9%\", got {value!r}")
    return parse_service_level(value, "spec.scaling.serviceLevel")


def _check_relations(s: ScalerSpec) -> None:
    if s.history < 2 * s.step or s.history < timedelta(days=1):
        raise InputError("spec.forecast.history must cover at least one day and two steps")
    if s.horizon < s.lead_time + s.interval:
        raise InputError(
            "spec.forecast.horizon must be at least spec.scaling.leadTime + spec.scaling.interval, so the "
            "forecast covers the time new replicas need to become ready"
        )
    if s.step > s.horizon:
        raise InputError("spec.forecast.step must not exceed spec.forecast.horizon")
    if s.stale_after < s.refresh_interval:
        raise InputError("spec.fallback.staleAfter must be at least spec.forecast.refreshInterval")

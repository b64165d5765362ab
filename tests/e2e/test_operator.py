"""The operator end to end: a real control plane, PostgreSQL, kwok pods with a real readiness delay, and the
operator as a real process on a scaled clock living through a daily peak (18:00-19:00 simulated).

One timeline serves every scenario (each in its own namespace); a recorder samples what `kubectl get`
shows, and the tests assert on the recording.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from prescaler.clock import Clock
from prescaler_dev.localcluster import LocalCluster

from .operator_support import (
    PEAK_REPLICAS,
    OperatorProcess,
    apply,
    condition,
    deployment_yaml,
    get_json,
    hpa_yaml,
    install_crds,
    namespace_yaml,
    peak_day_time,
    scaler_yaml,
)

SPEED = 120.0  # one real second = two simulated minutes
START = peak_day_time(16, 30)
PEAK = peak_day_time(18, 0)
END = peak_day_time(20, 20)
LATE_TARGET_AT = peak_day_time(17, 0)


@dataclass
class Sample:
    t: datetime
    deployments: dict[str, dict[str, Any]]
    scalers: dict[str, dict[str, Any]]
    hpas: dict[str, dict[str, Any]]


@dataclass
class Timeline:
    samples: list[Sample] = field(default_factory=list)
    engine: sa.Engine | None = None
    operator: OperatorProcess | None = None

    def at_or_after(self, t: datetime) -> Sample:
        return next(s for s in self.samples if s.t >= t)

    def last(self) -> Sample:
        return self.samples[-1]


def _index(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {i["metadata"]["namespace"]: i for i in items if i["metadata"]["name"] == "web"}






@pytest.fixture(scope="module")
def timeline(cluster: LocalCluster, traffic_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Timeline]:
    install_crds(cluster)
    for ns in ("e2e-peak", "e2e-observe", "e2e-late", "e2e-hpa", "e2e-floor"):
        apply(cluster, namespace_yaml(ns))
    apply(cluster, deployment_yaml("e2e-peak", "web"))
    apply(cluster, scaler_yaml("e2e-peak", "web", "web"))
    apply(cluster, deployment_yaml("e2e-observe", "web", replicas=3))
    apply(cluster, scaler_yaml("e2e-observe", "web", "web", mode="ForecastOnly"))
    apply(cluster, scaler_yaml("e2e-late", "web", "web"))
    apply(cluster, deployment_yaml("e2e-hpa", "web"))
    apply(cluster, hpa_yaml("e2e-hpa", "web", "web"))
    apply(cluster, scaler_yaml("e2e-hpa", "web", "web"))
    apply(cluster, deployment_yaml("e2e-floor", "web"))
    apply(cluster, hpa_yaml("e2e-floor", "web", "web"))
    apply(cluster, scaler_yaml("e2e-floor", "web", "web", actuation="HPAMinReplicas"))

    clock = Clock.scaled_from(START, SPEED)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(cluster, traffic_db, clock, log).start()
    tl = Timeline(engine=sa.create_engine(traffic_db), operator=op)
    late_created = False
    try:
        while clock.now() < END:
            assert op.alive(), f"operator died; log:\n{log.read_text()[-4000:]}"
            now = clock.now()
            if not late_created and now >= LATE_TARGET_AT:
                apply(cluster, deployment_yaml("e2e-late", "web"))
                late_created = True
            everything = get_json(cluster, "get", "deployments,predictivescalers,hpa", "-A")
            items = everything.get("items", [])
            tl.samples.append(Sample(
                t=now,
                deployments=_index([i for i in items if i["kind"] == "Deployment"]),
                scalers=_index([i for i in items if i["kind"] == "PredictiveScaler"]),
                hpas=_index([i for i in items if i["kind"] == "HorizontalPodAutoscaler"]),
            ))
            time.sleep(0.2)
        yield tl
    finally:
        op.stop()
        tl.engine.dispose()  # type: ignore[union-attr]


def test_ready_replicas_reach_the_peak_before_it_arrives(timeline: Timeline) -> None:
    before = [s for s in timeline.samples if s.t < PEAK]
    at_peak = timeline.at_or_after(PEAK)
    ready = int(at_peak.deployments["e2e-peak"]["status"].get("readyReplicas") or 0)
    assert ready >= PEAK_REPLICAS, f"only {ready} ready at the peak, {PEAK_REPLICAS} needed"
    # It was the forecast, not luck: an hour before the peak the fleet was still small.
    early = next(s for s in before if s.t >= PEAK - timedelta(minutes=60))
    assert int(early.deployments["e2e-peak"]["spec"]["replicas"]) < PEAK_REPLICAS
    # Readiness takes real time on kwok, so capacity was requested ahead by at least that much.
    first_enough = next(s for s in timeline.samples
                        if int(s.deployments["e2e-peak"]["status"].get("readyReplicas") or 0) >= PEAK_REPLICAS)
    assert first_enough.t < PEAK


def test_comes_down_after_the_peak_within_limits(timeline: Timeline) -> None:
    specs = [int(s.deployments["e2e-peak"]["spec"]["replicas"]) for s in timeline.samples]
    assert max(specs) <= 30 and min(specs) >= 2
    assert specs[-1] <= 3, f"still {specs[-1]} replicas at {timeline.last().t:%H:%M}"
    with timeline.engine.connect() as conn:  # type: ignore[union-attr]
        rows = conn.execute(sa.text(
            "SELECT current_replicas, desired_replicas FROM scaling_decisions "
            "WHERE namespace = 'e2e-peak' AND name = 'web' AND applied AND direction = 'down' "
            "ORDER BY decided_at")).all()
    assert rows, "no scale-down was recorded"
    for current, desired in rows:
        assert current - desired <= max(1, math.floor(current * 0.5)), (current, desired)
    # Stabilisation: no scale-down within 15 simulated minutes of the end of the plateau (19:00).
    down_at = next(s.t for s in timeline.samples
                   if s.t > PEAK and int(s.deployments["e2e-peak"]["spec"]["replicas"])
                   < max(specs))
    assert down_at >= peak_day_time(19, 0)


def test_every_decision_is_recorded_with_a_reason(timeline: Timeline) -> None:
    with timeline.engine.connect() as conn:  # type: ignore[union-attr]
        n, reasons = conn.execute(sa.text(
            "SELECT count(*), count(*) FILTER (WHERE reason LIKE '%replicas') FROM scaling_decisions "
            "WHERE namespace = 'e2e-peak'")).one()
    assert n > 50 and reasons == n


def test_forecast_only_reports_but_never_scales(timeline: Timeline) -> None:
    specs = {int(s.deployments["e2e-observe"]["spec"]["replicas"]) for s in timeline.samples}
    assert specs == {3}
    st = timeline.at_or_after(PEAK - timedelta(minutes=5)).scalers["e2e-observe"]["status"]
    assert st["desiredReplicas"] >= PEAK_REPLICAS
    assert "at" in st["nextPeak"] and st["nextPeak"]["replicas"] >= PEAK_REPLICAS
    assert condition(timeline.at_or_after(PEAK).scalers["e2e-observe"], "ScalingActive")["reason"] == "ForecastOnly"


def test_missing_target_is_a_condition_then_picked_up(timeline: Timeline, cluster: LocalCluster) -> None:
    before = [s for s in timeline.samples if s.t < LATE_TARGET_AT and "e2e-late" in s.scalers]
    reasons = {condition(s.scalers["e2e-late"], "ScalingActive").get("reason") for s in before}
    assert "TargetNotFound" in reasons
    later = timeline.at_or_after(PEAK)
    assert condition(later.scalers["e2e-late"], "ScalingActive")["status"] == "True"
    assert int(later.deployments["e2e-late"]["spec"]["replicas"]) >= PEAK_REPLICAS
    events = get_json(cluster, "-n", "e2e-late", "get", "events")
    assert any(e.get("reason") == "TargetNotFound" for e in events.get("items", []))


def test_hpa_on_the_target_is_refused(timeline: Timeline) -> None:
    ready = condition(timeline.last().scalers["e2e-hpa"], "Ready")
    assert ready["status"] == "False" and ready["reason"] == "HPAConflict"
    assert "HorizontalPodAutoscaler" in ready["message"]
    specs = {int(s.deployments["e2e-hpa"]["spec"]["replicas"]) for s in timeline.samples}
    assert max(specs) < PEAK_REPLICAS, "prescaler must not fight the HPA"


def test_hpa_floor_rises_before_the_peak(timeline: Timeline) -> None:
    floor_before_peak = max(int(s.hpas["e2e-floor"]["spec"]["minReplicas"])
                            for s in timeline.samples if s.t < PEAK)
    assert floor_before_peak >= PEAK_REPLICAS
    assert int(timeline.samples[0].hpas["e2e-floor"]["spec"]["minReplicas"]) < PEAK_REPLICAS
    assert condition(timeline.at_or_after(PEAK).scalers["e2e-floor"], "Ready")["status"] == "True"


def test_metrics_describe_the_run(timeline: Timeline) -> None:
    op = timeline.operator
    assert op is not None and op.healthy()
    assert op.metric("prescaler_scale_actions_total", namespace="e2e-peak", direction="up") >= 1
    assert op.metric("prescaler_desired_replicas", namespace="e2e-peak") >= 2
    assert op.metric("prescaler_errors_total", namespace="e2e-hpa", kind="HPAConflict") >= 1
    assert op.metric("prescaler_errors_total", namespace="e2e-late", kind="TargetNotFound") >= 1


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ("minReplicas: 10\n  maxReplicas: 5", "minReplicas must be less than or equal to maxReplicas"),
        ("minReplicas: 2\n  maxReplicas: -3", "spec.maxReplicas"),
        ("minReplicas: 2\n  maxReplicas: 5\n  mode: Sometimes", "spec.mode"),
        ("minReplicas: 2\n  maxReplicas: 5\n  scaling: {leadTime: soon}", "spec.scaling.leadTime"),
    ],
)
def test_invalid_scalers_are_rejected_by_the_api_server(
    cluster: LocalCluster, patch: str, field: str
) -> None:
    install_crds(cluster)
    text = f"""
apiVersion: prescaler.dev/v1alpha1
kind: PredictiveScaler
metadata: {{name: bad, namespace: default}}
spec:
  scaleTargetRef: {{kind: Deployment, name: web}}
  {patch}
  series: {{service: peak-api}}
  capacity: {{requestsPerReplica: 100}}
"""
    out = cluster.kubectl("apply", "-f", "-", input=text, check=False)
    assert out.returncode != 0
    assert field in out.stderr, out.stderr


def test_missing_target_ref_is_rejected(cluster: LocalCluster) -> None:
    install_crds(cluster)
    text = """
apiVersion: prescaler.dev/v1alpha1
kind: PredictiveScaler
metadata: {name: bad, namespace: default}
spec:
  maxReplicas: 5
  series: {service: peak-api}
  capacity: {requestsPerReplica: 100}
"""
    out = cluster.kubectl("apply", "-f", "-", input=text, check=False)
    assert out.returncode != 0 and "spec.scaleTargetRef" in out.stderr, out.stderr



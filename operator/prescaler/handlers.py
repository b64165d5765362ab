"""Kopf handlers: thin. Parse what kopf hands over, call the reconciler, patch status, post events."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import start_http_server

from prescaler import db, forecasting, metrics
from prescaler.actuation import Actuator, HpaState, TargetState, load_client_config
from prescaler.config import OperatorConfig
from prescaler.reconcile import Reconciler, ScalerState, Services
from prescaler.spec import TargetRef

GROUP, VERSION, PLURAL = "prescaler.dev", "v1alpha1", "predictivescalers"
log = logging.getLogger("prescaler")

_reconciler: Reconciler | None = None
_config: OperatorConfig | None = None
_started_at = 0.0


class _QuietTimer(logging.Filter):
    """Drops kopf's per-wake-up success line of the reconcile timer: most wake-ups only check the cadence,
    and at a thousand scalers the line alone is a hundred log records a second."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.msg == "Timer 'reconcile_timer' succeeded.")


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _reconciler, _started_at
    assert _config is not None, "run() builds the configuration before kopf starts"
    cfg = _config
    _started_at = time.monotonic()
    settings.posting.level = logging.WARNING  # explicit events only, not every log line
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="prescaler.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="prescaler.dev")
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10]
    if cfg.peering:
        settings.peering.name = cfg.peering
        settings.peering.priority = cfg.priority
        settings.peering.mandatory = True
        settings.peering.clusterwide = not cfg.namespaces
        # How long a silent peer still counts: a standby takes over this long after the active one dies.
        settings.peering.lifetime = cfg.peering_lifetime_s
        _ensure_peering(cfg.peering, list(cfg.namespaces))
    else:
        settings.peering.standalone = True
    engine = db.make_engine(cfg.database_url)
    try:
        db.migrate(engine)
    except Exception as exc:  # the store may be down at start: ticks report DataAvailable=False and retry
        log.warning("database not migrated at startup: %s", exc)
    _reconciler = Reconciler(Services(
        engine=engine,
        actuator=Actuator(),
        pool=forecasting.FitPool(max_workers=cfg.workers, timeout_s=cfg.fit_timeout_s),
        clock=cfg.clock,
        sources=cfg.sources,
        fit_timeout_s=cfg.fit_timeout_s,
        max_concurrent=cfg.max_concurrent_reconciles,
    ))


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if _reconciler is not None:
        _reconciler.s.pool.shutdown()


# kopf's callback protocols list every kwarg; handlers take only what they use, hence the ignores.
@kopf.index("autoscaling", "v2", "horizontalpodautoscalers")  # type: ignore[arg-type]
def hpa_by_target(namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any],
                  **_: Any) -> dict[tuple[str, str, str], HpaState]:
    ref = spec.get("scaleTargetRef") or {}
    return {(namespace, str(ref.get("kind")), str(ref.get("name"))): HpaState(
        name=name,
        min_replicas=int(spec.get("minReplicas") or 1),
        max_replicas=int(spec.get("maxReplicas") or 1),
        current_replicas=int(status.get("currentReplicas") or 0),
    )}


def _target_state(kind: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any],
                  meta: Mapping[str, Any]) -> TargetState:
    replicas = spec.get("replicas")
    return TargetState(kind=kind, name=name, spec_replicas=int(replicas if replicas is not None else 1),
                       ready_replicas=int(status.get("readyReplicas") or 0),
                       generation=int(meta.get("generation") or 0))


# Targets come from the watch (as an informer cache would), not from a GET per scaler and tick.
@kopf.index("apps", "v1", "deployments")  # type: ignore[arg-type]
def deployments(namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any],
                meta: Mapping[str, Any], **_: Any) -> dict[tuple[str, str, str], TargetState]:
    return {(namespace, "Deployment", name): _target_state("Deployment", name, spec, status, meta)}


@kopf.index("apps", "v1", "statefulsets")  # type: ignore[arg-type]
def statefulsets(namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any],
                 meta: Mapping[str, Any], **_: Any) -> dict[tuple[str, str, str], TargetState]:
    return {(namespace, "StatefulSet", name): _target_state("StatefulSet", name, spec, status, meta)}


@kopf.index(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
def scaler_by_target(namespace: str, name: str, spec: Mapping[str, Any], meta: Mapping[str, Any],
                     **_: Any) -> dict[tuple[str, str, str], tuple[str, str]]:
    ref = spec.get("scaleTargetRef") or {}
    return {(namespace, str(ref.get("kind")), str(ref.get("name"))): (str(meta.get("creationTimestamp")), name)}


# Registered by run(): the wake-up interval is configuration, not known at import time.
async def reconcile_timer(
    namespace: str,
    name: str,
    body: kopf.Body,
    spec: Mapping[str, Any],
    memo: kopf.Memo,
    patch: kopf.Patch,
    hpa_by_target: kopf.Index[tuple[str, str, str], HpaState],
    scaler_by_target: kopf.Index[tuple[str, str, str], tuple[str, str]],
    deployments: kopf.Index[tuple[str, str, str], TargetState],
    statefulsets: kopf.Index[tuple[str, str, str], TargetState],
    **_: Any,
) -> None:
    assert _reconciler is not None and _config is not None
    if _config.peering and time.monotonic() - _started_at < _config.peering_settle_s:
        # Let peering see every peer first, so a lower-priority replica never acts even once.
        return
    if "scaler_state" not in memo:
        memo["scaler_state"] = ScalerState()
    ref = spec.get("scaleTargetRef") or {}
    key = (namespace, str(ref.get("kind")), str(ref.get("name")))
    hpas = list(hpa_by_target.get(key, []))
    rivals = sorted(scaler_by_target.get(key, []))
    owner = rivals[0][1] if rivals else name

    def target(ns: str, target_ref: TargetRef) -> TargetState | None:
        index = deployments if target_ref.kind == "Deployment" else statefulsets
        found = list(index.get(target_ref.key(ns), []))
        return found[0] if found else None

    outcome = await _reconciler.tick(
        namespace=namespace, name=name, body=body, state=memo["scaler_state"], hpas=hpas,
        rival_owner=owner if owner != name else None, targets=target,
    )
    if outcome is None:
        return
    patch.status.update(outcome.status)
    for kind, reason, message in outcome.events:
        kopf.event(body, type=kind, reason=reason, message=message[:1000])


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)  # type: ignore[arg-type]
def forget(namespace: str, name: str, **_: Any) -> None:
    # Stale series would otherwise linger in /metrics until the process restarts.
    metrics.forget_scaler(namespace, name)


def _ensure_peering(peering: str, namespaces: list[str]) -> None:
    """Create the peering object when missing (kopf requires it to exist when peering is mandatory)."""
    load_client_config()
    api = client.CustomObjectsApi()
    try:
        if namespaces:
            for ns in namespaces:
                api.create_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings",
                                                    {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                                                     "metadata": {"name": peering, "namespace": ns}})
        else:
            api.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings",
                                             {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                                              "metadata": {"name": peering}})
    except ApiException as exc:
        if exc.status != 409:
            raise


def run(config: OperatorConfig) -> None:
    """Start the operator with a configuration already checked by `OperatorConfig.build`."""
    global _config
    _config = config
    logging.basicConfig(level=config.logging_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf.objects").addFilter(_QuietTimer())
    timer = kopf.timer(GROUP, VERSION, PLURAL, interval=config.timer_interval_s, sharp=False)
    timer(reconcile_timer)  # type: ignore[arg-type]
    start_http_server(config.metrics_port, registry=metrics.REGISTRY)
    kopf.run(
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{config.liveness_port}/healthz",
        standalone=config.peering is None,
        peering_name=config.peering,
        priority=config.priority,
    )

"""Kopf handlers: thin. Parse what kopf hands over, call the reconciler, patch status, post events."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import threading
import time
from collections.abc import Hashable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast

import kopf
import sqlalchemy as sa
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import start_http_server

from prescaler import db, events, forecasting, metrics
from prescaler.actuation import Actuator, HpaState, TargetState, load_client_config
from prescaler.config import OperatorConfig
from prescaler.informers import Extract, Informer, InformerGroup, ObjectKey, namespace_filter, plain_names
from prescaler.reconcile import Outcome, Reconciler, ScalerState, Services
from prescaler.spec import TargetRef

GROUP, VERSION, PLURAL = "prescaler.dev", "v1alpha1", "predictivescalers"
log = logging.getLogger("prescaler")

_reconciler: Reconciler | None = None
_cache: ClusterCache | None = None
_config: OperatorConfig | None = None
_started_at = 0.0
_first_pass: asyncio.Task[bool] | None = None
# A PostgreSQL session lock held through a start-up pass: the passes of two replicas never overlap ("prescale").
_PASS_LOCK_KEY = 0x7072657363616C65


@dataclass
class _Slot:
    """One scaler's memory, shared by its kopf timer and the start-up pass (kopf's memo only reaches the
    timer)."""

    state: ScalerState = field(default_factory=ScalerState)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one tick of a scaler at a time
    unpatched: Outcome | None = None  # decided by the start-up pass: the timer patches status and posts events


_slots: dict[ObjectKey, _Slot] = {}


class _QuietTimer(logging.Filter):
    """Drops kopf's per-wake-up success line of the reconcile timer: most wake-ups only check the cadence,
    and at a thousand scalers the line alone is a hundred log records a second."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.msg == "Timer 'reconcile_timer' succeeded.")


class _Backoffs:
    """1, 2, 5, then 10 s forever: re-iterable, as kopf iterates it anew for each failing call."""

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1.0, 2.0, 5.0), itertools.repeat(10.0))


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _reconciler, _cache, _started_at
    assert _config is not None, "run() builds the configuration before kopf starts"
    cfg = _config
    _started_at = time.monotonic()
    settings.posting.level = logging.WARNING  # explicit events only, not every log line
    # The ticks' SQL runs in the loop's default executor, which holds min(32, cores + 4) threads: 6 on two
    # cores, fewer than the ticks admitted at once. Each admitted tick gets a thread of its own, plus a few for
    # the forecast keeper's reads and writes.
    sql_threads = cfg.max_concurrent_reconciles + 4
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=sql_threads, thread_name_prefix="prescaler-sql"))
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="prescaler.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="prescaler.dev")
    settings.watching.server_timeout = 300
    # Endless retries of API calls (kopf re-iterates this): a finite list lets a long API server outage end a
    # scaler's timer task for good.
    settings.networking.error_backoffs = _Backoffs()
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
    engine = db.make_engine(cfg.database_url, threads=sql_threads)
    try:
        db.migrate(engine)
    except Exception as exc:  # the store may be down at start: ticks report DataAvailable=False and retry
        log.warning("database not migrated at startup: %s", exc)
    _reconciler = Reconciler(Services(
        engine=engine,
        actuator=LazyActuator(),
        pool=forecasting.FitPool(max_workers=cfg.workers, timeout_s=cfg.fit_timeout_s,
                                 fit=events.fit_in_worker),
        clock=cfg.clock,
        sources=cfg.sources,
        fit_timeout_s=cfg.fit_timeout_s,
        max_concurrent=cfg.max_concurrent_reconciles,
        refit_spread=cfg.refit_spread,
    ))
    # Both read while kopf starts its own watch, so the first ticks find the forecasts and targets in memory.
    _reconciler.start()
    _cache = ClusterCache.build(cfg.namespaces)
    _cache.start()
    # kopf starts its watches, timers and peering only after this handler returns: the loop is ours alone.
    if not cfg.peering:
        await decide_all(budget_s=cfg.first_pass_budget_s)
    else:
        await _first_pass_with_peering(cfg.peering, list(cfg.namespaces))


async def _first_pass_with_peering(peering: str, namespaces: list[str]) -> None:
    """The start-up pass before kopf starts, when no other operator is alive: the peering object lists none
    (this process is not in it yet). Otherwise, or when another replica's pass holds the lock (two that start
    at once), the first timer after the settle time starts it, as kopf runs timers only on the active one."""
    global _first_pass
    assert _config is not None
    try:
        peers = await asyncio.to_thread(_live_peers_in, peering, namespaces)
    except Exception as exc:  # the API server is unreachable or refuses: kopf's peering decides, then the timers
        log.warning("start-up pass left to the timers: peering %s not read (%s)", peering, exc)
        return
    if peers:
        log.info("start-up pass left to the timers: live peers %s", ", ".join(peers))  # sorted already
        return
    _first_pass = asyncio.create_task(_exclusive_pass(_config.first_pass_budget_s, wait=False))
    if not await _first_pass:
        _first_pass = None


def live_peers(status: Mapping[str, Any], now: datetime) -> list[str]:
    """The operators that a kopf peering object's status shows alive, by kopf's rule: last seen within their
    own lifetime (a missing time counts as now, an unreadable one as alive)."""
    alive = []
    for identity, info in status.items():
        info = info if isinstance(info, Mapping) else {}
        try:
            seen = datetime.fromisoformat(str(info["lastseen"])) if info.get("lastseen") else now
            lifetime = timedelta(seconds=int(info.get("lifetime", 60)))
        except (TypeError, ValueError):
            alive.append(identity)
            continue
        if (seen if seen.tzinfo else seen.replace(tzinfo=UTC)) + lifetime > now:
            alive.append(identity)
    return alive


def _live_peers_in(peering: str, namespaces: Iterable[str]) -> list[str]:
    api = client.CustomObjectsApi()
    objects = cast(list[Mapping[str, Any]], (
        [api.get_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings", peering) for ns in namespaces]
        or [api.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)]))
    now = datetime.now(UTC)
    return sorted({p for obj in objects for p in live_peers(obj.get("status") or {}, now)})


async def _exclusive_pass(budget_s: float, *, wait: bool) -> bool:
    """The start-up pass under the pass lock, waiting for it up to the budget when `wait`. Whether it ran."""
    assert _reconciler is not None
    started = time.monotonic()
    key = {"key": _PASS_LOCK_KEY}
    try:
        conn = await asyncio.to_thread(_reconciler.s.engine.connect)
    except Exception as exc:  # the store is down: every tick would fail too, and the timers retry
        log.warning("start-up pass skipped: %s", exc)
        return False
    try:
        conn.execution_options(isolation_level="AUTOCOMMIT")  # no transaction left open through the pass

        def try_lock() -> bool:
            return bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), key).scalar())

        while not await asyncio.to_thread(try_lock):
            if not wait or time.monotonic() - started >= budget_s:
                log.info("start-up pass left to the timers: another replica's pass holds the lock")
                return False
            await asyncio.sleep(0.5)
        try:
            await decide_all(budget_s=budget_s - (time.monotonic() - started))
        finally:
            # The connection goes back to the pool, where a session lock would outlive the pass.
            try:
                await asyncio.to_thread(conn.execute, sa.text("SELECT pg_advisory_unlock(:key)"), key)
            except Exception:
                conn.invalidate()  # closed instead of pooled: its session, and so the lock, ends
        return True
    finally:
        await asyncio.to_thread(conn.close)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if _reconciler is not None:
        # Forecasts fitted but not yet written would otherwise be fitted again after the restart.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_reconciler.drain(), timeout=10)
        _reconciler.s.pool.shutdown()
    if _cache is not None:
        _cache.stop()


def _target_state(kind: str) -> Extract[TargetState]:
    def extract(obj: Mapping[str, Any]) -> tuple[Hashable, TargetState]:
        meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        replicas = spec.get("replicas")
        return (meta.get("namespace", ""), kind, meta["name"]), TargetState(
            kind=kind, name=meta["name"], spec_replicas=int(replicas if replicas is not None else 1),
            ready_replicas=int(status.get("readyReplicas") or 0), generation=int(meta.get("generation") or 0))
    return extract


def _hpa(obj: Mapping[str, Any]) -> tuple[Hashable, HpaState]:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    ref = spec.get("scaleTargetRef") or {}
    return (meta.get("namespace", ""), str(ref.get("kind")), str(ref.get("name"))), HpaState(
        name=meta["name"], min_replicas=int(spec.get("minReplicas") or 1),
        max_replicas=int(spec.get("maxReplicas") or 1), current_replicas=int(status.get("currentReplicas") or 0))


class ScalerEntry(NamedTuple):
    created: str  # creationTimestamp: of rivals for one target, the oldest owns it
    name: str
    body: Mapping[str, Any]


def _scaler(obj: Mapping[str, Any]) -> tuple[Hashable, ScalerEntry]:
    meta, ref = obj["metadata"], (obj.get("spec") or {}).get("scaleTargetRef") or {}
    return ((meta.get("namespace", ""), str(ref.get("kind")), str(ref.get("name"))),
            ScalerEntry(str(meta.get("creationTimestamp")), str(meta["name"]), obj))


class LazyActuator:
    """`Actuator` built on first use, in the thread that uses it: its typed API classes take seconds to import,
    and a restart's first decisions rarely patch anything."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actuator: Actuator | None = None

    def _get(self) -> Actuator:
        with self._lock:
            if self._actuator is None:
                self._actuator = Actuator()
            return self._actuator

    def read_target(self, namespace: str, ref: TargetRef) -> TargetState:
        return self._get().read_target(namespace, ref)

    def scale(self, namespace: str, ref: TargetRef, replicas: int) -> None:
        self._get().scale(namespace, ref, replicas)

    def set_hpa_min(self, namespace: str, name: str, min_replicas: int) -> None:
        self._get().set_hpa_min(namespace, name, min_replicas)


@dataclass
class ClusterCache:
    """What ticks look up about the cluster (an informer per kind; see prescaler.informers for why not
    kopf indexes): targets as a watch sees them, not a GET per scaler and tick."""

    deployments: Informer[TargetState] | InformerGroup[TargetState]
    statefulsets: Informer[TargetState] | InformerGroup[TargetState]
    hpas: Informer[HpaState] | InformerGroup[HpaState]  # by the (namespace, kind, name) they scale
    scalers: Informer[ScalerEntry] | InformerGroup[ScalerEntry]  # by the target they scale
    _listed: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    @classmethod
    def build(cls, namespaces: tuple[str, ...]) -> ClusterCache:
        # The generic list call serves every kind as plain JSON: the typed API classes take seconds to import.
        objects = client.CustomObjectsApi(client.ApiClient())
        chosen = namespace_filter(namespaces)
        # Named namespaces are listed one by one: the chart grants them by RoleBindings, so a cluster-wide list
        # is forbidden. Globs need the cluster-wide list, filtered here (the chart binds cluster-wide then).
        named = plain_names(namespaces)

        def informer(plural: str, group: str, version: str, extract: Extract[Any]) -> Any:
            if named is None:
                call = functools.partial(objects.list_cluster_custom_object, group, version, plural)
                return Informer(plural, call, extract, namespaces=chosen)
            return InformerGroup(
                Informer(plural, functools.partial(objects.list_namespaced_custom_object, group, version, ns, plural),
                         extract)
                for ns in named)

        return cls(
            deployments=informer("deployments", "apps", "v1", _target_state("Deployment")),
            statefulsets=informer("statefulsets", "apps", "v1", _target_state("StatefulSet")),
            hpas=informer("horizontalpodautoscalers", "autoscaling", "v2", _hpa),
            scalers=informer(PLURAL, GROUP, VERSION, _scaler),
        )

    def all(self) -> tuple[Informer[Any] | InformerGroup[Any], ...]:
        return (self.deployments, self.statefulsets, self.hpas, self.scalers)

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.all())

    async def ready(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) until every kind was listed once; one poller serves every waiting tick."""
        if self.synced():
            return True
        if self._listed is None or self._listed.get_loop() is not asyncio.get_running_loop():
            self._listed = asyncio.get_running_loop().create_task(self._poll())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._listed), timeout_s)
        return self.synced()

    async def _poll(self) -> None:
        started = time.monotonic()
        while not self.synced():
            await asyncio.sleep(0.05)
        log.info("cluster cache listed in %.1fs: %d deployments, %d statefulsets, %d HPAs, %d PredictiveScalers",
                 time.monotonic() - started, len(self.deployments), len(self.statefulsets), len(self.hpas),
                 len(self.scalers))

    def start(self) -> None:
        for informer in self.all():
            informer.start()
        self._listed = asyncio.get_running_loop().create_task(self._poll())

    def stop(self) -> None:
        for informer in self.all():
            informer.stop()

    def target(self, namespace: str, ref: TargetRef) -> TargetState | None:
        found = (self.deployments if ref.kind == "Deployment" else self.statefulsets).find(ref.key(namespace))
        return found[0] if found else None


async def _tick(namespace: str, name: str, body: Mapping[str, Any], state: ScalerState) -> Outcome | None:
    """One scaler's tick on the cache's picture of its target, HPAs and rivals."""
    assert _reconciler is not None and _cache is not None
    ref = (body.get("spec") or {}).get("scaleTargetRef") or {}
    key = (namespace, str(ref.get("kind")), str(ref.get("name")))
    rivals = sorted(_cache.scalers.find(key), key=lambda e: (e.created, e.name))
    owner = rivals[0].name if rivals else name
    return await _reconciler.tick(
        namespace=namespace, name=name, body=body, state=state, hpas=_cache.hpas.find(key),
        rival_owner=owner if owner != name else None, targets=_cache.target,
    )


async def decide_all(budget_s: float) -> None:
    """Every listed scaler's first decision in one sweep, instead of as kopf's per-object timers come round
    (with 1,000 scalers those took 40 s to reach the last one, bench/fleet.py). Starts no tick after
    `budget_s`: what is left is the timers'. The timers patch what this decided."""
    assert _reconciler is not None and _config is not None and _cache is not None
    started = time.monotonic()
    if not await _cache.ready(timeout_s=budget_s):
        log.warning("start-up pass skipped: the cluster was not listed within %.0fs", budget_s)
        return
    todo: asyncio.Queue[tuple[ObjectKey, ScalerEntry]] = asyncio.Queue()
    for item in _cache.scalers.items():
        todo.put_nowait(item)
    decided = 0

    async def worker() -> None:
        nonlocal decided
        while not todo.empty() and time.monotonic() - started < budget_s:
            (namespace, name), entry = todo.get_nowait()
            if (entry.body.get("metadata") or {}).get("deletionTimestamp"):
                continue  # kopf runs no timer for it: nothing would patch, and it should scale nothing more
            slot = _slots.setdefault((namespace, name), _Slot())
            if slot.lock.locked() or slot.state.decided:
                continue
            async with slot.lock:
                try:
                    outcome = await _tick(namespace, name, entry.body, slot.state)
                except Exception:  # this scaler's timer tries again and reports it
                    log.exception("start-up pass: %s/%s", namespace, name)
                    continue
            if outcome is not None:
                slot.unpatched = outcome
                decided += 1

    # Due refits start at the timers' ticks after the pass, spread by their own jitter.
    _reconciler.forecasts.hold_refits = True
    try:
        await asyncio.gather(*(worker() for _ in range(_config.max_concurrent_reconciles)))
    finally:
        _reconciler.forecasts.hold_refits = False
    log.info("start-up pass: %d of %d scalers decided in %.1fs", decided, len(_cache.scalers),
             time.monotonic() - started)


# Registered by run(): the wake-up interval is configuration, not known at import time.
async def reconcile_timer(
    namespace: str,
    name: str,
    body: kopf.Body,
    patch: kopf.Patch,
    **_: Any,
) -> None:
    global _first_pass
    assert _reconciler is not None and _config is not None and _cache is not None
    if _config.peering:
        if time.monotonic() - _started_at < _config.peering_settle_s:
            # Let peering see every peer first, so a lower-priority replica never acts even once.
            return
        if _first_pass is None:  # kopf runs timers only while this replica is the active one
            _first_pass = asyncio.create_task(_exclusive_pass(_config.first_pass_budget_s, wait=True))
    if not await _cache.ready(timeout_s=60.0):
        return  # a tick on a partial picture could miss a target, a rival or an HPA; kopf wakes it again
    slot = _slots.setdefault((namespace, name), _Slot())
    if _first_pass is not None and not _first_pass.done() and not slot.state.decided:
        return  # the pass is on its way to this scaler (with peering, beside kopf); the next wake-up patches
    async with slot.lock:
        outcome = await _tick(namespace, name, body, slot.state)
        earlier, slot.unpatched = slot.unpatched, None
    # A decision of this wake-up was made from the same old status as the start-up pass's, and supersedes it.
    outcome = outcome or earlier
    if outcome is None:
        return
    patch.status.update(outcome.status)
    for kind, reason, message in outcome.events:
        kopf.event(body, type=kind, reason=reason, message=message[:1000])


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)  # type: ignore[arg-type]
def forget(namespace: str, name: str, **_: Any) -> None:
    # Stale series would otherwise linger in /metrics until the process restarts.
    metrics.forget_scaler(namespace, name)
    _slots.pop((namespace, name), None)
    if _reconciler is not None:
        _reconciler.windows.forget(f"{namespace}/{name}")
        _reconciler.scorecards.forget(f"{namespace}/{name}")


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
    timer = kopf.timer(GROUP, VERSION, PLURAL, interval=config.timer_interval_s, sharp=False, backoff=1.0)
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

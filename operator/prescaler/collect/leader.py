"""Leader election on a Kubernetes Lease (coordination.k8s.io/v1), so that replicas never collect twice.

The algorithm is client-go's `leaderelection`: every `retry_period` a replica reads the Lease; the holder
renews it (`renewTime`), a follower takes it over once it has seen no change for `lease_duration` (measured on
its own monotonic clock from when it saw the last change, so clock skew between nodes does not matter), and
every write is a compare-and-swap on the Lease's resourceVersion. A holder that cannot renew stops counting
itself leader `renew_deadline` after the start of its last successful renewal, which is earlier than any
follower can take over (`renew_deadline` < `lease_duration`): the old leader has stopped writing before a new
one begins. On a clean stop the holder releases the Lease so a standby takes over at once.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prescaler.collect import metrics
from prescaler.errors import InputError

log = logging.getLogger(__name__)

POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_LEASE_NAME = "prescaler-collector"


@dataclass(frozen=True)
class ElectionSettings:
    lease_name: str = DEFAULT_LEASE_NAME
    namespace: str = ""
    identity: str = ""
    lease_duration: timedelta = timedelta(seconds=15)
    renew_deadline: timedelta = timedelta(seconds=10)
    retry_period: timedelta = timedelta(seconds=2)

    def check(self) -> None:
        if not self.renew_deadline < self.lease_duration:
            raise InputError("--renew-deadline must be shorter than --lease-duration (a leader that cannot renew "
                             "must stop writing before another replica may take over)")
        if not self.retry_period < self.renew_deadline:
            raise InputError("--retry-period must be shorter than --renew-deadline")
        if not self.namespace:
            raise InputError("--leader-election needs --lease-namespace (outside a pod there is no namespace "
                             f"file {POD_NAMESPACE_FILE})")


def pod_namespace(path: Path = POD_NAMESPACE_FILE) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def default_identity(pod_name: str = "") -> str:
    """The pod's name (else the hostname, which in a pod is the same) and a random suffix: a restarted pod is a
    new candidate."""
    return f"{pod_name or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _micro_time(t: datetime) -> datetime:
    # The client serialises with isoformat(), which drops the fraction at microsecond 0; the API server's
    # MicroTime demands six digits.
    return t if t.microsecond else t.replace(microsecond=1)


class LeaseElector:
    """Acquires and renews the Lease in a daemon thread; `is_leader()` is safe to call from any thread."""

    def __init__(self, api: Any, settings: ElectionSettings, *, on_acquired: Callable[[], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.api = api  # a kubernetes.client.CoordinationV1Api
        self.settings = settings
        self.identity = settings.identity or default_identity()
        self.on_acquired = on_acquired
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._held = False
        self._renewed_at = -float("inf")  # monotonic start of the last successful acquire or renew
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_problem = ""

    @property
    def lease_duration(self) -> float:
        return self.settings.lease_duration.total_seconds()

    def is_leader(self) -> bool:
        with self._lock:
            return self._held and self._monotonic() < self._renewed_at + self.settings.renew_deadline.total_seconds()

    def start(self) -> LeaseElector:
        metrics.LEADER.set(0)
        self._thread = threading.Thread(target=self._run, name="lease-elector", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.settings.renew_deadline.total_seconds() + 5)
        if release and self.is_leader():
            self.release()
        metrics.LEADER.set(0)

    def _run(self) -> None:
        period = self.settings.retry_period.total_seconds()
        while not self._stop.is_set():
            was = self.is_leader()
            self.try_acquire_or_renew()
            now = self.is_leader()
            metrics.LEADER.set(1 if now else 0)
            if now and not was:
                log.info("lease %s/%s acquired by %s: collecting", self.settings.namespace, self.settings.lease_name,
                         self.identity)
                if self.on_acquired is not None:
                    self.on_acquired()
            elif was and not now:
                log.warning("lease %s/%s lost by %s: no longer collecting", self.settings.namespace,
                            self.settings.lease_name, self.identity)
            self._stop.wait(period)

    def _problem(self, message: str) -> None:
        # One line per distinct problem: an API server outage would otherwise log every retry period.
        if message != self._last_problem:
            log.warning("lease %s/%s: %s", self.settings.namespace, self.settings.lease_name, message)
            self._last_problem = message

    def try_acquire_or_renew(self) -> bool:
        """One round of the election; True when this replica holds the Lease afterwards."""
        from kubernetes.client import V1Lease, V1LeaseSpec, V1ObjectMeta
        from kubernetes.client.exceptions import ApiException

        s = self.settings
        started = self._monotonic()
        now = _micro_time(datetime.now(UTC))
        timeout = max(1.0, s.renew_deadline.total_seconds() / 2)
        spec = V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=round(self.lease_duration),
                           acquire_time=now, renew_time=now, lease_transitions=0)
        try:
            try:
                lease = self.api.read_namespaced_lease(s.lease_name, s.namespace, _request_timeout=timeout)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self.api.create_namespaced_lease(s.namespace, V1Lease(
                    metadata=V1ObjectMeta(name=s.lease_name, namespace=s.namespace), spec=spec),
                    _request_timeout=timeout)
                return self._won(started, (self.identity, now, 0))
            current = lease.spec
            holder = current.holder_identity or ""
            record = (holder, current.renew_time, current.lease_transitions)
            if record != self._observed:
                self._observed, self._observed_at = record, started
            duration = current.lease_duration_seconds or self.lease_duration
            if holder and holder != self.identity and started < self._observed_at + duration:
                self._lost()
                return False
            transitions = current.lease_transitions or 0
            if holder != self.identity:
                transitions += 1
            else:
                spec.acquire_time = _micro_time(current.acquire_time or now)
            spec.lease_transitions = transitions
            self.api.replace_namespaced_lease(s.lease_name, s.namespace, V1Lease(
                metadata=V1ObjectMeta(name=s.lease_name, namespace=s.namespace,
                                      resource_version=lease.metadata.resource_version), spec=spec),
                _request_timeout=timeout)
            return self._won(started, (self.identity, now, transitions))
        except ApiException as exc:
            if exc.status == 409:  # another replica wrote first: it won this round
                return False
            self._problem(f"HTTP {exc.status}: {exc.reason}")
        except Exception as exc:  # the API server unreachable, a timeout: keep trying; is_leader() expires
            self._problem(" ".join(str(exc).split())[:300])
        return False

    def _won(self, started: float, record: tuple[Any, ...]) -> bool:
        with self._lock:
            self._held = True
            self._renewed_at = started
        self._observed, self._observed_at = record, started
        self._last_problem = ""
        return True

    def _lost(self) -> None:
        with self._lock:
            self._held = False

    def release(self) -> None:
        """Hand the Lease back (holder emptied) so a standby need not wait for it to expire."""
        from kubernetes.client import V1Lease, V1LeaseSpec, V1ObjectMeta

        s = self.settings
        self._lost()
        try:
            lease = self.api.read_namespaced_lease(s.lease_name, s.namespace, _request_timeout=5)
            if (lease.spec.holder_identity or "") != self.identity:
                return
            now = _micro_time(datetime.now(UTC))
            self.api.replace_namespaced_lease(s.lease_name, s.namespace, V1Lease(
                metadata=V1ObjectMeta(name=s.lease_name, namespace=s.namespace,
                                      resource_version=lease.metadata.resource_version),
                spec=V1LeaseSpec(holder_identity="", lease_duration_seconds=1, renew_time=now,
                                 acquire_time=_micro_time(lease.spec.acquire_time or now),
                                 lease_transitions=lease.spec.lease_transitions or 0)),
                _request_timeout=5)
            log.info("lease %s/%s released by %s", s.namespace, s.lease_name, self.identity)
        except Exception as exc:  # best effort: the Lease then simply expires
            log.warning("lease %s/%s not released: %s", s.namespace, s.lease_name, " ".join(str(exc).split())[:300])


def coordination_api() -> Any:
    """A CoordinationV1Api from the pod's service account, else the kubeconfig; InputError when neither works."""
    from kubernetes import client, config

    try:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    except (config.ConfigException, OSError) as exc:
        raise InputError(f"--leader-election needs cluster credentials (in-cluster or a kubeconfig): {exc}") from exc
    return client.CoordinationV1Api()

"""What the fault tests measure, and a PostgreSQL server of their own to break.

The measures, each defined once here:
- a *scale change* is a change of the target's `spec.replicas` seen through a watch of the API server (only the
  operator changes it once a test has created the target);
- a *wrong scale-down* is a scale change downwards that leaves fewer replicas than the true load of the next
  `leadTime` needs (no headroom), or any scale-down while the traffic data is unavailable (stale data);
- a *lost decision row* is a decision the operator reported in the scaler's status (a `lastDecisionTime` whose
  Ready reason says the planner ran) with no `scaling_decisions` row decided at that second, or a scale change
  with no `applied` row asking for that many replicas;
- a *double record* is two rows for one decision time.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg2
import pytest
import sqlalchemy as sa
from kubernetes import client, config, watch

from prescaler.clock import Clock
from prescaler_dev import pgserver
from prescaler_dev.localcluster import LocalCluster
from waiting import wait_for

from .operator_support import REQUESTS_PER_REPLICA_PER_MIN, daily_peak_load, free_port

GROUP, VERSION, PLURAL = "prescaler.dev", "v1alpha1", "predictivescalers"
# Ready reasons of a tick in which the planner produced a decision (every other reason is a tick that stopped
# before planning: invalid spec, conflict, missing target, paused).
DECIDED_REASONS = frozenset({"Ready", "FallbackActive"})
CAPACITY_PER_STEP = REQUESTS_PER_REPLICA_PER_MIN * 5  # the trace's step is 5 minutes


class WrongReplicas(AssertionError):
    """The target does not end with the replica count the plan wants."""


class WrongScaleDowns(AssertionError):
    """Scale-downs below what the coming load needs, or on unavailable data."""


class LostRows(AssertionError):
    """Decisions the operator made (reported or acted on) that left no scaling_decisions row."""


def needed_replicas(at: datetime, lead: timedelta, lo: int, hi: int) -> int:
    """What the true load of [at, at + lead] needs, without headroom: the floor no scale-down may cross."""
    start = pd.Timestamp(at).floor("5min")
    buckets = pd.date_range(start, pd.Timestamp(at + lead), freq="5min")
    return max(lo, min(hi, math.ceil(float(daily_peak_load(buckets).max()) / CAPACITY_PER_STEP)))


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ScaleChange:
    real: float  # unix time the watch saw it
    sim: datetime  # the operator's (scaled) time then
    before: int
    after: int


@dataclass
class Recorder:
    """Watches one Deployment and the PredictiveScaler of the same name, through restarts of the API server
    and etcd: after any break it lists again (nothing can change while the API server is away) and watches
    from there."""

    cluster: LocalCluster
    namespace: str
    name: str
    clock: Clock
    changes: list[ScaleChange] = field(default_factory=list)
    decisions: set[str] = field(default_factory=set)  # lastDecisionTime of ticks that planned
    replicas: int | None = None
    watch_breaks: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Recorder:
        for target in (self._follow_deployment, self._follow_scaler):
            t = threading.Thread(target=self._loop, args=(target,), daemon=True)
            t.start()
            self._threads.append(t)
        wait_for("the recorder's first list", lambda: self.replicas is not None, timeout=60)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    def _loop(self, follow: Callable[[client.ApiClient], None]) -> None:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.cluster.kubeconfig), client_configuration=cfg)
        cfg.retries = 0  # the loop retries itself, without urllib3's warning per refused connection
        api = client.ApiClient(cfg)
        while not self._stop.is_set():
            try:
                follow(api)
            except Exception:  # the API server or etcd is down: list again once it is back
                with self._lock:
                    self.watch_breaks += 1
                self._stop.wait(0.3)

    def _see_replicas(self, replicas: int) -> None:
        with self._lock:
            if self.replicas is not None and replicas != self.replicas:
                self.changes.append(ScaleChange(time.time(), self.clock.now(), self.replicas, replicas))
            self.replicas = replicas

    def _follow_deployment(self, api: client.ApiClient) -> None:
        apps = client.AppsV1Api(api)
        selector = f"metadata.name={self.name}"
        listed = apps.list_namespaced_deployment(self.namespace, field_selector=selector, _request_timeout=10)
        for item in listed.items:
            self._see_replicas(int(item.spec.replicas or 0))
        rv = listed.metadata.resource_version if listed.metadata else None
        while not self._stop.is_set():
            for event in watch.Watch().stream(apps.list_namespaced_deployment, self.namespace,
                                              field_selector=selector, resource_version=rv, timeout_seconds=5,
                                              _request_timeout=15):
                if event["type"] == "ERROR":
                    return  # e.g. 410 Gone: list again
                obj: Any = event["object"]
                rv = obj.metadata.resource_version
                self._see_replicas(int(obj.spec.replicas or 0))

    def _see_scaler(self, obj: dict[str, Any]) -> None:
        status = obj.get("status") or {}
        ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        at = status.get("lastDecisionTime")
        if at and ready.get("reason") in DECIDED_REASONS:
            with self._lock:
                self.decisions.add(str(at))

    def _follow_scaler(self, api: client.ApiClient) -> None:
        custom = client.CustomObjectsApi(api)
        args = (GROUP, VERSION, self.namespace, PLURAL)
        selector = f"metadata.name={self.name}"
        listed: Any = custom.list_namespaced_custom_object(*args, field_selector=selector, _request_timeout=10)
        for item in listed.get("items", []):
            self._see_scaler(item)
        rv = listed["metadata"]["resourceVersion"]
        while not self._stop.is_set():
            for event in watch.Watch().stream(custom.list_namespaced_custom_object, *args, field_selector=selector,
                                              resource_version=rv, timeout_seconds=5, _request_timeout=15):
                if event["type"] == "ERROR":
                    return
                changed: Any = event["object"]
                rv = changed["metadata"]["resourceVersion"]
                self._see_scaler(changed)

    def snapshot(self) -> tuple[list[ScaleChange], set[str]]:
        with self._lock:
            return list(self.changes), set(self.decisions)


@dataclass(frozen=True)
class Row:
    decided_at: str
    desired: int
    applied: bool


def decision_rows(engine: sa.Engine, namespace: str, name: str) -> list[Row]:
    query = sa.text("SELECT decided_at, desired_replicas, applied FROM scaling_decisions "
                    "WHERE namespace = :ns AND name = :name ORDER BY decided_at, id")
    with engine.connect() as conn:
        return [Row(_iso(r[0]), int(r[1]), bool(r[2])) for r in conn.execute(query, {"ns": namespace, "name": name})]


@dataclass
class Figures:
    """One fault test's result, printed for docs/faults.md and checked by `check()`."""

    fault: str
    end_replicas: int
    expected_replicas: int
    changes: list[ScaleChange]
    wrong_scale_downs: list[ScaleChange]
    reported: int
    rows: int
    lost: list[str]
    unrecorded_scales: list[int]
    double_records: list[str]
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        path = " → ".join([str(self.changes[0].before), *(str(c.after) for c in self.changes)]) if self.changes else "-"
        extra = "".join(f", {k} {v}" for k, v in self.notes.items())
        return (f"{self.fault}: replicas at the end {self.end_replicas} (plan {self.expected_replicas}); "
                f"path {path}; wrong scale-downs {len(self.wrong_scale_downs)}; decisions reported {self.reported}, "
                f"rows {self.rows}, lost {len(self.lost) + len(self.unrecorded_scales)}; "
                f"double records {len(self.double_records)}{extra}")

    def check(self) -> None:
        """Every measure of the module docstring, each failing as its own error type, so a test marked for one
        known operator bug still fails on any other."""
        print(f"\nFAULT FIGURES {self.line()}")
        if self.end_replicas != self.expected_replicas:
            raise WrongReplicas(self.line())
        if self.wrong_scale_downs:
            raise WrongScaleDowns(f"{self.wrong_scale_downs}; {self.line()}")
        assert not self.double_records, f"decisions recorded twice at {self.double_records}; {self.line()}"
        if self.lost or self.unrecorded_scales:
            shown = ", ".join(self.lost[:5]) + (f" and {len(self.lost) - 5} more" if len(self.lost) > 5 else "")
            raise LostRows(f"decisions reported at [{shown}] and scales to {self.unrecorded_scales} have no "
                           f"scaling_decisions row; {self.line()}")


def measure(fault: str, recorder: Recorder, engine: sa.Engine, *, expected: int, lead: timedelta, lo: int,
            hi: int, stale: Sequence[tuple[float, float]] = ()) -> Figures:
    """Figures of one test from what the recorder saw and what the store holds; `stale` lists the real-time
    windows in which the traffic data was unavailable."""
    changes, reported = recorder.snapshot()
    rows = decision_rows(engine, recorder.namespace, recorder.name)
    wrong = [c for c in changes if c.after < c.before and (
        c.after < needed_replicas(c.sim, lead, lo, hi) or any(a <= c.real <= b for a, b in stale))]
    recorded = Counter(r.decided_at for r in rows)
    applied = Counter(r.desired for r in rows if r.applied)
    unrecorded = list((Counter(c.after for c in changes) - applied).elements())
    return Figures(
        fault=fault, end_replicas=recorder.replicas or -1, expected_replicas=expected, changes=changes,
        wrong_scale_downs=wrong, reported=len(reported), rows=len(rows),
        lost=sorted(t for t in reported if t not in recorded), unrecorded_scales=unrecorded,
        double_records=sorted(t for t, n in recorded.items() if n > 1),
    )


class PrivatePostgres:
    """A PostgreSQL server of the test's own (state directory and port), run by `prescaler_dev.pgserver`, that
    a test may stop, restart or freeze: the session's shared server is never touched."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.port = free_port()
        self._frozen: list[int] = []

    @contextlib.contextmanager
    def _own_state(self) -> Iterator[None]:
        # pgserver keeps its state where PRESCALER_STATE_DIR says; only these calls see the private one.
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PRESCALER_STATE_DIR", str(self.state))
            yield

    def start(self) -> str:
        with self._own_state():
            return pgserver.ensure_running(self.port)

    def stop(self) -> None:
        self.thaw()
        with self._own_state():
            pgserver.stop(self.port)

    def running(self) -> bool:
        return pgserver.is_running(self.port)

    def _postmaster(self) -> int:
        with self._own_state():
            return int((pgserver.data_dir() / "postmaster.pid").read_text().split()[0])

    def _children(self, parent: int) -> list[int]:
        kids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = (entry / "stat").read_text()
                    if int(stat[stat.rindex(")") + 2:].split()[1]) == parent:
                        kids.append(int(entry.name))
        return kids

    def freeze(self) -> None:
        """SIGSTOP the postmaster first (no new backends), then every backend and helper it has."""
        postmaster = self._postmaster()
        os.kill(postmaster, signal.SIGSTOP)
        self._frozen = [postmaster]
        for pid in self._children(postmaster):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                self._frozen.append(pid)

    def thaw(self) -> None:
        for pid in reversed(self._frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []


class DecisionWriteBlocker:
    """Holds a SHARE lock on scaling_decisions in an open transaction: reads go on, but the operator's next
    decision write waits, so a fault can strike while a write is in flight."""

    def __init__(self, url: str) -> None:
        u = sa.make_url(url)
        params: dict[str, Any] = {"host": u.host, "port": u.port, "user": u.username, "password": u.password,
                  "dbname": u.database, "connect_timeout": 5}
        self.conn = psycopg2.connect(**params)
        with self.conn.cursor() as cur:
            cur.execute("LOCK TABLE scaling_decisions IN SHARE MODE")
        # A transaction sees pg_stat_activity as of its first look: watch from another, autocommitting session.
        self.watcher = psycopg2.connect(**params)
        self.watcher.autocommit = True
        with self.watcher.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            row = cur.fetchone()
        self.own = {self.conn.get_backend_pid(), int(row[0]) if row else -1}

    def waiting_writes(self) -> int:
        """Statements on scaling_decisions that wait for this lock."""
        with self.watcher.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND query ILIKE '%scaling_decisions%'")
            return len({int(r[0]) for r in cur.fetchall()} - self.own)

    def release(self) -> None:
        for conn in (self.conn, self.watcher):
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()
            with contextlib.suppress(psycopg2.Error):
                conn.close()

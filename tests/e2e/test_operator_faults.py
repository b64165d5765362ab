"""Faults, each while the operator runs as a real process on scaled time against the real control plane:
the API server restarted during a scale-up, etcd restarted during a scale-down, PostgreSQL restarted while a
decision write is in flight, the operator SIGKILLed while its first scale waits for its decision row (the row
is written before the `/scale` patch, so this is the window a kill can hit), and
PostgreSQL frozen (SIGSTOP) for a minute of real time; plus two operator processes of which exactly one may act.

Every fault test ends with the replica count the plan wants, no wrong scale-down and no lost decision row, as
`fault_support` defines them, and prints one `FAULT FIGURES` line (docs/faults.md quotes them). PostgreSQL is this
module's own server, so stopping or freezing it leaves the session's shared server alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from prescaler import cli, db
from prescaler.clock import Clock
from prescaler_dev import pgserver
from prescaler_dev.localcluster import LocalCluster
from waiting import wait_for

from .fault_support import (
    CAPACITY_PER_STEP,
    DecisionWriteBlocker,
    Figures,
    PrivatePostgres,
    Recorder,
    measure,
)
from .operator_support import (
    PEAK_LOAD,
    OperatorProcess,
    apply,
    condition,
    deployment_yaml,
    get_json,
    install_crds,
    namespace_yaml,
    peak_day_time,
    scaler_yaml,
    write_trace_csv,
)

SPEED = 120.0  # one real second is two simulated minutes; a scaling interval (1m) is half a second
LEAD = timedelta(minutes=10)  # scaler_yaml's leadTime
MIN_REPLICAS, MAX_REPLICAS = 2, 30  # scaler_yaml's bounds
PLATEAU = math.ceil(PEAK_LOAD * 1.10 / CAPACITY_PER_STEP)  # the 18:00-19:00 plan with 10% headroom: 14
EVENING = MIN_REPLICAS  # the base load after 19:30 needs ceil(600 x 1.1 / 500) = 2
# After a fault ends, the plan must be back within this much simulated time (a few ticks, plus the watch
# reconnects of a loaded CI machine); a scaler stalled for kopf's 60 s error backoff (2 simulated hours) is not.
RECOVERY = timedelta(minutes=30)
# A control-plane component stays down this long (real seconds) before it is started again: about what an
# upgrade of it takes, and longer than kopf's own retries of one request (1 + 2 + 5 + 10 s as the operator sets them).
OUTAGE_S = 25.0


@pytest.fixture(scope="module")
def crds(cluster: LocalCluster) -> LocalCluster:
    install_crds(cluster)
    return cluster


@pytest.fixture(scope="module")
def private_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivatePostgres, str]]:
    """This module's own PostgreSQL with the `peak-api` trace (daily 18:00-19:00 peak)."""
    pg = PrivatePostgres(tmp_path_factory.mktemp("private-pg"))
    pg.start()
    try:
        url = pgserver.create_database("faults", pg.port)
        engine = db.make_engine(url)
        db.migrate(engine)
        engine.dispose()
        csv = write_trace_csv(tmp_path_factory.mktemp("trace") / "peak.csv")
        assert cli.main(["--database-url", url, "import", str(csv), "--service", "peak-api"]) == 0
        yield pg, url
    finally:
        pg.stop()


@pytest.fixture
def store(private_pg: tuple[PrivatePostgres, str]) -> Iterator[sa.Engine]:
    engine = sa.create_engine(private_pg[1])
    yield engine
    engine.dispose()


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    return tmp_path


def _scaler(cluster: LocalCluster, ns: str) -> dict[str, Any]:
    return get_json(cluster, "-n", ns, "get", "predictivescaler", "web")


def _data_available(cluster: LocalCluster, ns: str) -> str | None:
    return condition(_scaler(cluster, ns), "DataAvailable").get("status")


@pytest.fixture
def namespaces(crds: LocalCluster) -> Iterator[list[str]]:
    """Namespaces a test adds here are deleted after it, so no later operator of the module reconciles its
    scaler."""
    made: list[str] = []
    yield made
    for ns in made:
        crds.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _setup(cluster: LocalCluster, ns: str, made: list[str], *, refresh: str = "2h", stale_after: str = "6h") -> None:
    made.append(ns)
    apply(cluster, namespace_yaml(ns))
    apply(cluster, deployment_yaml(ns, "web"))
    apply(cluster, scaler_yaml(ns, "web", "web", refresh=refresh, stale_after=stale_after))


def _sleep_until(clock: Clock, at: datetime) -> None:
    time.sleep(max(0.0, (at - clock.now()).total_seconds() / clock.speed))


def _measure(fault: str, rec: Recorder, store: sa.Engine, expected: int,
             stale: list[tuple[float, float]] | None = None) -> Figures:
    return measure(fault, rec, store, expected=expected, lead=LEAD, lo=MIN_REPLICAS, hi=MAX_REPLICAS,
                   stale=stale or [])


def _reached(rec: Recorder, replicas: int) -> datetime | None:
    """Simulated time of the last change that brought the target to `replicas`."""
    hits = [c.sim for c in rec.snapshot()[0] if c.after == replicas]
    return hits[-1] if hits else None


# --------------------------------------------------------------------------- the control plane


def test_api_server_restart_during_scale_up(
    crds: LocalCluster, private_pg: tuple[PrivatePostgres, str], store: sa.Engine, logdir: Path,
    namespaces: list[str],
) -> None:
    cluster, ns = crds, "e2e-apiserver"
    _setup(cluster, ns, namespaces)
    clock = Clock.scaled_from(peak_day_time(17, 0), SPEED)
    with Recorder(cluster, ns, "web", clock) as rec:
        op = OperatorProcess(cluster, private_pg[1], clock, logdir / "operator.log").start()
        try:
            wait_for("the scale-up to begin", lambda: (rec.replicas or 0) > MIN_REPLICAS, timeout=120)
            began = clock.now()
            outage = cluster.restart_component("kube-apiserver", down_for=OUTAGE_S)
            back = clock.now()
            # The plan's promise: capacity for the plateau by the peak, and a blip only delays it a little.
            due = max(peak_day_time(18, 0), back + RECOVERY)
            _sleep_until(clock, due)
            assert op.alive(), "the operator must not crash when the API server restarts"
        finally:
            op.stop()
    figures = _measure("API server restart during a scale-up", rec, store, PLATEAU)
    reached = _reached(rec, PLATEAU)
    figures.notes = {"scale-up began": f"{began:%H:%M}", "API server away (real s)": round(outage, 1),
                     "back": f"{back:%H:%M}", f"{PLATEAU} replicas at": f"{reached:%H:%M}" if reached else "never"}
    figures.check()


def test_etcd_restart_during_scale_down(
    crds: LocalCluster, private_pg: tuple[PrivatePostgres, str], store: sa.Engine, logdir: Path,
    namespaces: list[str],
) -> None:
    cluster, ns = crds, "e2e-etcd"
    _setup(cluster, ns, namespaces)
    clock = Clock.scaled_from(peak_day_time(18, 30), SPEED)
    with Recorder(cluster, ns, "web", clock) as rec:
        op = OperatorProcess(cluster, private_pg[1], clock, logdir / "operator.log").start()
        try:
            wait_for("the plateau", lambda: rec.replicas == PLATEAU, timeout=120)
            wait_for("the scale-down to begin", lambda: (rec.replicas or PLATEAU) < PLATEAU, timeout=120)
            began = clock.now()
            outage = cluster.restart_component("etcd", down_for=OUTAGE_S)
            back = clock.now()
            _sleep_until(clock, max(peak_day_time(19, 55), back + RECOVERY))
            assert op.alive(), "the operator must not crash when etcd restarts"
        finally:
            op.stop()
    figures = _measure("etcd restart during a scale-down", rec, store, EVENING)
    figures.notes = {"scale-down began": f"{began:%H:%M}", "etcd away (real s)": round(outage, 1),
                     "back": f"{back:%H:%M}"}
    figures.check()


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_restart_during_a_decision_write_holds_and_recovers(
    crds: LocalCluster, private_pg: tuple[PrivatePostgres, str], store: sa.Engine, logdir: Path,
    namespaces: list[str],
) -> None:
    cluster, ns = crds, "e2e-pgdown"
    pg, url = private_pg
    _setup(cluster, ns, namespaces)
    clock = Clock.scaled_from(peak_day_time(18, 20), SPEED)  # on the plateau; the load falls 19:00-19:30
    with Recorder(cluster, ns, "web", clock) as rec:
        op = OperatorProcess(cluster, url, clock, logdir / "operator.log").start()
        try:
            wait_for("scale-up to the plateau", lambda: rec.replicas == PLATEAU, timeout=120)
            wait_for("DataAvailable=True", lambda: _data_available(cluster, ns) == "True", timeout=60)
            blocker = DecisionWriteBlocker(url)
            try:
                wait_for("a decision write in flight", lambda: blocker.waiting_writes() > 0, timeout=60)
                down_real, down = time.time(), clock.now()
                pg.stop()  # a fast shutdown ends the waiting write with its connection
            finally:
                blocker.release()
            try:
                wait_for("DataAvailable=False", lambda: _data_available(cluster, ns) == "False", timeout=60)
                dead = condition(_scaler(cluster, ns), "DataAvailable")
                assert dead["reason"] == "DataUnavailable" and dead["message"]
                # Down through the end of the peak: without the outage the scale-down would start ~19:15.
                while clock.now() < peak_day_time(19, 40):
                    assert op.alive(), "the operator must not crash when PostgreSQL is down"
                    time.sleep(0.5)
                assert op.metric("prescaler_errors_total", namespace=ns, kind="DataUnavailable") >= 1
            finally:
                # From here on the server may answer: a scale-down now can rest on fresh data.
                up_real, up = time.time(), clock.now()
                pg.start()
            wait_for("DataAvailable=True after recovery", lambda: _data_available(cluster, ns) == "True", timeout=60)
            _sleep_until(clock, up + RECOVERY)
            assert op.alive()
        finally:
            op.stop()
    events = get_json(cluster, "-n", ns, "get", "events").get("items", [])
    assert any(e.get("reason") == "DataUnavailable" for e in events)
    figures = _measure("PostgreSQL restart during a decision write", rec, store, EVENING,
                       stale=[(down_real, up_real)])
    figures.notes = {"down": f"{down:%H:%M}", "back": f"{up:%H:%M}",
                     "PostgreSQL away (real s)": round(up_real - down_real, 1)}
    figures.check()


def test_sigkill_between_scale_patch_and_decision_write(
    crds: LocalCluster, private_pg: tuple[PrivatePostgres, str], store: sa.Engine, logdir: Path,
    namespaces: list[str],
) -> None:
    """Killed while its first decision's row waits for a lock: the target is scaled once, the restarted operator
    reuses the stored forecast without flapping or scaling again, and the decision has exactly one row."""
    cluster, ns = crds, "e2e-restart"
    url = private_pg[1]
    _setup(cluster, ns, namespaces, refresh="6h", stale_after="12h")
    clock = Clock.scaled_from(peak_day_time(17, 50), SPEED)

    def stored() -> list[datetime]:
        with store.connect() as conn:
            return list(conn.execute(sa.text("SELECT generated_at FROM forecasts WHERE scaler_key = :k "
                                             "ORDER BY generated_at"), {"k": f"{ns}/web"}).scalars())

    with Recorder(cluster, ns, "web", clock) as rec:
        blocker = DecisionWriteBlocker(url)  # before the start: the first decision's write will wait
        first = OperatorProcess(cluster, url, clock, logdir / "first.log").start()
        try:
            wait_for("the first decision's write in flight", lambda: blocker.waiting_writes() > 0, timeout=120)
            wait_for("a stored forecast", stored, timeout=60)
            at_kill = rec.replicas
        finally:
            first.kill()
            blocker.release()
        assert not first.alive()
        forecasts = stored()
        second = OperatorProcess(cluster, url, clock, logdir / "second.log").start()
        try:
            seen: list[int] = []
            end = clock.now() + timedelta(minutes=30)  # still on the plateau
            while clock.now() < end:
                seen.append(rec.replicas or 0)
                time.sleep(0.3)
            status = _scaler(cluster, ns)["status"]
            assert second.metric("prescaler_reconcile_duration_seconds_count", namespace=ns) > 0
        finally:
            second.stop()
    assert stored() == forecasts, "the restart refit instead of reusing the stored forecast"
    assert status["forecastGeneratedAt"] == forecasts[-1].strftime("%Y-%m-%dT%H:%M:%SZ")
    # Scaled up once, by whichever operator got to it, and never down again.
    assert seen == sorted(seen) and seen[-1] == PLATEAU, f"replicas flapped across the restart: {seen}"
    figures = _measure("operator SIGKILL while a scale's decision row is written, before its /scale patch", rec,
                       store, PLATEAU)
    figures.notes = {"replicas when killed": at_kill}
    changes = [(c.before, c.after) for c in figures.changes]
    assert changes == [(MIN_REPLICAS, PLATEAU)], f"scaled more than once for one decision: {changes}"
    figures.check()


def test_postgres_frozen_for_a_real_minute(
    crds: LocalCluster, private_pg: tuple[PrivatePostgres, str], store: sa.Engine, logdir: Path,
    namespaces: list[str],
) -> None:
    """SIGSTOP on every PostgreSQL process for 60 s of real time (two simulated hours, through the evening fall):
    the operator stays alive and healthy, holds instead of scaling down, and scales down once the store answers."""
    cluster, ns = crds, "e2e-pgfrozen"
    pg, url = private_pg
    _setup(cluster, ns, namespaces)
    clock = Clock.scaled_from(peak_day_time(18, 20), SPEED)
    unhealthy = 0
    with Recorder(cluster, ns, "web", clock) as rec:
        op = OperatorProcess(cluster, url, clock, logdir / "operator.log").start()
        try:
            wait_for("scale-up to the plateau", lambda: rec.replicas == PLATEAU, timeout=120)
            wait_for("DataAvailable=True", lambda: _data_available(cluster, ns) == "True", timeout=60)
            decided_before = len(rec.snapshot()[1])
            frozen_real, frozen = time.time(), clock.now()
            pg.freeze()
            try:
                while time.time() < frozen_real + 60:
                    assert op.alive(), "the operator must not crash while PostgreSQL is frozen"
                    unhealthy += 0 if op.healthy() else 1
                    time.sleep(1.0)
            finally:
                thawed_real, thawed = time.time(), clock.now()
                pg.thaw()
            decided_frozen = len(rec.snapshot()[1]) - decided_before
            wait_for("the scale-down once the store answers", lambda: rec.replicas == EVENING, timeout=120)
            _sleep_until(clock, clock.now() + timedelta(minutes=10))
            assert op.alive() and op.healthy()
        finally:
            op.stop()
    figures = _measure("PostgreSQL frozen for 60 s real", rec, store, EVENING,
                       stale=[(frozen_real, thawed_real)])
    figures.notes = {"frozen": f"{frozen:%H:%M}", "thawed": f"{thawed:%H:%M}",
                     "decisions reported while frozen": decided_frozen,
                     "failed /healthz probes while frozen": unhealthy}
    assert unhealthy == 0, figures.line()
    figures.check()


# --------------------------------------------------------------------------- two operators


def _peering_settled(cluster: LocalCluster, ops: list[OperatorProcess]) -> bool:
    """Both operators hold an entry in the peering object and exactly one is active: kopf logs each pause and
    resume, and an operator that starts below a higher peer stays paused without a word."""
    peers = get_json(cluster, "get", "clusterkopfpeering", "prescaler-e2e").get("status") or {}
    active = 0
    for op in ops:
        turns = [line for line in op.log_path.read_text(errors="replace").splitlines()
                 if "Pausing operations in favour of" in line or "Resuming operations after the pause" in line]
        active += bool(turns) and "Resuming" in turns[-1]
    return len(peers) >= 2 and active == 1


@pytest.fixture
def two_operators(crds: LocalCluster, private_pg: tuple[PrivatePostgres, str],
                  logdir: Path) -> Iterator[list[OperatorProcess]]:
    clock = Clock.scaled_from(peak_day_time(12, 0), SPEED)
    ops = [
        OperatorProcess(crds, private_pg[1], clock, logdir / f"op{i}.log", peering="prescaler-e2e",
                        extra_env={"PRESCALER_PEERING_LIFETIME": "10"})
        for i in range(2)
    ]
    try:
        for op in ops:
            op.start()
        # Under load the two start seconds apart, and until they see each other the first rightly acts alone.
        wait_for("both peers registered, one of them active", lambda: _peering_settled(crds, ops), timeout=120)
        # A peer that has not yet read the other's entry may still flip: ask again once that had time to happen.
        time.sleep(5)
        wait_for("both peers registered, one of them active", lambda: _peering_settled(crds, ops), timeout=120)
        yield ops
    finally:
        for op in ops:
            op.stop()


def test_two_operators_exactly_one_acts(crds: LocalCluster, two_operators: list[OperatorProcess],
                                       namespaces: list[str]) -> None:
    ns = "e2e-peering"
    _setup(crds, ns, namespaces)

    def reconciles(op: OperatorProcess) -> float:
        return op.metric("prescaler_reconcile_duration_seconds_count", namespace=ns)

    wait_for("one operator reconciling", lambda: any(reconciles(op) > 0 for op in two_operators), timeout=60)
    time.sleep(5)
    counts = [reconciles(op) for op in two_operators]
    assert sum(1 for c in counts if c > 0) == 1, f"reconcile counts per operator: {counts}"
    # The active one dies: the standby takes over once the peer's lease lapses.
    active, standby = (two_operators[0], two_operators[1]) if counts[0] > 0 else (two_operators[1], two_operators[0])
    active.kill()
    wait_for("the standby taking over", lambda: reconciles(standby) > 0, timeout=90)


def test_with_peering_only_a_replica_that_finds_no_live_peer_runs_the_start_up_pass(
        crds: LocalCluster, private_pg: tuple[PrivatePostgres, str], logdir: Path, namespaces: list[str]) -> None:
    ns = "e2e-first-pass"
    _setup(crds, ns, namespaces)  # the scaler exists before either operator starts, as at a restart
    clock = Clock.scaled_from(peak_day_time(12, 0), SPEED)

    def operator(name: str, priority: int) -> OperatorProcess:
        return OperatorProcess(crds, private_pg[1], clock, logdir / f"{name}.log", peering="prescaler-e2e-pass",
                               priority=priority, extra_env={"PRESCALER_PEERING_LIFETIME": "10"})

    def said(op: OperatorProcess, text: str) -> bool:
        return text in op.log_path.read_text(errors="replace")

    def reconciles(op: OperatorProcess) -> float:
        return op.metric("prescaler_reconcile_duration_seconds_count", namespace=ns)

    first, second = operator("pass-first", 20), operator("pass-second", 10)
    try:
        first.start()
        # Alone in the peering object: the pass decides before kopf starts (or runs any timer).
        wait_for("the first operator's start-up pass", lambda: said(first, "scalers decided in"), timeout=90)
        assert not said(first, "start-up pass left to the timers")
        assert reconciles(first) >= 1
        second.start()
        # The first is alive in the peering object, so the second leaves its pass to kopf, which keeps it paused.
        wait_for("the second operator finding the first alive",
                 lambda: said(second, "start-up pass left to the timers: live peers"), timeout=60)
        time.sleep(5)
        assert not said(second, "scalers decided in") and reconciles(second) == 0
        assert reconciles(first) >= 2  # the first goes on deciding
    finally:
        second.stop()
        first.stop()

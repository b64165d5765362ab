"""Faults: PostgreSQL going away and coming back, the operator killed with SIGKILL and restarted, and two
operator processes of which exactly one may act. Each runs the operator as a real process on scaled time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from prescaler.clock import Clock
from prescaler_dev import pgserver
from prescaler_dev.localcluster import LocalCluster

from .operator_support import (
    PEAK_REPLICAS,
    OperatorProcess,
    apply,
    condition,
    deployment_yaml,
    get_json,
    install_crds,
    namespace_yaml,
    peak_day_time,
    scaler_yaml,
)
from .waiting import wait_for

SPEED = 120.0




@pytest.fixture(scope="module")
def crds(cluster: LocalCluster) -> LocalCluster:
    install_crds(cluster)
    return cluster


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    return tmp_path


def _replicas(cluster: LocalCluster, ns: str) -> int:
    return int(get_json(cluster, "-n", ns, "get", "deployment", "web").get("spec", {}).get("replicas", -1))


def _scaler(cluster: LocalCluster, ns: str) -> dict:  # type: ignore[type-arg]
    return get_json(cluster, "-n", ns, "get", "predictivescaler", "web")


def _data_available(cluster: LocalCluster, ns: str) -> str | None:
    return condition(_scaler(cluster, ns), "DataAvailable").get("status")


def _setup(cluster: LocalCluster, ns: str, **kw: str) -> None:
    apply(cluster, namespace_yaml(ns))
    apply(cluster, deployment_yaml(ns, "web"))
    apply(cluster, scaler_yaml(ns, "web", "web", **kw))  # type: ignore[arg-type]


def test_postgres_outage_holds_replicas_and_recovers(
    crds: LocalCluster, traffic_db: str, pg_server_url: str, logdir: Path
) -> None:
    cluster, ns = crds, "e2e-pgdown"
    _setup(cluster, ns)
    # Start on the plateau; the load falls at 19:00-19:30, during the outage.
    clock = Clock.scaled_from(peak_day_time(18, 10), SPEED)
    op = OperatorProcess(cluster, traffic_db, clock, logdir / "operator.log").start()
    try:
        wait_for("scale-up to the plateau", lambda: _replicas(cluster, ns) >= PEAK_REPLICAS, timeout=60)
        wait_for("DataAvailable=True", lambda: _data_available(cluster, ns) == "True", timeout=30)
        high = _replicas(cluster, ns)
        port = int(sa.make_url(pg_server_url).port or pgserver.DEFAULT_PORT)
        pgserver.stop(port)
        try:
            wait_for("DataAvailable=False", lambda: _data_available(cluster, ns) == "False", timeout=60)
            dead = condition(_scaler(cluster, ns), "DataAvailable")
            assert dead["reason"] == "DataUnavailable" and dead["message"]
            # Hold through the simulated end of the peak: never below what it had.
            deadline = time.monotonic() + 45  # 90 simulated minutes, past 19:30
            seen = []
            while time.monotonic() < deadline:
                seen.append(_replicas(cluster, ns))
                assert op.alive(), "the operator must not crash when PostgreSQL is down"
                time.sleep(0.5)
            assert min(seen) >= high, f"scaled down on untrusted data: {seen}"
            assert op.metric("prescaler_errors_total", namespace=ns, kind="DataUnavailable") >= 1
        finally:
            pgserver.ensure_running(port)
        wait_for("DataAvailable=True after recovery", lambda: _data_available(cluster, ns) == "True", timeout=60)
        wait_for("scale-down resumes after recovery", lambda: _replicas(cluster, ns) < high, timeout=90)
        events = get_json(cluster, "-n", ns, "get", "events").get("items", [])
        assert any(e.get("reason") == "DataUnavailable" for e in events)
    finally:
        op.stop()


def test_sigkill_restart_reuses_the_stored_forecast_without_flapping(
    crds: LocalCluster, traffic_db: str, logdir: Path
) -> None:
    cluster, ns = crds, "e2e-restart"
    _setup(cluster, ns, refresh="6h", stale_after="12h")
    clock = Clock.scaled_from(peak_day_time(18, 0), SPEED)
    engine = sa.create_engine(traffic_db)

    def stored() -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM forecasts WHERE scaler_key = :k"),
                                    {"k": f"{ns}/web"}).scalar_one())

    first = OperatorProcess(cluster, traffic_db, clock, logdir / "first.log").start()
    try:
        wait_for("scale-up to the plateau", lambda: _replicas(cluster, ns) >= PEAK_REPLICAS, timeout=60)
        wait_for("a stored forecast", lambda: stored() >= 1, timeout=60)
        before = stored()
        generated = _scaler(cluster, ns)["status"]["forecastGeneratedAt"]
    finally:
        first.kill()
    assert not first.alive()
    high = _replicas(cluster, ns)
    second = OperatorProcess(cluster, traffic_db, clock, logdir / "second.log").start()
    try:
        seen = []
        deadline = time.monotonic() + 20  # 40 simulated minutes, still on the plateau
        while time.monotonic() < deadline:
            seen.append(_replicas(cluster, ns))
            time.sleep(0.3)
        status = _scaler(cluster, ns)["status"]
        assert status["forecastGeneratedAt"] == generated, "the restart refit instead of reusing"
        assert stored() == before
        assert min(seen) >= high and len(set(seen)) == 1, f"replicas flapped across the restart: {seen}"
        assert second.metric("prescaler_reconcile_duration_seconds_count", namespace=ns) > 0
    finally:
        second.stop()
        engine.dispose()


@pytest.fixture
def two_operators(crds: LocalCluster, traffic_db: str, logdir: Path) -> Iterator[list[OperatorProcess]]:
    clock = Clock.scaled_from(peak_day_time(12, 0), SPEED)
    ops = [
        OperatorProcess(crds, traffic_db, clock, logdir / f"op{i}.log", peering="prescaler-e2e",
                        extra_env={"PRESCALER_PEERING_LIFETIME": "10"})
        for i in range(2)
    ]
    try:
        for op in ops:
            op.start()
        yield ops
    finally:
        for op in ops:
            op.stop()


def test_two_operators_exactly_one_acts(crds: LocalCluster, two_operators: list[OperatorProcess]) -> None:
    ns = "e2e-peering"
    _setup(crds, ns)

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

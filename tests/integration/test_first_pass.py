"""The start-up pass: every scaler decided once in one sweep, the kopf timer then patching what it decided.

A real reconciler on real PostgreSQL, the cluster cache filled from watch events, a fake actuator."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import kopf
import pytest
import sqlalchemy as sa
from kubernetes.client.exceptions import ApiException
from sqlalchemy.engine import Engine

from prescaler import db, handlers, history
from prescaler.config import OperatorConfig
from prescaler.informers import Informer

from .test_reconcile import NOW, FakeActuator, FixedClock, _body

NAMESPACE = "first-pass"
NAMES = ("a", "b", "c")


def _informer(kind: str, extract: Any, objects: list[dict[str, Any]]) -> Informer[Any]:
    def never_called(**_: Any) -> Any:
        raise AssertionError("the test fills the cache from events")

    informer: Informer[Any] = Informer(kind, never_called, extract)
    for obj in objects:
        informer.apply({"type": "ADDED", "object": obj})
    informer.synced.set()
    return informer


def _scaler(name: str) -> dict[str, Any]:
    body = _body()
    body["metadata"] = {"name": name, "namespace": NAMESPACE, "generation": 1,
                        "creationTimestamp": f"2024-03-01T00:00:0{NAMES.index(name)}Z"}
    body["spec"]["scaleTargetRef"]["name"] = f"web-{name}"
    return body


def _deployment(name: str) -> dict[str, Any]:
    return {"metadata": {"name": f"web-{name}", "namespace": NAMESPACE, "generation": 1},
            "spec": {"replicas": 1}, "status": {"readyReplicas": 1}}


@pytest.fixture
def operator(engine: Engine,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeActuator, list[tuple[str, str]]]]:
    from prescaler import forecasting
    from prescaler.reconcile import Reconciler, Services

    actuator = FakeActuator()
    pool = forecasting.FitPool(max_workers=1)
    rec = Reconciler(Services(engine=engine, actuator=actuator, pool=pool, clock=FixedClock(NOW),
                              sources={"default": history.default_source()}))
    cache = handlers.ClusterCache(
        deployments=_informer("deployments", handlers._target_state("Deployment"), [_deployment(n) for n in NAMES]),
        statefulsets=_informer("statefulsets", handlers._target_state("StatefulSet"), []),
        hpas=_informer("horizontalpodautoscalers", handlers._hpa, []),
        scalers=_informer("predictivescalers", handlers._scaler, [_scaler(n) for n in NAMES]),
    )
    config = OperatorConfig(database_url="unused", sources={"default": history.default_source()},
                            sources_path=None, peering=None)
    posted: list[tuple[str, str]] = []

    def event(body: Any, *, type: str, reason: str, message: str) -> None:
        posted.append((body["metadata"]["name"], reason))

    monkeypatch.setattr(handlers, "_reconciler", rec)
    monkeypatch.setattr(handlers, "_cache", cache)
    monkeypatch.setattr(handlers, "_config", config)
    monkeypatch.setattr(handlers, "_slots", {})
    monkeypatch.setattr(kopf, "event", event)
    # The traffic of test_reconcile's module fixture, for these scalers' series "web".
    start = NOW - timedelta(days=3)
    with engine.begin() as conn:
        conn.execute(db.traffic_log.delete().where(db.traffic_log.c.service == "web"))
        conn.execute(db.scaling_decisions.delete().where(db.scaling_decisions.c.namespace == NAMESPACE))
        conn.execute(db.traffic_log.insert(), [
            {"ts": start + timedelta(minutes=5 * i), "service": "web", "endpoint": "*", "requests": 2000}
            for i in range(int(timedelta(days=3) / timedelta(minutes=5)))])
    yield actuator, posted
    pool.shutdown()


def _rows(engine: Engine) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            sa.select(db.scaling_decisions.c.name, db.scaling_decisions.c.desired_replicas)
            .where(db.scaling_decisions.c.namespace == NAMESPACE).order_by(db.scaling_decisions.c.name))]


def test_the_start_up_pass_decides_each_scaler_once_and_the_timer_patches_it(
        engine: Engine, operator: tuple[FakeActuator, list[tuple[str, str]]]) -> None:
    actuator, posted = operator
    patches: dict[str, dict[str, Any]] = {}
    expected_events: list[tuple[str, str]] = []

    async def run() -> None:
        await handlers.decide_all(budget_s=30.0)
        assert sorted(actuator.scaled or []) == [(NAMESPACE, f"web-{n}", 5) for n in NAMES]
        decided = {n: handlers._slots[(NAMESPACE, n)].unpatched for n in NAMES}
        assert posted == []  # nothing posted before kopf runs
        for n, outcome in decided.items():
            assert outcome is not None
            expected_events.extend((n, reason) for _, reason, _ in outcome.events)
        for n in NAMES:
            for wake in (1, 2):
                patch = kopf.Patch()
                await handlers.reconcile_timer(namespace=NAMESPACE, name=n, body=_scaler(n), patch=patch)
                if wake == 1:
                    patches[n] = dict(patch.get("status") or {})
                else:
                    assert not patch, "a second wake-up within the interval patches nothing"

    asyncio.run(run())
    # 2,000 requests per 5 minutes at 10% headroom on 500 per replica: 5 replicas, scaled and recorded once.
    assert len(actuator.scaled or []) == len(NAMES)
    assert _rows(engine) == [(n, 5) for n in NAMES]
    for n in NAMES:
        assert patches[n]["desiredReplicas"] == 5 and patches[n]["observedGeneration"] == 1
        assert handlers._slots[(NAMESPACE, n)].unpatched is None
    assert posted == expected_events and any(r == "ScaledUp" for _, r in posted)  # each posted once


def test_with_peering_the_first_settled_timer_starts_the_pass_and_timers_leave_it_their_scalers(
        engine: Engine, operator: tuple[FakeActuator, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch) -> None:
    actuator, _ = operator
    assert handlers._config is not None
    monkeypatch.setattr(handlers, "_config", dataclasses.replace(handlers._config, peering="prescaler"))
    monkeypatch.setattr(handlers, "_first_pass", None)
    monkeypatch.setattr(handlers, "_started_at", -1e9)  # the settle time is long over

    async def run() -> None:
        patch = kopf.Patch()
        await handlers.reconcile_timer(namespace=NAMESPACE, name="c", body=_scaler("c"), patch=patch)
        assert handlers._first_pass is not None and not patch  # left to the pass
        await handlers._first_pass
        await handlers.reconcile_timer(namespace=NAMESPACE, name="c", body=_scaler("c"), patch=patch)
        assert patch["status"]["desiredReplicas"] == 5

    asyncio.run(run())
    assert len(actuator.scaled or []) == len(NAMES)
    assert _rows(engine) == [(n, 5) for n in NAMES]


def test_the_start_up_pass_leaves_a_scaler_being_deleted_alone(
        engine: Engine, operator: tuple[FakeActuator, list[tuple[str, str]]]) -> None:
    actuator, _ = operator
    gone = _scaler("b")
    gone["metadata"]["deletionTimestamp"] = "2024-03-04T12:00:00Z"
    handlers._cache.scalers.apply({"type": "MODIFIED", "object": gone})  # type: ignore[union-attr]
    asyncio.run(handlers.decide_all(budget_s=30.0))
    assert sorted(actuator.scaled or []) == [(NAMESPACE, "web-a", 5), (NAMESPACE, "web-c", 5)]
    assert [n for n, _ in _rows(engine)] == ["a", "c"]


def test_the_start_up_pass_starts_nothing_past_its_budget(
        engine: Engine, operator: tuple[FakeActuator, list[tuple[str, str]]]) -> None:
    actuator, _ = operator
    asyncio.run(handlers.decide_all(budget_s=0.0))
    assert actuator.scaled is None and _rows(engine) == []
    assert all(not s.state.decided for s in handlers._slots.values())


@pytest.fixture
def peering(operator: tuple[FakeActuator, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Peering configured, the settle time over; the returned list is what the peering object shows alive."""
    assert handlers._config is not None
    monkeypatch.setattr(handlers, "_config", dataclasses.replace(handlers._config, peering="prescaler"))
    monkeypatch.setattr(handlers, "_first_pass", None)
    monkeypatch.setattr(handlers, "_started_at", -1e9)
    peers: list[str] = []
    monkeypatch.setattr(handlers, "_live_peers_in", lambda name, namespaces: list(peers))
    return peers


def test_with_peering_and_no_live_peer_the_pass_runs_before_kopf_starts(
        engine: Engine, operator: tuple[FakeActuator, list[tuple[str, str]]], peering: list[str]) -> None:
    actuator, _ = operator

    async def run() -> None:
        await handlers._first_pass_with_peering("prescaler", [])
        assert handlers._first_pass is not None and handlers._first_pass.result() is True
        assert len(actuator.scaled or []) == len(NAMES)  # all decided before any timer ran
        patch = kopf.Patch()
        await handlers.reconcile_timer(namespace=NAMESPACE, name="a", body=_scaler("a"), patch=patch)
        assert patch["status"]["desiredReplicas"] == 5

    asyncio.run(run())
    assert len(actuator.scaled or []) == len(NAMES)
    assert _rows(engine) == [(n, 5) for n in NAMES]


def test_with_a_live_peer_the_pass_waits_for_kopf_to_make_this_replica_active(
        engine: Engine, operator: tuple[FakeActuator, list[tuple[str, str]]], peering: list[str]) -> None:
    actuator, _ = operator
    peering.append("other@host/20261206/abc")
    asyncio.run(handlers._first_pass_with_peering("prescaler", []))
    assert handlers._first_pass is None and actuator.scaled is None and _rows(engine) == []


def test_a_peering_object_that_cannot_be_read_leaves_the_pass_to_kopf(
        engine: Engine, operator: tuple[FakeActuator, list[tuple[str, str]]], peering: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    actuator, _ = operator

    def forbidden(name: str, namespaces: list[str]) -> list[str]:
        raise ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(handlers, "_live_peers_in", forbidden)
    asyncio.run(handlers._first_pass_with_peering("prescaler", []))
    assert handlers._first_pass is None and actuator.scaled is None and _rows(engine) == []


def test_two_replicas_passes_never_overlap(
        engine: Engine, operator: tuple[FakeActuator, list[tuple[str, str]]], peering: list[str]) -> None:
    actuator, _ = operator
    key = {"key": handlers._PASS_LOCK_KEY}
    with engine.connect() as other:  # another replica's pass, started at the same moment
        other.execution_options(isolation_level="AUTOCOMMIT")
        assert other.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), key).scalar()

        async def run() -> None:
            await handlers._first_pass_with_peering("prescaler", [])
            assert handlers._first_pass is None and actuator.scaled is None  # left to the timers
            patch = kopf.Patch()
            await handlers.reconcile_timer(namespace=NAMESPACE, name="a", body=_scaler("a"), patch=patch)
            waiting = handlers._first_pass
            assert waiting is not None and not patch
            await asyncio.sleep(1.5)
            assert not waiting.done() and actuator.scaled is None and _rows(engine) == []
            await asyncio.to_thread(other.execute, sa.text("SELECT pg_advisory_unlock(:key)"), key)
            assert await waiting is True

        asyncio.run(run())
    assert _rows(engine) == [(n, 5) for n in NAMES]
    with engine.connect() as conn:  # released: nothing holds it after the pass
        held = conn.execute(sa.text(
            # Advisory locks belong to a database; other tests' databases on the same server hold their own.
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :hi AND objid = :lo "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            {"hi": handlers._PASS_LOCK_KEY >> 32, "lo": handlers._PASS_LOCK_KEY & 0xFFFFFFFF}).scalar()
        assert held == 0

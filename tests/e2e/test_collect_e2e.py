"""`prescaler collect` end to end on the local control plane.

1. Leader election on a real Lease: two collectors with a Prometheus feed, only the lease holder collects;
   SIGKILL the leader in the middle of its backfill and the standby takes the Lease over (not before the
   lease could have expired, soon after) and finishes the backfill with no gap and no duplicate; a clean stop
   hands the Lease back.
2. The Kafka path: a producer sends 14 days of per-minute counts with a daily 18:00 peak to a real broker,
   `collect --once` writes them, then a collector in loop mode keeps up with the live minutes while a real
   operator on a scaled clock scales the Deployment through /scale ahead of the peak.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from confluent_kafka import Producer

from collector_process import CollectorProcess
from prescaler.clock import Clock
from prescaler.collect.prometheus import floor_minute
from prescaler_dev.kafka import KafkaBroker
from prescaler_dev.localcluster import LocalCluster
from promserver import PrometheusServer
from waiting import wait_for

from .operator_support import (
    DAY0,
    PEAK_REPLICAS,
    OperatorProcess,
    apply,
    daily_peak_load,
    deployment_yaml,
    get_json,
    install_crds,
    namespace_yaml,
    peak_day_time,
    scaler_yaml,
)

MINUTE = timedelta(minutes=1)
LEASE = "prescaler-collector"
LEASE_DURATION = 4.0


def _lease(cluster: LocalCluster, namespace: str) -> dict[str, str | int]:
    spec = get_json(cluster, "-n", namespace, "get", "lease", LEASE).get("spec", {})
    return {"holderIdentity": "", **spec}  # an empty holder is left out of the JSON


def _time(text: str) -> datetime:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))


# --- 1. leader election ------------------------------------------------------------------------------------

def test_only_the_lease_holder_collects_and_a_standby_takes_over_after_sigkill(
        cluster: LocalCluster, pg_url: str, tmp_path: Path) -> None:
    namespace = "collector-election"
    apply(cluster, namespace_yaml(namespace))
    end = floor_minute(datetime.now(UTC)) - timedelta(hours=2)  # promtool blocks must not overlap the head
    n = 15 * 1440
    samples = {end - (n - 1 - i) * MINUTE: 1000 + (i * 37) % 500 for i in range(n)}
    prom = PrometheusServer([], retention="60d")
    prom.backfill_openmetrics("\n".join([
        "# TYPE elect_requests_per_minute gauge",
        *(f'elect_requests_per_minute{{service="elect"}} {v} {int(t.timestamp())}' for t, v in samples.items()),
        "# EOF", ""]))
    prom.start()
    config = tmp_path / "collector.yaml"
    config.write_text(yaml.safe_dump({"feeds": [{"name": "elect", "prometheus": {
        "url": prom.url, "query": 'sum(elect_requests_per_minute{service="$service"})', "services": ["elect"],
        "backfill": "16d", "chunk": "30m"}}]}))
    args = ["--config", str(config), "--database-url", pg_url, "--leader-election", "--lease-namespace", namespace,
            "--lease-name", LEASE, "--lease-duration", f"{LEASE_DURATION:.0f}s", "--renew-deadline", "3s",
            "--retry-period", "1s"]
    engine = sa.create_engine(pg_url)
    first = second = None

    def collected() -> tuple[timedelta, int]:
        with engine.connect() as conn:
            mark = conn.execute(sa.text("SELECT collected_until - backfill_from FROM collector_watermarks "
                                        "WHERE feed = 'elect'")).scalar()
            rows = conn.execute(sa.text("SELECT count(*) FROM traffic_log WHERE service = 'elect'")).scalar_one()
        return mark or timedelta(0), int(rows)

    try:
        first = CollectorProcess(args, tmp_path / "first.log", env=cluster.env()).start()
        wait_for("the first collector to lead", lambda: first.metric("prescaler_collector_leader") == 1)
        first_id = _lease(cluster, namespace)["holderIdentity"]
        second = CollectorProcess(args, tmp_path / "second.log", env=cluster.env()).start()
        wait_for("the first collector's backfill under way", lambda: collected()[0] >= timedelta(days=1),
                 timeout=180)
        assert collected()[0] < timedelta(days=15), "the backfill finished before the leader could be killed"
        # The standby has not collected anything: it never ran the Prometheus feed.
        assert second.metric("prescaler_collector_leader") == 0
        assert second.metric("prescaler_collector_evaluations_total") == 0
        assert _lease(cluster, namespace)["holderIdentity"] == first_id

        first.signal(signal.SIGKILL)
        killed = time.monotonic()
        first.proc.wait(30)  # type: ignore[union-attr]
        last_renew = _time(str(_lease(cluster, namespace)["renewTime"]))
        wait_for("the standby to take the lease", lambda: second.metric("prescaler_collector_leader") == 1,
                 timeout=120)
        print(f"standby leads {time.monotonic() - killed:.1f}s after the SIGKILL "
              f"(lease duration {LEASE_DURATION:.0f}s, retry 1s)")
        lease = _lease(cluster, namespace)
        assert lease["holderIdentity"] != first_id and int(lease["leaseTransitions"]) >= 1
        # Never before the old holder's lease could have expired (less the latency of one API round trip).
        assert _time(str(lease["acquireTime"])) >= last_renew + timedelta(seconds=LEASE_DURATION - 1)

        wait_for("the standby to finish the backfill", lambda: collected()[0] >= timedelta(days=16), timeout=240)
        with engine.connect() as conn:
            rows = {r[0].astimezone(UTC): int(r[1]) for r in conn.execute(sa.text(
                "SELECT ts, requests FROM traffic_log WHERE service = 'elect'"))}
        assert rows == {t - MINUTE: v for t, v in samples.items()}  # no gap, no duplicate, across the takeover
        assert second.metric("prescaler_collector_rows_written_total", feed="elect") > 0

        assert second.stop() == 0
        # A clean stop hands the lease back rather than letting it run out.
        assert _lease(cluster, namespace)["holderIdentity"] == ""
    finally:
        for c in (first, second):
            if c is not None:
                c.stop()
        prom.stop()
        engine.dispose()


# --- 2. producer -> Kafka -> collector -> PostgreSQL -> operator -> /scale -----------------------------------

NS = "e2e-kafka"
TOPIC = "peak-api-requests"
SPEED = 60.0  # one real second = one simulated minute
START = peak_day_time(16, 50)
PEAK = peak_day_time(18, 0)
END = peak_day_time(18, 5)


def _per_minute(ts: pd.DatetimeIndex) -> list[int]:
    """The operator tests' daily peak (requests per 5 minutes) spread over minutes."""
    return [round(v / 5) for v in daily_peak_load(ts)]


def _count(t: datetime, requests_: int) -> bytes:
    return json.dumps({"ts": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "service": "peak-api", "endpoint": "*",
                       "requests": requests_}).encode()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    kafka = KafkaBroker(tmp_path_factory.mktemp("kafka")).start()
    try:
        yield kafka
    finally:
        kafka.stop()


def test_kafka_counts_reach_the_operator_which_scales_ahead_of_the_peak(
        cluster: LocalCluster, broker: KafkaBroker, pg_url: str, tmp_path: Path) -> None:
    broker.create_topic(TOPIC, partitions=2)
    # Idempotent: a batch retried while the new topic's leader settles must not land after later ones.
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20, "enable.idempotence": True,
                         "log_level": 0})
    history = pd.date_range(DAY0, START, freq="1min", tz="UTC", inclusive="left")
    sent = dict(zip(history.to_pydatetime(), _per_minute(history), strict=True))
    for t, v in sent.items():
        producer.produce(TOPIC, _count(t, v), key=b"peak-api")
    assert producer.flush(60) == 0
    config = tmp_path / "collector.yaml"
    config.write_text(yaml.safe_dump({"feeds": [{"name": "requests", "kafka": {
        "bootstrap_servers": broker.bootstrap, "topic": TOPIC, "group": "prescaler-collector",
        "format": "counts", "services": ["peak-api"]}}]}))
    common = ["--config", str(config), "--database-url", pg_url]
    loaded = subprocess.run([sys.executable, "-m", "prescaler.cli", "collect", "--once", *common],
                            capture_output=True, text=True, env={**cluster.env(), **Clock.scaled_from(START, SPEED)
                                                                .env()}, timeout=300, check=False)
    assert loaded.returncode == 0, loaded.stderr
    assert f"{len(sent):,} messages" in loaded.stdout and "0 messages dropped" in loaded.stdout, \
        loaded.stdout + loaded.stderr

    install_crds(cluster)
    apply(cluster, namespace_yaml(NS))
    apply(cluster, deployment_yaml(NS, "web"))
    apply(cluster, scaler_yaml(NS, "web", "web"))
    clock = Clock.scaled_from(START, SPEED)
    env = {**cluster.env(), **clock.env()}
    collector = CollectorProcess([*common, "--no-leader-election"], tmp_path / "collector.log", env=env).start()
    operator = OperatorProcess(cluster, pg_url, clock, tmp_path / "operator.log").start()
    stop = threading.Event()

    def live() -> None:
        # Each simulated minute, as it ends, the minute's count goes to Kafka.
        next_minute = START
        while not stop.is_set():
            if clock.now() >= next_minute + MINUTE:
                ts = pd.DatetimeIndex([next_minute])
                sent[next_minute] = _per_minute(ts)[0]
                producer.produce(TOPIC, _count(next_minute, sent[next_minute]), key=b"peak-api")
                producer.poll(0)
                next_minute += MINUTE
            else:
                stop.wait(0.05)
        producer.flush(30)

    feeder = threading.Thread(target=live, daemon=True)
    feeder.start()
    replicas: list[tuple[datetime, int, int]] = []
    try:
        while clock.now() < END:
            assert operator.alive(), f"operator died; log:\n{(tmp_path / 'operator.log').read_text()[-4000:]}"
            d = get_json(cluster, "-n", NS, "get", "deployment", "web")
            replicas.append((clock.now(), int(d["spec"]["replicas"]), int(d["status"].get("readyReplicas") or 0)))
            time.sleep(0.5)
        assert collector.metric("prescaler_collector_messages_total", feed="requests") > 0
        assert collector.metric("prescaler_collector_errors_total") == 0, collector.log_tail()
    finally:
        stop.set()
        feeder.join(30)
        operator.stop()
        collector.stop()

    ready_at_peak = next(r for t, _, r in replicas if t >= PEAK)
    assert ready_at_peak >= PEAK_REPLICAS, f"only {ready_at_peak} ready at the peak: {replicas[-20:]}"
    print(f"first sample {replicas[0]}; peak replicas first requested at "
          f"{next(t for t, spec, _ in replicas if spec >= PEAK_REPLICAS):%H:%M} (simulated)")
    assert replicas[0][0] < PEAK - 30 * MINUTE and replicas[0][1] < PEAK_REPLICAS  # it was the forecast
    # The live minutes went through Kafka and the collector too, each exactly once.
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            rows = {r[0].astimezone(UTC): int(r[1]) for r in conn.execute(sa.text(
                "SELECT ts, requests FROM traffic_log WHERE service = 'peak-api' AND ts >= :s"), {"s": START})}
    finally:
        engine.dispose()
    live_sent = {t: v for t, v in sent.items() if t >= START}
    assert rows and set(rows) <= set(live_sent)
    assert all(rows[t] == live_sent[t] for t in rows)
    assert len(rows) >= len(live_sent) - 3  # the newest minutes may still be on their way

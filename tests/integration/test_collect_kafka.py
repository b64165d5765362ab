"""`prescaler collect`: the Kafka feed against a real Apache Kafka broker (KRaft, one per module) and a real
PostgreSQL.

Every test has its own topic and database. What the producer sent is counted per (minute, service, endpoint)
beside the broker, and the collector's table must hold exactly that: nothing lost, nothing counted twice,
whether the collector is killed with SIGKILL in the middle of its batches, the broker restarts under it, or the
database goes away for a while.
"""

from __future__ import annotations

import datetime as dt
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from sqlalchemy.engine import Engine, make_url

from collector_process import CollectorProcess
from prescaler.clock import Clock
from prescaler.collect import collect_once, load_config, metrics, run_forever
from prescaler.collect import kafka as kafka_feed
from prescaler.collect.kafka import KafkaFeed
from prescaler.collect.store import CountWriter, Fenced, OffsetMove, load_offsets
from prescaler.history import default_source
from prescaler_dev.kafka import KafkaBroker, free_port
from unit.test_collect_kafka import cli, write_config
from waiting import wait_for

from .test_collect import _self_signed

UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)
Key = tuple[dt.datetime, str, str]

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One broker for the module, with a second listener that wants SASL/PLAIN over TLS."""
    state = tmp_path_factory.mktemp("kafka")
    cert, key = _self_signed(state)
    kafka = KafkaBroker(state, sasl_users={"collector": "s3cret"}, tls_cert=cert, tls_key=key).start()
    try:
        yield kafka
    finally:
        kafka.stop()


def new_topic(broker: KafkaBroker, partitions: int = 2) -> str:
    name = f"requests-{uuid.uuid4().hex[:8]}"
    broker.create_topic(name, partitions)
    return name


@dataclass
class Sent:
    """What a test produced, counted the way the collector must count it."""

    counts: Counter[Key] = field(default_factory=Counter)
    messages: int = 0


def producer(bootstrap: str) -> Producer:
    # Idempotent, so a retried batch never lands after a later one (the tests' events are in time order);
    # log_level 0: librdkafka would print every refused connection of a restarting broker to stderr.
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10_000,
                     "queue.buffering.max.messages": 1_000_000, "enable.idempotence": True, "log_level": 0})


def produce(broker: KafkaBroker, topic: str, values: list[bytes], *, partition: int | None = None,
            keys: list[bytes] | None = None) -> None:
    p = producer(broker.bootstrap)
    for i, value in enumerate(values):
        kwargs: dict[str, Any] = {"key": keys[i]} if keys else {}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                p.produce(topic, value, **kwargs)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(60) == 0, "messages not delivered"


def event(ts: dt.datetime | float | str, service: str, endpoint: str, **extra: Any) -> bytes:
    stamp = ts.isoformat() if isinstance(ts, dt.datetime) else ts
    return json.dumps({"ts": stamp, "service": service, "endpoint": endpoint, **extra}).encode()


def events(start: dt.datetime, n: int, *, services: int = 3, endpoints: int = 2, spacing: float = 0.05,
           sent: Sent | None = None) -> tuple[list[bytes], list[bytes], Sent]:
    """`n` request events from `start`, `spacing` seconds apart, spread over services and endpoints."""
    sent = sent or Sent()
    values, keys = [], []
    for i in range(n):
        t = start + dt.timedelta(seconds=i * spacing)
        service, endpoint = f"svc-{i % services}", f"/api/{(i // services) % endpoints}"
        stamp: Any = t.isoformat() if i % 2 else t.timestamp()  # both ISO-8601 and epoch seconds
        values.append(json.dumps({"ts": stamp, "service": service, "endpoint": endpoint}).encode())
        keys.append(service.encode())
        sent.counts[(t.replace(second=0, microsecond=0), service, endpoint)] += 1
        sent.messages += 1
    return values, keys, sent


def table(engine: Engine) -> Counter[Key]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT ts, service, endpoint, requests FROM traffic_log")).all()
    return Counter({(r[0].astimezone(UTC), r[1], r[2]): int(r[3]) for r in rows})


def stored_offsets(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT coalesce(sum(next_offset), 0) FROM collector_kafka_offsets"))
                   .scalar_one())


def once(config: Path, engine: Engine, **kwargs: Any) -> int:
    return collect_once(load_config(config), engine, settle=dt.timedelta(seconds=20), **kwargs)


def metric(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def recent_minute(minutes_ago: int = 30) -> dt.datetime:
    now = dt.datetime.now(UTC).replace(second=0, microsecond=0)
    return now - minutes_ago * MINUTE


# --- per-minute sums -----------------------------------------------------------------------------------------

def test_events_are_counted_per_minute_exactly_and_again_changes_nothing(
        broker: KafkaBroker, engine_for: Any, tmp_path: Path) -> None:
    url, engine = engine_for()
    topic = new_topic(broker, partitions=3)
    values, keys, sent = events(recent_minute(40), 6000, services=4, endpoints=3, spacing=0.3)
    produce(broker, topic, values, keys=keys)
    config = write_config(tmp_path / "c.yaml", broker, topic, batch_messages=500)

    first = cli("collect", "--config", str(config), "--once", "--database-url", url)
    assert first.returncode == 0, first.stderr
    assert table(engine) == sent.counts
    assert "3 partitions, 6,000 messages" in first.stdout and "0 messages dropped" in first.stdout
    assert stored_offsets(engine) == 6000

    second = cli("collect", "--config", str(config), "--once", "--database-url", url)
    assert second.returncode == 0, second.stderr
    assert "0 messages, 0 rows written" in second.stdout
    assert table(engine) == sent.counts

    more, more_keys, _ = events(recent_minute(10), 500, services=4, endpoints=3, sent=sent)
    produce(broker, topic, more, keys=more_keys)
    third = cli("collect", "--config", str(config), "--once", "--database-url", url)
    assert third.returncode == 0, third.stderr
    assert "500 messages" in third.stdout
    assert table(engine) == sent.counts


def test_counts_are_added_to_their_minute_across_batches_and_runs(broker: KafkaBroker, engine_for: Any,
                                                                  tmp_path: Path) -> None:
    _, engine = engine_for()
    topic = new_topic(broker, partitions=2)
    base = recent_minute(20)
    expected: Counter[Key] = Counter()
    values = [event(base, "checkout", "/pay/0", requests=7.0)]  # a whole number written as a float
    expected[(base, "checkout", "/pay/0")] += 7
    for i in range(400):  # five minutes, in event-time order
        minute = base + (i // 80) * MINUTE
        n = 10 + i
        values.append(event(minute + dt.timedelta(seconds=(i % 80) * 0.75), "checkout", f"/pay/{i % 2}",
                            requests=n))
        expected[(minute, "checkout", f"/pay/{i % 2}")] += n
    produce(broker, topic, values[:250])
    config = write_config(tmp_path / "c.yaml", broker, topic, format="counts", batch_messages=40)
    assert once(config, engine) == 0
    produce(broker, topic, values[250:])
    assert once(config, engine) == 0
    assert table(engine) == expected


# --- late and malformed messages -----------------------------------------------------------------------------

def test_late_events_within_grace_update_their_minute_and_later_ones_are_dropped(
        broker: KafkaBroker, engine_for: Any, tmp_path: Path) -> None:
    _, engine = engine_for()
    topic = new_topic(broker, partitions=1)
    m0 = recent_minute(30)
    config = write_config(tmp_path / "c.yaml", broker, topic, grace="2m")
    late_before = metric("prescaler_collector_messages_dropped_total", feed="requests", reason="late")

    produce(broker, topic, [event(m0 + dt.timedelta(seconds=5), "web", "/"),
                            event(m0 + 10 * MINUTE, "web", "/")])  # stream time: m0 + 10m
    assert once(config, engine) == 0
    # Next run: the stored stream time still judges lateness (no reset on restart).
    produce(broker, topic, [
        event(m0 + 8 * MINUTE + dt.timedelta(seconds=30), "web", "/"),  # ended at m0+9m, +2m grace > m0+10m: kept
        event(m0 + 7 * MINUTE + dt.timedelta(seconds=59), "web", "/"),  # ended at m0+8m, +2m = m0+10m: late
        event(m0 + dt.timedelta(seconds=50), "web", "/"),  # long closed: late
        event(m0 + 10 * MINUTE + dt.timedelta(seconds=1), "web", "/"),
    ])
    assert once(config, engine) == 0
    assert table(engine) == Counter({(m0, "web", "/"): 1, (m0 + 8 * MINUTE, "web", "/"): 1,
                                     (m0 + 10 * MINUTE, "web", "/"): 2})
    assert metric("prescaler_collector_messages_dropped_total", feed="requests", reason="late") - late_before == 2


def test_malformed_messages_are_skipped_counted_by_reason_and_logged_with_partition_and_offset(
        broker: KafkaBroker, engine_for: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, engine = engine_for()
    topic = new_topic(broker, partitions=1)
    m0 = recent_minute(15)
    far = dt.datetime.now(UTC) + dt.timedelta(hours=3)
    bad = {
        "not_json": [b"GET /api 200", b"\xff\xfe{", b""],
        "not_an_object": [b"[1, 2]", b"42"],
        "missing_field": [json.dumps({"ts": m0.isoformat(), "service": "web"}).encode(),
                          json.dumps({"service": "web", "endpoint": "/", "requests": 3}).encode()],
        "bad_timestamp": [event("yesterday", "web", "/", requests=1), event(-5, "web", "/", requests=1),
                          event(True, "web", "/", requests=1)],
        "future": [event(far, "web", "/", requests=1)],
        "negative_count": [event(m0, "web", "/", requests=-4)],
        "bad_count": [event(m0, "web", "/", requests=2.5), event(m0, "web", "/", requests="7")],
        "bad_field": [event(m0, "", "/", requests=1), event(m0, "web", None, requests=1),  # type: ignore[arg-type]
                      event(m0, "nul\x00byte", "/", requests=1),
                      b'{"ts": 1.0e9, "service": "\\ud800", "endpoint": "/", "requests": 1}'],
        "unknown_service": [event(m0, "intruder", "/", requests=1)],
    }
    good = [event(m0 + dt.timedelta(seconds=i), "web", "/", requests=1) for i in range(5)]
    values = [v for vs in bad.values() for v in vs]
    produce(broker, topic, good[:2] + values + good[2:])
    config = write_config(tmp_path / "c.yaml", broker, topic, format="counts", services=["web", "api"])
    before = {r: metric("prescaler_collector_messages_dropped_total", feed="requests", reason=r) for r in bad}
    with caplog.at_level("WARNING", logger="prescaler.collect.kafka"):
        assert once(config, engine) == 0  # malformed input is not an error of the collector
    assert table(engine) == Counter({(m0, "web", "/"): 5})
    for reason, vs in bad.items():
        got = metric("prescaler_collector_messages_dropped_total", feed="requests", reason=reason) - before[reason]
        assert got == len(vs), (reason, got)
    lines = [r.getMessage() for r in caplog.records]
    assert any(f"{topic}[0]@2: not_json: b'GET /api 200'" in line for line in lines), lines
    assert any("missing_field: no 'endpoint'" in line for line in lines)
    assert any("unknown_service" in line and "intruder" in line for line in lines)
    with engine.connect() as conn:  # the position moved past them: they are never read again
        assert conn.execute(sa.text("SELECT next_offset FROM collector_kafka_offsets")).scalar_one() == \
            len(values) + len(good)


def test_transactions_only_committed_messages_count_and_an_open_one_does_not_hold_once_up(
        broker: KafkaBroker, engine_for: Any, tmp_path: Path) -> None:
    _, engine = engine_for()
    topic = new_topic(broker, partitions=1)
    m0 = recent_minute(10)
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": f"tx-{topic}", "log_level": 0})
    p.init_transactions(60)
    for endpoint, n, outcome in (("/committed", 10, "commit"), ("/aborted", 5, "abort"), ("/open", 3, "open")):
        p.begin_transaction()
        for i in range(n):
            p.produce(topic, event(m0 + dt.timedelta(seconds=i), "web", endpoint))
        p.flush(30)
        if outcome == "commit":
            p.commit_transaction(60)
        elif outcome == "abort":
            p.abort_transaction(60)
    config = write_config(tmp_path / "c.yaml", broker, topic)
    assert once(config, engine) == 0  # reads up to the open transaction and stops there
    assert table(engine) == Counter({(m0, "web", "/committed"): 10})
    p.commit_transaction(60)
    assert once(config, engine) == 0
    assert table(engine) == Counter({(m0, "web", "/committed"): 10, (m0, "web", "/open"): 3})


# --- exactly once: the offsets' compare-and-set, SIGKILL, rebalances -----------------------------------------

def test_a_batch_from_a_stale_position_is_refused_whole(engine_for: Any) -> None:
    _, engine = engine_for()
    writer = CountWriter(engine, default_source())
    t0 = int(recent_minute(5).timestamp())
    args = {"feed": "f", "source_name": "default", "topic": "t"}
    writer.write(**args, counts={(t0, "a", "/"): 5}, moves=[OffsetMove(0, None, 5, t0 + 1.0)])
    # A second consumer that also started from "no row" (it was assigned the partition during a rebalance):
    with pytest.raises(Fenced):
        writer.write(**args, counts={(t0, "a", "/"): 5}, moves=[OffsetMove(0, None, 5, t0 + 1.0)])
    writer.write(**args, counts={(t0, "a", "/"): 3}, moves=[OffsetMove(0, 5, 8, t0 + 2.0)])
    # A replay of the batch 5 -> 8, or a batch that covers two partitions of which one moved: nothing is added.
    with pytest.raises(Fenced):
        writer.write(**args, counts={(t0, "a", "/"): 3}, moves=[OffsetMove(0, 5, 8, t0 + 2.0)])
    with pytest.raises(Fenced):
        writer.write(**args, counts={(t0, "a", "/"): 9, (t0, "b", "/"): 9},
                     moves=[OffsetMove(1, None, 9, None), OffsetMove(0, 5, 17, None)])
    assert table(engine) == Counter({(dt.datetime.fromtimestamp(t0, UTC), "a", "/"): 8})
    assert load_offsets(engine, "f", "default", "t", [0, 1])[0].next_offset == 8
    assert 1 not in load_offsets(engine, "f", "default", "t", [0, 1])


def test_sigkill_mid_batch_then_restart_counts_every_event_exactly_once(
        broker: KafkaBroker, engine_for: Any, tmp_path: Path) -> None:
    url, engine = engine_for()
    topic = new_topic(broker, partitions=3)
    values, keys, sent = events(recent_minute(50), 150_000, services=5, endpoints=4, spacing=0.015)
    produce(broker, topic, values, keys=keys)
    config = write_config(tmp_path / "c.yaml", broker, topic, batch_messages=1500)
    command = [sys.executable, "-m", "prescaler.cli", "collect", "--config", str(config), "--once",
               "--database-url", url]
    killed_at = []
    for fraction in (0.2, 0.6):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for("the collector to get that far",
                     lambda f=fraction, p=proc: stored_offsets(engine) >= f * sent.messages or p.poll() is not None,
                     timeout=240)
            assert proc.poll() is None, f"the collector finished before it could be killed: {proc.stderr.read()!r}"  # type: ignore[union-attr]
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(30)
        killed_at.append(stored_offsets(engine))
        # What is stored is exactly what the stored offsets cover: never a half batch.
        assert sum(table(engine).values()) == killed_at[-1]
    assert 0 < killed_at[0] < killed_at[1] < sent.messages

    rerun = cli("collect", "--config", str(config), "--once", "--database-url", url)
    assert rerun.returncode == 0, rerun.stderr
    assert table(engine) == sent.counts
    assert stored_offsets(engine) == sent.messages


def test_two_collectors_in_one_group_share_partitions_and_count_once(
        broker: KafkaBroker, engine_for: Any, tmp_path: Path) -> None:
    url, engine = engine_for()
    topic = new_topic(broker, partitions=4)
    start = recent_minute(30)
    values, keys, sent = events(start, 20_000, services=8, spacing=0.05)
    produce(broker, topic, values[:10_000], keys=keys[:10_000])
    config = write_config(tmp_path / "c.yaml", broker, topic, batch_messages=1000)
    clock = Clock.scaled_from(dt.datetime.now(UTC), 30.0)
    first = loop_collector(config, url, tmp_path / "one.log", clock).start()
    second = None
    try:
        wait_for("the first collector to count something", lambda: stored_offsets(engine) > 0)
        second = loop_collector(config, url, tmp_path / "two.log", clock).start()  # a rebalance, mid-stream
        wait_for("the partitions shared out", lambda: second.metric("prescaler_collector_series") > 0
                 and first.metric("prescaler_collector_series") < 4, timeout=180)
        for q in range(4):  # every partition gets some of the rest, whoever owns it
            produce(broker, topic, values[10_000 + q::4], partition=q)
        wait_for("every event counted", lambda: sum(table(engine).values()) >= sent.messages, timeout=180)
        time.sleep(3)  # a few more cycles on both: a double count would show now
        assert table(engine) == sent.counts
        assert first.metric("prescaler_collector_messages_total") > 0
        assert second.metric("prescaler_collector_messages_total") > 0, second.log_tail()
    finally:
        stop_cleanly(first)
        if second is not None:
            stop_cleanly(second)


def test_a_backlog_is_read_in_bounded_cycles_that_follow_each_other_at_once(
        broker: KafkaBroker, engine_for: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, engine = engine_for()
    topic = new_topic(broker, partitions=2)
    values, keys, sent = events(recent_minute(40), 5_000, spacing=0.4)
    produce(broker, topic, values, keys=keys)
    monkeypatch.setattr(kafka_feed, "CYCLE_BUDGET", 0.2)  # loop mode: a cycle hands back after 0.2 s
    config = load_config(write_config(tmp_path / "c.yaml", broker, topic, batch_messages=500))
    stop = threading.Event()
    cycles: list[tuple[float, int | None]] = []

    def on_cycle(reports: list[Any]) -> None:
        cycles.append((time.monotonic(), reports[0].backlog))
        if reports[0].backlog == 0 and table(engine) == sent.counts:
            stop.set()

    runner = threading.Thread(target=run_forever, args=(config, engine), daemon=True, kwargs={
        "settle": dt.timedelta(seconds=20), "port": None, "stop": stop, "on_cycle": on_cycle})
    runner.start()
    runner.join(300)
    assert not runner.is_alive() and table(engine) == sent.counts
    behind = [i for i, (_, backlog) in enumerate(cycles) if backlog]
    assert len(behind) >= 2, cycles  # the backlog took several cycles
    gaps = [cycles[i + 1][0] - cycles[i][0] for i in behind if i + 1 < len(cycles)]
    assert max(gaps) < 30, gaps  # not a minute's wait between them


def test_a_consumer_kept_between_cycles_reads_what_came_since(broker: KafkaBroker, engine_for: Any,
                                                               tmp_path: Path) -> None:
    _, engine = engine_for()
    topic = new_topic(broker, partitions=4)
    config = load_config(write_config(tmp_path / "c.yaml", broker, topic, batch_messages=5000))
    feed = KafkaFeed(config.feeds[0], config.sources["default"], engine, once=True)
    try:
        newest = recent_minute(0)
        assert feed.collect(newest, threading.Event()).messages == 0  # joined, at the end of empty partitions
        time.sleep(2)  # their end-of-partition events arrive after the cycle, and wait in the consumer's queue
        values, keys, sent = events(recent_minute(40), 20_000, services=8, spacing=0.1)
        produce(broker, topic, values, keys=keys)
        # The end-of-partition events of the first cycle must not end this one before its new targets.
        report = feed.collect(newest, threading.Event())
        assert report.messages == 20_000 and report.backlog == 0 and not report.errors
    finally:
        feed.close()
    assert table(engine) == sent.counts


# --- faults while running in loop mode -----------------------------------------------------------------------

def loop_collector(config: Path, url: str, log_path: Path, clock: Clock) -> CollectorProcess:
    """`prescaler collect` in loop mode on a scaled clock, so cycles come every few seconds."""
    return CollectorProcess(["--config", str(config), "--database-url", url, "--no-leader-election"], log_path,
                            env=clock.env())


def stop_cleanly(collector: CollectorProcess) -> None:
    assert collector.stop() == 0, collector.log_tail()


def test_broker_restart_while_collecting_loses_nothing(broker: KafkaBroker, engine_for: Any,
                                                      tmp_path: Path) -> None:
    url, engine = engine_for()
    topic = new_topic(broker, partitions=2)
    now = dt.datetime.now(UTC)
    clock = Clock.scaled_from(now, 30.0)  # a cycle every two seconds
    config = write_config(tmp_path / "c.yaml", broker, topic, batch_messages=2000, timeout="5s")
    # Three lots in event-time order (per partition), so none of them is late.
    first, keys1, sent = events(recent_minute(30), 5000, spacing=0.2)
    produce(broker, topic, first, keys=keys1)
    collector = loop_collector(config, url, tmp_path / "collector.log", clock).start()
    try:
        wait_for("the first events counted", lambda: table(engine) == sent.counts)
        broker.stop()
        # Produced while the broker is down: the producer holds them until it is back.
        second, keys2, _ = events(recent_minute(12), 3000, spacing=0.1, sent=sent)
        p = producer(broker.bootstrap)
        for value, key in zip(second, keys2, strict=True):
            p.produce(topic, value, key=key)
        wait_for("a cycle to notice the broker is gone",
                 lambda: collector.metric("prescaler_collector_errors_total", kind="unreachable") > 0, timeout=120)
        broker.start()
        assert p.flush(120) == 0
        third, keys3, _ = events(recent_minute(6), 2000, spacing=0.1, sent=sent)
        produce(broker, topic, third, keys=keys3)
        wait_for("every event counted after the restart", lambda: sum(table(engine).values()) >= sent.messages,
                 timeout=180)
        time.sleep(3)
        assert table(engine) == sent.counts, collector.log_tail()
    finally:
        stop_cleanly(collector)
        if not broker.alive():
            broker.start()


class Proxy:
    """A TCP proxy to PostgreSQL that the test can cut (connections reset, new ones refused) and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self.lock:
            if self.listener is not None:
                with _quiet():  # shutdown, not only close: it wakes the thread blocked in accept()
                    self.listener.shutdown(socket.SHUT_RDWR)
                self.listener.close()
                self.listener = None
            for s in self.sockets:
                with _quiet():
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in sel.select(timeout=1):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                with _quiet():
                    s.close()


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


def test_database_unavailable_for_a_while_loses_nothing(broker: KafkaBroker, engine_for: Any,
                                                       tmp_path: Path) -> None:
    url, engine = engine_for()
    parsed = make_url(url)
    proxy = Proxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    via_proxy = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    topic = new_topic(broker, partitions=2)
    config = write_config(tmp_path / "c.yaml", broker, topic, batch_messages=1000)
    first, keys1, sent = events(recent_minute(20), 3000, spacing=0.2)
    produce(broker, topic, first, keys=keys1)
    collector = loop_collector(config, via_proxy, tmp_path / "collector.log",
                              Clock.scaled_from(dt.datetime.now(UTC), 30.0)).start()
    try:
        wait_for("the first events counted", lambda: table(engine) == sent.counts)
        proxy.cut()
        second, keys2, _ = events(recent_minute(10), 4000, spacing=0.1, sent=sent)
        produce(broker, topic, second, keys=keys2)
        wait_for("cycles failing on the database", lambda: collector.metric(
            "prescaler_collector_errors_total", kind="database_unavailable") >= 2, timeout=120)
        assert sum(table(engine).values()) == 3000  # nothing of the second lot got through
        proxy.restore()
        wait_for("every event counted once the database is back",
                 lambda: sum(table(engine).values()) >= sent.messages, timeout=180)
        time.sleep(3)
        assert table(engine) == sent.counts, collector.log_tail()
    finally:
        stop_cleanly(collector)
        proxy.cut()


def test_messages_deleted_by_retention_before_collection_are_counted_as_expired(
        broker: KafkaBroker, engine_for: Any, tmp_path: Path) -> None:
    _, engine = engine_for()
    topic = new_topic(broker, partitions=1)
    m0 = recent_minute(10)
    config = write_config(tmp_path / "c.yaml", broker, topic)
    produce(broker, topic, [event(m0, "web", "/")] * 10)
    assert once(config, engine) == 0
    produce(broker, topic, [event(m0 + MINUTE, "web", "/")] * 10)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0})
    for f in admin.delete_records([TopicPartition(topic, 0, 14)]).values():
        f.result(timeout=30)
    before = metric("prescaler_collector_messages_dropped_total", feed="requests", reason="expired")
    assert once(config, engine) == 0
    assert table(engine) == Counter({(m0, "web", "/"): 10, (m0 + MINUTE, "web", "/"): 6})
    assert metric("prescaler_collector_messages_dropped_total", feed="requests", reason="expired") - before == 4


# --- credentials ---------------------------------------------------------------------------------------------

def test_sasl_over_tls_with_a_ca_bundle_and_clear_errors_for_a_wrong_password_or_an_untrusted_broker(
        broker: KafkaBroker, engine_for: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, engine = engine_for()
    topic = new_topic(broker, partitions=1)
    values, keys, sent = events(recent_minute(10), 200)
    produce(broker, topic, values, keys=keys)
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    ca = str(broker.tls_cert)
    good = write_config(tmp_path / "good.yaml", broker.secure_bootstrap, topic, timeout="5s", tls={"ca_file": ca},
                        sasl={"mechanism": "PLAIN", "username": "collector", "password_file": str(password)})
    assert once(good, engine) == 0, capsys.readouterr().err
    assert table(engine) == sent.counts

    monkeypatch.setenv("PRESCALER_TEST_KAFKA_PASSWORD", "wrong")
    bad_password = write_config(tmp_path / "bad.yaml", broker.secure_bootstrap, topic, timeout="5s",
                                tls={"ca_file": ca}, sasl={"mechanism": "PLAIN", "username": "collector",
                                                           "password_env": "PRESCALER_TEST_KAFKA_PASSWORD"})
    capsys.readouterr()
    assert once(bad_password, engine) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ": auth: Kafka at " in err[0] and "refused the credentials" in err[0], err

    untrusted = write_config(tmp_path / "untrusted.yaml", broker.secure_bootstrap, topic, timeout="5s", tls={},
                             sasl={"mechanism": "PLAIN", "username": "collector", "password_file": str(password)})
    assert once(untrusted, engine) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ": tls: Kafka at " in err[0] and "TLS handshake" in err[0], err
    assert table(engine) == sent.counts


# --- bad input -----------------------------------------------------------------------------------------------

def test_unreachable_broker_is_one_line_and_exit_3(engine_for: Any, tmp_path: Path) -> None:
    url, engine = engine_for()
    config = write_config(tmp_path / "c.yaml", f"127.0.0.1:{free_port()}", "requests", timeout="3s")
    done = cli("collect", "--config", str(config), "--once", "--database-url", url)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("prescaler: error: feed 'requests': feed: unreachable: Kafka at 127.0.0.1:")
    assert "is unreachable while reading the metadata of topic 'requests'" in lines[0]
    assert table(engine) == Counter() and stored_offsets(engine) == 0


def test_unknown_topic_is_a_configuration_error(broker: KafkaBroker, engine_for: Any, tmp_path: Path) -> None:
    url, _ = engine_for()
    config = write_config(tmp_path / "c.yaml", broker, "no-such-topic", timeout="5s")
    done = cli("collect", "--config", str(config), "--once", "--database-url", url)
    assert done.returncode == 2, done.stderr
    assert "unknown_topic: topic 'no-such-topic'" in done.stderr and len(done.stderr.strip().splitlines()) == 1

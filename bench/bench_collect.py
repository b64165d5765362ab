"""`prescaler collect` against a real Prometheus, a real Kafka broker and a real PostgreSQL.

    python bench/bench_collect.py [--only prometheus|kafka] [--services 1000] [--concurrency 1,4,8]
                                  [--kafka-events 1000000] [--freshness-minutes 4]

Prometheus feed:
1. Backfill: 14 days x 1 minute of one series (history loaded with promtool, as an administrator would),
   collected from first sight into a fresh database, best of three. Target: < 10 s.
2. Series per minute: N services with a sample every minute; one steady-state cycle (one new minute per
   series: a range query and a transaction each) at several concurrencies, and the first-sight cycle that
   backfills their last hour. Target: >= 1,000 series collected per minute.
Kafka feed (a KRaft broker from prescaler_dev.kafka on the same 2 cores):
3. Throughput: a backlog of request events (4 partitions, 20 services x 10 endpoints, ISO timestamps)
   consumed, parsed, aggregated per minute and added to PostgreSQL with the offsets, by one collector
   whose consumer has already joined its group. Target: >= 100,000 events/s.
4. Freshness: `prescaler collect` in loop mode (real clock, default settle) while a producer sends a steady
   stream; for every event, the time from its delivery to the commit of the transaction that counted it
   (the partition's stored offset passing it, polled every 100 ms). Target: p99 < 70 s.

Reports, never asserts: the exit code is non-zero only on a crash.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' Prometheus launcher: one way to start it everywhere

import numpy as np  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from prescaler import db  # noqa: E402
from prescaler.collect.config import CollectorConfig, FeedSpec, KafkaSpec, PrometheusSpec  # noqa: E402
from prescaler.collect.kafka import KafkaFeed  # noqa: E402
from prescaler.collect.prometheus import PrometheusFeed, floor_minute  # noqa: E402
from prescaler.collect.promql import QueryTemplate  # noqa: E402
from prescaler.history import default_source  # noqa: E402
from prescaler_dev import pgserver  # noqa: E402
from prescaler_dev.kafka import KafkaBroker  # noqa: E402
from promserver import PrometheusServer  # noqa: E402

MINUTE = timedelta(minutes=1)
BACKFILL_DAYS = 14
RECENT_MINUTES = 90


def _feed(url: str, metric: str, services: list[str], backfill: timedelta, engine: Engine,
          concurrency: int) -> PrometheusFeed:
    spec = FeedSpec(name="bench", source="default", kind="prometheus", prometheus=PrometheusSpec(
        url=url, query=QueryTemplate(f'sum({metric}{{service="$service"}})'), services=tuple(services),
        backfill=backfill))
    config = CollectorConfig(path=Path("bench"), sources={"default": default_source()}, feeds=(spec,))
    return PrometheusFeed(config.feeds[0], default_source(), engine, concurrency=concurrency)


def _history(end: datetime, services: int) -> str:
    """OpenMetrics text: 14 days of one series, and the last RECENT_MINUTES of `services` more."""
    lines = ["# TYPE backfill_requests_per_minute gauge"]
    first = end - (BACKFILL_DAYS * 1440 - 1) * MINUTE
    t0 = int(first.timestamp())
    lines += [f'backfill_requests_per_minute{{service="one"}} {1000 + i % 977} {t0 + 60 * i}'
              for i in range(BACKFILL_DAYS * 1440)]
    lines.append("# TYPE many_requests_per_minute gauge")
    r0 = int((end - (RECENT_MINUTES - 1) * MINUTE).timestamp())
    for s in range(services):
        lines += [f'many_requests_per_minute{{service="svc-{s:04d}"}} {s + i} {r0 + 60 * i}'
                  for i in range(RECENT_MINUTES)]
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


class Databases:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.engines: list[Engine] = []
        pgserver.ensure_running()

    def fresh(self) -> Engine:
        name = f"prescaler_bench_collect_{len(self.names)}_{int(time.time())}"
        engine = db.make_engine(pgserver.create_database(name))
        db.migrate(engine)
        self.names.append(name)
        self.engines.append(engine)
        return engine

    def drop(self) -> None:
        for engine in self.engines:
            engine.dispose()
        for name in self.names:
            pgserver.drop_database(name)


def _producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.num.messages": 10_000,
                     "queue.buffering.max.messages": 2_000_000, "compression.type": "lz4",
                     "enable.idempotence": True, "log_level": 0})


def _produce(producer: Any, topic: str, values: list[bytes], keys: list[bytes]) -> None:
    for value, key in zip(values, keys, strict=True):
        while True:
            try:
                producer.produce(topic, value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)


def _events(n: int, start: datetime, seconds: float) -> tuple[list[bytes], list[bytes]]:
    """`n` events spread evenly over `seconds` from `start`, 20 services x 10 endpoints."""
    step = seconds / n
    values, keys = [], []
    for i in range(n):
        service = f"svc-{i % 20:02d}"
        stamp = (start + timedelta(seconds=i * step)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        values.append(json.dumps({"ts": stamp, "service": service, "endpoint": f"/api/v1/e{i % 10}"}).encode())
        keys.append(service.encode())
    return values, keys


def bench_kafka_throughput(broker: KafkaBroker, dbs: Databases, events: int) -> None:
    topic = "bench-throughput"
    broker.create_topic(topic, partitions=4)
    engine = dbs.fresh()
    spec = FeedSpec(name="bench-kafka", source="default", kind="kafka", kafka=KafkaSpec(
        bootstrap_servers=(broker.bootstrap,), topic=topic, group="bench-throughput"))
    feed = KafkaFeed(spec, default_source(), engine, once=True)
    stop = threading.Event()
    newest = floor_minute(datetime.now(UTC))
    joined = feed.collect(newest, stop)  # join the group on the empty topic: not part of the measure
    assert not joined.errors, joined.errors
    t = time.perf_counter()
    values, keys = _events(events, floor_minute(datetime.now(UTC)) - timedelta(minutes=60), 50 * 60)
    producer = _producer(broker.bootstrap)
    _produce(producer, topic, values, keys)
    print(f"Kafka: {events:,} events produced in {time.perf_counter() - t:.1f}s (not measured)")
    load = os.getloadavg()[0]
    t, cpu = time.perf_counter(), time.process_time()
    report = feed.collect(newest, stop)
    seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
    feed.close()
    assert not report.errors and report.messages == events, (report.errors, report.messages)
    with engine.connect() as conn:
        total = conn.execute(sa.text("SELECT sum(requests) FROM traffic_log")).scalar_one()
    assert total == events, total
    rate = events / seconds
    verdict = "PASS" if rate >= 100_000 else "FAIL"
    print(f"Kafka throughput: {events:,} events consumed, aggregated into {report.rows_written:,} row upserts and "
          f"written with their offsets in {seconds:.2f}s = {rate:,.0f} events/s [{verdict}: target >= 100,000] "
          f"({os.cpu_count()} cores shared with the broker and PostgreSQL, load average {load:.1f}); the collector "
          f"used {cpu_seconds:.2f} CPU-seconds = {events / cpu_seconds:,.0f} events per CPU-second")


def bench_kafka_freshness(broker: KafkaBroker, dbs: Databases, minutes: float, rate: int) -> None:
    topic = "bench-freshness"
    broker.create_topic(topic, partitions=2)
    engine = dbs.fresh()
    url = engine.url.render_as_string(hide_password=False)
    work = Path(tempfile.mkdtemp(prefix="bench-collect-"))
    config = work / "collector.yaml"
    config.write_text(json.dumps({"feeds": [{"name": "fresh", "kafka": {
        "bootstrap_servers": broker.bootstrap, "topic": topic, "group": "bench-freshness"}}]}))
    log = (work / "collector.log").open("wb")
    collector = subprocess.Popen([sys.executable, "-m", "prescaler.cli", "collect", "--config", str(config),
                                  "--database-url", url, "--metrics-port", "0", "--no-leader-election"],
                                 stdout=log, stderr=subprocess.STDOUT)
    delivered: list[tuple[int, int, float]] = []  # (partition, offset, delivery time)

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            delivered.append((msg.partition(), msg.offset(), time.time()))

    committed: list[tuple[float, dict[int, int]]] = []
    stop = threading.Event()

    def watch() -> None:
        query = sa.text("SELECT partition, next_offset FROM collector_kafka_offsets WHERE feed = 'fresh'")
        while not stop.is_set():
            with engine.connect() as conn:
                committed.append((time.time(), {int(p): int(o) for p, o in conn.execute(query)}))
            stop.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    producer = _producer(broker.bootstrap)
    end = time.time() + minutes * 60
    sent = 0
    try:
        while time.time() < end:
            now = datetime.now(UTC)
            for i in range(rate // 10):
                service = f"svc-{(sent + i) % 20:02d}"
                producer.produce(topic, json.dumps({"ts": now.isoformat(), "service": service,
                                                    "endpoint": "/"}).encode(),
                                 key=service.encode(), on_delivery=on_delivery)
            sent += rate // 10
            producer.poll(0)
            time.sleep(0.1)
        producer.flush(60)
        settle_until = time.time() + 100  # the last events wait for the next cycle
        while time.time() < settle_until and not _all_committed(delivered, committed):
            time.sleep(1)
    finally:
        stop.set()
        watcher.join(5)
        collector.terminate()
        collector.wait(60)
        log.close()
    ages = _freshness(delivered, committed)
    if not ages.size:
        print(f"Kafka freshness: nothing committed; see {work / 'collector.log'}")
        return
    p50, p99, worst = np.percentile(ages, 50), np.percentile(ages, 99), ages.max()
    verdict = "PASS" if p99 < 70 else "FAIL"
    print(f"Kafka freshness ({minutes:g} min at {rate}/s, {ages.size:,} events, loop mode, one-minute cycle, "
          f"settle 20s): produced -> row committed p50 {p50:.1f}s, p99 {p99:.1f}s, max {worst:.1f}s "
          f"[{verdict}: target p99 < 70 s]")


def _all_committed(delivered: list[tuple[int, int, float]], committed: list[tuple[float, dict[int, int]]]) -> bool:
    if not delivered or not committed:
        return False
    last = committed[-1][1]
    ends: dict[int, int] = {}
    for p, o, _ in delivered:
        ends[p] = max(ends.get(p, -1), o)
    return all(last.get(p, 0) > o for p, o in ends.items())


def _freshness(delivered: list[tuple[int, int, float]], committed: list[tuple[float, dict[int, int]]]) -> np.ndarray:
    """Seconds from each event's delivery to the first poll that saw its partition's stored offset pass it."""
    ages = []
    by_partition: dict[int, list[tuple[int, float]]] = {}
    for p, o, t in delivered:
        by_partition.setdefault(p, []).append((o, t))
    for p, items in by_partition.items():
        items.sort()
        seen = [(t, offsets.get(p, 0)) for t, offsets in committed]
        j = 0
        for offset, t in items:
            while j < len(seen) and seen[j][1] <= offset:
                j += 1
            if j == len(seen):
                break
            ages.append(seen[j][0] - t)
    return np.asarray(ages)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("prometheus", "kafka"))
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--kafka-events", type=int, default=1_000_000)
    p.add_argument("--freshness-minutes", type=float, default=4.0)
    p.add_argument("--freshness-rate", type=int, default=500, help="events per second during the freshness run")
    args = p.parse_args(argv)
    if args.only != "prometheus":
        dbs = Databases()
        broker = KafkaBroker(Path(tempfile.mkdtemp(prefix="bench-kafka-"))).start()
        try:
            bench_kafka_throughput(broker, dbs, args.kafka_events)
            if args.freshness_minutes > 0:
                bench_kafka_freshness(broker, dbs, args.freshness_minutes, args.freshness_rate)
        finally:
            broker.stop()
            dbs.drop()
    if args.only == "kafka":
        return 0
    levels = [int(c) for c in args.concurrency.split(",")]
    # The history ends an hour ago: blocks made by promtool must not overlap the head of a running server.
    end = floor_minute(datetime.now(UTC)) - timedelta(hours=1)
    prom = PrometheusServer([], retention="60d")
    dbs = Databases()
    started = time.perf_counter()
    prom.backfill_openmetrics(_history(end, args.services))
    prom.start()
    print(f"Prometheus {prom.url}: {BACKFILL_DAYS} days of 1 series and {RECENT_MINUTES} minutes of "
          f"{args.services} series loaded in {time.perf_counter() - started:.1f}s")
    stop = threading.Event()
    try:
        times = []
        for _ in range(3):
            feed = _feed(prom.url, "backfill_requests_per_minute", ["one"], timedelta(days=BACKFILL_DAYS),
                         dbs.fresh(), 1)
            t = time.perf_counter()
            report = feed.collect(end, stop)
            times.append(time.perf_counter() - t)
            feed.close()
            assert not report.errors, report.errors
        verdict = "PASS" if min(times) < 10 else "FAIL"
        print(f"backfill of {BACKFILL_DAYS} days x 1 minute, one series: {report.rows_written:,} rows in "
              f"{min(times):.2f}s (best of 3; {', '.join(f'{x:.2f}' for x in times)}) "
              f"[{verdict}: target < 10 s]")

        services = [f"svc-{s:04d}" for s in range(args.services)]
        for level in levels:
            engine = dbs.fresh()
            feed = _feed(prom.url, "many_requests_per_minute", services, timedelta(hours=1), engine, level)
            t = time.perf_counter()
            first = feed.collect(end - 10 * MINUTE, stop)
            first_s = time.perf_counter() - t
            t = time.perf_counter()
            steady = feed.collect(end - 9 * MINUTE, stop)
            steady_s = time.perf_counter() - t
            feed.close()
            assert not first.errors and not steady.errors, (first.errors[:1], steady.errors[:1])
            assert steady.rows_written == len(services), steady.rows_written
            per_minute = len(services) / steady_s * 60
            verdict = "PASS" if per_minute >= 1000 else "FAIL"
            print(f"{len(services)} series, concurrency {level}: steady cycle (1 new minute each) {steady_s:.2f}s "
                  f"= {per_minute:,.0f} series/minute [{verdict}: target >= 1,000]; first sight (1h backfill, "
                  f"{first.rows_written:,} rows) {first_s:.2f}s")
    finally:
        prom.stop()
        dbs.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

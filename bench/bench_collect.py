"""The Prometheus feed of `prescaler collect` against a real Prometheus and PostgreSQL.

    python bench/bench_collect.py [--services 1000] [--concurrency 1,4,8]

1. Backfill: 14 days x 1 minute of one series (history loaded with promtool, as an administrator would),
   collected from first sight into a fresh database, best of three. Target: < 10 s.
2. Series per minute: N services with a sample every minute; one steady-state cycle (one new minute per
   series: a range query and a transaction each) at several concurrencies, and the first-sight cycle that
   backfills their last hour. Target: >= 1,000 series collected per minute.

Reports, never asserts: the exit code is non-zero only on a crash.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' Prometheus launcher: one way to start it everywhere

from sqlalchemy.engine import Engine  # noqa: E402

from prescaler import db  # noqa: E402
from prescaler.collect.config import CollectorConfig, FeedSpec, PrometheusSpec  # noqa: E402
from prescaler.collect.prometheus import PrometheusFeed, floor_minute  # noqa: E402
from prescaler.collect.promql import QueryTemplate  # noqa: E402
from prescaler.history import default_source  # noqa: E402
from prescaler_dev import pgserver  # noqa: E402
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--concurrency", default="1,4,8")
    args = p.parse_args(argv)
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

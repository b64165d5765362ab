"""Driving the feeds: once (`--once`), or forever on a one-minute cadence with /metrics, /healthz and SIGTERM.

A cycle wakes `settle` after each whole minute, so the minute that just ended has had time to be scraped,
and asks every feed for the minutes that are complete up to then. Feeds that need one writer (Prometheus) run
only on the replica that holds the lease (`LeaderGate`: `leader.LeaseElector`, or `AlwaysLeader` without
election) and stop before their next write once it may have lost it; a replica that becomes leader runs a
cycle at once. Kafka feeds run on every replica: the consumer group shares their partitions out.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Protocol, TextIO

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.engine import Engine

from prescaler import db
from prescaler.clock import Clock
from prescaler.collect import metrics
from prescaler.collect.config import MINUTE, CollectorConfig
from prescaler.collect.feed import CollectError, Feed, FeedReport, StopSignal
from prescaler.collect.kafka import KafkaFeed
from prescaler.collect.leader import ElectionSettings, LeaseElector, coordination_api
from prescaler.collect.prometheus import PrometheusFeed, floor_minute
from prescaler.errors import DataUnavailable

log = logging.getLogger("prescaler.collect")

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3


class LeaderGate(Protocol):
    """Whether this process may write now; checked before every cycle."""

    def is_leader(self) -> bool: ...


class AlwaysLeader:
    def is_leader(self) -> bool:
        return True


class LeaderStop:
    """Reads as set once the process stops or this replica may no longer be sure it holds the lease."""

    def __init__(self, stop: threading.Event, leader: LeaderGate) -> None:
        self.stop = stop
        self.leader = leader

    def is_set(self) -> bool:
        return self.stop.is_set() or not self.leader.is_leader()


def build_feeds(config: CollectorConfig, engine: Engine, *, concurrency: int = 4,
                clock: Clock | None = None, once: bool = False) -> list[Feed]:
    feeds: list[Feed] = []
    for spec in config.feeds:
        source = config.sources[spec.source]
        if spec.kind == "prometheus":
            feeds.append(PrometheusFeed(spec, source, engine, concurrency=concurrency))
        elif spec.kind == "kafka":
            feeds.append(KafkaFeed(spec, source, engine, clock=clock, once=once))
        else:  # the config parser only accepts kinds that are built here
            raise AssertionError(f"no collector for feed kind {spec.kind!r}")
    return feeds


def newest_complete(now: datetime, settle: timedelta) -> datetime:
    """End of the newest minute that is complete and has had `settle` to reach Prometheus."""
    return floor_minute(now - settle)


def next_wake(now: datetime, settle: timedelta) -> datetime:
    return newest_complete(now, settle) + MINUTE + settle


def run_cycle(feeds: list[Feed], newest: datetime, stop: threading.Event,
              leader: LeaderGate | None = None) -> list[FeedReport]:
    """Every feed once; feeds that need the lease only while this replica holds it."""
    reports = []
    for feed in feeds:
        if stop.is_set():
            break
        signal_: StopSignal = stop
        if feed.needs_leader and leader is not None:
            if not leader.is_leader():
                continue
            signal_ = LeaderStop(stop, leader)
        started = time.monotonic()
        report = feed.collect(newest, signal_)
        metrics.record(report, now=time.time(), seconds=time.monotonic() - started)
        reports.append(report)
    return reports


def describe_errors(report: FeedReport) -> list[str]:
    """One line per error kind of a feed (a Prometheus outage fails every series the same way)."""
    by_kind: dict[str, list[tuple[str, CollectError]]] = {}
    for series, error in report.errors:
        by_kind.setdefault(error.kind, []).append((series, error))
    lines = []
    for kind, items in by_kind.items():
        series, error = items[0]
        who = f"service {series!r}" if series else "feed"
        more = f" (and {len(items) - 1} more series)" if len(items) > 1 else ""
        detail = " ".join(str(error).split())  # one line per error, whatever the server's message holds
        lines.append(f"feed {report.feed!r}: {who}{more}: {kind}: {detail}")
    return lines


def summary(report: FeedReport) -> str:
    marks = [p.collected_until for p in report.progress if p.collected_until is not None]
    until = f"; collected until {min(marks):%Y-%m-%d %H:%M}Z" if marks else ""
    if report.messages is not None:
        dropped = sum(report.dropped.values())
        why = f" ({', '.join(f'{r}: {n:,}' for r, n in sorted(report.dropped.items()))})" if dropped else ""
        return (f"feed {report.feed!r}: {len(report.progress)} partitions, {report.messages:,} messages, "
                f"{report.rows_written:,} rows written, {dropped:,} messages dropped{why}, "
                f"{report.backlog or 0:,} behind{until}")
    skipped = f", {sum(report.skipped.values()):,} samples skipped ({dict(report.skipped)})" if report.skipped else ""
    return (f"feed {report.feed!r}: {len(report.progress)} series, {report.minutes:,} minutes evaluated, "
            f"{report.rows_written:,} rows written{skipped}{until}")


def exit_code(reports: list[FeedReport]) -> int:
    errors = [e for r in reports for _, e in r.errors]
    if any(not e.transient for e in errors):
        return EXIT_CONFIG
    if errors:
        return EXIT_UNAVAILABLE
    return EXIT_OK


def collect_once(config: CollectorConfig, engine: Engine, *, settle: timedelta, clock: Clock | None = None,
                 concurrency: int = 4, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Everything complete up to now (backfill included); the exit code of `prescaler collect --once`."""
    out = out or sys.stdout
    err = err or sys.stderr
    clock = clock or Clock()
    feeds = build_feeds(config, engine, concurrency=concurrency, clock=clock, once=True)
    try:
        newest = newest_complete(clock.now(), settle)
        reports = run_cycle(feeds, newest, threading.Event())
    finally:
        for feed in feeds:
            feed.close()
    for report in reports:
        print(summary(report), file=out)
        for line in describe_errors(report):
            print(f"prescaler: error: {line}", file=err)
    return exit_code(reports)


@dataclass
class Health:
    """Alive while the loop keeps turning; a wedged loop fails the liveness probe and gets restarted."""

    max_silence: float = 600.0
    beat: float = 0.0

    def touch(self) -> None:
        self.beat = time.monotonic()

    def ok(self) -> bool:
        return time.monotonic() - self.beat < self.max_silence


def serve_http(port: int, health: Health, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """/metrics (the collector's registry) and /healthz on one port, in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics.REGISTRY))
            elif path == "/healthz":
                healthy = health.ok()
                self._send(200 if healthy else 503, "text/plain", b"ok\n" if healthy else b"stalled\n")
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would drown the log

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="collector-http", daemon=True).start()
    return server


def run_forever(config: CollectorConfig, engine: Engine, *, settle: timedelta, port: int | None,
                clock: Clock | None = None, leader: LeaderGate | None = None, concurrency: int = 4,
                stop: threading.Event | None = None, wake: threading.Event | None = None,
                on_cycle: Callable[[list[FeedReport]], None] | None = None) -> int:
    """Collect every minute until SIGTERM/SIGINT (or `stop`); returns 0 after a clean stop.

    `wake` set from another thread (the elector, on acquiring the lease) starts a cycle at once."""
    clock = clock or Clock()
    if leader is None:
        leader = AlwaysLeader()
        metrics.LEADER.set(1)
    stop = stop or threading.Event()
    wake = wake or threading.Event()
    health = Health()
    health.touch()
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s: stopping after the current write", signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    server = serve_http(port, health) if port else None
    feeds = build_feeds(config, engine, concurrency=concurrency, clock=clock)
    migrated = False
    log.info("collecting %d feeds every minute (settle %ss)", len(feeds), settle.total_seconds())
    try:
        while not stop.is_set():
            health.touch()
            if not migrated:
                try:
                    db.migrate(engine)
                    migrated = True
                except DataUnavailable as exc:  # the database may come up after us: retry next minute
                    log.warning("%s", exc)
            wake.clear()
            if migrated:
                reports = run_cycle(feeds, newest_complete(clock.now(), settle), stop, leader)
                for report in reports:
                    if report.rows_written or report.errors or report.dropped:
                        log.info("%s", summary(report))
                    for line in describe_errors(report):
                        log.warning("%s", line)
                if on_cycle is not None:
                    on_cycle(reports)
                if any(r.backlog and not r.errors for r in reports):
                    wake.set()  # a Kafka feed stopped at its cycle budget with more to read: go on at once
            health.touch()
            now = clock.now()
            _sleep(clock.real_seconds(next_wake(now, settle) - now), stop, wake)
    finally:
        for feed in feeds:
            feed.close()
        if server is not None:
            server.shutdown()
            server.server_close()
    log.info("stopped")
    return EXIT_OK


def _sleep(seconds: float, stop: threading.Event, wake: threading.Event) -> None:
    deadline = time.monotonic() + max(0.0, seconds)
    while not stop.is_set() and not wake.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        stop.wait(min(left, 0.25))


def main(config: CollectorConfig, engine: Engine, *, once: bool, settle: timedelta, port: int | None,
         concurrency: int = 4, election: ElectionSettings | None = None, clock: Clock | None = None,
         log_level: str = "INFO") -> int:
    """`prescaler collect`: `--once` never takes part in the election (feeds are idempotent, or fenced)."""
    clock = clock or Clock()
    if once:
        db.migrate(engine)
        return collect_once(config, engine, settle=settle, clock=clock, concurrency=concurrency)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if election is None:
        return run_forever(config, engine, settle=settle, port=port, clock=clock, concurrency=concurrency)
    election.check()
    wake = threading.Event()
    elector = LeaseElector(coordination_api(), election, on_acquired=wake.set).start()
    log.info("leader election on lease %s/%s as %s (duration %ss, renew deadline %ss)", election.namespace,
             election.lease_name, elector.identity, election.lease_duration.total_seconds(),
             election.renew_deadline.total_seconds())
    try:
        return run_forever(config, engine, settle=settle, port=port, clock=clock, leader=elector,
                           concurrency=concurrency, wake=wake)
    finally:
        elector.stop(release=True)

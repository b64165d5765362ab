"""The Prometheus path end to end, on the real clock: exporter → Prometheus → collector → PostgreSQL → operator
→ `/scale`.

A small exporter replays a trace as a request counter (`live_requests_total`, what an ingress controller or an
instrumented app exports); Debian's Prometheus holds its 14 days of history (loaded with promtool, one sample
every 15 s) and scrapes the live counter every second. `prescaler collect` in loop mode turns
`sum(increase(...[1m]))` into one row per minute, backfilling the 14 days first; the operator forecasts from
those rows. The trace has a daily burst that starts a few minutes after the test does: the operator must scale
the Deployment up before the burst arrives, while the load it observes is still the base load.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import yaml

from collector_process import CollectorProcess
from prescaler.clock import Clock
from prescaler.collect.prometheus import floor_minute
from prescaler_dev.localcluster import LocalCluster
from promserver import PrometheusServer
from waiting import wait_for

from .operator_support import (
    OperatorProcess,
    apply,
    deployment_yaml,
    get_json,
    install_crds,
    namespace_yaml,
    scaler_yaml,
)

NS = "e2e-prometheus"
SERVICE = "live-api"
COUNTER = "live_requests"  # exposed as live_requests_total
MINUTE = timedelta(minutes=1)
HISTORY = timedelta(days=14)
BASE, BURST = 120, 1200  # requests per minute
BURST_LENGTH = timedelta(minutes=8)
PER_REPLICA = 100  # requests per replica per minute
LEAD = timedelta(minutes=2)
BURST_REPLICAS = math.ceil(BURST * 1.10 / PER_REPLICA)  # 14 with the 10% headroom
# The burst starts this long after the test's first whole minute: time for Prometheus, the backfill and the
# operator's start and first fit, and more than the lead time, so that the first decisions see only base load.
BURST_AFTER = timedelta(minutes=5)


class Trace:
    """Per-minute load from `start`: BASE, and BURST for BURST_LENGTH every day from `burst` on; the counter is
    its integral (the rate is constant within each minute)."""

    def __init__(self, start: datetime, burst: datetime, end: datetime) -> None:
        self.start = start
        n = int((end - start) / MINUTE)
        minutes = np.arange(n)
        offset = ((burst - start) / MINUTE) % 1440
        in_burst = (minutes - offset) % 1440 < BURST_LENGTH / MINUTE
        self.load = np.where(in_burst, BURST, BASE).astype(float)
        self.cumulative = np.concatenate([[0.0], np.cumsum(self.load)])

    def minute(self, t: datetime) -> int:
        return int(self.load[int((t - self.start) / MINUTE)])

    def counter(self, t: float) -> float:
        elapsed = t - self.start.timestamp()
        m = int(elapsed // 60)
        return float(self.cumulative[m] + (elapsed - 60 * m) / 60 * self.load[m])


class _Exporter(BaseHTTPRequestHandler):
    trace: Trace

    def do_GET(self) -> None:
        body = (f"# TYPE {COUNTER}_total counter\n"
                f'{COUNTER}_total{{service="{SERVICE}"}} {self.trace.counter(time.time()):.3f}\n').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _history_openmetrics(trace: Trace, until: float) -> str:
    """The counter every 15 s from the trace's start to `until`, as OpenMetrics for promtool."""
    stamps = np.arange(trace.start.timestamp() + 15, until, 15.0)
    lines = [f"# TYPE {COUNTER} counter"]
    lines += [f'{COUNTER}_total{{service="{SERVICE}"}} {trace.counter(t):.3f} {t:.0f}' for t in stamps]
    return "\n".join(lines) + "\n# EOF\n"


@pytest.fixture
def exporter(request: pytest.FixtureRequest) -> Iterator[tuple[Trace, str]]:
    t0 = floor_minute(datetime.now(UTC)) + MINUTE
    trace = Trace(t0 - HISTORY, t0 + BURST_AFTER, t0 + timedelta(hours=2))
    handler = type("Exporter", (_Exporter,), {"trace": trace})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield trace, f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_exporter_to_prometheus_to_collector_to_operator_scales_ahead_of_the_burst(
        cluster: LocalCluster, pg_url: str, exporter: tuple[Trace, str], tmp_path: Path) -> None:
    trace, target = exporter
    burst = trace.start + HISTORY + BURST_AFTER
    prom = PrometheusServer([target], scrape_interval="1s", retention="30d", workdir=tmp_path / "prometheus")
    prom.workdir.mkdir()
    prom.backfill_openmetrics(_history_openmetrics(trace, time.time() - 5))
    scraped_from = datetime.now(UTC)  # samples before this are the backfill's; from here on, scraped
    prom.start()
    config = tmp_path / "collector.yaml"
    config.write_text(yaml.safe_dump({"sources": {"default": {}}, "feeds": [{
        "name": "ingress", "source": "default", "prometheus": {
            "url": prom.url, "query": f'sum(increase({COUNTER}_total{{service="$service"}}[1m]))',
            "services": [SERVICE], "backfill": "15d"}}]}, sort_keys=False))
    collector = CollectorProcess(["--config", str(config), "--database-url", pg_url, "--settle", "10s",
                                  "--no-leader-election"], tmp_path / "collector.log")
    engine = sa.create_engine(pg_url)
    operator: OperatorProcess | None = None
    replicas: list[tuple[datetime, int, int]] = []
    try:
        collector.start()

        def stored() -> dict[datetime, int]:
            with engine.connect() as conn:
                return {r[0].astimezone(UTC): int(r[1]) for r in conn.execute(sa.text(
                    "SELECT ts, requests FROM traffic_log WHERE service = :s"), {"s": SERVICE})}

        wait_for("the 14-day backfill", lambda: len(stored()) >= HISTORY / MINUTE - 10, timeout=180)
        install_crds(cluster)
        apply(cluster, namespace_yaml(NS))
        apply(cluster, deployment_yaml(NS, "web"))
        apply(cluster, scaler_yaml(NS, "web", "web", service=SERVICE, per_replica=PER_REPLICA, step="1m",
                                   horizon="2h", interval="30s", lead="2m", refresh="1h"))
        operator = OperatorProcess(cluster, pg_url, Clock(), tmp_path / "operator.log").start()
        assert datetime.now(UTC) < burst - LEAD - MINUTE, "too slow a start: the burst is already within reach"
        while datetime.now(UTC) < burst + MINUTE:
            assert operator.alive(), f"operator died; log:\n{(tmp_path / 'operator.log').read_text()[-4000:]}"
            d = get_json(cluster, "-n", NS, "get", "deployment", "web")
            replicas.append((datetime.now(UTC), int(d["spec"]["replicas"]),
                             int(d["status"].get("readyReplicas") or 0)))
            time.sleep(0.5)
        assert collector.metric("prescaler_collector_errors_total") == 0, collector.log_tail()
        rows = stored()
    finally:
        if operator is not None:
            operator.stop()
        collector.stop()
        prom.stop()
        with engine.connect() as conn:
            decisions = conn.execute(sa.text(
                "SELECT decided_at, desired_replicas, observed_load FROM scaling_decisions "
                "WHERE namespace = :ns AND applied ORDER BY decided_at"), {"ns": NS}).all()
        engine.dispose()
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)

    # Scaled up before the burst, on the forecast: the decision that asked for the burst's replicas saw base load.
    up = next((d for d in decisions if d[1] >= BURST_REPLICAS), None)
    assert up is not None, f"never asked for {BURST_REPLICAS} replicas: {decisions}"
    assert up[0] < burst - MINUTE, f"asked for the burst's replicas at {up[0]:%H:%M:%S}, the burst began {burst:%H:%M}"
    assert up[2] is not None and up[2] <= BASE * 1.5, f"the scale-up followed the load, not the forecast: {up}"
    ready_at_burst = next(r for t, _, r in replicas if t >= burst)
    assert ready_at_burst >= BURST_REPLICAS, f"only {ready_at_burst} ready when the burst began: {replicas[-20:]}"
    # Every minute of the backfilled history exactly; the live minutes, scraped every second, within 2%.
    history_end = floor_minute(scraped_from) - 2 * MINUTE
    old = {t: v for t, v in rows.items() if t < history_end}
    assert len(old) >= HISTORY / MINUTE - 10
    assert all(v == trace.minute(t) for t, v in old.items()), \
        [(t, v, trace.minute(t)) for t, v in old.items() if v != trace.minute(t)][:5]
    # The minute in which scraping began is partial (Prometheus starts and scrapes for the first time some
    # seconds into it), so the live check starts with the minute after it.
    live = {t: v for t, v in rows.items() if t >= history_end + 4 * MINUTE}
    assert live, "no live minute collected"
    off = [(t, v, trace.minute(t)) for t, v in live.items() if abs(v - trace.minute(t)) > 0.02 * trace.minute(t)]
    assert not off, off
    print(f"PROMETHEUS PATH burst at {burst:%H:%M:%S}; burst replicas asked at {up[0]:%H:%M:%S} with observed "
          f"load {up[2]:.0f}/min; {len(old):,} history minutes exact, {len(live)} live minutes within 2%")


"""Every query of the dashboard's collector row returns data from a real `prescaler collect` (its own /metrics
scraped by Debian's Prometheus every second).

The collector runs on a clock 30x real time, starting 40 minutes before the end of two days of history loaded
into that same Prometheus with promtool, so a cycle comes every two real seconds, with three feeds: a
Prometheus feed that collects the history (rows, backfill, lag), one whose query gives negative values (every
sample skipped, by reason), one pointing at a port where nothing listens (errors by kind), and a Kafka feed on a
real broker with per-minute counts and two messages that are not JSON (messages, consumer lag, drops by
reason). `tests/e2e/test_dashboard_live.py` runs the other panels against a real operator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer

from collector_process import CollectorProcess
from prescaler.clock import Clock
from prescaler.collect.prometheus import floor_minute
from prescaler_dev.kafka import KafkaBroker, free_port
from promserver import PrometheusServer, has_finite_value
from unit.test_dashboard import Query, Window, dashboard_queries, load_dashboard, render_promql
from waiting import wait_for

COLLECTOR_PANELS = range(40, 50)
QUERIES = [q for q in dashboard_queries(load_dashboard()) if q.panel_id in COLLECTOR_PANELS and q.kind == "promql"]
MINUTE = timedelta(minutes=1)
SPEED = 30.0
SCRAPE = timedelta(seconds=1)
TOPIC = "dashboard-requests"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[tuple[PrometheusServer, Window]]:
    workdir = tmp_path_factory.mktemp("dashboard-collector")
    history_end = floor_minute(datetime.now(UTC)) - timedelta(hours=1)
    stamps = [history_end - i * MINUTE for i in range(2 * 1440)][::-1]
    lines = ["# TYPE shop_requests_per_minute gauge"]
    lines += [f'shop_requests_per_minute{{service="shop"}} {100 + i % 60} {int(t.timestamp())}'
              for i, t in enumerate(stamps)]
    lines.append("# EOF")
    port = free_port()
    prom = PrometheusServer([f"127.0.0.1:{port}"], scrape_interval=f"{SCRAPE.total_seconds():g}s",
                            retention="30d", workdir=workdir / "prometheus")
    prom.workdir.mkdir()
    prom.backfill_openmetrics("\n".join(lines) + "\n")
    broker = KafkaBroker(workdir / "kafka").start()
    collector: CollectorProcess | None = None
    try:
        prom.start()
        broker.create_topic(TOPIC, 2)
        clock = Clock.scaled_from(history_end - timedelta(minutes=40), SPEED)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "log_level": 0})
        start = floor_minute(clock.now()) - 30 * MINUTE
        for i in range(30):
            ts = (start + i * MINUTE).strftime("%Y-%m-%dT%H:%M:%SZ")
            producer.produce(TOPIC, json.dumps({"ts": ts, "service": "shop", "endpoint": "/cart",
                                                "requests": 40 + i}).encode(), key=b"shop")
        for junk in (b"not json", b"{broken"):
            producer.produce(TOPIC, junk, key=b"shop")
        assert producer.flush(60) == 0
        query = 'sum(shop_requests_per_minute{service="$service"})'
        feeds = [
            {"name": "shop", "source": "default",
             "prometheus": {"url": prom.url, "query": query, "services": ["shop"], "backfill": "1d"}},
            {"name": "negative", "source": "default",
             "prometheus": {"url": prom.url, "query": f"-{query}", "services": ["shop"], "backfill": "1h"}},
            {"name": "nowhere", "source": "default",
             "prometheus": {"url": f"http://127.0.0.1:{free_port()}", "query": query, "services": ["shop"],
                            "backfill": "1h"}},
            {"name": "orders", "source": "default",
             "kafka": {"bootstrap_servers": broker.bootstrap, "topic": TOPIC, "group": "dashboard",
                       "format": "counts", "services": ["shop"]}},
        ]
        config = workdir / "collector.yaml"
        config.write_text(yaml.safe_dump({"sources": {"default": {}}, "feeds": feeds}, sort_keys=False))
        collector = CollectorProcess(["--config", str(config), "--database-url", pg_url, "--settle", "5s",
                                      "--no-leader-election"], workdir / "collector.log", env=clock.env(), port=port)
        collector.start()
        wait_for("Prometheus scraping the collector",
                 lambda: any(t["health"] == "up" for t in prom.targets_health()), timeout=60)
        real_start = time.time()
        wait_for("the collector's series in Prometheus, over a few cycles", lambda: all(
            has_finite_value(prom.query(f'{name}{{feed="{feed}"}}')) for name, feed in (
                ("prescaler_collector_newest_minute_timestamp_seconds", "shop"),
                ("prescaler_collector_samples_skipped_total", "negative"),
                ("prescaler_collector_errors_total", "nowhere"),
                ("prescaler_collector_messages_dropped_total", "orders"),
                ("prescaler_collector_consumer_lag_messages", "orders")))
            and time.time() > real_start + 20, timeout=180)
        time.sleep(3 * SCRAPE.total_seconds())
        end = datetime.now(UTC)
        yield prom, Window(end - timedelta(seconds=time.time() - real_start + 5), end, timedelta(seconds=2), {},
                           scrape_interval=SCRAPE)
    finally:
        if collector is not None:
            collector.stop()
        prom.stop()
        broker.stop()


@pytest.mark.parametrize("query", QUERIES, ids=[q.where for q in QUERIES])
def test_every_collector_panel_query_returns_data(live: tuple[PrometheusServer, Window], query: Query) -> None:
    prom, w = live
    expr = render_promql(query.text, w, query.where)
    result = prom.query(expr, w.end) if query.instant else prom.query_range(expr, w.start, w.end,
                                                                           w.step.total_seconds())
    assert result, f"{query.where}: no series for {expr}"
    assert has_finite_value(result), f"{query.where}: only NaN/Inf for {expr}: {result[:3]}"


def test_the_collector_row_is_all_checked() -> None:
    assert len({q.panel_id for q in QUERIES}) == 7, "a collector panel without a PromQL query to check?"
    assert Path(__file__).name in (Path(__file__).parent / "test_dashboard_live.py").read_text()

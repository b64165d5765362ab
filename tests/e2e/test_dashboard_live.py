"""Every query of the Grafana dashboard returns data against real servers fed by a real operator run.

Setup: simulated fitness traffic in PostgreSQL, the CRDs and the example workload + PredictiveScaler of
`manifests/examples/` (moved to a namespace of their own) on the local control plane, plus a scaler whose
target does not exist (so the error and condition panels have something to show), the operator as a real
process on a scaled clock, and Debian's Prometheus scraping its /metrics every second. Each panel target and
the annotation query are then rendered the way Grafana would (variables, $__range, $__rate_interval,
$__timeFilter, ...) and executed: PromQL against Prometheus, SQL against PostgreSQL (psycopg2).

Time: Prometheus samples carry real timestamps, the operator's decisions and the traffic carry simulated ones
(the scaled clock), so PromQL runs over the real test window and SQL over the simulated one.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Engine

from prescaler import ingest
from prescaler.clock import Clock
from prescaler_dev.localcluster import LocalCluster
from promserver import PrometheusServer, find_binary, free_port, has_finite_value
from unit.test_dashboard import Query, Window, dashboard_queries, load_dashboard, render_promql, render_sql

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests" / "examples" / "workout-api.yaml"
NAMESPACE = "dashboard-e2e"
SCALER = "workout-api"
ORPHAN = "orphan-api"  # a scaler whose target never exists: TargetNotFound errors, Ready=False

SPEED = 120.0  # one real second = two simulated minutes
START = datetime(2026, 3, 16, 16, 0, tzinfo=UTC)  # a Monday afternoon, before the evening peak
HISTORY_DAYS = 15
# Through the evening peak and the scale-down after it, and long enough for the service level's record to hold
# its 48 steps of forecasts against what came (hourly refits from 16:00: the calibration at a refit after 20:00).
RUN_UNTIL = START + timedelta(hours=7)
SCRAPE = timedelta(seconds=1)
STEP = timedelta(seconds=2)  # the query step ($__interval) of the PromQL range queries
SETUP_TIMEOUT = 900.0  # real seconds for fits and actions to show up (model auto fits Prophet)

QUERIES = dashboard_queries(load_dashboard())
# The collector's row (prescaler collect's own /metrics). This run has no collector, so its queries are run
# against the real Prometheus (which must accept them) here, and checked for data against a real collector in
# test_dashboard_collector_live.py.
COLLECTOR_PANELS = frozenset(range(40, 50))


@dataclass
class LiveRun:
    prom: PrometheusServer
    db_url: str
    metrics_text: str
    prom_window: Window
    sql_window: Window
    operator_log: Path


def _example_docs(namespace: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    for d in docs:
        d["metadata"]["namespace"] = namespace
    return docs


def _orphan(scaler: dict[str, Any]) -> dict[str, Any]:
    orphan = copy.deepcopy(scaler)
    orphan["metadata"]["name"] = ORPHAN
    orphan["spec"]["scaleTargetRef"]["name"] = ORPHAN
    return orphan


def _metrics_text(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


def _count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), {"ns": NAMESPACE, "name": SCALER}).scalar_one())


@pytest.fixture(scope="module")
def live(cluster: LocalCluster, pg_url: str, engine: Engine, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[LiveRun]:
    find_binary("prometheus", "PRESCALER_PROMETHEUS")  # fail before the slow setup when it is missing
    history_start = START - timedelta(days=HISTORY_DAYS)
    ingest.simulate(engine, start=history_start, days=HISTORY_DAYS + 1, step=timedelta(minutes=1), seed=7,
                    service="workout-api")

    cluster.kubectl("apply", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/predictivescalers.prescaler.dev", "--timeout=60s")
    docs = _example_docs(NAMESPACE)
    scaler = next(d for d in docs if d["kind"] == "PredictiveScaler")
    manifest = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}, *docs, _orphan(scaler)]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifest))

    workdir = tmp_path_factory.mktemp("dashboard-live")
    log_path = workdir / "operator.log"
    metrics_port, liveness_port = free_port(), free_port()
    clock = Clock.scaled_from(START, SPEED)
    env = {**cluster.env(), **clock.env(), "PRESCALER_DATABASE_URL": pg_url, "PRESCALER_TIMER_INTERVAL": "0.25",
           "PRESCALER_LOG_LEVEL": "INFO"}
    with log_path.open("ab") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "prescaler.cli", "run", "--namespace", NAMESPACE, "--peering", "",
             "--metrics-port", str(metrics_port), "--liveness-port", str(liveness_port), "--workers", "1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    prom = PrometheusServer([f"127.0.0.1:{metrics_port}"], scrape_interval=f"{SCRAPE.total_seconds():g}s",
                            workdir=workdir / "prometheus")
    prom.workdir.mkdir()

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-6000:]

    try:
        prom.start()
        real_start = time.time()
        deadline = time.monotonic() + SETUP_TIMEOUT
        # Enough to chart: the simulated run has passed the peak, a fit was observed, and at least one scale
        # action was applied and recorded.
        while True:
            assert operator.poll() is None, f"operator exited with {operator.returncode}:\n{log_tail()}"
            done = (
                clock.now() >= RUN_UNTIL
                and has_finite_value(prom.query(f'prescaler_fit_duration_seconds_count{{namespace="{NAMESPACE}"}}'))
                and has_finite_value(prom.query(f'prescaler_service_level_served_percent{{namespace="{NAMESPACE}"}}'))
                and _count(engine, "SELECT count(*) FROM scaling_decisions WHERE namespace = :ns AND name = :name "
                                   "AND applied AND direction <> 'none'") > 0
            )
            if done:
                break
            assert time.monotonic() < deadline, (
                f"not enough data after {SETUP_TIMEOUT:.0f}s (simulated now {clock.now():%H:%M});"
                f" operator log:\n{log_tail()}")
            time.sleep(2)
        text = _metrics_text(metrics_port)
        assert text, "operator /metrics unreachable"
        time.sleep(3 * SCRAPE.total_seconds())  # the last samples reach the TSDB
        real_end = time.time()
        variables = {"namespace": NAMESPACE, "scaler": SCALER}
        yield LiveRun(
            prom=prom,
            db_url=pg_url,
            metrics_text=text,
            prom_window=Window(datetime.fromtimestamp(real_start, UTC), datetime.fromtimestamp(real_end, UTC),
                               STEP, variables, scrape_interval=SCRAPE),
            sql_window=Window(history_start, clock.now(), timedelta(minutes=5), variables),
            operator_log=log_path,
        )
    finally:
        prom.stop()
        if operator.poll() is None:
            os.killpg(operator.pid, signal.SIGTERM)
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(operator.pid, signal.SIGKILL)
                operator.wait(timeout=10)
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def test_operator_metrics_pass_promtool(live: LiveRun) -> None:
    promtool = find_binary("promtool", "PRESCALER_PROMTOOL")
    proc = subprocess.run([promtool, "check", "metrics"], input=live.metrics_text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'prescaler_desired_replicas{{name="{SCALER}",namespace="{NAMESPACE}"}}' in live.metrics_text


def test_prometheus_scraped_the_operator(live: LiveRun) -> None:
    (target,) = live.prom.targets_health()
    assert target["health"] == "up", target["lastError"]
    series = live.prom.query_range("up", live.prom_window.start, live.prom_window.end, 1)
    assert series
    values = [float(v) for _, v in series[0]["values"]]
    # A scrape before the operator's /metrics listens reads 0; from the first success on, every one succeeds.
    assert 1.0 in values, "Prometheus never scraped the operator"
    assert all(v == 1 for v in values[values.index(1.0):]), values


def test_variables_find_the_scaler(live: LiveRun) -> None:
    """What the namespace and scaler variables (label_values over prescaler_desired_replicas) would offer."""
    end = live.prom_window.end
    namespaces = {s["metric"]["namespace"] for s in live.prom.query("prescaler_desired_replicas", end)}
    assert NAMESPACE in namespaces
    names = {s["metric"]["name"] for s in live.prom.query(f'prescaler_desired_replicas{{namespace=~"{NAMESPACE}"}}',
                                                          end)}
    assert SCALER in names


def _sql_rows(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg2.connect(db_url.replace("postgresql+psycopg2://", "postgresql://")) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def _has_value(row: tuple[Any, ...]) -> bool:
    return any(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in row)


@pytest.mark.parametrize("query", QUERIES, ids=[q.where for q in QUERIES])
def test_every_dashboard_query_returns_data(live: LiveRun, query: Query) -> None:
    if query.kind == "promql":
        w = live.prom_window
        expr = render_promql(query.text, w, query.where)
        if query.instant:
            result = live.prom.query(expr, w.end)
        else:
            result = live.prom.query_range(expr, w.start, w.end, w.step.total_seconds())
        if query.panel_id in COLLECTOR_PANELS:
            pytest.skip(f"{query.where}: accepted by Prometheus; no collector runs in this test to feed it")
        assert result, f"{query.where}: no series for {expr}"
        assert has_finite_value(result), f"{query.where}: only NaN/Inf for {expr}: {result[:3]}"
    else:
        sql = render_sql(query.text, live.sql_window, query.where)
        rows = _sql_rows(live.db_url, sql)
        assert rows, f"{query.where}: no rows for\n{sql}"
        assert any(_has_value(r) for r in rows), f"{query.where}: only NULLs for\n{sql}"


def test_scale_action_annotations_carry_the_reason(live: LiveRun) -> None:
    (ann,) = [q for q in QUERIES if q.where.startswith("annotation")]
    rows = _sql_rows(live.db_url, render_sql(ann.text, live.sql_window, ann.where))
    directions = {r[2] for r in rows}
    assert directions <= {"up", "down"} and directions
    assert all(r[1] and ":" in r[1] for r in rows), rows[:3]


def test_kpis_are_consistent(live: LiveRun) -> None:
    """Saved replica-hours are the static fleet's minus prescaler's, so never above the static total."""
    w = live.prom_window
    sel = f'namespace="{NAMESPACE}", name="{SCALER}"'
    rng = render_promql("$__range", w)
    static = live.prom.query(f"sum(increase(prescaler_static_replica_seconds_total{{{sel}}}[{rng}]))", w.end)
    used = live.prom.query(f"sum(increase(prescaler_replica_seconds_total{{{sel}}}[{rng}]))", w.end)
    static_v, used_v = float(static[0]["value"][1]), float(used[0]["value"][1])
    assert static_v > 0 and used_v > 0
    saved_query = next(q for q in QUERIES if q.panel_id == 11)
    saved = float(live.prom.query(render_promql(saved_query.text, w), w.end)[0]["value"][1])
    assert saved == pytest.approx((static_v - used_v) / 3600, rel=1e-6, abs=1e-9)
    assert saved <= static_v / 3600

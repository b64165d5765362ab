"""`make demo`: the whole story on one machine, on scaled time.

PostgreSQL, a Kafka broker and a real local control plane start. The fitness app's traffic reaches PostgreSQL
the way it does in production: per-minute request counts are produced to a Kafka topic and `prescaler collect`
(the Kafka feed) writes them to `traffic_log` — two weeks of history first (`collect --once`), then, while the
operator runs on a scaled clock, each minute as it ends (the collector in its loop, on the same clock). The
CRD, a workload and a PredictiveScaler are applied with kubectl; a live view prints time, forecast, load,
desired and ready replicas; after a simulated day the backtest report is written and everything that was
started is stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from prescaler import backtest, db, events, history, ingest, report
from prescaler.clock import Clock
from prescaler_dev import pgserver, settings
from prescaler_dev.kafka import KafkaBroker
from prescaler_dev.localcluster import ClusterConfig, LocalCluster

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "fitness"
SERVICE = "workout-api"
TOPIC = "fitness-requests"


def _collector_config(bootstrap: str) -> str:
    return f"""sources:
  default: {{}}
feeds:
  - name: fitness
    source: default
    kafka:
      bootstrap_servers: [{bootstrap}]
      topic: {TOPIC}
      group: prescaler-demo
      format: counts
      services: [{SERVICE}]
      # The demo's clock runs 480x: a short batch keeps the rows a few simulated minutes behind, not 40.
      batch_time: 1s
"""


class MinuteProducer:
    """Produces the simulated app's per-minute counts to Kafka, each minute once the clock has passed it."""

    def __init__(self, bootstrap: str, traffic: pd.DataFrame) -> None:
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "log_level": 0})
        frame = traffic.sort_values("ts", kind="stable")
        self.ts = pd.DatetimeIndex(frame["ts"])
        self.endpoints = frame["endpoint"].to_numpy()
        self.requests = frame["requests"].to_numpy()
        self.sent = 0

    def produce_until(self, end: datetime) -> int:
        """Produce every minute that ends at or before `end` and was not produced yet; returns messages sent."""
        stop = int(self.ts.searchsorted(pd.Timestamp(end) - pd.Timedelta(minutes=1), side="right"))
        first = self.sent
        for i in range(first, stop):
            self.producer.produce(TOPIC, key=SERVICE, value=json.dumps({
                "ts": self.ts[i].isoformat(), "service": SERVICE, "endpoint": str(self.endpoints[i]),
                "requests": int(self.requests[i])}))
            if (i - first) % 50_000 == 49_999:
                self.producer.flush()
        self.producer.flush()
        self.sent = max(first, stop)
        return self.sent - first


def _workload(requests_per_replica: int, lead: str) -> str:
    return f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {SERVICE}, namespace: {NAMESPACE}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {SERVICE}}}}}
  template:
    metadata: {{labels: {{app: {SERVICE}}}}}
    spec:
      containers: [{{name: api, image: registry.example/workout-api:1.0}}]
---
apiVersion: prescaler.dev/v1alpha1
kind: PredictiveScaler
metadata: {{name: {SERVICE}, namespace: {NAMESPACE}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {SERVICE}}}
  minReplicas: 2
  maxReplicas: 60
  series: {{source: default, service: {SERVICE}}}
  capacity: {{requestsPerReplica: {requests_per_replica}, per: 1m}}
  forecast: {{model: auto, history: 14d, horizon: 1d, step: 5m, refreshInterval: 6h, quantile: upper}}
  scaling:
    interval: 5m
    leadTime: {lead}
    headroomPercent: 10
    scaleDown: {{stabilizationWindow: 15m, maxStepPercent: 50}}
  fallback: {{staleAfter: 12h, action: HoldCurrent}}
"""


def _kubectl_json(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    out = cluster.kubectl(*args, "-o", "json", check=False)
    if out.returncode != 0:
        return {}
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="prescaler-demo")
    ap.add_argument("--days", type=float, default=1.0, help="simulated days to run the operator")
    ap.add_argument("--speed", type=float, default=480.0, help="simulated seconds per real second")
    ap.add_argument("--pod-ready-delay", type=float, default=1.5, help="real seconds until a pod is Ready")
    ap.add_argument("--out", type=Path, default=REPO / "out")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    state = settings.cache_dir() / "demo"

    print("▶ PostgreSQL")
    was_running = pgserver.is_running()
    pgserver.ensure_running()
    pgserver.drop_database("prescaler_demo")
    url = pgserver.create_database("prescaler_demo")
    engine = db.make_engine(url)
    db.migrate(engine)

    # Two weeks of history before the simulated "now", plus the days the demo lives through.
    now0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    start = now0 - timedelta(days=14)
    print("▶ simulating fitness traffic (14 days of history + the demo's days, per minute and endpoint)")
    traffic, calendar = ingest.simulate_frame(start=start, days=14 + args.days + 1, step=timedelta(minutes=1),
                                              seed=7, service=SERVICE)
    events_csv = args.out / "demo-events.csv"
    calendar.rename(columns={"starts_at": "start", "ends_at": "end"})[["name", "kind", "start", "end", "service"]] \
        .to_csv(events_csv, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    imported = events.import_events(engine, events_csv)
    print(f"  {len(traffic):,} per-minute counts, {imported.rows_read} calendar events (challenges, pushes)")

    print("▶ Kafka (KRaft broker on loopback) and `prescaler collect --once` for the history")
    kafka_state = state / "kafka-run"
    shutil.rmtree(kafka_state, ignore_errors=True)  # a fresh topic and offsets, like the fresh database
    broker = KafkaBroker(kafka_state).start()
    try:
        config_path = args.out / "demo-collector.yaml"
        config_path.write_text(_collector_config(broker.bootstrap))
        broker.create_topic(TOPIC, partitions=2)
        producer = MinuteProducer(broker.bootstrap, traffic)
        sent = producer.produce_until(now0)
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "prescaler.cli", "collect", "--config", str(config_path),
                               "--once"], env={**settings.inherited(), "PRESCALER_DATABASE_URL": url},
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"collect --once failed ({done.returncode}):\n{done.stderr[-2000:]}")
    except BaseException:
        broker.stop()
        raise
    print(f"  {sent:,} messages produced; collected in {time.monotonic() - t0:.0f}s")
    hist = history.read_history(engine, history.default_source(), SERVICE, start, now0, timedelta(minutes=5))
    peak_per_min = float(hist.max()) / 5
    rpr = max(1, math.ceil(peak_per_min / 25))  # the historical peak needs ~25 replicas
    lead_minutes = max(5, math.ceil(args.pod_ready_delay * args.speed / 60) + 5)

    cluster = LocalCluster(ClusterConfig(state_dir=state / "cluster", base_port=17443,
                                         pod_ready_delay=args.pod_ready_delay))
    operator: subprocess.Popen[bytes] | None = None
    collector: subprocess.Popen[bytes] | None = None
    samples: list[dict[str, object]] = []
    try:
        print("▶ local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
        t0 = time.monotonic()
        cluster.start()
        print(f"  up in {time.monotonic() - t0:.0f}s; KUBECONFIG={cluster.kubeconfig}")
        cluster.kubectl("apply", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/predictivescalers.prescaler.dev",
                        "--timeout=60s")
        cluster.kubectl("apply", "-f", "-", input=_workload(rpr, f"{lead_minutes}m"))
        print(f"  applied Deployment {NAMESPACE}/{SERVICE} and its PredictiveScaler "
              f"(capacity {rpr} requests/min per replica, lead {lead_minutes}m)")

        clock = Clock.scaled_from(now0, args.speed)
        env = {**settings.inherited(), **cluster.env(), **clock.env(), "PRESCALER_DATABASE_URL": url,
               "PRESCALER_TIMER_INTERVAL": "0.5", "PRESCALER_LOG_LEVEL": "WARNING"}
        log_path = args.out / "demo-operator.log"
        print(f"▶ operator on scaled time: 1 real second = {args.speed / 60:g} simulated minutes "
              f"(log: {log_path.relative_to(REPO) if log_path.is_relative_to(REPO) else log_path})")
        with log_path.open("wb") as log:
            operator = subprocess.Popen(
                [sys.executable, "-m", "prescaler.cli", "run", "--all-namespaces", "--peering", "",
                 "--metrics-port", "19090", "--liveness-port", "19081", "--workers", "1"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        collector_log = args.out / "demo-collector.log"
        with collector_log.open("wb") as log:
            collector = subprocess.Popen(
                [sys.executable, "-m", "prescaler.cli", "collect", "--config", str(config_path),
                 "--metrics-port", "19091", "--no-leader-election"],
                env={**env, "PRESCALER_LOG_LEVEL": "INFO"}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        print(f"▶ collector on the same clock: Kafka → traffic_log each minute (log: {collector_log.name})")
        end = now0 + timedelta(days=args.days)
        print(f"\n{'time':>16} {'forecast/min':>13} {'load/min':>10} {'desired':>8} {'ready':>6}  reason")
        next_print = now0
        while clock.now() < end:
            if operator.poll() is not None:
                raise SystemExit(f"operator exited with {operator.returncode}; see {log_path}")
            if collector.poll() is not None:
                raise SystemExit(f"collector exited with {collector.returncode}; see {collector_log}")
            producer.produce_until(clock.now())
            ps = _kubectl_json(cluster, "-n", NAMESPACE, "get", "predictivescaler", SERVICE)
            dep = _kubectl_json(cluster, "-n", NAMESPACE, "get", "deployment", SERVICE)
            st = ps.get("status", {})
            now = clock.now()
            ready = int(dep.get("status", {}).get("readyReplicas") or 0)
            sample = {"t": now, "desired": st.get("desiredReplicas"), "ready": ready,
                      "spec": dep.get("spec", {}).get("replicas")}
            samples.append(sample)
            if now >= next_print:
                # The newest collected minute (the collector trails the scaled clock by a few minutes).
                load = history.read_history(engine, history.default_source(), SERVICE,
                                            now - timedelta(minutes=30), now, timedelta(minutes=1)).dropna()
                peak = st.get("nextPeak", {})
                fc = f"{peak.get('requests', 0):,}@{str(peak.get('at', ''))[11:16]}" if peak else "-"
                lv = f"{float(load.iloc[-1]):,.0f}" if not load.empty else "-"
                print(f"{now:%a %d %H:%M:%S} {fc:>13} {lv:>10} {st.get('desiredReplicas', '-')!s:>8} "
                      f"{ready:>6}  {str(st.get('reason', ''))[:70]}", flush=True)
                next_print = now + timedelta(minutes=30)
            time.sleep(0.5)
    finally:
        for proc in (operator, collector):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        cluster.stop()
        broker.stop()

    print("\n▶ report")
    decisions = pd.read_sql(
        "SELECT decided_at, desired_replicas, direction, applied, reason FROM scaling_decisions "
        "WHERE namespace = %(ns)s AND name = %(n)s ORDER BY decided_at", engine,
        params={"ns": NAMESPACE, "n": SERVICE},
    )
    actions = int(((decisions["applied"]) & (decisions["direction"] != "none")).sum()) if len(decisions) else 0
    print(f"  operator: {len(decisions):,} decisions, {actions} scale actions, "
          f"max desired {int(decisions['desired_replicas'].max()) if len(decisions) else 0}")
    late = _late_minutes(samples, engine, rpr)
    print(f"  minutes with load above ready capacity during the live run: {late:.0f}")
    series = history.read_history(engine, history.default_source(), SERVICE, start,
                                  now0 + timedelta(days=args.days), timedelta(minutes=5))
    result = backtest.run_backtest(series, capacity=rpr * 5, startup_delay=timedelta(minutes=lead_minutes),
                                   model="auto", last=timedelta(days=args.days), progress=True)
    print(backtest.format_table(result))
    (args.out / "demo-backtest.json").write_text(json.dumps(result.to_json(), indent=2))
    report.write_html(result, args.out / "demo-report.html")
    print(f"  wrote {args.out / 'demo-report.html'} and {args.out / 'demo-backtest.json'}")
    engine.dispose()
    if not was_running:
        pgserver.stop()
    print("▶ done: operator, collector, Kafka, control plane" + ("" if was_running else " and PostgreSQL")
          + " stopped")
    return 0


def _late_minutes(samples: list[dict[str, object]], engine: object, rpr: int) -> float:
    """Simulated minutes in which the observed load exceeded what the ready pods could serve."""
    if len(samples) < 2:
        return 0.0
    frame = pd.DataFrame(samples).set_index("t")
    start, end = frame.index[0], frame.index[-1]
    load = history.read_history(engine, history.default_source(), SERVICE, start, end,  # type: ignore[arg-type]
                                timedelta(minutes=1))
    ready = frame["ready"].astype(float)
    ready.index = pd.DatetimeIndex(ready.index).tz_convert("UTC")
    ready = ready.resample("1min").last().ffill().reindex(load.index, method="ffill")
    return float(((load > ready * rpr) & load.notna()).sum())


if __name__ == "__main__":
    sys.exit(main())

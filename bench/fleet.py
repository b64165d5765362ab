"""Fleet benchmark: 100 and 1,000 PredictiveScalers on one operator against the local control plane.

    python bench/fleet.py [--sizes 100,1000] [--duration-s 240] [--timer-interval 10]

For each size N: a fresh PostgreSQL database with 14 days of 5-minute traffic for N/10 services (ten scalers
share a trace), a fresh local control plane with kwok nodes, N Deployments and N PredictiveScalers
(`scaling.interval: 1m`, real clock) applied with kubectl in batches, then the operator as a real process.
A tenth of the scalers is created while the operator is already running, to time how fast a new CR gets
its first decision. Measured: reconcile lag (gap between a scaler's consecutive decisions minus the 60 s
interval), scalers reconciled in every 60-second window, fits per minute, the operator's memory (process and
pool children, from /proc) and CPU, and CR-created → first-decision latency.

Model: `seasonal-naive`. The benchmark measures the operator's reconcile machinery at fleet scale; `auto`
backtests Prophet and Holt-Winters per fit (seconds of CPU each), which on 2 cores would turn the first
minutes into a fit queue and measure the forecaster instead (bench_forecast.py measures that).

Reports, never asserts: the exit code is non-zero only when the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from prescaler import db
from prescaler_dev import pgserver
from prescaler_dev.localcluster import ClusterConfig, LocalCluster

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
STEP = timedelta(minutes=5)
HISTORY_DAYS = 14
INTERVAL_S = 60.0
SCALERS_PER_SERVICE = 10
PER_NAMESPACE = 100
APPLY_BATCH = 100
MODEL = "seasonal-naive"
# One replica serves 500 requests per 5-minute step; a service's daily peak needs two, its base load one.
REQUESTS_PER_REPLICA_PER_MIN = 100
BASE_LOAD, PEAK_LOAD = 200.0, 900.0
TARGETS = {"lag_p99_s": 60.0, "rss_mib": 1024.0, "first_decision_s": 10.0}


# --- traffic -------------------------------------------------------------------------------------------------

def service_name(i: int) -> str:
    return f"svc-{i:04d}"


def write_traffic(url: str, services: int, start: datetime, end: datetime, seed: int = 7) -> int:
    """Daily-peaked traffic for `services` services on the 5-minute grid [start, end), written with COPY."""
    ts = pd.date_range(start, end, freq=STEP, inclusive="left", tz="UTC")
    hour = (ts.hour + ts.minute / 60).to_numpy(float)
    rng = np.random.default_rng(seed)
    buf = io.StringIO()
    stamps = ts.strftime("%Y-%m-%d %H:%M:%S+00")
    for i in range(services):
        # Peaks spread over the day, so at any moment a few services are ramping up or down.
        centre = 24.0 * i / services
        d = np.abs(hour - centre)
        d = np.minimum(d, 24.0 - d)
        shape = BASE_LOAD + (PEAK_LOAD - BASE_LOAD) * np.exp(-0.5 * (d / 1.5) ** 2)
        values = np.maximum(shape * (1 + 0.05 * rng.standard_normal(len(ts))), 0).round().astype(np.int64)
        pd.DataFrame({"ts": stamps, "service": service_name(i), "endpoint": "*", "requests": values}).to_csv(
            buf, index=False, header=False)
    buf.seek(0)
    engine = sa.create_engine(url)
    try:
        raw = engine.raw_connection()
        try:
            cur: Any = raw.cursor()
            cur.copy_expert("COPY traffic_log (ts, service, endpoint, requests) FROM STDIN WITH (FORMAT csv)", buf)
            cur.close()
            raw.commit()
        finally:
            raw.close()
    finally:
        engine.dispose()
    return services * len(ts)


# --- objects ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scaler:
    index: int

    @property
    def namespace(self) -> str:
        return f"fleet-{self.index // PER_NAMESPACE:02d}"

    @property
    def name(self) -> str:
        return f"app-{self.index:04d}"

    @property
    def service(self) -> str:
        return service_name(self.index // SCALERS_PER_SERVICE)


def deployment(s: Scaler) -> dict[str, Any]:
    labels = {"app": s.name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": s.name, "namespace": s.namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}},
        },
    }


def scaler(s: Scaler, refresh: str) -> dict[str, Any]:
    return {
        "apiVersion": "prescaler.dev/v1alpha1", "kind": "PredictiveScaler",
        "metadata": {"name": s.name, "namespace": s.namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": s.name},
            "minReplicas": 1,
            "maxReplicas": 2,
            "series": {"source": "default", "service": s.service},
            "capacity": {"requestsPerReplica": REQUESTS_PER_REPLICA_PER_MIN, "per": "1m"},
            "forecast": {"model": MODEL, "history": f"{HISTORY_DAYS}d", "horizon": "1d", "step": "5m",
                         "refreshInterval": refresh},
            "scaling": {"interval": "1m", "leadTime": "5m"},
        },
    }


def apply_batches(cluster: LocalCluster, objects: list[dict[str, Any]], batch: int = APPLY_BATCH) -> None:
    for i in range(0, len(objects), batch):
        doc = {"apiVersion": "v1", "kind": "List", "items": objects[i:i + batch]}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(doc), timeout=300)


def creation_times(cluster: LocalCluster) -> dict[tuple[str, str], datetime]:
    out = cluster.kubectl("get", "predictivescalers", "-A", "-o",
                          "jsonpath={range .items[*]}{.metadata.namespace} {.metadata.name} "
                          "{.metadata.creationTimestamp}{\"\\n\"}{end}", timeout=300)
    found = {}
    for line in out.stdout.splitlines():
        ns, name, ts = line.split()
        found[(ns, name)] = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return found


# --- the operator and what /proc says about it ---------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; fields after the closing parenthesis are fixed.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def _kib(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime (fields 14-17; index 11-14 after the command name)
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


@dataclass
class MemorySample:
    t: float
    rss_mib: float
    pss_mib: float
    processes: int


@dataclass
class Operator:
    cluster: LocalCluster
    db_url: str
    log_path: Path
    timer_interval: float
    metrics_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    samples: list[MemorySample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None

    def start(self) -> None:
        env = {**self.cluster.env(), "PRESCALER_DATABASE_URL": self.db_url,
               "PRESCALER_TIMER_INTERVAL": f"{self.timer_interval:g}",
               "PRESCALER_LOG_LEVEL": os.environ.get("PRESCALER_LOG_LEVEL", "INFO")}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prescaler.cli", "run", "--all-namespaces", "--peering", "",
                 "--metrics-port", str(self.metrics_port), "--liveness-port", str(self.liveness_port),
                 "--workers", "1"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
            )
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)
        self._sampler.start()

    def _sample_loop(self) -> None:
        while not self._stop.is_set() and self.alive():
            self.samples.append(self.memory())
            self._stop.wait(2.0)

    def memory(self) -> MemorySample:
        assert self.proc is not None
        tree = process_tree(self.proc.pid)
        rss = sum(_kib(f"/proc/{p}/status", "VmRSS") for p in tree)
        # PSS splits pages shared by the forkserver and its children, so the sum is not inflated.
        pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss") for p in tree)
        return MemorySample(time.monotonic(), rss / 1024, pss / 1024, len(tree))

    def cpu_seconds(self) -> float:
        if self.proc is None:
            return 0.0
        return sum(_cpu_seconds(p) for p in process_tree(self.proc.pid))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics_text(self) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    def stop(self) -> None:
        self._stop.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


class FirstSeen:
    """Polls scaling_decisions by id and notes when each scaler's first decision row became visible."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        self.last_id = 0
        self.seen: dict[tuple[str, str], datetime] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        stmt = sa.text("SELECT id, namespace, name FROM scaling_decisions WHERE id > :last ORDER BY id")
        while not self._stop.is_set():
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                with self.engine.connect() as conn:
                    rows = conn.execute(stmt, {"last": self.last_id}).all()
                now = datetime.now(UTC)
                for rid, ns, name in rows:
                    self.seen.setdefault((ns, name), now)
                    self.last_id = max(self.last_id, int(rid))
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.engine.dispose()


# --- analysis --------------------------------------------------------------------------------------------------

def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99),
            "max": float(max(values)) if values else None}


def analyse_decisions(decisions: dict[tuple[str, str], list[datetime]], scalers: Sequence[tuple[str, str]],
                      end: datetime) -> dict[str, Any]:
    """Lag of every gap between consecutive decisions, and how many scalers never missed a tick.

    With a 60 s interval checked every timer wake-up, a gap lies between 60 s and 60 s + the timer interval
    when all is well; a gap of 120 s or more (lag >= 60 s) means a whole tick went by without a decision.
    The open gap from a scaler's last decision to the end counts too, so a stuck scaler cannot hide.
    """
    lags: list[float] = []
    every = 0
    for key in scalers:
        times = decisions.get(key, [])
        own = [(b - a).total_seconds() - INTERVAL_S for a, b in itertools.pairwise(times)]
        if times:
            tail = (end - times[-1]).total_seconds() - INTERVAL_S
            if tail > INTERVAL_S:
                own.append(tail)
            if all(lag < INTERVAL_S for lag in own):
                every += 1
        lags += own
    missed = sum(1 for lag in lags if lag >= INTERVAL_S)
    return {"lag_s": summary(lags), "gaps_missing_a_tick": missed, "scalers_reconciled_every_tick": every,
            "scalers_checked": len(scalers)}


@dataclass
class RunConfig:
    size: int
    duration_s: float
    timer_interval: float
    refresh: str
    late_fraction: float
    late_at_s: float
    pod_ready_delay: float
    keep: bool


def run_size(cfg: RunConfig) -> dict[str, Any]:
    n = cfg.size
    late_n = max(1, round(n * cfg.late_fraction))
    fleet = [Scaler(i) for i in range(n)]
    early, late = fleet[:n - late_n], fleet[n - late_n:]
    services = max(1, math.ceil(n / SCALERS_PER_SERVICE))
    result: dict[str, Any] = {"size": n, "services": services, "model": MODEL, "refresh_interval": cfg.refresh,
                              "timer_interval_s": cfg.timer_interval, "duration_s": cfg.duration_s,
                              "created_before_start": len(early), "created_while_running": len(late)}
    state = Path(tempfile.mkdtemp(prefix=f"prescaler-fleet-{n}-"))
    db_name = f"prescaler_fleet_{n}_{os.getpid()}"
    setup_started = time.monotonic()
    pgserver.ensure_running()
    url = pgserver.create_database(db_name)
    cluster: LocalCluster | None = None
    op: Operator | None = None
    first_seen: FirstSeen | None = None
    try:
        engine = db.make_engine(url)
        db.migrate(engine)
        now = datetime.now(UTC)
        traffic_end = pd.Timestamp(now).floor(pd.Timedelta(STEP)).to_pydatetime() + timedelta(
            seconds=cfg.duration_s + 3600)
        t0 = time.monotonic()
        rows = write_traffic(url, services, traffic_end - timedelta(days=HISTORY_DAYS + 1), traffic_end)
        result["traffic_rows"] = rows
        result["traffic_write_s"] = round(time.monotonic() - t0, 1)
        print(f"[{n}] traffic: {rows:,} rows for {services} services in {result['traffic_write_s']}s", flush=True)

        # Every Deployment may scale to 2 replicas; kwok nodes are cheap, so leave room.
        nodes = max(2, math.ceil(2 * n / 400))
        cluster = LocalCluster(ClusterConfig(state_dir=state / "cluster", base_port=None,
                                             pod_ready_delay=cfg.pod_ready_delay, nodes=nodes, node_pods="500"))
        cluster.start()
        result["cluster_start_s"] = round(cluster.startup_seconds or 0.0, 1)
        print(f"[{n}] cluster up ({nodes} kwok nodes) in {result['cluster_start_s']}s", flush=True)
        cluster.kubectl("apply", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/predictivescalers.prescaler.dev",
                        "--timeout=60s")
        namespaces = sorted({s.namespace for s in fleet})
        apply_batches(cluster, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
                                for ns in namespaces])
        t0 = time.monotonic()
        apply_batches(cluster, [deployment(s) for s in fleet])
        apply_batches(cluster, [scaler(s, cfg.refresh) for s in early])
        result["apply_s"] = round(time.monotonic() - t0, 1)
        result["setup_s"] = round(time.monotonic() - setup_started, 1)
        print(f"[{n}] applied {n} Deployments and {len(early)} PredictiveScalers in {result['apply_s']}s",
              flush=True)

        first_seen = FirstSeen(url)
        first_seen.start()
        op = Operator(cluster, url, state / "operator.log", cfg.timer_interval)
        op_started_at = datetime.now(UTC)
        started = time.monotonic()
        cpu0 = 0.0
        op.start()
        late_created_at: datetime | None = None
        fits_by_minute: list[float] = []
        next_scrape = started + 60
        while time.monotonic() - started < cfg.duration_s:
            if not op.alive():
                raise RuntimeError(f"operator exited with {op.proc.returncode if op.proc else '?'}:\n"
                                   f"{op.log_tail()}")
            if late_created_at is None and time.monotonic() - started >= cfg.late_at_s:
                late_created_at = datetime.now(UTC)
                apply_batches(cluster, [scaler(s, cfg.refresh) for s in late])
                print(f"[{n}] applied {len(late)} PredictiveScalers while running", flush=True)
            if time.monotonic() >= next_scrape:
                fits_by_minute.append(metric_sum(op.metrics_text(), "prescaler_fit_duration_seconds_count"))
                next_scrape += 60
                done = len(first_seen.seen)
                print(f"[{n}] t={time.monotonic() - started:.0f}s: {done} scalers decided at least once, "
                      f"RSS {op.samples[-1].rss_mib if op.samples else 0:.0f} MiB", flush=True)
            time.sleep(1)
        end_at = datetime.now(UTC)
        cpu = op.cpu_seconds() - cpu0
        wall = time.monotonic() - started
        text = op.metrics_text()
        end_mem = op.memory()
        op.stop()
        first_seen.stop()

        # --- results
        created = creation_times(cluster)
        with engine.connect() as conn:
            rows_ = conn.execute(sa.text(
                "SELECT namespace, name, decided_at FROM scaling_decisions ORDER BY namespace, name, decided_at"
            )).all()
            forecast_rows = conn.execute(sa.text(
                "SELECT scaler_key, created_at FROM forecasts ORDER BY created_at")).all()
        engine.dispose()
        decisions: dict[tuple[str, str], list[datetime]] = defaultdict(list)
        for ns, name, at in rows_:
            decisions[(ns, name)].append(at)
        early_keys = [(s.namespace, s.name) for s in early]
        late_keys = [(s.namespace, s.name) for s in late]
        result["decisions"] = len(rows_)
        result["scalers_with_decisions"] = len(decisions)
        result["reconcile"] = analyse_decisions(decisions, early_keys + late_keys, end_at)
        per_minute = [(len(t) - 1) / ((t[-1] - t[0]).total_seconds() / 60) for t in decisions.values()
                      if len(t) > 1]
        result["reconcile"]["decisions_per_scaler_minute"] = round(float(np.mean(per_minute)), 3) \
            if per_minute else None
        # From the operator's start to each first decision row being written (seen by the poller, +-0.5 s).
        written = [(first_seen.seen[k] - op_started_at).total_seconds() for k in early_keys if k in first_seen.seen]
        result["startup_pass_s"] = {**summary(written), "undecided": len(early_keys) - len(written),
                                    "decided_at_based": summary([(decisions[k][0] - op_started_at).total_seconds()
                                                                 for k in early_keys if decisions.get(k)])}
        live_written = [(first_seen.seen[k] - created[k]).total_seconds() for k in late_keys
                        if k in first_seen.seen and k in created]
        live_decided = [(decisions[k][0] - created[k]).total_seconds() for k in late_keys
                        if decisions.get(k) and k in created]
        result["first_decision_s"] = {**summary(live_written), "undecided": len(late_keys) - len(live_written),
                                      "decided_at_based": summary(live_decided)}
        minutes = [0] * (int(wall // 60) + 1)
        for _, at in forecast_rows:
            m = int((at - op_started_at).total_seconds() // 60)
            if 0 <= m < len(minutes):
                minutes[m] += 1
        # A refit is any stored forecast after a scaler's first one.
        refits = len(forecast_rows) - len({key for key, _ in forecast_rows})
        result["fits"] = {"total": metric_sum(text, "prescaler_fit_duration_seconds_count"),
                          "stored_per_minute": minutes, "fit_count_at_each_minute": fits_by_minute,
                          "refits": refits, "refits_per_minute": round(refits / (wall / 60), 2),
                          "expected_refits_per_minute_at_refresh": round(n / _minutes(cfg.refresh), 2),
                          "fit_seconds_sum": round(metric_sum(text, "prescaler_fit_duration_seconds_sum"), 1)}
        rec_n = metric_sum(text, "prescaler_reconcile_duration_seconds_count")
        rec_s = metric_sum(text, "prescaler_reconcile_duration_seconds_sum")
        result["reconcile_duration_mean_ms"] = round(1000 * rec_s / rec_n, 1) if rec_n else None
        peak = max(op.samples, key=lambda s: s.rss_mib) if op.samples else end_mem
        result["memory_mib"] = {
            "rss_peak": round(max(peak.rss_mib, end_mem.rss_mib), 1), "rss_end": round(end_mem.rss_mib, 1),
            "pss_peak": round(max([s.pss_mib for s in op.samples] + [end_mem.pss_mib]), 1),
            "pss_end": round(end_mem.pss_mib, 1), "processes": end_mem.processes,
        }
        result["operator_cpu_cores"] = round(cpu / wall, 2) if wall else None
        # Errors while running; the shutdown after SIGTERM races the cluster's and is not counted.
        running_log = op.log_tail(10**9).split("Signal SIGTERM is received")[0]
        result["operator_log_errors"] = sum(1 for line in running_log.splitlines() if " ERROR " in line)
        return result
    finally:
        if op is not None:
            op.stop()
            if cfg.keep:
                print(f"[{n}] operator log: {op.log_path}")
        if first_seen is not None:
            first_seen.stop()
        if cluster is not None:
            cluster.stop()
        if not cfg.keep:
            with contextlib.suppress(Exception):
                pgserver.drop_database(db_name)
            import shutil

            shutil.rmtree(state, ignore_errors=True)


def _minutes(text: str) -> float:
    from prescaler.durations import parse_duration

    return parse_duration(text, field="--refresh").total_seconds() / 60


def _fmt(v: Any, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def targets(r: dict[str, Any]) -> dict[str, bool | None]:
    rec = r.get("reconcile", {})
    p99 = rec.get("lag_s", {}).get("p99")
    first = r.get("first_decision_s", {}).get("p99")
    return {
        "every_scaler_each_tick": rec.get("scalers_reconciled_every_tick") == rec.get("scalers_checked"),
        "lag_p99_under_60s": None if p99 is None else p99 < TARGETS["lag_p99_s"],
        "rss_under_1GiB": r.get("memory_mib", {}).get("rss_peak", math.inf) < TARGETS["rss_mib"],
        "first_decision_under_10s": None if first is None else first < TARGETS["first_decision_s"],
    }


def format_table(results: list[dict[str, Any]]) -> str:
    rows = [("scalers", lambda r: str(r["size"])),
            ("decisions recorded", lambda r: str(r.get("decisions", "-"))),
            ("reconcile lag p50 / p99 / max", lambda r: " / ".join(
                _fmt(r["reconcile"]["lag_s"][k], " s") for k in ("p50", "p99", "max"))),
            ("reconciled every tick (no lag >= 60 s)", lambda r: f"{r['reconcile']['scalers_reconciled_every_tick']}/"
                                                                 f"{r['reconcile']['scalers_checked']}"),
            ("decisions per scaler-minute", lambda r: _fmt(r["reconcile"]["decisions_per_scaler_minute"], "", 3)),
            ("gaps missing a whole tick", lambda r: str(r["reconcile"]["gaps_missing_a_tick"])),
            ("operator start -> first decisions p50/p99/max", lambda r: " / ".join(
                _fmt(r["startup_pass_s"][k], " s") for k in ("p50", "p99", "max"))),
            ("CR created -> first decision p50 / p99", lambda r: " / ".join(
                _fmt(r["first_decision_s"][k], " s") for k in ("p50", "p99"))
             + f" (n={r['first_decision_s']['n']})"),
            ("fits total / stored per minute", lambda r: f"{r['fits']['total']:.0f} / "
                                                         f"{r['fits']['stored_per_minute']}"),
            ("refits/min (expected once refreshes are due)", lambda r: f"{r['fits']['refits_per_minute']} "
                                                                       f"({r['fits']['expected_refits_per_minute_at_refresh']})"),
            ("mean reconcile duration", lambda r: _fmt(r.get("reconcile_duration_mean_ms"), " ms")),
            ("operator RSS peak / end (PSS peak)", lambda r: f"{r['memory_mib']['rss_peak']:.0f} / "
                                                             f"{r['memory_mib']['rss_end']:.0f} MiB "
                                                             f"({r['memory_mib']['pss_peak']:.0f})"),
            ("operator CPU (cores, avg)", lambda r: _fmt(r.get("operator_cpu_cores"), "", 2)),
            ("targets met", lambda r: ", ".join(f"{k}={'yes' if v else 'NO' if v is not None else '-'}"
                                                for k, v in targets(r).items()))]
    ok = [r for r in results if "error" not in r]
    width = max(len(label) for label, _ in rows)
    lines = []
    for label, get in rows:
        cells = []
        for r in ok:
            try:
                cells.append(get(r))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(f"{label:<{width}}  " + "  |  ".join(cells))
    for r in results:
        if "error" in r:
            lines.append(f"size {r['size']}: FAILED: {r['error']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,1000", help="comma-separated fleet sizes")
    p.add_argument("--duration-s", type=float, default=240.0, help="how long the operator runs per size")
    p.add_argument("--timer-interval", type=float, default=10.0,
                   help="PRESCALER_TIMER_INTERVAL: how often each scaler's timer wakes to check its interval")
    p.add_argument("--refresh", default="1h", help="spec.forecast.refreshInterval")
    p.add_argument("--late-fraction", type=float, default=0.1,
                   help="share of the scalers created while the operator runs")
    p.add_argument("--late-at-s", type=float, default=None,
                   help="when to create them (default: at 40%% of the duration)")
    p.add_argument("--pod-ready-delay", type=float, default=1.0)
    p.add_argument("--output", type=Path, default=RESULTS / "fleet.json")
    p.add_argument("--keep", action="store_true", help="keep the database and logs (for debugging)")
    return p


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    # `finally` blocks stop the cluster and the operator when the benchmark itself is terminated.
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    results: list[dict[str, Any]] = []
    status = 0
    with _sigterm_as_exit():
        for size in sizes:
            cfg = RunConfig(size=size, duration_s=args.duration_s, timer_interval=args.timer_interval,
                            refresh=args.refresh, late_fraction=args.late_fraction,
                            late_at_s=args.late_at_s if args.late_at_s is not None else 0.4 * args.duration_s,
                            pod_ready_delay=args.pod_ready_delay, keep=args.keep)
            print(f"\n=== fleet of {size} PredictiveScalers ({args.duration_s:.0f}s) ===", flush=True)
            try:
                results.append(run_size(cfg))
            except Exception as exc:
                traceback.print_exc()
                results.append({"size": size, "error": f"{type(exc).__name__}: {exc}"[:2000]})
                status = 1
    print()
    print(format_table(results))
    out = {"generated_at": datetime.now(UTC).isoformat(), "cpus": os.cpu_count(), "targets": TARGETS,
           "results": [{**r, "targets_met": targets(r)} if "error" not in r else r for r in results]}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {args.output}")
    return status


if __name__ == "__main__":
    sys.exit(main())

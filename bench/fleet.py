"""Fleet benchmark: 100 and 1,000 PredictiveScalers on one operator against the local control plane.

    python bench/fleet.py [--sizes 100,1000] [--duration-s 240] [--restart-duration-s 240]
                          [--model auto|seasonal-naive|...] [--refresh 1h] [--timer-interval 10]
                          [--seed-age 35m] [--max-concurrent N] [--peering NAME]

For each size N: a fresh PostgreSQL database with 14 days of 5-minute traffic for N/10 services (ten scalers
share a trace), a fresh local control plane with kwok nodes, N Deployments and N PredictiveScalers
(`scaling.interval: 1m`, real clock) applied with kubectl in batches, then the operator as a real process.
A tenth of the scalers is created while the operator is already running, to time how fast a new CR gets
its first decision. Measured: reconcile lag (gap between a scaler's consecutive decisions minus the 60 s
interval), scalers reconciled in every 60-second window, fits per minute, the operator's memory (process and
pool children, from /proc) and CPU, and CR-created → first-decision latency.

Two phases per size. *Cold*: the forecasts table is empty, so every scaler's first decision comes from a
baseline fitted on the spot. *Restart*: once every scaler has stored a forecast (the cold phase goes on until
then), the operator is stopped and started again; each scaler's first decision after the restart comes from
its stored forecast. That second start is the one an SRE lives with (upgrades, node drains, evictions).
With `--seed-age` the cold phase is replaced by stored forecasts of that age and a warm-up run that ends once
every scaler's status is written. The restart phase runs `--restart-duration-s`; with `--refresh 1h` and a
run of some minutes, the stored forecasts come due and the refits (their rate, CPU and effect on the reconcile
lag) are measured too.

Model: `auto` by default (the operator's default: backtests several models per fit, seconds of CPU each);
`--model seasonal-naive` measures the reconcile machinery alone.

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
DEFAULT_MODEL = "auto"
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


def deployment(s: Scaler, replicas: int = 1) -> dict[str, Any]:
    labels = {"app": s.name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": s.name, "namespace": s.namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}},
        },
    }


def scaler(s: Scaler, refresh: str, model: str) -> dict[str, Any]:
    return {
        "apiVersion": "prescaler.dev/v1alpha1", "kind": "PredictiveScaler",
        "metadata": {"name": s.name, "namespace": s.namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": s.name},
            "minReplicas": 1,
            "maxReplicas": 2,
            "series": {"source": "default", "service": s.service},
            "capacity": {"requestsPerReplica": REQUESTS_PER_REPLICA_PER_MIN, "per": "1m"},
            "forecast": {"model": model, "history": f"{HISTORY_DAYS}d", "horizon": "1d", "step": "5m",
                         "refreshInterval": refresh},
            "scaling": {"interval": "1m", "leadTime": "5m"},
        },
    }


def apply_batches(cluster: LocalCluster, objects: list[dict[str, Any]], batch: int = APPLY_BATCH,
                  attempts: int = 1) -> None:
    for i in range(0, len(objects), batch):
        doc = {"apiVersion": "v1", "kind": "List", "items": objects[i:i + batch]}
        for attempt in range(attempts):
            try:
                cluster.kubectl("apply", "-f", "-", input=json.dumps(doc), timeout=300)
                break
            except subprocess.TimeoutExpired:
                # An API server busy with a fleet's first status patches: apply is idempotent, so try again.
                if attempt == attempts - 1:
                    raise
                print(f"kubectl apply timed out (batch {i // batch + 1}); again", flush=True)


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


def _cpu_seconds(pid: int, children: bool = True) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime (fields 14-17; index 11-14 after the command name); the reaped children's
    # share (cutime, cstime) keeps the CPU of fit processes that were replaced.
    return sum(int(v) for v in fields[11:15 if children else 13]) / os.sysconf("SC_CLK_TCK")


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
    workers: int = 1
    max_concurrent: int | None = None
    peering: str = ""  # standalone; a name runs with kopf peering, as the chart does
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
        if self.max_concurrent is not None:
            env["PRESCALER_MAX_CONCURRENT_RECONCILES"] = str(self.max_concurrent)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prescaler.cli", "run", "--all-namespaces", "--peering", self.peering,
                 "--metrics-port", str(self.metrics_port), "--liveness-port", str(self.liveness_port),
                 "--workers", str(self.workers)],
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

    def main_cpu_seconds(self) -> float:
        """The operator process alone (its event loop and threads), without the fit processes."""
        return 0.0 if self.proc is None else _cpu_seconds(self.proc.pid, children=False)

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


@dataclass(frozen=True)
class StoredRow:
    seen: datetime  # when the poller first saw the row
    scaler_key: str
    params_hash: str
    generated_at: datetime
    model: str
    fit_seconds: float | None


class RowLog:
    """Polls scaling_decisions and forecasts by id: when each decision and stored forecast became visible.

    Rows are noted as they appear, so forecasts pruned later (the operator keeps three per scaler) still count.
    Ids come from sequences and transactions commit out of id order, so each poll looks back `LOOKBACK` ids.
    """

    LOOKBACK = 300

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        self.last_decision = 0
        self.last_forecast = 0
        self.decisions: list[tuple[datetime, str, str]] = []  # (seen, namespace, name)
        self.forecasts: list[StoredRow] = []
        self._seen_decisions: set[int] = set()
        self._seen_forecasts: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        decisions = sa.text("SELECT id, namespace, name FROM scaling_decisions WHERE id > :last ORDER BY id")
        forecasts = sa.text("SELECT id, scaler_key, params_hash, generated_at, model, fit_seconds FROM forecasts "
                            "WHERE id > :last ORDER BY id")
        while not self._stop.is_set():
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                with self.engine.connect() as conn:
                    d_rows = conn.execute(decisions, {"last": self.last_decision - self.LOOKBACK}).all()
                    f_rows = conn.execute(forecasts, {"last": self.last_forecast - self.LOOKBACK}).all()
                now = datetime.now(UTC)
                with self._lock:
                    for rid, ns, name in d_rows:
                        if rid not in self._seen_decisions:
                            self._seen_decisions.add(rid)
                            self.decisions.append((now, ns, name))
                            self.last_decision = max(self.last_decision, int(rid))
                    for rid, key, params, generated, model, fit_s in f_rows:
                        if rid not in self._seen_forecasts:
                            self._seen_forecasts.add(rid)
                            self.forecasts.append(StoredRow(now, key, params, generated, model, fit_s))
                            self.last_forecast = max(self.last_forecast, int(rid))
            self._stop.wait(0.5)

    def first_decisions(self, since: datetime) -> dict[tuple[str, str], datetime]:
        """When each scaler's first decision after `since` became visible."""
        first: dict[tuple[str, str], datetime] = {}
        with self._lock:
            for seen, ns, name in self.decisions:
                if seen >= since:
                    first.setdefault((ns, name), seen)
        return first

    def stored_keys(self) -> set[str]:
        with self._lock:
            return {row.scaler_key for row in self.forecasts}

    def forecasts_between(self, start: datetime, end: datetime) -> list[StoredRow]:
        with self._lock:
            return [row for row in self.forecasts if start <= row.seen < end]

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
    restart_duration_s: float
    timer_interval: float
    refresh: str
    model: str
    workers: int
    late_fraction: float
    late_at_s: float
    pod_ready_delay: float
    store_timeout_s: float
    profile: Path | None
    keep: bool
    seed_age: timedelta | None = None
    max_concurrent: int | None = None
    peering: str = ""


@dataclass
class PhaseRun:
    """One operator run: when it started and ended, and what /proc and /metrics said at its end."""

    started_at: datetime
    ended_at: datetime
    wall_s: float
    cpu_s: float
    main_cpu_s: float
    metrics: str
    samples: list[MemorySample]
    end_mem: MemorySample
    log_errors: int
    markers: dict[str, float]  # seconds from the start to log lines that time the operator's own start-up


def _profile(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """py-spy (when installed beside this Python) samples the operator's first seconds, subprocesses too."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        print(f"no py-spy beside {sys.executable}: not profiling", flush=True)
        return None
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--duration", f"{seconds:.0f}", "--rate", "50",
                             "--format", "raw", "--output", str(out), "--nonblocking", "--threads"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def apply_late(cluster: LocalCluster, late: Sequence[Scaler], cfg: RunConfig, label: str,
               applied: threading.Event) -> None:
    started = time.monotonic()
    apply_batches(cluster, [scaler(s, cfg.refresh, cfg.model) for s in late], batch=25, attempts=3)
    applied.set()
    print(f"[{cfg.size} {label}] applied {len(late)} PredictiveScalers while running "
          f"({time.monotonic() - started:.0f}s)", flush=True)


def run_phase(label: str, cfg: RunConfig, cluster: LocalCluster, url: str, log_path: Path, rows: RowLog,
              duration_s: float, *, late: Sequence[Scaler] = (), wait_stored: set[str] | None = None,
              profile: Path | None = None) -> PhaseRun:
    """Run the operator for `duration_s` (and, with `wait_stored`, until all those scalers stored a forecast)."""
    n = cfg.size
    op = Operator(cluster, url, log_path, cfg.timer_interval, workers=cfg.workers,
                  max_concurrent=cfg.max_concurrent, peering=cfg.peering)
    log_from = log_path.stat().st_size if log_path.exists() else 0
    started_at = datetime.now(UTC)
    started = time.monotonic()
    op.start()
    assert op.proc is not None
    spy: subprocess.Popen[bytes] | None = None
    late_done = not late
    late_thread: threading.Thread | None = None
    late_applied = threading.Event()
    next_report = started + 60
    try:
        while True:
            elapsed = time.monotonic() - started
            if late_applied.is_set() and wait_stored is not None:
                wait_stored |= {f"{s.namespace}/{s.name}" for s in late}
            missing = len(wait_stored - rows.stored_keys()) if wait_stored is not None else 0
            if elapsed >= duration_s and (missing == 0 or elapsed >= max(duration_s, cfg.store_timeout_s)):
                if missing:
                    print(f"[{n} {label}] {missing} scalers still without a stored forecast: going on", flush=True)
                break
            if not op.alive():
                raise RuntimeError(f"operator exited with {op.proc.returncode}:\n{op.log_tail()}")
            if profile is not None and spy is None and elapsed >= 1.0:
                spy = _profile(op.proc.pid, profile, 40.0)
            if not late_done and elapsed >= cfg.late_at_s:
                # In a thread, so the phase's clock and reports go on while a busy API server takes its time.
                late_done = True
                late_thread = threading.Thread(target=apply_late, args=(cluster, late, cfg, label, late_applied),
                                               daemon=True)
                late_thread.start()
            if time.monotonic() >= next_report:
                next_report += 60
                decided = len(rows.first_decisions(started_at))
                stored = len(rows.forecasts_between(started_at, datetime.now(UTC)))
                print(f"[{n} {label}] t={elapsed:.0f}s: {decided} scalers decided, {stored} forecasts stored"
                      + (f", {missing} scalers without one" if wait_stored is not None else "")
                      + f", RSS {op.samples[-1].rss_mib if op.samples else 0:.0f} MiB", flush=True)
            time.sleep(1)
        if late_thread is not None:
            late_thread.join(timeout=120)  # an API server still too busy: measure what got created
        ended_at = datetime.now(UTC)
        wall = time.monotonic() - started
        cpu, main_cpu = op.cpu_seconds(), op.main_cpu_seconds()
        text = op.metrics_text()
        end_mem = op.memory()
    finally:
        op.stop()
        if spy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(timeout=60)
    # Errors while running; the shutdown after SIGTERM races the cluster's and is not counted.
    with log_path.open("rb") as f:
        f.seek(log_from)
        running_log = f.read().decode(errors="replace").split("Signal SIGTERM is received")[0]
    errors = sum(1 for line in running_log.splitlines() if " ERROR " in line)
    return PhaseRun(started_at, ended_at, wall, cpu, main_cpu, text, list(op.samples), end_mem, errors,
                    _markers(running_log, started_at))


MARKERS = {"startup_done": "Activity 'startup' succeeded", "forecasts_prefetched": "prefetched the stored forecasts",
           "cluster_cache_listed": "cluster cache listed"}


def _markers(log_text: str, started_at: datetime) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in log_text.splitlines():
        for name, text in MARKERS.items():
            if name not in found and text in line:
                with contextlib.suppress(ValueError):
                    at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
                    found[name] = round((at - started_at).total_seconds(), 1)
    return found


def analyse_phase(run: PhaseRun, rows: RowLog, decisions: dict[tuple[str, str], list[datetime]],
                  keys: Sequence[tuple[str, str]], refresh: str) -> dict[str, Any]:
    """What one operator run did: start-up, lag, stored forecasts and fits, memory, CPU."""
    own = {k: [t for t in decisions.get(k, []) if run.started_at <= t <= run.ended_at] for k in keys}
    out: dict[str, Any] = {"wall_s": round(run.wall_s, 1), "startup_markers_s": run.markers}
    out["reconcile"] = analyse_decisions(own, keys, run.ended_at)
    per_minute = [(len(t) - 1) / ((t[-1] - t[0]).total_seconds() / 60) for t in own.values() if len(t) > 1]
    out["reconcile"]["decisions_per_scaler_minute"] = round(float(np.mean(per_minute)), 3) if per_minute else None
    first = rows.first_decisions(run.started_at)
    # From the operator's start to each first decision row being written (seen by the poller, +-0.5 s).
    written = [(first[k] - run.started_at).total_seconds() for k in keys if k in first]
    out["start_to_first_decision_s"] = {**summary(written), "undecided": len(keys) - len(written)}
    # The same from the end of the operator's own start-up (imports, schema check): what the fleet's size adds.
    ready = run.markers.get("startup_done")
    if ready is not None:
        out["startup_done_to_first_decision_s"] = summary([w - ready for w in written])
    stored = rows.forecasts_between(run.started_at, run.ended_at)
    before = {r.scaler_key for r in rows.forecasts if r.seen < run.started_at}
    minutes = [0] * (int(run.wall_s // 60) + 1)
    fits_per_minute = [0] * len(minutes)
    fits: dict[tuple[str, datetime], StoredRow] = {}
    for r in stored:
        m = min(len(minutes) - 1, int((r.seen - run.started_at).total_seconds() // 60))
        minutes[m] += 1
        # Scalers with the same inputs and origin store the same fit: count it once.
        if (r.params_hash, r.generated_at) not in fits:
            fits[(r.params_hash, r.generated_at)] = r
            fits_per_minute[m] += 1
    seen: set[str] = set(before)
    refits = 0
    for r in stored:
        refits += r.scaler_key in seen
        seen.add(r.scaler_key)
    fit_s = [r.fit_seconds for r in fits.values() if r.fit_seconds is not None]
    models: dict[str, int] = defaultdict(int)
    for r in fits.values():
        models[r.model] += 1
    out["forecasts"] = {
        "stored": len(stored), "stored_per_minute": minutes, "refits": refits,
        "refits_per_minute": round(refits / (run.wall_s / 60), 2),
        "expected_refits_per_minute_at_refresh": round(len(keys) / _minutes(refresh), 2),
        "distinct_fits": len(fits), "distinct_fits_per_minute": fits_per_minute,
        "fit_seconds_sum": round(sum(fit_s), 1), "fit_seconds_p50": pct(fit_s, 50),
        "fit_seconds_max": max(fit_s) if fit_s else None, "models": dict(models),
        "fit_duration_metric_count": metric_sum(run.metrics, "prescaler_fit_duration_seconds_count"),
    }
    rec_n = metric_sum(run.metrics, "prescaler_reconcile_duration_seconds_count")
    rec_s = metric_sum(run.metrics, "prescaler_reconcile_duration_seconds_sum")
    out["reconcile_duration_mean_ms"] = round(1000 * rec_s / rec_n, 1) if rec_n else None
    peak = max(run.samples, key=lambda s: s.rss_mib) if run.samples else run.end_mem
    out["memory_mib"] = {
        "rss_peak": round(max(peak.rss_mib, run.end_mem.rss_mib), 1), "rss_end": round(run.end_mem.rss_mib, 1),
        "pss_peak": round(max([s.pss_mib for s in run.samples] + [run.end_mem.pss_mib]), 1),
        "pss_end": round(run.end_mem.pss_mib, 1), "processes": run.end_mem.processes,
    }
    out["cpu"] = {"operator_cores": round(run.main_cpu_s / run.wall_s, 3),
                  "fit_processes_cores": round((run.cpu_s - run.main_cpu_s) / run.wall_s, 3),
                  "operator_s": round(run.main_cpu_s, 1), "fit_processes_s": round(run.cpu_s - run.main_cpu_s, 1)}
    out["operator_log_errors"] = run.log_errors
    return out


def seed_forecasts(url: str, fleet: Sequence[Scaler], cfg: RunConfig, age: timedelta) -> datetime:
    """Stored forecasts as an operator that fitted the whole fleet `age` ago leaves them (one per service,
    seasonal-naive, under each scaler's own forecast key), so a restart can be measured with refits coming due
    without first waiting through a cold phase of `auto` fits and most of a refresh interval."""
    from prescaler import forecasting, history
    from prescaler.spec import parse_spec

    engine = db.make_engine(url)
    generated = pd.Timestamp(datetime.now(UTC) - age).floor(pd.Timedelta(STEP)).to_pydatetime()
    fits: dict[str, Any] = {}
    try:
        for s in fleet:
            spec = parse_spec(scaler(s, cfg.refresh, cfg.model)["spec"])
            if s.service not in fits:
                hist = history.read_history(engine, history.default_source(), s.service, generated - spec.history,
                                            generated, spec.step)
                fits[s.service] = forecasting.fit_predict("seasonal-naive", hist, spec.horizon)
            fit = fits[s.service]
            db.save_forecast(engine, scaler_key=f"{s.namespace}/{s.name}", series=s.service, forecast=fit.forecast,
                             generated_at=generated, smape=fit.smape, fit_seconds=fit.fit_seconds,
                             params_hash=spec.forecast_key(), note="seeded by bench/fleet.py")
    finally:
        engine.dispose()
    return generated


def warm_up(cfg: RunConfig, cluster: LocalCluster, url: str, log_path: Path, rows: RowLog,
            keys: Sequence[tuple[str, str]], timeout_s: float = 300.0) -> dict[str, Any]:
    """Run the operator until every scaler decided once and had its status written, then stop it: the restart
    that follows finds the fleet as a running operator leaves it (statuses and conditions written), as after
    an upgrade or an eviction, not a fleet whose every status is new."""
    op = Operator(cluster, url, log_path, cfg.timer_interval, workers=cfg.workers,
                  max_concurrent=cfg.max_concurrent, peering=cfg.peering)
    started_at, started = datetime.now(UTC), time.monotonic()
    op.start()
    try:
        while time.monotonic() - started < timeout_s:
            if not op.alive():
                raise RuntimeError(f"operator exited during the warm-up:\n{op.log_tail()}")
            if len(set(keys) - set(rows.first_decisions(started_at))) == 0:
                break
            time.sleep(1)
        decided = time.monotonic() - started
        # The status patches follow the rows, and a busy API server may take a while to accept them all.
        with_status = 0
        while time.monotonic() - started < timeout_s and op.alive():
            with_status = statuses_written(cluster)
            if with_status >= len(keys):
                break
            time.sleep(5)
        written = time.monotonic() - started
    finally:
        op.stop()
    missing = len(set(keys) - set(rows.first_decisions(started_at)))
    print(f"[{cfg.size}] warm-up: {len(keys) - missing} scalers decided in {decided:.0f}s, {with_status} statuses "
          f"written in {written:.0f}s; operator stopped", flush=True)
    return {"decided_s": round(decided, 1), "undecided": missing, "statuses_written": with_status,
            "statuses_written_s": round(written, 1)}


def statuses_written(cluster: LocalCluster) -> int:
    """How many PredictiveScalers carry a status an operator wrote (its observedGeneration); 0 while the API
    server is too busy to list them."""
    try:
        out = cluster.kubectl("get", "predictivescalers", "-A", "-o",
                              "jsonpath={range .items[*]}{.status.observedGeneration}{\"\\n\"}{end}",
                              check=False, timeout=120)
    except subprocess.TimeoutExpired:
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.strip()) if out.returncode == 0 else 0


def run_size(cfg: RunConfig) -> dict[str, Any]:
    n = cfg.size
    late_n = round(n * cfg.late_fraction)
    fleet = [Scaler(i) for i in range(n)]
    early, late = fleet[:n - late_n], fleet[n - late_n:]
    services = max(1, math.ceil(n / SCALERS_PER_SERVICE))
    result: dict[str, Any] = {"size": n, "services": services, "model": cfg.model, "refresh_interval": cfg.refresh,
                              "timer_interval_s": cfg.timer_interval, "workers": cfg.workers,
                              "duration_s": cfg.duration_s, "restart_duration_s": cfg.restart_duration_s,
                              "created_before_start": len(early), "created_while_running": len(late)}
    state = Path(tempfile.mkdtemp(prefix=f"prescaler-fleet-{n}-"))
    db_name = f"prescaler_fleet_{n}_{os.getpid()}"
    setup_started = time.monotonic()
    pgserver.ensure_running()
    url = pgserver.create_database(db_name)
    cluster: LocalCluster | None = None
    rows: RowLog | None = None
    try:
        engine = db.make_engine(url)
        db.migrate(engine)
        now = datetime.now(UTC)
        traffic_end = pd.Timestamp(now).floor(pd.Timedelta(STEP)).to_pydatetime() + timedelta(
            seconds=cfg.duration_s + cfg.restart_duration_s + cfg.store_timeout_s + 3600)
        t0 = time.monotonic()
        written = write_traffic(url, services, traffic_end - timedelta(days=HISTORY_DAYS + 1), traffic_end)
        result["traffic_rows"] = written
        result["traffic_write_s"] = round(time.monotonic() - t0, 1)
        print(f"[{n}] traffic: {written:,} rows for {services} services in {result['traffic_write_s']}s", flush=True)

        # Every Deployment may scale to 2 replicas; kwok nodes are cheap, so leave room.
        nodes = max(2, math.ceil(2 * n / 400))
        cluster = LocalCluster(ClusterConfig(state_dir=state / "cluster", base_port=None,
                                             pod_ready_delay=cfg.pod_ready_delay, nodes=nodes, node_pods="500"))
        cluster.start()
        result["cluster_start_s"] = round(cluster.startup_seconds or 0.0, 1)
        print(f"[{n}] cluster up ({nodes} kwok nodes) in {result['cluster_start_s']}s", flush=True)
        cluster.kubectl("apply", "-f", str(REPO / "crds"))
        for attempt in range(3):  # a CRD just created may have no conditions yet: kubectl wait then fails at once
            try:
                cluster.kubectl("wait", "--for=condition=Established", "crd/predictivescalers.prescaler.dev",
                                "--timeout=60s")
                break
            except Exception:
                if attempt == 2:
                    raise
                time.sleep(2)
        namespaces = sorted({s.namespace for s in fleet})
        apply_batches(cluster, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
                                for ns in namespaces])
        t0 = time.monotonic()
        # A seeded fleet restarts where an operator at the peak left it (2, the most a scaler here asks for): a
        # restart after a cold phase finds each Deployment where its scaler put it, not a thousand scale-ups.
        apply_batches(cluster, [deployment(s, 2 if cfg.seed_age is not None else 1) for s in fleet])
        apply_batches(cluster, [scaler(s, cfg.refresh, cfg.model) for s in early])
        result["apply_s"] = round(time.monotonic() - t0, 1)
        result["setup_s"] = round(time.monotonic() - setup_started, 1)
        print(f"[{n}] applied {n} Deployments and {len(early)} PredictiveScalers in {result['apply_s']}s",
              flush=True)

        cold: PhaseRun | None = None
        if cfg.seed_age is not None:
            t0 = time.monotonic()
            generated = seed_forecasts(url, fleet, cfg, cfg.seed_age)
            result["seeded"] = {"generated_at": generated.isoformat(), "age_s": cfg.seed_age.total_seconds(),
                                "seconds": round(time.monotonic() - t0, 1)}
            print(f"[{n}] seeded stored forecasts generated at {generated:%H:%M} in {result['seeded']['seconds']}s",
                  flush=True)
        rows = RowLog(url)
        rows.start()
        if cfg.seed_age is None:
            every = {f"{s.namespace}/{s.name}" for s in early}  # and the late ones once created
            cold = run_phase("cold", cfg, cluster, url, state / "operator.log", rows, cfg.duration_s, late=late,
                             wait_stored=every)
            print(f"[{n}] cold phase done after {cold.wall_s:.0f}s; restarting the operator", flush=True)
        else:
            time.sleep(3)  # the row poller has seen the seeded rows: they count as stored before the start
            result["warm_up"] = warm_up(cfg, cluster, url, state / "operator.log", rows,
                                        [(s.namespace, s.name) for s in early])
        warm = run_phase("restart", cfg, cluster, url, state / "operator.log", rows, cfg.restart_duration_s,
                         profile=cfg.profile)
        rows.stop()

        # --- results
        created = creation_times(cluster)
        with engine.connect() as conn:
            decided = conn.execute(sa.text(
                "SELECT namespace, name, decided_at FROM scaling_decisions ORDER BY namespace, name, decided_at"
            )).all()
        engine.dispose()
        decisions: dict[tuple[str, str], list[datetime]] = defaultdict(list)
        for ns, name, at in decided:
            decisions[(ns, name)].append(at)
        early_keys = [(s.namespace, s.name) for s in early]
        late_keys = [(s.namespace, s.name) for s in late if (s.namespace, s.name) in created]
        result["decisions"] = len(decided)
        if cold is not None:
            result["cold"] = analyse_phase(cold, rows, decisions, early_keys + late_keys, cfg.refresh)
            # The cold start-up counts the scalers that existed when the operator started.
            first = rows.first_decisions(cold.started_at)
            result["cold"]["start_to_first_decision_s"] = {
                **summary([(first[k] - cold.started_at).total_seconds() for k in early_keys if k in first]),
                "undecided": sum(1 for k in early_keys if k not in first)}
            live = [(first[k] - created[k]).total_seconds() for k in late_keys if k in first and k in created]
            result["cold"]["created_to_first_decision_s"] = {**summary(live),
                                                             "undecided": len(late_keys) - len(live)}
        result["restart"] = analyse_phase(warm, rows, decisions, early_keys + late_keys, cfg.refresh)
        return result
    finally:
        if rows is not None:
            rows.stop()
        if cluster is not None:
            cluster.stop()
        if cfg.keep:
            print(f"[{n}] operator log: {state / 'operator.log'}")
        else:
            with contextlib.suppress(Exception):
                pgserver.drop_database(db_name)
            import shutil

            shutil.rmtree(state, ignore_errors=True)


def _duration(text: str) -> timedelta:
    from prescaler.durations import parse_duration

    return parse_duration(text, field="--seed-age")


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
    cold, warm = r.get("cold") or {}, r.get("restart") or {}
    p99 = [ph.get("reconcile", {}).get("lag_s", {}).get("p99") for ph in (cold, warm) if ph]
    first = cold.get("created_to_first_decision_s", {}).get("p99")
    restart = warm.get("start_to_first_decision_s", {})
    rss = max(ph.get("memory_mib", {}).get("rss_peak", math.inf) for ph in (cold, warm) if ph)
    return {
        "every_scaler_each_tick_after_restart": warm.get("reconcile", {}).get("scalers_reconciled_every_tick")
        == warm.get("reconcile", {}).get("scalers_checked"),
        "lag_p99_under_60s": None if None in p99 else max(p99) < TARGETS["lag_p99_s"],
        "rss_under_1GiB": rss < TARGETS["rss_mib"],
        "new_cr_first_decision_under_10s": None if first is None else first < TARGETS["first_decision_s"],
        "restart_first_decision_p99_under_10s": None if restart.get("p99") is None or restart.get("undecided")
        else restart["p99"] < TARGETS["first_decision_s"],
    }


def format_table(results: list[dict[str, Any]]) -> str:
    def three(d: dict[str, Any], unit: str = " s") -> str:
        return " / ".join(_fmt(d[k], unit) for k in ("p50", "p99", "max"))

    rows: list[tuple[str, Any]] = [("scalers / model / refresh", lambda r: f"{r['size']} / {r['model']} / "
                                                                        f"{r['refresh_interval']}")]
    for phase in ("cold", "restart"):
        def get(r: dict[str, Any], phase: str = phase) -> dict[str, Any]:
            return dict(r[phase])

        rows += [
            (f"[{phase}] run length", lambda r, g=get: _fmt(g(r)["wall_s"], " s", 0)),
            (f"[{phase}] start -> startup / cache / forecasts", lambda r, g=get: " / ".join(
                _fmt(g(r)["startup_markers_s"].get(k), " s") for k in MARKERS)),
            (f"[{phase}] start -> each first decision p50/p99/max",
             lambda r, g=get: three(g(r)["start_to_first_decision_s"])
             + f" ({g(r)['start_to_first_decision_s']['undecided']} undecided)"),
            (f"[{phase}] startup done -> each first decision", lambda r, g=get: three(
                g(r)["startup_done_to_first_decision_s"])),
            (f"[{phase}] reconcile lag p50 / p99 / max", lambda r, g=get: three(g(r)["reconcile"]["lag_s"])),
            (f"[{phase}] reconciled every tick",
             lambda r, g=get: f"{g(r)['reconcile']['scalers_reconciled_every_tick']}/"
                              f"{g(r)['reconcile']['scalers_checked']}"),
            (f"[{phase}] forecasts stored / refits per min", lambda r, g=get: f"{g(r)['forecasts']['stored']} / "
                                                                             f"{g(r)['forecasts']['refits_per_minute']}"),
            (f"[{phase}] distinct fits (per minute)", lambda r, g=get: f"{g(r)['forecasts']['distinct_fits']} "
                                                                       f"{g(r)['forecasts']['distinct_fits_per_minute']}"),
            (f"[{phase}] fit seconds sum / p50 / max", lambda r, g=get: " / ".join(
                _fmt(g(r)["forecasts"][k], " s") for k in ("fit_seconds_sum", "fit_seconds_p50", "fit_seconds_max"))),
            (f"[{phase}] CPU operator / fit processes (cores)",
             lambda r, g=get: f"{g(r)['cpu']['operator_cores']} / {g(r)['cpu']['fit_processes_cores']}"),
            (f"[{phase}] mean reconcile duration",
             lambda r, g=get: _fmt(g(r).get("reconcile_duration_mean_ms"), " ms")),
            (f"[{phase}] RSS peak / end (PSS peak)", lambda r, g=get: f"{g(r)['memory_mib']['rss_peak']:.0f} / "
                                                                     f"{g(r)['memory_mib']['rss_end']:.0f} MiB "
                                                                     f"({g(r)['memory_mib']['pss_peak']:.0f})"),
        ]
    rows += [("[cold] CR created -> first decision p50 / p99", lambda r: " / ".join(
                 _fmt(r["cold"]["created_to_first_decision_s"][k], " s") for k in ("p50", "p99"))
              + f" (n={r['cold']['created_to_first_decision_s']['n']})"),
             ("targets met", lambda r: ", ".join(f"{k}={'yes' if v else 'NO' if v is not None else '-'}"
                                                 for k, v in targets(r).items()))]
    ok = [r for r in results if "error" not in r]
    width = max(len(label) for label, _ in rows)
    lines = []
    for label, getter in rows:
        cells = []
        for r in ok:
            try:
                cells.append(getter(r))
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
    p.add_argument("--duration-s", type=float, default=240.0,
                   help="how long the cold phase runs at least (it goes on until every scaler stored a forecast)")
    p.add_argument("--restart-duration-s", type=float, default=240.0,
                   help="how long the operator runs after the restart")
    p.add_argument("--store-timeout-s", type=float, default=1200.0,
                   help="longest the cold phase waits for every scaler to store a forecast")
    p.add_argument("--model", default=DEFAULT_MODEL, help="spec.forecast.model of every scaler")
    p.add_argument("--workers", type=int, default=1, help="the operator's fit processes (--workers)")
    p.add_argument("--profile", type=Path, default=None,
                   help="py-spy raw profile of the first 40 s after the restart (py-spy beside this Python)")
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
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="the operator's PRESCALER_MAX_CONCURRENT_RECONCILES (default: the operator's own)")
    p.add_argument("--peering", default="",
                   help="run the operator with kopf peering under this name, as the chart does (default: standalone)")
    p.add_argument("--seed-age", default=None,
                   help="skip the cold phase: store every scaler's forecast as made this long ago (e.g. 35m), run the "
                        "operator until every status is written (the warm-up), then run the restart phase (refits "
                        "come due during it)")
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
            cfg = RunConfig(size=size, duration_s=args.duration_s, restart_duration_s=args.restart_duration_s,
                            timer_interval=args.timer_interval, refresh=args.refresh, model=args.model,
                            workers=args.workers, late_fraction=args.late_fraction,
                            late_at_s=args.late_at_s if args.late_at_s is not None else 0.4 * args.duration_s,
                            pod_ready_delay=args.pod_ready_delay, store_timeout_s=args.store_timeout_s,
                            profile=args.profile, keep=args.keep,
                            seed_age=_duration(args.seed_age) if args.seed_age else None,
                            max_concurrent=args.max_concurrent, peering=args.peering)
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

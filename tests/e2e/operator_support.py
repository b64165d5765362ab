"""Helpers for the operator's end-to-end tests: traffic with a known daily peak, the operator as a real
process on a scaled clock, and small readers for what kubectl and /metrics show."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prescaler.clock import Clock
from prescaler_dev.localcluster import LocalCluster
from waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
STEP = timedelta(minutes=5)
BASE_LOAD = 600.0  # requests per 5 minutes, off-peak
PEAK_LOAD = 6000.0  # requests per 5 minutes, 18:00-19:00 every day
REQUESTS_PER_REPLICA_PER_MIN = 100  # so one replica serves 500 per 5-minute step
PEAK_REPLICAS = math.ceil(PEAK_LOAD / (REQUESTS_PER_REPLICA_PER_MIN * 5))  # 12, without headroom
DAY0 = datetime(2026, 3, 1, tzinfo=UTC)
HISTORY_DAYS = 14


def daily_peak_load(ts: pd.DatetimeIndex) -> np.ndarray:
    """Flat base, ramp 17:30-18:00, plateau 18:00-19:00, ramp down 19:00-19:30."""
    minutes = ts.hour * 60 + ts.minute
    up = np.clip((minutes - 17 * 60 - 30) / 30, 0, 1)
    down = np.clip((19 * 60 + 30 - minutes) / 30, 0, 1)
    return np.asarray(BASE_LOAD + (PEAK_LOAD - BASE_LOAD) * np.minimum(up, down), dtype=float)


def write_trace_csv(path: Path, days: int = HISTORY_DAYS + 2) -> Path:
    ds = pd.date_range(DAY0, periods=days * 288, freq="5min", tz="UTC")
    frame = pd.DataFrame({"ds": ds.strftime("%Y-%m-%dT%H:%M:%S"), "y": daily_peak_load(ds).round().astype(int)})
    frame.to_csv(path, index=False)
    return path


def peak_day_time(hour: int, minute: int = 0) -> datetime:
    return DAY0 + timedelta(days=HISTORY_DAYS, hours=hour, minutes=minute)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OperatorProcess:
    cluster: LocalCluster
    db_url: str
    clock: Clock
    log_path: Path
    peering: str = ""
    priority: int | None = None  # kopf peering priority; random when None
    extra_env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {
            **os.environ, **self.cluster.env(), **self.clock.env(),
            "PRESCALER_DATABASE_URL": self.db_url,
            "PRESCALER_TIMER_INTERVAL": "0.25",
            "PRESCALER_LOG_LEVEL": "INFO",
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prescaler.cli", "run", "--all-namespaces", "--peering", self.peering,
             "--metrics-port", str(self.metrics_port), "--liveness-port", str(self.liveness_port),
             "--workers", "1", *([] if self.priority is None else ["--priority", str(self.priority)])],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        wait_for(f"operator /metrics (log: {self.log_path})", lambda: self.metrics_text() is not None, timeout=60)
        return self

    def metrics_text(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                return r.read().decode()  # type: ignore[no-any-return]
        except OSError:
            return None

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
        text = self.metrics_text() or ""
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def get_json(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    out = cluster.kubectl(*args, "-o", "json", check=False)
    if out.returncode != 0:
        return {}
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in obj.get("status", {}).get("conditions", []):
        if c.get("type") == ctype:
            return c  # type: ignore[no-any-return]
    return {}


def scaler_yaml(namespace: str, name: str, target: str, *, mode: str = "Auto", actuation: str = "Replicas",
                min_replicas: int = 2, max_replicas: int = 30, refresh: str = "2h", stale_after: str = "6h",
                kind: str = "Deployment", service: str = "peak-api",
                per_replica: int = REQUESTS_PER_REPLICA_PER_MIN, step: str = "5m", horizon: str = "1d",
                interval: str = "1m", lead: str = "10m") -> str:
    return f"""
apiVersion: prescaler.dev/v1alpha1
kind: PredictiveScaler
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: {kind}, name: {target}}}
  minReplicas: {min_replicas}
  maxReplicas: {max_replicas}
  mode: {mode}
  actuation: {actuation}
  series: {{source: default, service: {service}}}
  capacity: {{requestsPerReplica: {per_replica}, per: 1m}}
  forecast: {{model: seasonal-naive, history: 14d, horizon: {horizon}, step: {step}, refreshInterval: {refresh},
             quantile: yhat}}
  scaling:
    interval: {interval}
    leadTime: {lead}
    headroomPercent: 10
    scaleDown: {{stabilizationWindow: 15m, maxStepPercent: 50}}
  fallback: {{staleAfter: {stale_after}, action: HoldCurrent}}
"""


def deployment_yaml(namespace: str, name: str, replicas: int = 2) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: app, image: registry.example/app:1}}]
"""


def hpa_yaml(namespace: str, name: str, target: str, min_replicas: int = 2, max_replicas: int = 30) -> str:
    return f"""
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {target}}}
  minReplicas: {min_replicas}
  maxReplicas: {max_replicas}
  metrics:
    - type: Resource
      resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 70}}}}
"""


def namespace_yaml(name: str) -> str:
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"


def install_crds(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/predictivescalers.prescaler.dev", "--timeout=60s")


def apply(cluster: LocalCluster, text: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=text)

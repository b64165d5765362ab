"""`prescaler collect` in loop mode as a real process: the tests that start one share this."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests

from prescaler_dev.kafka import free_port
from waiting import wait_for


@dataclass
class CollectorProcess:
    """Runs `prescaler collect --metrics-port PORT ARGS...` in a session of its own (so a signal reaches any
    child too) and reads its /metrics."""

    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CollectorProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prescaler.cli", "collect", "--metrics-port", str(self.port), *self.args],
                env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(f"collector /metrics (log {self.log_path})", lambda: self.metrics_text() is not None, timeout=60)
        return self

    def metrics_text(self) -> str | None:
        assert self.proc is not None and self.proc.poll() is None, self.log_tail()
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except requests.RequestException:
            return None

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
        total = 0.0
        for line in (self.metrics_text() or "").splitlines():
            if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " ") and \
                    all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a minute: the exit status of a clean stop, None when it had to be killed."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)
            return None

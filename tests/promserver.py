"""A real Prometheus server for tests: a subprocess on a free loopback port scraping given targets.

Uses the distribution's binary (`prometheus` on PATH, or `$PRESCALER_PROMETHEUS`) with a generated config, a
temporary storage directory and `--web.enable-lifecycle`. Queries go through the HTTP API.

History can be loaded before start with `backfill_openmetrics` (promtool's `tsdb create-blocks-from
openmetrics`, as an administrator would import it); `retention` must then reach back to it. A `web_config`
(Prometheus' `--web.config.file`: basic auth users, TLS) puts the API behind credentials.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
import yaml

Series = dict[str, Any]  # one element of the API's `result` list: {"metric": {...}, "values"/"value": ...}


class PrometheusError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(name: str, env: str) -> str:
    """`$env` when set, else `name` on PATH; raises with an install hint when missing."""
    path = os.environ.get(env) or shutil.which(name)
    if not path:
        raise PrometheusError(f"{name} not found: install Debian's prometheus package or set ${env}")
    return path


def _timestamp(value: datetime | float) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def has_finite_value(series: Sequence[Series]) -> bool:
    """True when any sample of an instant or range result is a number (not NaN/Inf)."""
    for s in series:
        samples = s.get("values") or ([s["value"]] if "value" in s else [])
        if any(math.isfinite(float(v)) for _, v in samples):
            return True
    return False


class PrometheusServer:
    """`with PrometheusServer(["127.0.0.1:9100"]) as prom: prom.query("up")`."""

    def __init__(self, targets: Sequence[str], *, scrape_interval: str = "1s",
                 workdir: Path | None = None, job: str = "prescaler", retention: str = "1d",
                 web_config: dict[str, Any] | None = None) -> None:
        self.targets = list(targets)
        self.retention = retention
        self.web_config = web_config
        # requests' auth= / verify= for this class's own calls when web_config demands them.
        self.request_options: dict[str, Any] = {}
        self.scrape_interval = scrape_interval
        self.job = job
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="promserver-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "prometheus.log"

    @property
    def url(self) -> str:
        scheme = "https" if (self.web_config or {}).get("tls_server_config") else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.workdir / "data"

    def backfill_openmetrics(self, text: str) -> None:
        """Turn OpenMetrics text (ending in `# EOF`) into TSDB blocks in the storage, before `start()`."""
        if self.proc is not None:
            raise PrometheusError("backfill before start(): a running server does not load new blocks")
        promtool = find_binary("promtool", "PRESCALER_PROMTOOL")
        source = self.workdir / "backfill.om"
        source.write_text(text)
        self.storage.mkdir(exist_ok=True)
        done = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(source),
                               str(self.storage)], capture_output=True, text=True, check=False)
        source.unlink()
        if done.returncode != 0:
            raise PrometheusError(f"promtool create-blocks-from openmetrics failed: {done.stderr.strip()}")

    def start(self, timeout: float = 60.0) -> None:
        binary = find_binary("prometheus", "PRESCALER_PROMETHEUS")
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{
                "job_name": self.job,
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "static_configs": [{"targets": self.targets}],
            }] if self.targets else [],
        }
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        storage = self.storage
        storage.mkdir(exist_ok=True)
        extra = []
        if self.web_config is not None:
            web_path = self.workdir / "web.yml"
            web_path.write_text(yaml.safe_dump(self.web_config, sort_keys=False))
            extra.append(f"--web.config.file={web_path}")
        self.port = self.port or free_port()  # a restart after stop(keep=True) answers at the same URL
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={config_path}", f"--storage.tsdb.path={storage}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
                 f"--storage.tsdb.retention.time={self.retention}", "--log.level=warn", *extra],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C of the test run must not reach it before stop()
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1, **self.request_options).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, grace: float = 15.0, *, keep: bool = False) -> None:
        """Stop the server; with `keep` its data and port stay, for a `start()` again (an outage)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # flushes the head block and exits cleanly
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_workdir and not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _get(self, path: str, params: dict[str, str]) -> Any:
        resp = requests.get(f"{self.url}{path}", params=params, timeout=30, **self.request_options)
        try:
            body = resp.json()
        except ValueError as exc:
            raise PrometheusError(f"{path}: HTTP {resp.status_code}: {resp.text[:500]}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, time_: datetime | float | None = None) -> list[Series]:
        """Instant query; vector results as a list of series (a scalar becomes one series without labels)."""
        params = {"query": expr}
        if time_ is not None:
            params["time"] = f"{_timestamp(time_):.3f}"
        data = self._get("/api/v1/query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, start: datetime | float, end: datetime | float,
                    step: float) -> list[Series]:
        data = self._get("/api/v1/query_range", {
            "query": expr, "start": f"{_timestamp(start):.3f}", "end": f"{_timestamp(end):.3f}", "step": f"{step:g}",
        })
        return list(data["result"])

    def targets_health(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets", {"state": "active"})["activeTargets"])

    def wait_for(self, expr: str, timeout: float, poll: float = 1.0) -> list[Series]:
        """Poll an instant query until it returns a finite sample; raises with the log tail on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if has_finite_value(result):
                return result
            if time.monotonic() > deadline:
                health = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in self.targets_health()]
                raise PrometheusError(f"no data for {expr!r} after {timeout:.0f}s; targets: {health}")
            time.sleep(poll)

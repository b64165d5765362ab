"""`prescaler collect` as a real process writes the log lines PRESCALER_LOG_LEVEL lets through (the chart sets
it from `logLevel`). No database is needed: the collector logs that it cannot reach one and keeps trying."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

UNREACHABLE = "postgresql+psycopg2://prescaler@127.0.0.1:9/prescaler"  # nothing listens on port 9
CONFIG = ("feeds:\n  - name: web\n    prometheus: {url: 'http://127.0.0.1:9', "
          "query: 'sum(x{service=\"$service\"})', services: [web]}\n")


def collector_log(tmp_path: Path, level: str | None) -> list[str]:
    """The collector's log from start until it has reported the unreachable database, then a clean stop."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESCALER_")}
    env["PRESCALER_DATABASE_URL"] = UNREACHABLE
    if level is not None:
        env["PRESCALER_LOG_LEVEL"] = level
    log = tmp_path / f"collector-{level}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "prescaler.cli", "collect", "--config", str(config),
                                 "--metrics-port", "0", "--no-leader-election"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120  # only so that a broken collector fails instead of hanging
        while "database unavailable" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text()
    return log.read_text().splitlines()


def severities(lines: list[str]) -> set[str]:
    # Each line is "DATE TIME LEVEL LOGGER: message".
    return {line.split()[2] for line in lines if len(line.split()) > 3}


@pytest.mark.parametrize(("level", "expected"), [(None, {"INFO", "WARNING"}), ("warning", {"WARNING"})])
def test_the_collector_logs_at_the_level_it_is_given(tmp_path: Path, level: str | None,
                                                     expected: set[str]) -> None:
    lines = collector_log(tmp_path, level)
    assert severities(lines) == expected, lines

"""Every command that uses the database needs its URL, from --database-url or $PRESCALER_DATABASE_URL:
without either it stops with exit status 2 and one line naming both, before touching any database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prescaler import cli

MESSAGE = "prescaler: error: no database URL: set PRESCALER_DATABASE_URL or pass --database-url"


def _commands(csv: Path) -> dict[str, list[str]]:
    return {
        "migrate": ["migrate"],
        "simulate": ["simulate", "--days", "1"],
        "import": ["import", str(csv), "--service", "checkout"],
        "forecast": ["forecast", "--series", "checkout", "--model", "seasonal-naive"],
        "backtest --series": ["backtest", "--series", "checkout", "--capacity", "100"],
    }


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text("ds,y\n2024-03-04T00:00:00,10\n2024-03-04T00:05:00,12\n")
    return path


@pytest.mark.parametrize("command", list(_commands(Path("x"))))
def test_command_without_a_database_url_exits_2_with_one_line(
    command: str, csv: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PRESCALER_DATABASE_URL", raising=False)
    assert cli.main(_commands(csv)[command]) == cli.EXIT_INPUT
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [MESSAGE]


def test_a_real_process_prints_no_traceback(csv: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PRESCALER_DATABASE_URL"}
    proc = subprocess.run([sys.executable, "-m", "prescaler.cli", "import", str(csv)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr.splitlines()) == (2, "", [MESSAGE])


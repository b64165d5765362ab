"""`prescaler backtest --schedules FILE.yaml`: windows from cron schedules move capacity; a bad file writes nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prescaler.backtest import run_backtest
from prescaler.broadcast import simulate_broadcast
from prescaler.cli import main
from prescaler.schedules import parse_schedules, windows_between


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    series, _ = simulate_broadcast(start=datetime(2026, 3, 2, tzinfo=UTC), days=12, seed=5)
    five = series.resample("5min").sum()
    path = tmp_path_factory.mktemp("trace") / "trace.csv"
    five.rename_axis("ds").rename("y").to_frame().to_csv(path, date_format="%Y-%m-%dT%H:%M:%SZ")
    return path


def _backtest(trace: Path, tmp_path: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "result.json"
    code = main(["backtest", "--input", str(trace), "--capacity", "1000", "--startup-delay", "10m",
                 "--model", "seasonal-naive", "--last", "5d", "--no-progress", "--workers", "1",
                 "--json", str(out), *extra])
    return code, out


def test_a_floor_schedule_holds_its_replicas_in_every_window(trace: Path, tmp_path: Path) -> None:
    sched = tmp_path / "schedules.yaml"
    sched.write_text("schedules:\n  - {name: prime-time, cron: '0 19 * * *', duration: 2h, timeZone: UTC, "
                     "minReplicas: 25}\n")
    code, out = _backtest(trace, tmp_path, "--schedules", str(sched))
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["settings"]["schedules"] == 12 + 1  # every evening of the trace, and the day after it
    with_floor = doc["policies"]["predictive"]
    code, out = _backtest(trace, tmp_path)
    assert code == 0
    without = json.loads(out.read_text())["policies"]["predictive"]
    assert with_floor["replica_hours"] > without["replica_hours"]
    assert with_floor["unserved_pct"] < without["unserved_pct"]


def test_the_floor_is_held_from_the_lead_before_each_window_to_its_end(trace: Path) -> None:
    series = pd.read_csv(trace, index_col="ds", parse_dates=True)["y"]
    floor = parse_schedules([{"name": "prime-time", "cron": "0 19 * * *", "duration": "2h", "timeZone": "UTC",
                              "minReplicas": 25}])
    windows = windows_between(floor, datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 15, tzinfo=UTC))
    result = run_backtest(series, capacity=1000.0, startup_delay=timedelta(minutes=10), model="seasonal-naive",
                          last=timedelta(days=5), progress=False, workers=1, schedules=windows)
    ds = pd.DatetimeIndex(result.ds)
    minutes = ds.hour * 60 + ds.minute
    held = (minutes >= 18 * 60 + 50) & (minutes < 21 * 60)
    assert np.all(result.ready["predictive"][held & (minutes >= 19 * 60)] >= 25)  # Ready from the opening
    assert np.all(result.requested["predictive"][held] >= 25)

def test_a_bad_schedule_exits_2_naming_it_and_writes_nothing(trace: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    sched = tmp_path / "schedules.yaml"
    sched.write_text("- {name: ok, cron: '0 19 * * *', duration: 1h, timeZone: UTC}\n"
                     "- {name: broken, cron: '0 25 * * *', duration: 1h, timeZone: UTC}\n")
    code, out = _backtest(trace, tmp_path, "--schedules", str(sched))
    assert code == 2
    err = capsys.readouterr().err
    assert "schedules[1].cron" in err and "'0 25 * * *'" in err
    assert not out.exists()

"""FitPool's hard time limit: a hung fit is killed at its deadline with the processes it started, its
worker slot gets a new process, and the other scalers' fits go on.

The pool runs `scripted_fit` from this module instead of a model (the pool's test seam: a module-level
function that its workers import). The history's name tells it what to do, so every test drives real worker
processes, real deadlines and real kills.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prescaler import forecasting as fc
from prescaler.forecasting.pool import fit_unbounded

DAY = timedelta(days=1)
HANG_S = 3600
# Long enough for a seasonal-naive fit on a busy machine, the limit every fit of these pools gets.
TIMEOUT_S = 5.0
# Far above what a cold worker start and a seasonal-naive fit need, far below HANG_S: a deadline, not a speed test.
MARGIN_S = 120.0


def scripted_fit(name: str, history: pd.Series, horizon: timedelta, events: pd.DataFrame | None,
                 select_horizon: timedelta | None) -> fc.FitResult:
    """`hang:<file>`: hang like a stuck optimiser, after starting a child process as cmdstan does and writing
    both pids to <file>; `exit`: the worker dies; any other name: the real fit, its reason naming the worker."""
    script = str(history.name)
    if script.startswith("hang:"):
        child = subprocess.Popen(["sleep", str(HANG_S)])
        Path(script.removeprefix("hang:")).write_text(f"{os.getpid()} {child.pid}")
        time.sleep(HANG_S)
    if script == "exit":
        os._exit(3)
    result = fit_unbounded(name, history, horizon, events, select_horizon)
    result.reason += f" [worker {os.getpid()}]"
    return result


def traffic(days: float = 9) -> pd.Series:
    index = pd.date_range("2024-01-01", periods=int(days * 24), freq="h", tz="UTC")
    daily = 1 + 0.8 * np.sin(2 * np.pi * index.hour / 24)
    return pd.Series(1000 * daily, index=index, name="fit")


def hanging(pid_file: Path) -> pd.Series:
    return traffic().rename(f"hang:{pid_file}")


def recorded_pids(pid_file: Path) -> list[int]:
    return [int(p) for p in pid_file.read_text().split()]


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie waiting for its (new) parent to reap it counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def gone_soon(pid: int, within_s: float = 10.0) -> bool:
    """Whether `pid` is gone within a short grace: SIGKILL is delivered at once but its exit is not instant."""
    end = time.monotonic() + within_s
    while alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def pid_files(tmp_path: Path) -> Iterator[list[Path]]:
    """Pid files of hung fits; whatever a failing test leaves running is killed afterwards."""
    files: list[Path] = []
    yield files
    for file in files:
        if file.exists():
            for pid in recorded_pids(file):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def worker_of(result: fc.FitResult) -> int:
    return int(result.reason.rsplit("[worker ", 1)[1].rstrip("]"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_two_hung_fits_are_killed_at_their_deadline_and_another_fit_goes_on(
        tmp_path: Path, pid_files: list[Path]) -> None:
    pid_files += [tmp_path / "hung-0", tmp_path / "hung-1"]
    with fc.FitPool(max_workers=2, timeout_s=TIMEOUT_S, fit=scripted_fit) as pool:
        hung = [pool.submit("prophet", hanging(file), DAY) for file in pid_files]
        other = pool.submit("seasonal-naive", traffic(), DAY)
        # Both workers are taken by hung fits: the other fit waits for a slot, which the kills free.
        result = other.result(timeout=TIMEOUT_S + MARGIN_S)
        killed = f"^prophet fit exceeded the {TIMEOUT_S:g}s timeout; its process was killed"
        for future in hung:
            with pytest.raises(fc.FitTimeout, match=killed):
                future.result(timeout=MARGIN_S)
    assert result.model == "seasonal-naive"
    assert result.forecast.ds[0] == traffic().index[-1] + timedelta(hours=1)
    for file in pid_files:
        worker, child = recorded_pids(file)
        assert gone_soon(worker), f"hung worker {worker} still runs"
        assert gone_soon(child), f"the process {child} a hung fit started still runs"
        assert worker_of(result) != worker  # the slot got a fresh worker


def test_a_cancelled_queued_fit_never_starts_and_the_slot_gets_a_new_worker(
        tmp_path: Path, pid_files: list[Path]) -> None:
    pid_files += [tmp_path / "first", tmp_path / "queued"]
    with fc.FitPool(max_workers=1, timeout_s=TIMEOUT_S, fit=scripted_fit) as pool:
        first = pool.submit("prophet", hanging(pid_files[0]), DAY)
        queued = pool.submit("prophet", hanging(pid_files[1]), DAY)
        assert queued.cancel()
        after = pool.submit("seasonal-naive", traffic(), DAY)
        result = after.result(timeout=MARGIN_S)
        with pytest.raises(fc.FitTimeout, match=f"prophet fit exceeded the {TIMEOUT_S:g}s timeout"):
            first.result(timeout=0)
        again = pool.submit("seasonal-naive", traffic(), DAY).result(timeout=MARGIN_S)
    assert result.model == "seasonal-naive"
    assert not pid_files[1].exists()
    assert worker_of(result) != recorded_pids(pid_files[0])[0]
    assert worker_of(again) == worker_of(result)  # a worker that finished in time serves the next fit


def test_a_worker_that_dies_fails_its_fit_and_is_replaced() -> None:
    with fc.FitPool(max_workers=1, timeout_s=MARGIN_S, fit=scripted_fit) as pool:
        died = pool.submit("seasonal-naive", traffic().rename("exit"), DAY)
        with pytest.raises(RuntimeError, match=r"seasonal-naive fit process died \(exit code 3\)"):
            died.result(timeout=MARGIN_S)
        assert pool.submit("seasonal-naive", traffic(), DAY).result(timeout=MARGIN_S).model == "seasonal-naive"


def test_input_errors_come_back_through_the_future_and_shutdown_refuses_new_fits() -> None:
    pool = fc.FitPool(max_workers=1, timeout_s=MARGIN_S, fit=scripted_fit)
    try:
        short = traffic(days=1)
        with pytest.raises(fc.ForecastUnavailable, match="needed for any forecast"):
            pool.submit("seasonal-naive", short, DAY).result(timeout=MARGIN_S)
    finally:
        pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit("seasonal-naive", traffic(), DAY)


def test_shutdown_cancels_queued_fits(tmp_path: Path, pid_files: list[Path]) -> None:
    pid_files.append(tmp_path / "running")
    pool = fc.FitPool(max_workers=1, timeout_s=1.0, fit=scripted_fit)
    running = pool.submit("prophet", hanging(pid_files[0]), DAY)
    while not running.running():  # taken by the worker, so shutdown leaves it be
        time.sleep(0.01)
    queued: Future[fc.FitResult] = pool.submit("seasonal-naive", traffic(), DAY)
    pool.shutdown()  # returns once the running fit met its deadline
    assert queued.cancelled()
    with pytest.raises(fc.FitTimeout):
        running.result(timeout=0)

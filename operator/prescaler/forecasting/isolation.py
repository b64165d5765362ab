"""Fits in a child process with a hard time limit, and the one place that decides how children start."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

import pandas as pd

from prescaler.errors import InputError
from prescaler.forecasting.interface import FitResult, FitTimeout, ForecastUnavailable
from prescaler.forecasting.selection import brief_error, fit_local, prepare_fit

# What a forkserver imports once for all its children: the fitting code (numpy, pandas, the models).
_PRELOAD = ["prescaler.forecasting.isolation", "prescaler.forecasting.pool"]


def mp_context() -> multiprocessing.context.BaseContext:
    """Fork when single-threaded (instant start); else a forkserver with the fitting code preloaded.

    Forking a multi-threaded process (the operator's event loop and its threads) can deadlock the child.
    The forkserver is a clean single-threaded process that imported the fitting code once, so its children
    start fast. Like spawn, it imports the caller's `__main__` once: scripts need their `__main__` guard.
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def _worker_main(conn: Connection) -> None:
    """Run the fits the parent sends, one at a time, until it sends None or goes away."""
    # Own process group, so a kill ends the fit and the cmdstan process it started together.
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        fit, args = task
        conn.send(("started", None))
        try:
            outcome: tuple[str, Any] = ("ok", fit(*args))
        except BaseException as exc:
            outcome = ("error", exc)
        try:
            conn.send(outcome)
        except OSError:  # the parent is gone: nobody waits for this fit
            return
        except Exception as exc:  # an outcome that does not pickle must still end the wait
            conn.send(("error", RuntimeError(f"cannot return the fit's outcome: {brief_error(exc)}")))


class Worker:
    """A child process that runs fits sent to it, in a process group of its own that `kill` ends."""

    def __init__(self, ctx: multiprocessing.context.BaseContext) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process: multiprocessing.process.BaseProcess = ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main, args=(child,), daemon=True)
        self.process.start()
        child.close()

    def send(self, fit: Callable[..., FitResult], args: tuple[Any, ...]) -> None:
        self.conn.send((fit, args))

    def exit_text(self) -> str:
        self.process.join(1)
        return f"exit code {self.process.exitcode}"

    def kill(self) -> None:
        """SIGKILL the worker's process group (the fit and cmdstan), or the worker alone before it made one."""
        pid = self.process.pid
        if pid is not None and self.process.is_alive() and hasattr(os, "killpg"):
            # Only while it lives: once reaped, its pid (the group's id) may belong to another process.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    def stop(self) -> None:
        """Let an idle worker exit on its own; kill it if it does not."""
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(5)
        if self.process.is_alive():
            self.kill()
        else:
            self.conn.close()


def _fit_with_timeout(args: tuple[Any, ...], timeout_s: float, start_limit_s: float = 60.0) -> FitResult:
    """Run `fit_local(*args)` in a child; kill it when the fit takes longer than `timeout_s`.

    The clock starts once the child runs, so a cold forkserver start does not eat the fit's budget.
    """
    worker = Worker(mp_context())
    finished = False
    try:
        worker.send(fit_local, args)
        if not worker.conn.poll(start_limit_s):
            raise FitTimeout(f"fit process did not start within {start_limit_s:g}s")
        worker.conn.recv()
        if not worker.conn.poll(timeout_s):
            raise FitTimeout(f"fit exceeded the {timeout_s:g}s timeout")
        status, payload = worker.conn.recv()
        finished = True
    except EOFError:
        raise RuntimeError(f"fit process died ({worker.exit_text()})") from None
    finally:
        if finished:
            worker.stop()
        else:
            worker.kill()
    if status == "error":
        raise payload
    result: FitResult = payload
    return result


def fit_predict(name: str, history: pd.Series, horizon: timedelta, *, events: pd.DataFrame | None = None,
                timeout_s: float | None = None, select_horizon: timedelta | None = None) -> FitResult:
    """Fit `name` on `history` and forecast `horizon`.

    "auto" backtests every eligible model (AUTO_FOLDS windows as long as the horizon when history allows,
    else a week of 1-day windows) and forecasts the 1/pinball-weighted mean of the best and of the models its
    backtest cannot tell from it (`model` "auto(a+b)"; a lone model keeps its own name).

    Falls back to a baseline, with the reason, when history is too short for the model, when the fit
    fails, or when it exceeds `timeout_s` (enforced in a child process; None = in-process, no limit).
    Raises ForecastUnavailable when no model can fit at all.
    """
    history = prepare_fit(name, history, horizon)
    args = (name, history, horizon, events, select_horizon)
    if timeout_s is None:
        return fit_local(*args)
    started = time.perf_counter()
    try:
        return _fit_with_timeout(args, timeout_s)
    except (ForecastUnavailable, InputError):
        raise
    except Exception as exc:
        why = str(exc) if isinstance(exc, FitTimeout) else f"fit failed ({brief_error(exc)})"
        result = fit_local("seasonal-naive", history, horizon, events, select_horizon)
        result.reason = f"{name}: {why}: using seasonal-naive ({result.forecast.note})"
        result.fit_seconds = time.perf_counter() - started
        return result

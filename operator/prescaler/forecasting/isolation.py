"""Fits in a child process with a hard time limit, and the one place that decides how children start."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import signal
import threading
import time
from datetime import timedelta
from typing import Any

import pandas as pd

from prescaler.errors import InputError
from prescaler.forecasting.interface import FitResult, FitTimeout, ForecastUnavailable
from prescaler.forecasting.selection import brief_error, fit_local, prepare_fit

# What a forkserver imports once for all its children: the fitting code (numpy, pandas, the models).
_PRELOAD = ["prescaler.forecasting.isolation"]


def mp_context() -> multiprocessing.context.BaseContext:
    """Fork when single-threaded (instant start); else a forkserver with the fitting code preloaded.

    Forking a multi-threaded process (the operator's event loop and its threads) can deadlock the child.
    The forkserver is a clean single-threaded process that imported the fitting code once, so its children
    start fast and never re-import the caller's __main__ (spawn-safe).
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def _child_main(conn: Any, args: tuple[Any, ...]) -> None:
    # Own process group, so a timeout can kill the fit and the cmdstan process it started together.
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    conn.send(("started", None))
    try:
        conn.send(("ok", fit_local(*args)))
    except BaseException as exc:
        conn.send(("error", exc))
    finally:
        conn.close()


def _kill(process: multiprocessing.process.BaseProcess) -> None:
    pid = process.pid
    if pid is None:
        return
    try:
        if hasattr(os, "killpg"):
            os.killpg(pid, signal.SIGKILL)
        else:
            process.kill()
    except ProcessLookupError:
        pass
    process.join(5)


def _fit_with_timeout(args: tuple[Any, ...], timeout_s: float, start_limit_s: float = 60.0) -> FitResult:
    """Run `fit_local(*args)` in a child; kill it when the fit takes longer than `timeout_s`.

    The clock starts once the child runs, so a cold forkserver start does not eat the fit's budget.
    """
    ctx = mp_context()
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child_main, args=(child, args), daemon=True)  # type: ignore[attr-defined]
    process.start()
    child.close()
    try:
        if not parent.poll(start_limit_s):
            raise FitTimeout(f"fit process did not start within {start_limit_s:g}s")
        parent.recv()
        if not parent.poll(timeout_s):
            raise FitTimeout(f"fit exceeded the {timeout_s:g}s timeout")
        status, payload = parent.recv()
    except EOFError:
        raise RuntimeError(f"fit process died (exit code {process.exitcode})") from None
    finally:
        if process.is_alive():
            _kill(process)
        else:
            process.join()
        parent.close()
    if status == "error":
        raise payload
    result: FitResult = payload
    return result


def fit_predict(name: str, history: pd.Series, horizon: timedelta, *, events: pd.DataFrame | None = None,
                timeout_s: float | None = None, select_horizon: timedelta | None = None) -> FitResult:
    """Fit `name` on `history` and forecast `horizon`.

    "auto" backtests every eligible model (AUTO_FOLDS windows as long as the horizon when history allows,
    else 1-day windows), drops each model another beat in every window, and forecasts the 1/sMAPE-weighted
    mean of the rest (`model` "auto(a+b)"; a lone survivor keeps its own name).

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

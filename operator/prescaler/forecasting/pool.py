"""`FitPool`: the operator's fits in worker processes with a hard time limit.

A fit that hangs (a stalled optimiser, cmdstan stuck) must not hold a worker for longer than the limit, or
two of them stall every refit of the fleet. So the limit is enforced by killing: each fit runs in a worker
process whose whole process group gets SIGKILL at the deadline, and the slot gets a fresh worker.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing import connection
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

import pandas as pd

from prescaler.forecasting.interface import FitResult, FitTimeout
from prescaler.forecasting.isolation import Worker, fit_predict, mp_context
from prescaler.forecasting.models import check_model_name
from prescaler.forecasting.selection import brief_error

_log = logging.getLogger(__name__)

# What a worker runs: (name, history, horizon, events, select_horizon) -> FitResult. Module-level, so it
# pickles by reference.
FitFunction = Callable[[str, pd.Series, timedelta, pd.DataFrame | None, timedelta | None], FitResult]


def fit_unbounded(name: str, history: pd.Series, horizon: timedelta, events: pd.DataFrame | None,
                  select_horizon: timedelta | None) -> FitResult:
    """A worker's fit: `fit_predict` without a limit of its own, since the pool kills the worker instead."""
    return fit_predict(name, history, horizon, events=events, select_horizon=select_horizon)


@dataclass
class _Job:
    future: Future[FitResult]
    name: str
    args: tuple[Any, ...]


@dataclass
class _Busy:
    job: _Job
    worker: Worker
    deadline: float  # time.monotonic(): the start limit until the worker picked the fit up, then the fit's
    started: bool = False


def _settle(future: Future[FitResult], outcome: FitResult | BaseException) -> None:
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:  # settled already: nothing left to tell
        pass


class FitPool:
    """Fits in up to `max_workers` worker processes, so the caller's event loop never runs one.

    `submit` queues a fit and returns its future at once; queued fits wait for a free worker, and a queued
    fit whose future was cancelled never starts. A fit's clock starts when a worker picks it up (a cold
    worker start does not count against it); after `timeout_s` its worker's process group is killed, the
    future fails with `FitTimeout`, and the next fit gets a new worker. `timeout_s=None`: no limit.

    `fit` is what workers run (default `fit_unbounded`); another module-level function with its signature
    serves tests. Workers start from the pool's own thread, so `mp_context` gives them a forkserver (or
    spawn), never a fork of this multi-threaded process.
    """

    def __init__(self, max_workers: int = 2, *, timeout_s: float | None = None, fit: FitFunction = fit_unbounded,
                 start_limit_s: float = 60.0) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers
        self.timeout_s = timeout_s
        self._fit = fit
        self._start_limit_s = start_limit_s
        # Shared with callers, under _lock: the queue and the closing state.
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._closing = False
        self._stopped = False
        # A self-pipe wakes the dispatcher, which otherwise sleeps in wait() on its workers until a deadline.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # The dispatcher thread's own.
        self._ctx: BaseContext | None = None
        self._idle: list[Worker] = []
        self._busy: dict[Connection, _Busy] = {}
        self._thread = threading.Thread(target=self._run, name="prescaler-fit-pool", daemon=True)
        self._thread.start()

    def submit(self, name: str, history: pd.Series, horizon: timedelta, events: pd.DataFrame | None = None,
               select_horizon: timedelta | None = None) -> Future[FitResult]:
        check_model_name(name)
        future: Future[FitResult] = Future()
        with self._lock:
            if self._closing:
                raise RuntimeError("cannot submit a fit after the pool was shut down")
            self._queue.append(_Job(future, name, (name, history, horizon, events, select_horizon)))
        self._wake()
        return future

    def shutdown(self, wait: bool = True) -> None:
        """Cancel the queued fits; running ones finish (or meet their deadline), then the workers exit."""
        with self._lock:
            self._closing = True
            queued = list(self._queue)
            self._queue.clear()
        for job in queued:
            job.future.cancel()
        self._wake()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> FitPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # --- the dispatcher thread ----------------------------------------------------------------------------

    def _wake(self) -> None:
        with self._lock:
            if self._stopped:
                return
            # A pipe full of unread wake-ups wakes the dispatcher anyway.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"\0")

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:
            _log.exception("the fit pool's dispatcher failed: failing its fits")
        finally:
            self._close()

    def _serve(self) -> None:
        while True:
            self._start_queued()
            with self._lock:
                if self._closing and not self._queue and not self._busy:
                    return
            ready = connection.wait([self._wake_r, *self._busy], timeout=self._until_next_deadline())
            for item in ready:
                if isinstance(item, Connection):
                    self._receive(item)
                else:
                    self._drain_wake()
            self._expire()

    def _close(self) -> None:
        with self._lock:
            self._closing = True  # after a dispatcher failure, submit refuses instead of queueing forever
            left = list(self._queue)
            self._queue.clear()
        stopped = RuntimeError("the fit pool stopped")
        for busy in self._busy.values():
            busy.worker.kill()
            _settle(busy.job.future, stopped)
        self._busy.clear()
        for job in left:
            _settle(job.future, stopped)
        for worker in self._idle:
            worker.stop()
        self._idle.clear()
        with self._lock:
            self._stopped = True
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _start_queued(self) -> None:
        while len(self._busy) < self.max_workers:
            with self._lock:
                if not self._queue:
                    return
                job = self._queue.popleft()
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled while it waited: it never starts
            try:
                worker = self._worker()
            except Exception as exc:
                _settle(job.future, RuntimeError(f"{job.name}: cannot start a fit process ({brief_error(exc)})"))
                continue
            try:
                worker.send(self._fit, job.args)
            except OSError as exc:  # the worker's end is gone
                worker.kill()
                _settle(job.future, RuntimeError(f"{job.name}: fit process lost ({brief_error(exc)})"))
                continue
            except Exception as exc:  # the arguments do not pickle: nothing was sent, the worker stays usable
                self._idle.append(worker)
                _settle(job.future, exc)
                continue
            self._busy[worker.conn] = _Busy(job, worker, time.monotonic() + self._start_limit_s)

    def _worker(self) -> Worker:
        while self._idle:
            worker = self._idle.pop()
            if worker.process.is_alive():
                return worker
            worker.kill()
        if self._ctx is None:
            self._ctx = mp_context()
        return Worker(self._ctx)

    def _receive(self, conn: Connection) -> None:
        busy = self._busy[conn]
        try:
            status, payload = conn.recv()
        except (EOFError, OSError):
            del self._busy[conn]
            why = busy.worker.exit_text()
            busy.worker.kill()
            _settle(busy.job.future, RuntimeError(f"{busy.job.name} fit process died ({why})"))
            return
        except Exception as exc:  # an outcome that does not unpickle here; the message was read whole
            status, payload = "error", RuntimeError(f"{busy.job.name}: unreadable fit outcome ({brief_error(exc)})")
        if status == "started":
            busy.started = True
            busy.deadline = math.inf if self.timeout_s is None else time.monotonic() + self.timeout_s
            return
        del self._busy[conn]
        self._idle.append(busy.worker)
        _settle(busy.job.future, payload)  # "ok": the FitResult; "error": the exception the fit raised

    def _expire(self) -> None:
        now = time.monotonic()
        for conn, busy in list(self._busy.items()):
            if busy.deadline > now or (busy.started and conn.poll()):
                continue  # still in time, or its outcome arrived just now: the next round reads it
            del self._busy[conn]
            busy.worker.kill()
            if busy.started:
                why = f"{busy.job.name} fit exceeded the {self.timeout_s:g}s timeout; its process was killed"
            else:
                why = f"{busy.job.name} fit process did not start within {self._start_limit_s:g}s"
            _settle(busy.job.future, FitTimeout(why))

    def _until_next_deadline(self) -> float | None:
        deadline = min((busy.deadline for busy in self._busy.values()), default=math.inf)
        return None if math.isinf(deadline) else max(0.0, deadline - time.monotonic())

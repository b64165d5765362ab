"""A process pool for the operator: fits never run on its event loop."""

from __future__ import annotations

import concurrent.futures
from datetime import timedelta

import pandas as pd

from prescaler.forecasting.interface import FitResult
from prescaler.forecasting.isolation import fit_predict, mp_context
from prescaler.forecasting.models import check_model_name


def _pool_task(name: str, history: pd.Series, horizon: timedelta, events: pd.DataFrame | None,
               select_horizon: timedelta | None, timeout_s: float | None) -> FitResult:
    return fit_predict(name, history, horizon, events=events, timeout_s=timeout_s,
                       select_horizon=select_horizon)


class FitPool:
    """Fits in worker processes, so the caller's event loop never runs one.

    Workers start as `mp_context` decides: safe to create from a multi-threaded process. With `timeout_s`,
    each fit is bounded as in `fit_predict`.
    """

    def __init__(self, max_workers: int = 2, *, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self._executor = concurrent.futures.ProcessPoolExecutor(max_workers=max_workers, mp_context=mp_context())

    def submit(self, name: str, history: pd.Series, horizon: timedelta, events: pd.DataFrame | None = None,
               select_horizon: timedelta | None = None) -> concurrent.futures.Future[FitResult]:
        check_model_name(name)
        return self._executor.submit(_pool_task, name, history, horizon, events, select_horizon,
                                     self.timeout_s)

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> FitPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

"""The rolling origin's refits, in parallel processes, with a progress bar that shows an ETA.

Refits are independent of each other (each sees only the history before its origin), so they run in a
`prescaler.forecasting.FitPool`: the operator's own worker processes, each fit killed at its deadline. One
worker runs them in order in this process's children instead (what the tests monkeypatch). Every origin is
fitted once; the headroom frontier and the service-level replay reuse the forecasts.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import sys
from collections.abc import Sequence
from concurrent.futures import Future, as_completed
from datetime import timedelta
from typing import Any

import pandas as pd

from prescaler import events as event_lift
from prescaler import forecasting
from prescaler.backtest.policies import Fit

FIT_TIMEOUT_S = 120.0


def default_workers() -> int:
    """One worker per core this process may use: a fit is CPU-bound and single-threaded."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def fit_with_events(name: str, history: pd.Series, horizon: timedelta, events: pd.DataFrame | None,
                    select_horizon: timedelta | None) -> forecasting.FitResult:
    """What a pool worker runs: events move every model (fit on the masked history, lift the forecast).

    Module-level, so it pickles by reference; the pool kills the worker at the deadline, so no limit here.
    The CPU seconds it used (its own and its children's, such as cmdstan) travel in the forecast's `extra`
    as CPU_KEY: wall-clock time on a shared machine says little about what the refits cost.
    """
    started = _cpu_seconds()
    res = event_lift.fit_predict(name, history, horizon, events=events, select_horizon=select_horizon)
    extra = {**res.forecast.extra, CPU_KEY: _cpu_seconds() - started}
    return dataclasses.replace(res, forecast=dataclasses.replace(res.forecast, extra=extra))


CPU_KEY = "backtest:cpu_seconds"


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cpu_seconds(fits: Sequence[Fit]) -> float | None:
    """CPU seconds the refits used, where the pool measured them (None when none did)."""
    measured = [f.forecast.extra[CPU_KEY] for f in fits if f.forecast is not None and CPU_KEY in f.forecast.extra]
    return float(sum(measured)) if measured else None


def refit_all(
    s: pd.Series,
    e0: int,
    origins: Sequence[int],
    *,
    model: str,
    horizon: timedelta,
    fit_steps: int,
    events: pd.DataFrame | None,
    progress: bool,
    workers: int,
) -> list[Fit]:
    """One forecast per origin (evaluated-bucket index, negative before the window), in origin order."""
    histories = [s.iloc[max(0, e0 + o - fit_steps) : e0 + o] for o in origins]
    bar = _bar(len(origins), model, workers, progress)
    try:
        if workers <= 1:
            return [_fit_here(o, h, model, horizon, events, bar) for o, h in zip(origins, histories, strict=True)]
        return _fit_pooled(origins, histories, model, horizon, events, workers, bar)
    finally:
        if bar is not None:
            bar.close()


def _fit_here(origin: int, history: pd.Series, model: str, horizon: timedelta, events: pd.DataFrame | None,
              bar: Any) -> Fit:
    try:
        res = event_lift.fit_predict(model, history, horizon, events=events, timeout_s=FIT_TIMEOUT_S,
                                     select_horizon=horizon)
        fit = Fit(origin, res.forecast, res.model, float(res.fit_seconds), None)
    except forecasting.ForecastUnavailable as exc:
        fit = Fit(origin, None, None, 0.0, str(exc))
    if bar is not None:
        bar.update(1)
    return fit


def _fit_pooled(origins: Sequence[int], histories: Sequence[pd.Series], model: str, horizon: timedelta,
                events: pd.DataFrame | None, workers: int, bar: Any) -> list[Fit]:
    fits: dict[int, Fit] = {}
    with forecasting.FitPool(min(workers, len(origins)) or 1, timeout_s=FIT_TIMEOUT_S,
                             fit=fit_with_events) as pool:
        futures: dict[Future[forecasting.FitResult], int] = {
            pool.submit(model, h, horizon, events, horizon): i for i, h in enumerate(histories)
        }
        for future in as_completed(futures):
            i = futures[future]
            fits[i] = _outcome(origins[i], future, histories[i], horizon, events)
            if bar is not None:
                bar.update(1)
    return [fits[i] for i in range(len(origins))]


def _outcome(origin: int, future: Future[forecasting.FitResult], history: pd.Series, horizon: timedelta,
             events: pd.DataFrame | None) -> Fit:
    try:
        res = future.result()
        return Fit(origin, res.forecast, res.model, float(res.fit_seconds), None)
    except forecasting.ForecastUnavailable as exc:
        return Fit(origin, None, None, 0.0, str(exc))
    except Exception:
        # A fit that timed out or whose process died: the baseline stands in, as `fit_predict` does when
        # its own time limit strikes, so one stuck refit costs a day of seasonal-naive, not the backtest.
        try:
            res = event_lift.fit_predict("seasonal-naive", history, horizon, events=events)
        except forecasting.ForecastUnavailable as exc:
            return Fit(origin, None, None, 0.0, str(exc))
        return Fit(origin, res.forecast, res.model, float(res.fit_seconds), None)


def _bar(total: int, model: str, workers: int, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    # tqdm's monitor thread would make the process multi-threaded, and in-process fits with a timeout then
    # start through a forkserver instead of a plain fork: seconds per refit instead of milliseconds.
    tqdm.monitor_interval = 0
    # The default format ends with "<remaining": the ETA, from the refits finished so far.
    return tqdm(total=total, desc=f"backtest {model} ({workers} worker{'s' if workers != 1 else ''})",
                unit="refit", file=sys.stderr, leave=False)

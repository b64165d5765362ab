"""`auto`'s rule on backtest losses alone: which candidates it mixes, on how many windows, and the loss per
window it judges them by. No model is fitted here."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from prescaler.forecasting.interface import Forecast
from prescaler.forecasting.scoring import Fold, cross_losses, cross_pinball
from prescaler.forecasting.selection import (
    AUTO_FOLDS,
    NEAR_BEST,
    SHORT_FOLDS,
    auto_folds,
    close_to_best,
    mix_candidates,
    newest,
)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
WINDOWS = (0, 24, 48, 72, 96, 120, 144)  # first rows of a week of 1-day windows


def losses(values: list[float]) -> dict[int, float]:
    return dict(zip(WINDOWS, values, strict=False))


def test_a_week_of_windows_up_to_a_day_three_beyond() -> None:
    assert SHORT_FOLDS == 7 and AUTO_FOLDS == 3
    assert auto_folds(DAY) == auto_folds(HOUR) == 7
    assert auto_folds(2 * DAY) == auto_folds(7 * DAY) == 3


def test_a_candidate_steadily_worse_in_every_window_is_told_apart() -> None:
    best = losses([100, 120, 90, 110, 80, 130, 100])
    steady = {s: v * 1.1 for s, v in best.items()}
    assert not close_to_best(best, steady)


def test_a_candidate_worse_on_average_but_by_chance_is_not_told_apart() -> None:
    best = losses([100, 120, 90, 110, 80, 130, 100])
    noisy = losses([60, 180, 70, 170, 50, 190, 70])  # 10% worse on average, ahead in four windows
    assert close_to_best(best, noisy)
    assert close_to_best(noisy, best)  # nor, the other way round, is the better one
    assert close_to_best(best, dict(best))


def test_too_few_shared_windows_cannot_tell() -> None:
    best = losses([100, 100, 100])
    assert close_to_best(best, {0: 500.0})
    assert close_to_best(best, {24: 500.0, 999: 1.0})  # one window in common
    assert not close_to_best(best, {0: 150.0, 24: 160.0, 999: 1.0})  # two, both worse


def test_mix_keeps_the_clear_winner_of_a_week_alone() -> None:
    # One candidate beats the others in every one of seven windows: nothing to average it with.
    winner = losses([100, 90, 110, 95, 105, 100, 98])
    others = {"b": losses([120, 105, 126, 118, 125, 117, 121]), "c": losses([112, 99, 123, 104, 118, 111, 109])}
    scores = {"a": 1.0, "b": 1.2, "c": 1.1}
    kept, dropped = mix_candidates(scores, {"a": winner, **others})
    assert kept == ["a"]
    assert dropped == {"b": "pinball 1.20%, more than 1 standard error above the best's",
                       "c": "pinball 1.10%, more than 1 standard error above the best's"}


def test_mix_keeps_what_three_windows_cannot_tell_apart() -> None:
    # The same best on three windows where the runner-up wins one: mixed, best first.
    scores = {"b": 1.05, "a": 1.0, "far": 1.6}
    per_window = {"a": losses([100, 90, 110]), "b": losses([95, 100, 120]), "far": losses([160, 150, 170])}
    kept, dropped = mix_candidates(scores, per_window)
    assert kept == ["a", "b"]
    assert dropped == {"far": f"pinball 1.60% > {NEAR_BEST:g}× the best's"}


def test_mix_without_losses_per_window_falls_back_to_near_best() -> None:
    kept, dropped = mix_candidates({"a": 10.0, "b": 14.0, "c": 16.0}, {})
    assert kept == ["a", "b"] and list(dropped) == ["c"]


def _fold(split: int, actual: np.ndarray, yhat: np.ndarray) -> Fold:
    ds = pd.date_range("2024-01-01", periods=len(yhat), freq="h", tz="UTC")
    return Fold(split, actual, Forecast(ds=ds, yhat=yhat, lower=yhat, upper=yhat, model="m"))


def test_newest_keeps_each_models_last_windows() -> None:
    ones = np.ones(24)
    backtests = {"a": {s: _fold(s, ones, ones) for s in WINDOWS}, "b": {s: _fold(s, ones, ones) for s in WINDOWS[5:]}}
    kept = newest(backtests, 3)
    assert list(kept["a"]) == [96, 120, 144] and list(kept["b"]) == [120, 144]


def test_cross_losses_add_up_to_the_cross_fitted_pinball() -> None:
    rng = np.random.default_rng(3)
    pairs = []
    for _ in range(5):
        actual = 1000 * (1 + 0.1 * rng.standard_normal(24))
        actual[rng.integers(24)] = np.nan  # a missing bucket counts in neither sum
        pairs.append((actual, np.full(24, 1000.0)))
    per_window = cross_losses(pairs, HOUR, 0.9)
    assert [load for _, load in per_window] == pytest.approx([np.nansum(a) for a, _ in pairs])
    assert all(loss > 0 for loss, _ in per_window)
    total = sum(loss for loss, _ in per_window) / sum(load for _, load in per_window) * 100
    assert cross_pinball(pairs, HOUR, 0.9) == pytest.approx(total)
    assert np.isnan(cross_pinball([], HOUR, 0.9))

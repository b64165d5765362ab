"""Forecasters, error metrics, auto-selection, fallbacks and the fit timeout, on synthetic series."""

from __future__ import annotations

import importlib
import subprocess
import sys
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from prescaler import forecasting as fc
from prescaler.errors import InputError
from prescaler.forecasting.bands import conformal_quantile, lead_bins
from prescaler.forecasting.selection import fit_local

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
MODELS = ("prophet", "seasonal-naive", "holt-winters")
# Every forecaster auto may use: the three a scaler can name and the internal ones.
CANDIDATES = (*MODELS, "seasonal-median", "mstl", "harmonic")


def traffic(days: float, step: timedelta = HOUR, *, noise: float = 0.03, seed: int = 1,
            start: str = "2024-01-01") -> pd.Series:
    """Morning and evening peaks, quieter weekends, multiplicative noise."""
    index = pd.date_range(start, periods=int(days * DAY / step), freq=step, tz="UTC")
    hour = index.hour + index.minute / 60
    daily = 1 + 0.8 * np.exp(-((hour - 9) ** 2) / 4) + 1.0 * np.exp(-((hour - 19) ** 2) / 3)
    weekly = np.where(index.dayofweek >= 5, 0.6, 1.0)
    rng = np.random.default_rng(seed)
    return pd.Series(1000 * daily * weekly * (1 + noise * rng.standard_normal(len(index))), index=index)


@pytest.fixture(scope="module")
def series() -> pd.Series:
    return traffic(23)


def split(s: pd.Series, horizon: timedelta) -> tuple[pd.Series, pd.Series]:
    n = int(horizon / (s.index[1] - s.index[0]))
    return s.iloc[:-n], s.iloc[-n:]


# --- the package ------------------------------------------------------------------------------------------

def test_the_planner_and_the_database_layer_import_forecast_without_the_models() -> None:
    code = ("import sys, prescaler.planning, prescaler.db\n"
            "heavy = [m for m in ('prophet', 'statsmodels', 'prescaler.forecasting.models') if m in sys.modules]\n"
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


def test_every_public_name_resolves_to_its_module() -> None:
    assert sorted(fc.__all__) == sorted(fc._MODULE_OF)
    for name in fc.__all__:
        home = importlib.import_module(f"prescaler.forecasting.{fc._MODULE_OF[name]}")
        assert getattr(fc, name) is getattr(home, name)
    with pytest.raises(AttributeError):
        _ = fc.no_such_name


# --- each model -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CANDIDATES)
def test_forecast_grid_band_and_accuracy(series: pd.Series, name: str) -> None:
    train, test = split(series, 2 * DAY)
    model = fc.make_candidate(name, step=HOUR)
    assert model.name == name
    forecast = model.fit(train).predict(2 * DAY)

    assert forecast.model == name
    assert len(forecast.ds) == 48
    assert forecast.ds[0] == train.index[-1] + HOUR
    assert forecast.ds.equals(test.index)
    assert str(forecast.ds.tz) == "UTC"
    assert np.all(forecast.yhat >= 0)
    assert np.all(forecast.lower <= forecast.yhat) and np.all(forecast.yhat <= forecast.upper)
    assert np.all(forecast.upper > forecast.lower)
    assert fc.smape(test.to_numpy(), forecast.yhat) < 15
    frame = forecast.to_frame()
    assert list(frame.columns) == ["ds", "yhat", "lower", "upper"]


@pytest.mark.parametrize("name", CANDIDATES)
def test_nan_gaps_do_not_break_a_fit(series: pd.Series, name: str) -> None:
    train, test = split(series, DAY)
    holes = train.copy()
    rng = np.random.default_rng(7)
    holes.iloc[rng.choice(len(holes), size=len(holes) // 10, replace=False)] = np.nan
    holes.iloc[200:212] = np.nan  # a half-day outage
    holes.iloc[-3:] = np.nan  # the newest buckets have not arrived yet
    forecast = fc.make_candidate(name, step=HOUR).fit(holes).predict(DAY)
    assert len(forecast.ds) == 24
    assert forecast.ds[0] == holes.index[-1] + HOUR
    assert np.isfinite(forecast.yhat).all() and np.isfinite(forecast.upper).all()
    assert fc.smape(test.to_numpy(), forecast.yhat) < 25


def test_five_minute_series_prophet(series: pd.Series) -> None:
    five = traffic(14, timedelta(minutes=5), seed=3)
    train, test = split(five, DAY)
    forecast = fc.ProphetForecaster(step=timedelta(minutes=5)).fit(train).predict(DAY)
    assert len(forecast.ds) == 288
    assert fc.smape(test.to_numpy(), forecast.yhat) < 10


def test_naive_timestamps_are_read_as_utc(series: pd.Series) -> None:
    naive = series.iloc[:24 * 15].tz_localize(None)
    forecast = fc.make_forecaster("seasonal-naive", step=HOUR).fit(naive).predict(3 * HOUR)
    assert forecast.ds[0] == pd.Timestamp(naive.index[-1], tz="UTC") + HOUR


def test_seasonal_naive_uses_a_week_then_a_day(series: pd.Series) -> None:
    weekly = fc.SeasonalNaiveForecaster(step=HOUR).fit(series).predict(DAY)
    assert weekly.note == "weekly"
    np.testing.assert_allclose(weekly.yhat, series.iloc[-168:-144].to_numpy())
    short = series.iloc[:24 * 5]
    daily = fc.SeasonalNaiveForecaster(step=HOUR).fit(short).predict(DAY)
    assert daily.note == "daily"
    np.testing.assert_allclose(daily.yhat, short.iloc[-24:].to_numpy())


def test_seasonal_naive_fills_a_missing_bucket_from_the_previous_season(series: pd.Series) -> None:
    history = series.copy()
    history.iloc[-168 + 5] = np.nan  # the bucket a week before the forecast's 6th step
    forecast = fc.SeasonalNaiveForecaster(step=HOUR).fit(history).predict(DAY)
    assert forecast.yhat[5] == pytest.approx(history.iloc[-2 * 168 + 5])


def test_band_widens_with_lead_for_seasonal_naive(series: pd.Series) -> None:
    forecast = fc.SeasonalNaiveForecaster(step=HOUR).fit(series).predict(timedelta(days=14))
    width = np.log1p(forecast.upper) - np.log1p(forecast.lower)
    assert width[-168:].mean() > width[:168].mean()


# --- model names and short history ------------------------------------------------------------------------

def test_unknown_model_is_an_input_error_naming_it(series: pd.Series) -> None:
    with pytest.raises(InputError, match=r"'arima'.*auto, prophet, seasonal-naive, holt-winters"):
        fc.check_model_name("arima")
    with pytest.raises(InputError, match="arima"):
        fc.fit_predict("arima", series, DAY)
    with pytest.raises(InputError, match="arima"):
        fc.make_forecaster("arima", step=HOUR)
    for name in fc.MODEL_NAMES:
        fc.check_model_name(name)
    # auto's internal candidates are not names a scaler can use.
    with pytest.raises(InputError, match="'mstl'"):
        fc.check_model_name("mstl")
    with pytest.raises(InputError, match="'seasonal-median'"):
        fc.make_forecaster("seasonal-median", step=HOUR)
    with pytest.raises(InputError, match="arima"):
        fc.make_candidate("arima", step=HOUR)


def test_short_history_falls_back_with_reason_then_nothing_fits(series: pd.Series) -> None:
    four_days = series.iloc[: 4 * 24]
    with pytest.raises(fc.ForecastUnavailable, match="1 week needed for prophet"):
        fc.ProphetForecaster(step=HOUR).fit(four_days)

    result = fc.fit_predict("prophet", four_days, DAY)
    assert result.model in ("seasonal-naive", "holt-winters")
    assert "4 days < 1 week needed for prophet weekly seasonality" in result.reason
    assert f"using {result.model}" in result.reason
    assert len(result.forecast.ds) == 24

    with pytest.raises(fc.ForecastUnavailable, match="< 2 days needed"):
        fc.fit_predict("prophet", series.iloc[:30], DAY)
    with pytest.raises(fc.ForecastUnavailable):
        fc.fit_predict("auto", series.iloc[:30], DAY)
    sparse = series.copy()
    sparse.iloc[::2] = np.nan
    sparse.iloc[: len(sparse) - 60] = np.nan  # one day of data spread over 2.5 days
    with pytest.raises(fc.ForecastUnavailable, match="of data < 2 days"):
        fc.fit_predict("seasonal-naive", sparse, DAY)


def test_a_failing_fit_falls_back_to_seasonal_naive(series: pd.Series, monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    def broken(self: fc.ProphetForecaster, history: pd.Series, events: pd.DataFrame | None = None) -> None:
        raise RuntimeError("optimizer diverged")

    monkeypatch.setattr(fc.ProphetForecaster, "fit", broken)
    result = fc.fit_predict("prophet", series, DAY)
    assert result.model == "seasonal-naive"
    assert "prophet fit failed (RuntimeError: optimizer diverged)" in result.reason


# --- timeout ----------------------------------------------------------------------------------------------

def test_timeout_kills_the_fit_and_falls_back() -> None:
    five = traffic(14, timedelta(minutes=5))
    result = fc.fit_predict("prophet", five, DAY, timeout_s=0.01)
    assert result.model == "seasonal-naive"
    assert "exceeded the 0.01s timeout" in result.reason
    assert len(result.forecast.ds) == 288


def test_fit_in_a_child_process_returns_its_result(series: pd.Series) -> None:
    result = fc.fit_predict("holt-winters", series, DAY, timeout_s=300)
    assert result.model == "holt-winters"
    assert result.reason == "holt-winters as configured; band calibrated on 3 backtest windows"
    assert result.smape is not None and result.smape < 15
    assert len(result.forecast.ds) == 24


def test_fit_pool_runs_fits_in_workers(series: pd.Series) -> None:
    pool = fc.FitPool(max_workers=1)
    try:
        future = pool.submit("seasonal-naive", series, DAY)
        result = future.result(timeout=300)
    finally:
        pool.shutdown()
    assert result.model == "seasonal-naive"
    assert result.forecast.ds[0] == series.index[-1] + HOUR
    with pytest.raises(InputError):
        pool.submit("arima", series, DAY)


def test_fit_pool_kills_a_slow_fit_at_its_timeout() -> None:
    five = traffic(14, timedelta(minutes=5))
    pool = fc.FitPool(max_workers=1, timeout_s=0.01)
    try:
        future = pool.submit("prophet", five, DAY)
        with pytest.raises(fc.FitTimeout, match=r"prophet fit exceeded the 0.01s timeout; its process was killed"):
            future.result(timeout=300)
    finally:
        pool.shutdown()


# --- error metrics ----------------------------------------------------------------------------------------

def test_error_functions_on_hand_computed_examples() -> None:
    # |100-110| * 2 / 210 = 0.095238, |200-180| * 2 / 380 = 0.105263
    assert fc.smape([100, 200], [110, 180]) == pytest.approx(10.02506, abs=1e-4)
    assert fc.smape([100, np.nan, 200], [110, 5, 180]) == pytest.approx(10.02506, abs=1e-4)
    assert fc.smape([0, 0], [0, 0]) == 0
    assert fc.smape([0], [5]) == 200
    # zero actuals are skipped by MAPE
    assert fc.mape([100, 200, 0], [110, 180, 5]) == pytest.approx(10.0)
    assert np.isnan(fc.mape([0, 0], [1, 1]))
    # in-sample seasonal-naive MAE with season 2 is 2; forecast MAE is 1.5
    assert fc.mase([7, 8], [6, 10], [1, 2, 3, 4, 5, 6], season=2) == pytest.approx(0.75)
    assert np.isnan(fc.mase([7, 8], [6, 10], [5, 5, 5, 5], season=2))
    assert np.isnan(fc.smape([np.nan], [1.0]))


def test_rolling_origin_uses_only_the_past(series: pd.Series) -> None:
    # A level jump inside the last window: the model fitted before it cannot know, so errors are large.
    jumped = series.copy()
    jumped.iloc[-24:] *= 3
    clean = fc.rolling_origin_errors(series, "seasonal-naive", horizon=DAY, folds=2)
    broken = fc.rolling_origin_errors(jumped, "seasonal-naive", horizon=DAY, folds=2)
    assert clean["folds"] == 2
    assert clean["smape"] < 10
    assert broken["smape"] > 30
    assert set(clean) >= {"smape", "mape", "mase", "coverage"}
    assert clean["coverage"] > 50  # a clean series stays mostly inside its band
    assert broken["coverage"] < clean["coverage"]


# --- auto -------------------------------------------------------------------------------------------------

def repeated_week(days: int, seed: int = 11) -> tuple[pd.Series, np.ndarray]:
    """Every hour of the week has its own random level, repeated exactly: only a weekly copy gets it right."""
    rng = np.random.default_rng(seed)
    week = rng.uniform(100, 1000, size=168)
    index = pd.date_range("2024-01-01", periods=24 * days, freq="h", tz="UTC")
    return pd.Series(np.resize(week, 24 * days), index=index), week


def test_auto_picks_the_model_that_is_clearly_right() -> None:
    # 16 days: the oldest of the week of 1-day backtest windows has 9 days before it, so seasonal-naive copies
    # the week exactly in every one; Holt-Winters takes a weekly season from two weeks on, seasonal-median's
    # weekly medians need three.
    repeat, week = repeated_week(16)
    result = fc.fit_predict("auto", repeat, DAY)
    assert result.model == "seasonal-naive"
    assert set(result.errors) == set(fc.CANDIDATES)
    assert result.smape == pytest.approx(0, abs=1e-9)
    assert result.errors["seasonal-naive"]["pinball"] == pytest.approx(0, abs=1e-9)
    assert result.errors["prophet"]["smape"] > 5
    assert min(result.errors[m]["pinball"] for m in fc.CANDIDATES if m != "seasonal-naive") > 1
    assert result.reason.startswith("auto: seasonal-naive pinball 0.00% (sMAPE 0.0%) < ")
    assert "(pinball loss at q0.9, 7 backtest folds of 1 day); using seasonal-naive" in result.reason
    start = len(repeat) % 168
    np.testing.assert_allclose(result.forecast.yhat, week[start:start + 24])


def test_auto_picks_the_robust_median_where_one_off_bursts_repeat_in_copies() -> None:
    repeat, week = repeated_week(35)
    bursty = repeat.copy()
    # Apart in the week: each bucket of the week has one burst at most among its four weeks.
    for day, hour in ((4, 9), (11, 14), (19, 20), (25, 2), (26, 15), (27, 20)):
        bursty.iloc[day * 24 + hour: day * 24 + hour + 3] *= 4
    result = fc.fit_predict("auto", bursty, DAY)
    assert result.model == "seasonal-median"
    assert result.errors["seasonal-median"]["pinball"] == pytest.approx(0, abs=1e-6)
    # A week-old copy brings each burst back a week later.
    assert result.errors["seasonal-naive"]["pinball"] > 1
    start = len(repeat) % 168
    np.testing.assert_allclose(result.forecast.yhat, week[start:start + 24], rtol=1e-6)


def test_auto_drops_the_models_far_from_the_best() -> None:
    repeat, _ = repeated_week(16)
    result = fc.fit_predict("auto", repeat, DAY)
    for name in ("prophet", "holt-winters", "mstl", "seasonal-median", "harmonic"):
        assert f"{name} (pinball {result.errors[name]['pinball']:.2f}% > 1.5× the best's)" in result.reason


def test_auto_mixes_the_models_close_to_the_best() -> None:
    # Mild noise: the smooth models err alike, window by window, and copying last week copies its noise.
    noisy = traffic(23, seed=1)
    result = fc.fit_predict("auto", noisy, DAY)
    assert result.model.startswith("auto(")
    members = result.model[len("auto("):-1].split("+")
    assert len(members) >= 2 and "seasonal-naive" not in members
    best = min(result.errors[m]["pinball"] for m in fc.CANDIDATES)
    assert all(result.errors[m]["pinball"] <= 1.5 * best for m in members)
    scores = {m: result.errors[m]["pinball"] for m in members}
    weights = fc.combination_weights(scores)
    mix = " + ".join(f"{weights[m]:.2f} {m}" for m in members)
    assert (f"combined {mix} (models the backtest cannot tell from the best: within 1 standard error and 1.5× "
            "its pinball; weights ∝ 1/pinball") in result.reason
    for other in set(fc.CANDIDATES) - set(members):
        pinball = f"{other} (pinball {result.errors[other]['pinball']:.2f}%"
        assert (f"{pinball} > 1.5× the best's)" in result.reason
                or f"{pinball}, more than 1 standard error above the best's)" in result.reason)
    # The forecast is that weighted mean of the members refitted on the whole history, with a band
    # calibrated on the mix's own backtest errors.
    refits = [fc.make_candidate(m, step=HOUR).fit(noisy).predict(DAY) for m in members]
    mixed = sum(weights[m] * f.yhat for m, f in zip(members, refits, strict=True))
    np.testing.assert_allclose(result.forecast.yhat, mixed)
    assert np.all(result.forecast.lower <= result.forecast.yhat)
    assert np.all(result.forecast.yhat <= result.forecast.upper)
    assert result.reason.endswith("band calibrated on 3 backtest windows")
    assert result.forecast.model == result.model


def test_auto_keeps_alone_a_model_that_wins_every_backtest_window() -> None:
    # Heavy noise: the smooth models are close on average, but one errs less than each other in nearly every
    # day of the week of backtest windows, so averaging it with them would only add their errors.
    noisy = traffic(28, noise=0.25, seed=5)
    result = fc.fit_predict("auto", noisy, DAY)
    pinball = {m: e["pinball"] for m, e in result.errors.items()}
    best = min(pinball, key=lambda m: pinball[m])
    assert result.model == best
    close = [m for m in pinball if m != best and pinball[m] <= 1.5 * pinball[best]]
    assert close  # within NEAR_BEST, yet told apart
    for other in close:
        assert f"{other} (pinball {pinball[other]:.2f}%, more than 1 standard error above the best's)" in result.reason
    refit = fc.make_candidate(best, step=HOUR).fit(noisy).predict(DAY)
    np.testing.assert_allclose(result.forecast.yhat, refit.yhat)


def test_auto_ranks_by_pinball_loss_at_the_quantile_it_is_given() -> None:
    noisy = traffic(16, noise=0.2, seed=4)
    result = fit_local("auto", noisy, DAY, None, None, quantile=0.99)
    assert "(pinball loss at q0.99, 7 backtest folds of 1 day)" in result.reason
    ranked = sorted(result.errors, key=lambda m: result.errors[m]["pinball"])
    assert result.reason.startswith(f"auto: {ranked[0]} pinball ")


def test_combination_weights_favour_the_lower_error() -> None:
    weights = fc.combination_weights({"a": 2.0, "b": 4.0, "c": 8.0})
    assert weights["a"] > weights["b"] > weights["c"]
    assert weights["a"] == pytest.approx(4 / 7)
    assert sum(weights.values()) == pytest.approx(1)
    assert fc.combination_weights({"a": 0.0, "b": 3.0}) == {"a": 1.0, "b": 0.0}


def test_combine_is_a_weighted_mean_whose_band_contains_it() -> None:
    ds = pd.date_range("2024-01-01", periods=3, freq="h", tz="UTC")
    one = fc.Forecast(ds, np.array([100.0, 200, 300]), np.array([90.0, 150, 290]),
                      np.array([110.0, 260, 310]), "prophet")
    two = fc.Forecast(ds, np.array([200.0, 100, 300]), np.array([150.0, 99, 200]),
                      np.array([300.0, 101, 400]), "seasonal-naive")
    both = fc.combine([one, two], [3, 1], "auto(prophet+seasonal-naive)")
    np.testing.assert_allclose(both.yhat, [125, 175, 300])
    np.testing.assert_allclose(both.lower, [105, 137.25, 267.5])
    np.testing.assert_allclose(both.upper, [157.5, 220.25, 332.5])
    assert np.all(both.lower <= both.yhat) and np.all(both.yhat <= both.upper)
    assert both.model == "auto(prophet+seasonal-naive)"
    assert both.note == "0.75 prophet + 0.25 seasonal-naive"
    with pytest.raises(ValueError, match="share their timestamps"):
        fc.combine([one, fc.Forecast(ds + HOUR, two.yhat, two.lower, two.upper, "x")], [1, 1], "auto")


def test_auto_backtests_on_the_forecast_horizon_when_history_allows() -> None:
    week = timedelta(days=7)
    long = fc.fit_predict("auto", traffic(35), week)
    assert "3 backtest folds of 7 days)" in long.reason
    assert all(e["folds"] == 3 for e in long.errors.values())
    assert len(long.forecast.ds) == 168
    # 23 days leave 2 days before three 7-day windows: too short for prophet, so a week of 1-day windows.
    short = fc.fit_predict("auto", traffic(23), week)
    assert "7 backtest folds of 1 day)" in short.reason
    assert short.reason.endswith("band calibrated on 3 backtest windows")
    assert len(short.forecast.ds) == 168


def test_holt_winters_takes_a_weekly_season_from_two_weeks_at_hourly_steps(series: pd.Series) -> None:
    weekly = fc.HoltWintersForecaster(step=HOUR).fit(series).predict(DAY)
    assert weekly.note == "weekly season"
    short = fc.HoltWintersForecaster(step=HOUR).fit(series.iloc[: 24 * 10]).predict(DAY)
    assert short.note == "daily season"
    five = traffic(15, timedelta(minutes=5), seed=3)
    fine = fc.HoltWintersForecaster(step=timedelta(minutes=5)).fit(five).predict(DAY)
    assert fine.note == "daily season"


def test_seasonal_naive_copies_a_week_from_eight_days(series: pd.Series) -> None:
    eight = series.iloc[: 24 * 8]
    forecast = fc.SeasonalNaiveForecaster(step=HOUR).fit(eight).predict(DAY)
    assert forecast.note == "weekly"
    np.testing.assert_allclose(forecast.yhat, eight.iloc[-168:-144].to_numpy())
    seven = series.iloc[: 24 * 7]
    assert fc.SeasonalNaiveForecaster(step=HOUR).fit(seven).predict(DAY).note == "daily"


# --- events -----------------------------------------------------------------------------------------------

def test_events_lift_the_prophet_forecast_during_the_event() -> None:
    base = traffic(22, seed=2)
    lifted = base.copy()
    rows = []
    for day in (3, 8, 12, 17):  # past pushes, 3 hours each, double the traffic
        start = lifted.index[day * 24 + 14]
        lifted.loc[start:start + 2 * HOUR] *= 2.0
        rows.append({"name": f"push {day}", "kind": "push", "start": start, "end": start + 3 * HOUR,
                     "lift_percent": 100.0})
    future_start = lifted.index[-1] + timedelta(hours=15)
    rows.append({"name": "push next", "kind": "push", "start": future_start,
                 "end": future_start + 3 * HOUR, "lift_percent": 100.0})
    events = pd.DataFrame(rows)

    with_events = fc.ProphetForecaster(step=HOUR).fit(lifted, events=events).predict(DAY)
    without = fc.ProphetForecaster(step=HOUR).fit(lifted).predict(DAY)
    during = (with_events.ds >= future_start) & (with_events.ds < future_start + 3 * HOUR)
    assert during.sum() == 3
    ratio = with_events.yhat[during] / without.yhat[during]
    assert np.all(ratio > 1.5)
    outside = with_events.yhat[~during] / without.yhat[~during]
    assert np.all(np.abs(outside - 1) < 0.1)

    result = fc.fit_predict("prophet", lifted, DAY, events=events)
    assert result.model == "prophet"
    assert np.all(result.forecast.yhat[during] > 1.5 * without.yhat[during])


def test_an_event_of_an_unseen_kind_applies_its_stated_lift(series: pd.Series) -> None:
    start = series.index[-1] + timedelta(hours=10)
    events = pd.DataFrame([{"name": "launch", "kind": "challenge", "start": start.tz_localize(None),
                            "end": start + 2 * HOUR, "lift_percent": 50.0}])
    with_events = fc.ProphetForecaster(step=HOUR).fit(series, events=events).predict(DAY)
    without = fc.ProphetForecaster(step=HOUR).fit(series).predict(DAY)
    ratio = with_events.yhat / without.yhat
    np.testing.assert_allclose(ratio[9:11], 1.5, rtol=1e-6)
    np.testing.assert_allclose(np.delete(ratio, [9, 10]), 1.0, rtol=1e-6)


# --- auto's internal candidates ---------------------------------------------------------------------------

def test_seasonal_median_ignores_a_one_off_burst_that_seasonal_naive_copies() -> None:
    clean = traffic(28, noise=0.0)
    burst = clean.copy()
    burst.iloc[-168 + 10:-168 + 14] *= 5  # four hours of a flash crowd, one week before the forecast
    naive = fc.SeasonalNaiveForecaster(step=HOUR).fit(burst).predict(DAY)
    median = fc.SeasonalMedianForecaster(step=HOUR).fit(burst).predict(DAY)
    assert median.note == "weekly"
    truth = clean.iloc[-168:-144].to_numpy()  # the clean series repeats every week
    assert np.all(naive.yhat[10:14] > 4 * truth[10:14])
    np.testing.assert_allclose(median.yhat, truth, rtol=0.02)


def test_seasonal_median_forecasts_weekends_from_weekends_on_short_history() -> None:
    ten_days = traffic(10, noise=0.02)  # starts on a Monday: the forecast day is Thursday
    eleven = traffic(13, noise=0.02)  # the forecast day is a Sunday
    weekday = fc.SeasonalMedianForecaster(step=HOUR).fit(ten_days).predict(DAY)
    weekend = fc.SeasonalMedianForecaster(step=HOUR).fit(eleven).predict(DAY)
    assert weekday.note == "daily" and weekend.note == "daily"
    assert weekend.ds[0].dayofweek == 6 and weekday.ds[0].dayofweek == 3
    # traffic() runs weekends at 60% of weekdays.
    ratio = weekend.yhat.mean() / weekday.yhat.mean()
    assert 0.5 < ratio < 0.7


def test_seasonal_median_follows_a_new_level_in_part() -> None:
    base = traffic(28, noise=0.0)
    shifted = base.copy()
    shifted.iloc[-24:] *= 1.5  # the newest day runs 50% higher
    flat = fc.SeasonalMedianForecaster(step=HOUR).fit(base).predict(DAY)
    moved = fc.SeasonalMedianForecaster(step=HOUR, level_weight=0.5).fit(shifted).predict(DAY)
    lift = np.log1p(moved.yhat) - np.log1p(flat.yhat)
    np.testing.assert_allclose(lift, 0.5 * np.log(1.5), atol=0.01)


def test_seasonal_median_smooths_five_minute_jitter() -> None:
    five = traffic(15, timedelta(minutes=5), noise=0.2, seed=9)
    train, test = split(five, DAY)
    raw = fc.SeasonalMedianForecaster(step=timedelta(minutes=5), smooth=timedelta(0)).fit(train).predict(DAY)
    smooth = fc.SeasonalMedianForecaster(step=timedelta(minutes=5)).fit(train).predict(DAY)
    assert fc.smape(test.to_numpy(), smooth.yhat) < fc.smape(test.to_numpy(), raw.yhat)


def test_mstl_takes_a_weekly_season_from_two_weeks_and_a_day() -> None:
    three_weeks = traffic(21, noise=0.03)
    train, test = split(three_weeks, DAY)
    weekly = fc.MSTLForecaster(step=HOUR).fit(train).predict(DAY)
    assert weekly.note == "daily+weekly"
    assert fc.smape(test.to_numpy(), weekly.yhat) < 8
    ten = three_weeks.iloc[: 24 * 10]
    daily = fc.MSTLForecaster(step=HOUR).fit(ten).predict(DAY)
    assert daily.note == "daily"
    # Weekday levels stand in for the weekly season: Thursday (day 11) is forecast at a weekday level.
    assert fc.smape(three_weeks.iloc[24 * 10: 24 * 11].to_numpy(), daily.yhat) < 8


def test_harmonic_fits_the_median_not_the_bursts() -> None:
    clean = traffic(21, noise=0.02)
    bursty = clean.copy()
    rng = np.random.default_rng(4)
    for start in rng.choice(len(clean) - 48, size=12, replace=False):
        bursty.iloc[start:start + 2] *= 6  # a dozen two-hour flash crowds
    train, test = split(clean, DAY)
    robust = fc.HarmonicForecaster(step=HOUR).fit(bursty.iloc[:-24]).predict(DAY)
    assert robust.note == "daily+weekly"
    assert fc.smape(test.to_numpy(), robust.yhat) < 5
    # Least squares on the same terms follows the bursts up.
    squares = fc.HarmonicForecaster(step=HOUR, iterations=1).fit(bursty.iloc[:-24]).predict(DAY)
    assert robust.yhat.mean() < squares.yhat.mean()
    assert len(train) == len(bursty) - 24


def test_harmonic_level_follows_the_newest_weeks() -> None:
    grown = traffic(28, noise=0.02)
    grown.iloc[-7 * 24:] *= 1.3  # the last week runs 30% higher
    recent = fc.HarmonicForecaster(step=HOUR).fit(grown).predict(DAY)
    flat = fc.HarmonicForecaster(step=HOUR, half_life=timedelta(days=10_000)).fit(grown).predict(DAY)
    truth = traffic(29, noise=0.0).iloc[-24:].to_numpy() * 1.3
    assert fc.smape(truth, recent.yhat) < fc.smape(truth, flat.yhat)


def test_harmonic_on_half_a_weekend_day_takes_the_weekday_curve() -> None:
    # Five and a half days from a Monday end on Saturday noon: a weekend curve of its own, fitted on half a
    # day, would be free over the other half.
    five = timedelta(minutes=5)
    history = traffic(5.5, five)
    forecast = fc.HarmonicForecaster(step=five).fit(history).predict(DAY)
    assert forecast.yhat.max() < history.max()
    truth = traffic(6.5, five, noise=0.0).iloc[-len(forecast.yhat):]
    assert fc.smape(truth.to_numpy(), forecast.yhat) < 5


def test_internal_candidates_need_three_days(series: pd.Series) -> None:
    two_days = series.iloc[: 2 * 24]
    for model in (fc.SeasonalMedianForecaster(step=HOUR), fc.MSTLForecaster(step=HOUR),
                  fc.HarmonicForecaster(step=HOUR)):
        assert "< 3 days needed" in (model.requirement(two_days) or "")
        assert model.requirement(series.iloc[: 3 * 24]) is None


# --- exploding fits ---------------------------------------------------------------------------------------

def test_exploded_names_the_peak_and_the_history_maximum(series: pd.Series) -> None:
    forecast = fc.SeasonalNaiveForecaster(step=HOUR).fit(series).predict(DAY)
    peak = float(series.max())
    assert fc.exploded(forecast, series) is None
    boom = fc.Forecast(forecast.ds, forecast.yhat * 4, forecast.lower, forecast.upper * 4, "x")
    top = 4 * forecast.yhat.max()
    assert fc.exploded(boom, series) == f"forecast peak {top:,.0f} > 3× the history's maximum {peak:,.0f}"
    wide = fc.Forecast(forecast.ds, forecast.yhat, forecast.lower, np.full(24, 3.5 * peak), "x")
    assert fc.exploded(wide, series) == f"forecast band {3.5 * peak:,.0f} > 3× the history's maximum {peak:,.0f}"
    broken = fc.Forecast(forecast.ds, np.full(24, np.nan), forecast.lower, forecast.upper, "x")
    assert fc.exploded(broken, series) == "forecast has values that are not finite"


def _exploding(cls: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make forecaster class `cls` forecast ten times too much, as a fit gone wrong would."""
    real = cls.predict

    def predict(self: Any, horizon: timedelta) -> fc.Forecast:
        f = real(self, horizon)
        return fc.Forecast(f.ds, f.yhat * 10, f.lower * 10, f.upper * 10, f.model, f.note)

    monkeypatch.setattr(cls, "predict", predict)


def test_auto_rejects_a_candidate_whose_forecast_explodes(series: pd.Series, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    _exploding(fc.MSTLForecaster, monkeypatch)
    result = fc.fit_predict("auto", series, DAY)
    assert "mstl" not in result.model
    assert "mstl" not in result.errors
    assert "; rejected mstl (forecast peak " in result.reason
    assert "> 3× the history's maximum" in result.reason and "in the backtest window from " in result.reason
    assert result.forecast.yhat.max() < 3 * series.max()


def test_auto_scores_a_candidate_whose_backtest_band_alone_is_wide(series: pd.Series,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # A backtest window's own band is never used (the window's errors calibrate the band), so only its yhat
    # can get a candidate rejected.
    real = fc.MSTLForecaster.predict

    def predict(self: Any, horizon: timedelta) -> fc.Forecast:
        f = real(self, horizon)
        return fc.Forecast(f.ds, f.yhat, f.lower, f.upper * 10, f.model, f.note)

    monkeypatch.setattr(fc.MSTLForecaster, "predict", predict)
    result = fc.fit_predict("auto", series, DAY)
    assert "mstl" in result.errors
    assert "rejected mstl" not in result.reason


def test_a_configured_model_whose_forecast_explodes_falls_back(series: pd.Series,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _exploding(fc.HoltWintersForecaster, monkeypatch)
    result = fc.fit_predict("holt-winters", series, DAY)
    assert result.model == "seasonal-naive"
    assert result.reason.startswith("holt-winters rejected: forecast peak ")
    assert "> 3× the history's maximum" in result.reason
    assert ": using seasonal-naive (weekly)" in result.reason


# --- calibrated bands -------------------------------------------------------------------------------------

def test_conformal_quantile_takes_the_finite_sample_rank() -> None:
    values = np.arange(1.0, 10.0)  # 9 values: rank ⌈10·0.9⌉ = 9, ⌊10·0.1⌋ = 1
    assert conformal_quantile(values, 0.9) == 9
    assert conformal_quantile(values, 0.1) == 1
    assert conformal_quantile(values, 0.5) == 5
    assert conformal_quantile(np.append(values, np.nan), 0.9) == 9
    assert conformal_quantile(np.array([np.nan]), 0.9) == 0


def test_lead_bins_cover_every_lead_with_enough_residuals() -> None:
    five = lead_bins(288, timedelta(minutes=5), 3)
    assert five[0] == (0, 12) and five[-1][1] == 288
    assert all(a < b for a, b in five) and all(five[i][1] == five[i + 1][0] for i in range(len(five) - 1))
    assert all((b - a) * 3 >= 30 for a, b in five)
    hourly = lead_bins(168, HOUR, 3)
    assert hourly[0] == (0, 12) and hourly[-1] == (96, 168)
    assert lead_bins(5, HOUR, 1) == [(0, 5)]


def test_calibrated_band_holds_its_nominal_share_on_a_noisy_series() -> None:
    """Traffic whose level wanders from day to day (as real traffic does) plus noise: the band of a forecast
    calibrated on the three windows before it holds close to 80% of what comes, window after window."""
    rng = np.random.default_rng(3)
    days = 40
    shape = traffic(days, noise=0.0)
    day_level = np.repeat(np.exp(rng.normal(0, 0.08, days)), 24)
    noisy = shape * day_level * np.exp(rng.normal(0, 0.08, len(shape)))
    coverage = fc.rolling_origin_errors(noisy, "seasonal-naive", horizon=DAY, folds=20)["coverage"]
    assert 74 <= coverage <= 86


def test_band_calibration_widens_the_band_for_larger_errors() -> None:
    rng = np.random.default_rng(1)
    small = [rng.normal(0, 0.05, 288) for _ in range(3)]
    large = [rng.normal(0, 0.2, 288) for _ in range(3)]
    step = timedelta(minutes=5)
    narrow, wide = fc.calibrate_bands(small, step), fc.calibrate_bands(large, step)
    assert narrow is not None and wide is not None and wide.windows == 3
    assert np.all(wide.upper > narrow.upper) and np.all(wide.lower < narrow.lower)
    ds = pd.date_range("2024-01-01", periods=300, freq="5min", tz="UTC")
    forecast = fc.Forecast(ds, np.full(300, 100.0), np.full(300, 99.0), np.full(300, 101.0), "x")
    banded = wide.apply(forecast)
    # Beyond the calibrated leads, the last lead bin's offsets hold.
    assert banded.upper[-1] == pytest.approx(100 * np.exp(wide.upper[-1]) + np.exp(wide.upper[-1]) - 1)
    assert np.all(banded.lower <= banded.yhat) and np.all(banded.yhat <= banded.upper)
    assert fc.calibrate_bands([np.full(10, np.nan)], step) is None


def test_a_biased_model_gets_an_asymmetric_band() -> None:
    rng = np.random.default_rng(2)
    under = [rng.normal(0.2, 0.05, 288) for _ in range(3)]  # actual ~22% above the forecast
    cal = fc.calibrate_bands(under, timedelta(minutes=5))
    assert cal is not None
    assert np.all(cal.upper > 0.25)
    assert np.all(cal.lower > 0.05)  # the lower offset stays positive: apply() clips it to yhat


def test_pinball_on_hand_computed_examples() -> None:
    # under-forecast by 10 at q0.9 costs 9; over-forecast by 10 costs 1
    assert fc.pinball([100, 100], [90, 110], 0.9) == pytest.approx(5.0)
    assert fc.pinball([100, np.nan], [90, 1], 0.9) == pytest.approx(9.0)
    assert fc.relative_pinball([100, 100], [90, 110], 0.9) == pytest.approx(5.0)
    assert np.isnan(fc.pinball([np.nan], [1.0], 0.5))
    assert np.isnan(fc.relative_pinball([0.0], [1.0], 0.5))


def test_rolling_origin_errors_scores_internal_candidates_and_the_band(series: pd.Series) -> None:
    errors = fc.rolling_origin_errors(series, "seasonal-median", horizon=DAY, folds=2)
    assert errors["folds"] == 2
    assert set(errors) >= {"smape", "mape", "mase", "pinball", "coverage"}
    assert 0 < errors["pinball"] < 5
    with pytest.raises(InputError, match="'arima'"):
        fc.rolling_origin_errors(series, "arima", horizon=DAY)

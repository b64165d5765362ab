"""Forecasters, error metrics, auto-selection, fallbacks and the fit timeout, on synthetic series."""

from __future__ import annotations

import importlib
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from prescaler import forecasting as fc
from prescaler.errors import InputError

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
MODELS = ("prophet", "seasonal-naive", "holt-winters")


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

@pytest.mark.parametrize("name", MODELS)
def test_forecast_grid_band_and_accuracy(series: pd.Series, name: str) -> None:
    train, test = split(series, 2 * DAY)
    model = fc.make_forecaster(name, step=HOUR)
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


@pytest.mark.parametrize("name", MODELS)
def test_nan_gaps_do_not_break_a_fit(series: pd.Series, name: str) -> None:
    train, test = split(series, DAY)
    holes = train.copy()
    rng = np.random.default_rng(7)
    holes.iloc[rng.choice(len(holes), size=len(holes) // 10, replace=False)] = np.nan
    holes.iloc[200:212] = np.nan  # a half-day outage
    holes.iloc[-3:] = np.nan  # the newest buckets have not arrived yet
    forecast = fc.make_forecaster(name, step=HOUR).fit(holes).predict(DAY)
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
    assert result.reason == "holt-winters as configured"
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

def test_auto_picks_the_lowest_backtest_error() -> None:
    # Every hour of the week has its own random level, repeated exactly: only a weekly copy gets it right.
    rng = np.random.default_rng(11)
    week = rng.uniform(100, 1000, size=168)
    index = pd.date_range("2024-01-01", periods=168 * 4, freq="h", tz="UTC")
    repeat = pd.Series(np.tile(week, 4), index=index)
    result = fc.fit_predict("auto", repeat, DAY)
    assert result.model == "seasonal-naive"
    assert set(result.errors) == set(fc.CANDIDATES)
    assert result.smape == pytest.approx(0, abs=1e-9)
    assert result.errors["prophet"]["smape"] > 5
    # A weekly-season Holt-Winters nearly learns the repeated week, but only nearly.
    assert result.errors["holt-winters"]["smape"] > 0
    assert result.reason.startswith("auto: seasonal-naive sMAPE 0.0% < ")
    np.testing.assert_allclose(result.forecast.yhat, week[:24])


def test_auto_drops_what_another_model_beat_in_every_fold() -> None:
    rng = np.random.default_rng(11)
    week = rng.uniform(100, 1000, size=168)
    index = pd.date_range("2024-01-01", periods=168 * 4, freq="h", tz="UTC")
    result = fc.fit_predict("auto", pd.Series(np.tile(week, 4), index=index), DAY)
    assert "(3 backtest folds of 1 day); using seasonal-naive" in result.reason
    assert "dropped prophet (worse than seasonal-naive in every fold)" in result.reason
    assert "holt-winters (worse than seasonal-naive in every fold)" in result.reason


def test_auto_combines_models_that_no_other_beat_everywhere() -> None:
    # Heavy noise: copying last week copies its noise; two smooth models win on different days.
    noisy = traffic(28, noise=0.25, seed=5)
    result = fc.fit_predict("auto", noisy, DAY)
    assert result.model == "auto(holt-winters+prophet)"
    assert "dropped seasonal-naive (worse than holt-winters in every fold)" in result.reason
    hw, prophet = result.errors["holt-winters"]["smape"], result.errors["prophet"]["smape"]
    w_hw = (1 / hw) / (1 / hw + 1 / prophet)
    assert f"combined {w_hw:.2f} holt-winters + {1 - w_hw:.2f} prophet" in result.reason
    # The forecast is that weighted mean of the members refitted on the whole history.
    members = [fc.make_forecaster(m, step=HOUR).fit(noisy).predict(DAY) for m in ("holt-winters", "prophet")]
    np.testing.assert_allclose(result.forecast.yhat, w_hw * members[0].yhat + (1 - w_hw) * members[1].yhat)
    assert np.all(result.forecast.lower <= result.forecast.yhat)
    assert np.all(result.forecast.yhat <= result.forecast.upper)
    # The combination's own backtest error, with those weights, is below each member's.
    assert result.smape is not None and result.smape < min(hw, prophet)
    assert result.forecast.model == result.model


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
    assert "(3 backtest folds of 7 days)" in long.reason
    assert all(e["folds"] == 3 for e in long.errors.values())
    assert len(long.forecast.ds) == 168
    # 23 days leave 2 days before three 7-day windows: too short for prophet, so 1-day windows.
    short = fc.fit_predict("auto", traffic(23), week)
    assert "(3 backtest folds of 1 day)" in short.reason
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

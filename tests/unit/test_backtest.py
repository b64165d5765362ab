"""The what-if backtest: hand-computed KPIs per policy, the time model, bad input, JSON shape."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prescaler import backtest, cli, forecasting
from prescaler.backtest import ForecastQuality, compare_frontiers, format_table, ready_from_requests, run_backtest
from prescaler.backtest.policies import Fit, predictive_requests, replay_policy
from prescaler.backtest.results import forecast_quality
from prescaler.backtest.track import Track, build_track, calibrations, corrected, samples_by_bucket, sizing_inputs
from prescaler.errors import InputError
from prescaler.forecasting import Forecast
from prescaler.planning import ScalingPolicy, forecast_peak, plan
from prescaler.sizing.calibration import calibrate_sizing
from prescaler.sizing.level_correction import level_corrections
from prescaler.windows import WindowAsk, WindowSizing

H = timedelta(hours=1)
WARM_DAYS = 2


def hourly(values: list[float] | np.ndarray, start: str = "2024-01-01") -> pd.Series:
    idx = pd.date_range(start, periods=len(values), freq="1h", tz="UTC")
    return pd.Series(np.asarray(values, dtype=float), index=idx, name="y")


def with_warmup(evaluated: list[float], warm: float) -> tuple[pd.Series, timedelta]:
    """A flat warm-up of WARM_DAYS days, then the evaluated values; returns the series and `last`."""
    values = [warm] * (24 * WARM_DAYS) + list(evaluated)
    return hourly(values), len(evaluated) * H


def bt(series: pd.Series, **kw: object) -> backtest.BacktestResult:
    kw.setdefault("capacity", 100.0)
    kw.setdefault("startup_delay", H)
    kw.setdefault("model", "seasonal-naive")
    kw.setdefault("headroom_percent", 0.0)
    kw.setdefault("progress", False)
    kw.setdefault("frontier_headrooms", (0, 50))
    # In this process's children, so the tests' monkeypatched forecasters apply; the pool has its own test.
    kw.setdefault("workers", 1)
    return run_backtest(series, **kw)  # type: ignore[arg-type]


STEP_LOAD = [100.0] * 4 + [300.0] * 4 + [100.0] * 4


@pytest.fixture
def step_result() -> backtest.BacktestResult:
    series, last = with_warmup(STEP_LOAD, warm=100.0)
    return bt(series, last=last)


def test_ready_from_requests_delays_scale_up_and_drops_immediately() -> None:
    requested = np.array([1, 3, 3, 3, 1, 2, 2, 5, 4, 4])
    ready = ready_from_requests(requested, 2)
    # +2 requested at 1 are ready at 3; scale-down at 4 is immediate; +1 at 5 ready at 7;
    # at 7 +3 more start (ready at 9), at 8 one starting pod is removed first.
    assert ready.tolist() == [1, 1, 1, 3, 1, 1, 1, 2, 2, 4]
    assert ready_from_requests(requested, 0).tolist() == requested.tolist()


def test_static_is_sized_for_the_peak_and_never_unserved(step_result: backtest.BacktestResult) -> None:
    k = step_result.kpis["static"]
    assert step_result.requested["static"].tolist() == [3] * 12
    assert k.replica_hours == pytest.approx(36.0)
    assert k.unserved_pct == 0.0 and k.underprovisioned_pct == 0.0
    assert k.scale_actions == 0 and k.saving_vs_static_pct == 0.0


def test_oracle_follows_the_load_without_delay(step_result: backtest.BacktestResult) -> None:
    k = step_result.kpis["oracle"]
    assert step_result.ready["oracle"].tolist() == [1] * 4 + [3] * 4 + [1] * 4
    assert k.replica_hours == pytest.approx(20.0)
    assert k.unserved_pct == 0.0
    assert k.scale_actions == 2
    assert k.ratio_to_oracle == pytest.approx(1.0)
    assert k.saving_vs_static_pct == pytest.approx(100 * (36 - 20) / 36)


def test_reactive_is_late_by_one_observation_and_the_startup_delay(
    step_result: backtest.BacktestResult,
) -> None:
    # The rise at bucket 4 is first seen at 5 (y[4] arrives during bucket 4); pods requested then are
    # ready at 6. The scale-down after the drop at 8 is immediate (hourly step > HPA's 5-minute window).
    assert step_result.requested["reactive"].tolist() == [1] * 5 + [3] * 4 + [1] * 3
    assert step_result.ready["reactive"].tolist() == [1] * 6 + [3] * 3 + [1] * 3
    k = step_result.kpis["reactive"]
    assert k.replica_hours == pytest.approx(20.0)
    assert k.unserved_pct == pytest.approx(100 * 400 / 2000)
    assert k.underprovisioned_pct == pytest.approx(100 * 2 / 12)
    assert k.scale_actions == 2
    assert k.ratio_to_oracle == pytest.approx(1.0)


def test_reactive_scale_down_is_stabilised_over_five_minutes() -> None:
    idx = pd.date_range("2024-01-01", periods=24 * 12 * WARM_DAYS + 5, freq="5min", tz="UTC")
    values = np.full(len(idx), 300.0)
    values[-3:] = 100.0
    res = bt(pd.Series(values, index=idx), startup_delay=timedelta(minutes=10), last=timedelta(minutes=25))
    # Recommendations from the last observed bucket: 3, 3, 3, 1, 1. At the first 1 the one made five
    # minutes earlier (3) still holds the fleet; the next step drops it.
    assert res.requested["reactive"].tolist() == [3, 3, 3, 3, 1]
    assert res.settings["startup_delay_steps"] == 2


def test_headroom_sizes_static_and_reactive() -> None:
    series, last = with_warmup(STEP_LOAD, warm=100.0)
    res = bt(series, last=last, headroom_percent=50.0)
    assert res.requested["static"][0] == 5  # ceil(300 * 1.5 / 100)
    assert res.requested["reactive"].max() == 5
    assert res.requested["reactive"][0] == 2  # ceil(100 * 1.5 / 100)
    # The oracle carries no headroom: it is the lower bound.
    assert res.kpis["oracle"].replica_hours == pytest.approx(20.0)


def daily_wave(days: int, peak: float = 2000.0) -> pd.Series:
    hours = np.arange(24 * days)
    hod = hours % 24
    # A quiet night and a sharp morning ramp, the shape reactive scaling handles worst.
    values = np.where((hod >= 8) & (hod < 20), peak, peak / 10) + 50 * np.sin(hod / 24 * 2 * np.pi)
    return hourly(values)


def test_predictive_beats_reactive_on_a_daily_periodic_series() -> None:
    res = bt(daily_wave(9), last=timedelta(days=5), headroom_percent=10.0)
    pred, react = res.kpis["predictive"], res.kpis["reactive"]
    assert react.unserved_pct > 1.0
    assert pred.unserved_pct < 0.25 * react.unserved_pct
    assert pred.replica_hours <= 1.35 * react.replica_hours
    assert res.kpis["oracle"].unserved_pct == 0.0
    # Capacity arrives before the morning ramp: ready at 08:00 on every evaluated day.
    at_ramp = res.ds.hour == 8
    assert np.all(res.ready["predictive"][at_ramp] * 100 >= res.load[at_ramp])
    assert res.forecast.smape is not None and res.forecast.smape < 5.0
    assert res.settings["refits"] == 5


def test_frontier_reuses_fits_and_compares_at_equal_cost() -> None:
    calls = {"n": 0}
    real = forecasting.fit_predict

    def counting(*args: object, **kw: object) -> object:
        calls["n"] += 1
        return real(*args, **kw)  # type: ignore[arg-type]

    mp = pytest.MonkeyPatch()
    mp.setattr(forecasting, "fit_predict", counting)
    try:
        res = bt(daily_wave(8), last=timedelta(days=4), headroom_percent=10.0,
                 frontier_headrooms=(0, 10, 20, 50, 100))
    finally:
        mp.undo()
    # One per daily origin (the evaluated days and the calibration's warm-up days), not one per headroom.
    assert calls["n"] == res.settings["refits"] + res.settings["calibration_refits"]
    assert (res.settings["refits"], res.settings["calibration_refits"]) == (4, 2)
    for name in ("reactive", "predictive"):
        points = res.frontier[name]
        assert [p.headroom_pct for p in points] == [0, 10, 20, 50, 100]
        rh = [p.replica_hours for p in points]
        assert rh == sorted(rh)
    # The frontier point at the run's own headroom is the run itself.
    assert res.frontier["predictive"][1].replica_hours == pytest.approx(res.kpis["predictive"].replica_hours)
    comparable = [c for c in compare_frontiers(res) if c.reactive_unserved_pct is not None]
    assert comparable
    assert all(c.predictive_unserved_pct < c.reactive_unserved_pct for c in comparable)  # type: ignore[operator]


def test_compare_frontiers_interpolates_and_refuses_to_extrapolate(
    step_result: backtest.BacktestResult,
) -> None:
    from dataclasses import replace

    fr = {
        "reactive": [backtest.FrontierPoint(0, 100.0, 10.0), backtest.FrontierPoint(50, 200.0, 2.0)],
        "predictive": [backtest.FrontierPoint(0, 150.0, 1.0), backtest.FrontierPoint(50, 250.0, 0.0)],
    }
    out = compare_frontiers(replace(step_result, frontier=fr))
    assert out[0].reactive_unserved_pct == pytest.approx(6.0)
    assert out[1].reactive_unserved_pct is None


def test_json_shape_and_no_nan_with_gaps() -> None:
    series = daily_wave(6)
    series.iloc[100:104] = np.nan
    series = series.drop(series.index[120:123])  # a hole in the index, not just NaN rows
    res = bt(series, last=timedelta(days=3), headroom_percent=10.0)
    doc = res.to_json()
    text = json.dumps(doc, allow_nan=False)
    # Keys are only ever added.
    assert set(doc) == {"policies", "forecast", "frontier", "settings", "service_level", "blend"}
    # Keys are only ever added: the four core policies stay, peers come as new keys.
    assert set(doc["policies"]) == {"static", "reactive", "predictive", "oracle", "ehpa", "phpa"}
    for kpis in doc["policies"].values():
        assert set(kpis) == {"replica_hours", "unserved_pct", "underprovisioned_pct", "scale_actions",
                             "saving_vs_static_pct", "ratio_to_oracle"}
    assert set(doc["forecast"]) == {"model", "smape", "mape", "mase", "summary", "models", "leading_models"}
    assert set(doc["frontier"]) == {"reactive", "predictive", "ehpa", "phpa"}
    assert set(doc["frontier"]["reactive"][0]) == {"headroom_pct", "replica_hours", "unserved_pct"}
    assert "NaN" not in text
    assert doc["settings"]["step"] == "1h"
    # The index hole became missing rows of the regular grid.
    assert len(res.ds) == 72 and res.settings["missing_steps"] == 3 + 4
    table = format_table(res)
    for name in ("static", "reactive", "predictive", "oracle"):
        assert name in table


def test_missing_buckets_count_as_no_load_and_are_left_out_of_percentages() -> None:
    evaluated = [100.0, math.nan, 100.0, 100.0]
    series, last = with_warmup(evaluated, warm=100.0)
    res = bt(series, last=last)
    assert res.kpis["reactive"].underprovisioned_pct == 0.0
    assert res.requested["reactive"].tolist() == [1, 1, 1, 1]  # held across the missing observation


def test_dst_transitions_on_a_local_time_index_do_not_crash() -> None:
    # Wall-clock hours of a CET trace around the spring-forward night; the nonexistent hour is absent.
    local = pd.date_range("2020-03-25", "2020-04-02", freq="1h", tz="Europe/Berlin")
    hod = local.hour.to_numpy()
    series = pd.Series(np.where((hod >= 8) & (hod < 20), 1000.0, 200.0), index=local)
    res = bt(series, last=timedelta(days=4), headroom_percent=10.0)
    assert str(res.ds.tz) == "UTC"
    assert np.all(np.diff(res.ds.asi8) == 3600 * 10**9)
    json.dumps(res.to_json(), allow_nan=False)


def test_resampling_to_a_coarser_step_sums_and_keeps_missing_buckets_missing() -> None:
    idx = pd.date_range("2024-01-01", periods=24 * 12 * 3, freq="5min", tz="UTC")
    values = np.full(len(idx), 10.0)
    values[-12:] = np.nan  # the last hour entirely missing
    res = bt(pd.Series(values, index=idx), step=H, last=timedelta(hours=12))
    assert res.load[0] == pytest.approx(120.0)
    assert math.isnan(res.load[-1])
    with pytest.raises(InputError, match="finer than the data"):
        bt(hourly([1.0] * 100), step=timedelta(minutes=5))


@pytest.mark.parametrize("capacity", [0.0, -5.0])
def test_capacity_must_be_positive(capacity: float) -> None:
    with pytest.raises(InputError, match="capacity"):
        bt(daily_wave(4), capacity=capacity)


def test_empty_and_all_missing_series_are_rejected() -> None:
    with pytest.raises(InputError, match="empty"):
        bt(pd.Series([], index=pd.DatetimeIndex([], tz="UTC"), dtype=float))
    with pytest.raises(InputError, match="missing"):
        bt(hourly([math.nan] * 200))
    with pytest.raises(InputError, match="negative"):
        bt(hourly([1.0] * 99 + [-1.0]))


def test_too_short_to_warm_up_says_how_much_is_needed() -> None:
    with pytest.raises(InputError, match="at least 2d"):
        bt(hourly([100.0] * 30))
    with pytest.raises(InputError, match="at least 2d"):
        bt(daily_wave(4), last=timedelta(days=3))


def test_unknown_model_is_rejected() -> None:
    with pytest.raises(InputError):
        bt(daily_wave(4), model="crystal-ball")


def _write_trace(path: Path, series: pd.Series) -> None:
    lines = ["ds,y"] + [f"{t:%Y-%m-%dT%H:%M:%S},{'' if math.isnan(v) else f'{v:.0f}'}"
                        for t, v in series.items()]
    path.write_text("\n".join(lines) + "\n")


def test_cli_backtest_writes_json_and_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series = daily_wave(7)
    series.iloc[50] = math.nan
    csv = tmp_path / "trace.csv"
    _write_trace(csv, series)
    out_json, out_html = tmp_path / "out.json", tmp_path / "out.html"
    rc = cli.main(["backtest", "--input", str(csv), "--capacity", "100", "--startup-delay", "1h",
                   "--model", "seasonal-naive", "--last", "4d", "--json", str(out_json),
                   "--report", str(out_html), "--no-progress"])
    assert rc == 0
    doc = json.loads(out_json.read_text())
    assert doc["policies"]["predictive"]["unserved_pct"] < doc["policies"]["reactive"]["unserved_pct"]
    assert doc["settings"]["evaluated_steps"] == 96
    assert "<svg" in out_html.read_text()
    printed = capsys.readouterr().out
    assert "predictive" in printed and str(out_json) in printed


def test_cli_backtest_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "short.csv"
    _write_trace(csv, hourly([100.0] * 30))
    out_json = tmp_path / "out.json"
    rc = cli.main(["backtest", "--input", str(csv), "--capacity", "100", "--model", "seasonal-naive",
                   "--json", str(out_json), "--no-progress"])
    assert rc == 2
    assert "at least 2d" in capsys.readouterr().err
    assert not out_json.exists()


# ---- the model of a mixed `auto` run -------------------------------------------------------------------------

WIKIPEDIA_MIXES = Counter({
    "auto(seasonal-naive+holt-winters+prophet)": 4, "auto(seasonal-naive+prophet+holt-winters)": 3,
    "auto(prophet+holt-winters)": 3, "auto(holt-winters+prophet)": 2, "auto(seasonal-naive+prophet)": 2,
    "auto(holt-winters+seasonal-naive)": 2, "auto(seasonal-naive+holt-winters)": 2,
    "auto(holt-winters+seasonal-naive+prophet)": 2, "auto(prophet+holt-winters+seasonal-naive)": 2,
    "seasonal-naive": 1, "auto(prophet+seasonal-naive)": 1,
})


def quality(used: Counter[str], requested: str = "auto", failed: int = 0) -> ForecastQuality:
    empty = np.array([])
    return forecast_quality(requested, used, failed, empty, empty, empty, pd.Timedelta(hours=1))


def test_a_mixed_auto_run_is_summarised_by_leading_model() -> None:
    q = quality(WIKIPEDIA_MIXES)
    assert q.summary == ("auto: seasonal-naive 50%, holt-winters 25%, prophet 25% of 24 refits "
                         "(23 mixes, by leading model)")
    assert q.leading_models == {"seasonal-naive": 12, "holt-winters": 6, "prophet": 6}
    # The full list stays, most used first.
    assert q.models == dict(WIKIPEDIA_MIXES.most_common())
    assert q.model.startswith("auto→auto(seasonal-naive+holt-winters+prophet)×4, ")


@pytest.mark.parametrize(
    ("used", "requested", "failed", "summary"),
    [
        (Counter({"holt-winters": 5}), "holt-winters", 0, "holt-winters"),
        (Counter({"seasonal-naive": 5}), "auto", 0, "auto: seasonal-naive 100% of 5 refits"),
        (Counter({"prophet": 20, "holt-winters": 4}), "prophet", 0,
         "prophet: prophet 83%, holt-winters 17% of 24 refits"),
        (Counter({"auto(prophet+holt-winters)": 1}), "auto", 2,
         "auto: prophet 100% of 1 refit (1 mix, by leading model); 2 failed fits"),
        # Shares add up to 100 and a model that led a single refit of many does not read as 0%.
        (Counter({"holt-winters": 1, "prophet": 1, "seasonal-naive": 1}), "auto", 0,
         "auto: holt-winters 34%, prophet 33%, seasonal-naive 33% of 3 refits"),
        (Counter({"holt-winters": 300, "prophet": 1}), "auto", 0, "auto: holt-winters 100%, prophet <1% of 301 refits"),
        (Counter(), "auto", 3, "auto (no forecast); 3 failed fits"),
    ],
)
def test_model_summary(used: Counter[str], requested: str, failed: int, summary: str) -> None:
    assert quality(used, requested, failed).summary == summary


def test_table_and_json_of_a_mixed_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # Real seasonal-naive forecasts, reported under the names an `auto` run gives its mixes.
    names = iter(["auto(holt-winters+prophet)", "auto(holt-winters+seasonal-naive+prophet)",
                  "auto(prophet+holt-winters)", "seasonal-naive"])
    real = forecasting.fit_predict

    def renamed(model: str, *args: object, **kw: object) -> forecasting.FitResult:
        res = real("seasonal-naive", *args, **kw)  # type: ignore[arg-type]
        return replace(res, model=next(names))

    monkeypatch.setattr(forecasting, "fit_predict", renamed)
    res = bt(daily_wave(8), last=timedelta(days=4), model="auto", calibration_warmup=timedelta(0))
    table = format_table(res)
    assert "forecast auto: holt-winters 50%, prophet 25%, seasonal-naive 25% of 4 refits (3 mixes, by leading model):" \
        in table
    assert "auto(" not in table
    doc = json.loads(json.dumps(res.to_json(), allow_nan=False))
    assert doc["forecast"]["summary"] == res.forecast.summary
    assert doc["forecast"]["models"] == {
        "auto(holt-winters+prophet)": 1, "auto(holt-winters+seasonal-naive+prophet)": 1,
        "auto(prophet+holt-winters)": 1, "seasonal-naive": 1,
    }
    assert doc["forecast"]["leading_models"] == {"holt-winters": 2, "prophet": 1, "seasonal-naive": 1}
    assert doc["forecast"]["model"].startswith("auto→auto(holt-winters+prophet)×1, ")


# ---- peer autoscalers: Crane EffectiveHPA (DSP) and PHPA (Holt-Winters) ---------------------------------------


def _minute_wave(days: int, seed: int = 0) -> np.ndarray:
    """A daily cycle at 10-minute steps with a little noise."""
    t = np.arange(days * 144)
    rng = np.random.default_rng(seed)
    return 1000 + 800 * np.sin(2 * np.pi * t / 144) + rng.normal(0, 20, len(t))


def test_dsp_finds_the_daily_period_and_forecasts_the_next_day() -> None:
    from prescaler.backtest import peers

    step = timedelta(minutes=10)
    x = _minute_wave(8)
    rng = np.random.default_rng(0)
    assert peers.dsp_period(x, step, rng) == 144
    fc = peers.dsp_forecast(x, step, rng)
    assert fc is not None and len(fc) == 144
    truth = 1000 + 800 * np.sin(2 * np.pi * np.arange(144) / 144)
    assert np.max(np.abs(fc - truth)) < 0.1 * 800


def test_dsp_gives_no_forecast_for_noise() -> None:
    from prescaler.backtest import peers

    noise = np.random.default_rng(1).gamma(4.0, 100.0, 8 * 144)
    assert peers.dsp_forecast(noise, timedelta(minutes=10), np.random.default_rng(0)) is None


def test_holt_winters_one_step_tracks_a_seasonal_series() -> None:
    from prescaler.backtest import peers

    y = np.tile([1.0, 3.0, 6.0, 10.0, 6.0, 3.0], 8) + np.arange(48) * 0.05
    fc = peers.holt_winters_one_step(y, 6, n_fit=36)
    assert np.allclose(fc[36:-1], y[37:], atol=0.3)
    assert np.isnan(fc[:6]).all()


def test_peers_are_reported_side_by_side_and_never_size_below_reactive() -> None:
    from prescaler.backtest import peers

    res = bt(daily_wave(9), last=timedelta(days=5), headroom_percent=10.0, frontier_headrooms=(0, 10, 50))
    doc = res.to_json()
    for name in peers.PEERS:
        assert set(doc["policies"][name]) == set(doc["policies"]["reactive"])
        assert [p["headroom_pct"] for p in doc["frontier"][name]] == [0, 10, 50]
        # Both take the max of their prediction and the reactive calculation, through the same stabiliser.
        assert (res.requested[name] >= res.requested["reactive"]).all()
        assert name in format_table(res)
    assert set(doc["settings"]["peers"]) == set(peers.PEERS)
    # On a daily cycle both foresee the morning ramp that reactive scaling meets late.
    react = res.kpis["reactive"].unserved_pct
    assert res.kpis["ehpa"].unserved_pct < 0.25 * react
    assert res.kpis["phpa"].unserved_pct < react


def test_ehpa_without_a_periodic_forecast_is_the_reactive_policy() -> None:
    noise = hourly(np.random.default_rng(5).gamma(4.0, 100.0, 24 * 6))
    res = bt(noise, last=timedelta(days=3), headroom_percent=10.0)
    assert np.array_equal(res.requested["ehpa"], res.requested["reactive"])


def test_equal_cost_compares_every_policy_at_predictive_replica_hours() -> None:
    from prescaler.backtest import peers

    res = bt(daily_wave(9), last=timedelta(days=5), frontier_headrooms=(0, 10, 20, 50, 100))
    rows = peers.equal_cost(res)
    assert [r.headroom_pct for r in rows] == [0, 10, 20, 50, 100]
    for row, point in zip(rows, res.frontier["predictive"], strict=True):
        assert row.unserved_pct["predictive"] == point.unserved_pct
        assert row.times_oracle == pytest.approx(point.replica_hours / res.kpis["oracle"].replica_hours)
        assert set(row.unserved_pct) == {"reactive", "predictive", *peers.PEERS}
        for name in ("reactive", *peers.PEERS):
            assert row.unserved_pct[name] == peers.unserved_at(res, name, point.replica_hours)
    assert "ehpa" in peers.equal_cost_summary(res)


# ---- the fast replay, the pool, the service level and the blend ------------------------------------------


def _plan_per_bucket(times: list, prev_load: np.ndarray, track: Track, cals: list, off: int, policy: ScalingPolicy,
                     span: pd.DatetimeIndex, fits: list, correction: np.ndarray,
                     windows: WindowSizing | None = None) -> np.ndarray:
    """The reference: `plan` called at every bucket with the forecast, calibration, level correction and
    scheduled windows in force."""
    out, cur, recent = [], 0, ()
    for t, now in enumerate(times):
        i = int(track.fit_of[off + t])
        fit = fits[i]
        obs = None if math.isnan(prev_load[t]) else float(prev_load[t])
        d = plan(policy, now=now, current_replicas=cur, forecast=fit.forecast,
                 forecast_generated_at=span[track.starts[i]].to_pydatetime() if fit.forecast is not None else None,
                 observed_load=obs, recent=recent, calibration=cals[i],
                 level_correction=float(correction[off + t]),
                 window=None if windows is None else WindowAsk(float(windows.rise[t]), int(windows.min_replicas[t]),
                                                               "test"))
        cur, recent = d.desired, d.recommendations
        out.append(cur)
    return np.array(out)


@pytest.mark.parametrize(("service_level", "quantile", "delay", "windowed"),
                         [(None, "yhat", 2, False), (99.0, "yhat", 2, False), (None, "upper", 0, False),
                          (99.9, "upper", 3, False), (None, "upper", 2, True), (99.9, "yhat", 3, True)])
def test_the_replay_equals_the_planner_called_at_every_bucket(service_level: float | None, quantile: str,
                                                              delay: int, windowed: bool) -> None:
    rng = np.random.default_rng(7)
    step = timedelta(minutes=5)
    n, refit = 12 * 24 * 5, 12 * 24
    span = pd.date_range("2024-01-01", periods=n, freq="5min", tz="UTC")
    hod = (np.arange(n) % 288) / 288
    load = 1000 * (1.2 + np.sin(2 * np.pi * hod)) * rng.lognormal(0, 0.15, n)
    load[rng.random(n) < 0.02] = np.nan
    fits = []
    for i, o in enumerate(range(0, n, refit)):
        if i == 2:  # a failed fit: a day of the planner's fallback
            fits.append(Fit(o, None, None, 0.0, "no"))
            continue
        ds = pd.date_range(span[o], periods=refit + delay + 1, freq="5min")
        y = 1000 * (1.2 + np.sin(2 * np.pi * ((np.arange(o, o + len(ds)) % 288) / 288 + (0.05 if i == 3 else 0))))
        # Day 3's forecast is an hour off: the record should cost it trust.
        fits.append(Fit(o, Forecast(ds, y, 0.8 * y, 1.25 * y, "test"), "test", 0.0, None))
    starts = list(range(0, n, refit))
    raw = build_track(span, fits, starts, delay)
    lf = level_corrections(load, raw.yhat, 12)
    assert lf.min() < 1 < lf.max()
    track = corrected(raw, lf)
    prev = np.concatenate([[1000.0], load[:-1]])
    base = "yhat" if service_level is not None else quantile
    samples = samples_by_bucket(track, load, prev, delay, base)  # type: ignore[arg-type]
    cals = calibrations(track, samples, window_steps=refit * 2, service_level=service_level, headroom_percent=10.0)
    # Lower the bar so the short record calibrates from the second day on.
    cals = [calibrate_sizing(samples.rows(slice(max(0, s - 2 * refit), s)), service_level=service_level,
                             headroom_percent=10.0, min_samples=48) for s in starts]
    sized = sizing_inputs(track, cals, quantile=quantile)  # type: ignore[arg-type]
    pol = replay_policy(50.0, delay * step, step, 10.0, quantile, backtest.HPA_WINDOW,  # type: ignore[arg-type]
                        service_level)
    off = refit  # replay from the second day, as after a calibration warm-up
    times = list(span[off:].to_pydatetime())
    windows = None
    if windowed:
        # An evening window whose opening rises threefold, and a night schedule holding 30 replicas.
        minute = (span[off:].hour * 60 + span[off:].minute).to_numpy()
        rise = np.where((minute >= 17 * 60) & (minute < 19 * 60), 3.0, 1.0)
        floor = np.where((minute >= 2 * 60) & (minute < 3 * 60), 30, 0).astype(np.int64)
        windows = WindowSizing(rise, floor)
    fast = predictive_requests(times, prev[off:], sized.peak[off:], track.stale[off:], sized.trust[off:],
                               sized.multiplier[off:], pol, windows)
    slow = _plan_per_bucket(times, prev[off:], raw, cals, off, pol, span, fits, lf, windows)
    assert fast.tolist() == slow.tolist()
    if windows is not None:
        assert (fast[windows.min_replicas == 30] >= 30).all()
    if service_level is not None:
        assert any(c.ready for c in cals)


def test_track_peaks_are_the_planners_step_one() -> None:
    span = pd.date_range("2024-01-01", periods=48, freq="1h", tz="UTC")
    y = np.arange(60, dtype=float) % 17
    fc = Forecast(pd.date_range(span[0], periods=60, freq="1h"), y, y, y + 1, "t")
    track = build_track(span, [Fit(0, fc, "t", 0.0, None)], [0], 2)
    pol = replay_policy(1.0, 2 * H, H, 0.0, "yhat", backtest.HPA_WINDOW)
    for t in range(48):
        now = span[t].to_pydatetime()
        peak = forecast_peak(fc, now, now + pol.lead_time + pol.tick, "upper")
        assert peak is not None and track.peak["upper"][t] == peak.load
        assert track.lead_s[t] == (t + 2) * 3600
    assert not track.stale[:48].any()


def test_pooled_refits_equal_refits_in_this_process() -> None:
    kw: dict[str, object] = dict(last=timedelta(days=3), headroom_percent=10.0, model="seasonal-naive")
    one = bt(daily_wave(7), **kw)
    two = bt(daily_wave(7), workers=2, **kw)
    assert two.settings["workers"] == 2
    # The pool measures what the refits cost in CPU, whatever else the machine runs (rounded to 0.1 s, so a few
    # seasonal-naive refits on a quiet machine may read 0.0); in this process it is not measured.
    cpu = two.settings["seconds"]["fit_cpu"]
    assert isinstance(cpu, float) and cpu >= 0.0 and one.settings["seconds"]["fit_cpu"] is None
    np.testing.assert_allclose(one.yhat, two.yhat)
    for name in ("predictive", "reactive"):
        assert one.requested[name].tolist() == two.requested[name].tolist()


def noisy_wave(days: int, seed: int = 11) -> pd.Series:
    rng = np.random.default_rng(seed)
    base = daily_wave(days).to_numpy()
    return hourly(base * rng.lognormal(0, 0.08, len(base)))


def test_a_service_level_is_met_and_reported() -> None:
    res = bt(noisy_wave(30), last=timedelta(days=14), service_level=99.5, headroom_percent=10.0)
    sl = res.service_level
    assert sl is not None and sl.target_pct == 99.5
    assert sl.calibrated_pct == 100.0  # the warm-up week left a record long enough from the first decision
    assert sl.served_pct == pytest.approx(100 - res.kpis["predictive"].unserved_pct)
    assert sl.served_pct >= 99.0
    assert sl.coverage_pct is not None and 50 < sl.coverage_pct <= 100
    assert sl.multiplier_mean is not None and sl.multiplier_mean > 1.0
    doc = json.loads(json.dumps(res.to_json(), allow_nan=False))
    assert doc["service_level"]["target_pct"] == 99.5 and doc["settings"]["service_level"] == 99.5
    assert set(doc["service_level"]) >= {"served_pct", "coverage_pct", "calibrated_quantile_pct"}
    assert "service level 99.5%: served" in format_table(res)
    # The frontier still sweeps the headroom, on the same refits.
    assert [p.headroom_pct for p in res.frontier["predictive"]] == [0, 50]


def test_a_higher_service_level_costs_more_and_serves_more() -> None:
    lo, hi = (bt(noisy_wave(30), last=timedelta(days=14), service_level=s) for s in (95.0, 99.9))
    assert lo.kpis["predictive"].replica_hours <= hi.kpis["predictive"].replica_hours
    assert lo.kpis["predictive"].unserved_pct >= hi.kpis["predictive"].unserved_pct


def flash_crowds(days: int) -> pd.Series:
    """Flat load with three unscheduled one-hour crowds a day: the seasonal forecast replays last period's
    crowds at hours they do not come back, and pays for them; the reactive floor does not."""
    rng = np.random.default_rng(5)
    values = 1000 * rng.lognormal(0, 0.03, 24 * days)
    for day in range(days):
        values[day * 24 + rng.choice(24, 3, replace=False)] *= 3
    return hourly(values)


def test_the_blend_leans_on_reactive_when_the_forecast_loses_to_it() -> None:
    res = bt(flash_crowds(24), last=timedelta(days=14), headroom_percent=20.0, frontier_headrooms=(0, 20, 50, 100))
    blend = res.blend
    assert blend is not None and blend.refits_leaning > 0 and blend.trust_mean < 1.0
    assert "forecast trust" in blend.reason
    assert "blend: leaned on reactive" in format_table(res)
    # At equal replica-hours predictive is no worse than reactive (within what one refit's lag allows).
    for c in compare_frontiers(res):
        if c.reactive_unserved_pct is not None:
            assert c.predictive_unserved_pct <= c.reactive_unserved_pct * 1.1 + 0.05


def test_a_good_forecast_is_never_drowned_by_the_blend() -> None:
    res = bt(daily_wave(12), last=timedelta(days=5), headroom_percent=10.0)
    assert res.blend is not None and res.blend.refits_leaning == 0 and res.blend.trust_mean == 1.0


def test_cli_service_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "trace.csv"
    _write_trace(csv, noisy_wave(20))
    out_json = tmp_path / "out.json"
    for bad in ("100", "0", "-3", "abc", "100%"):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["backtest", "--input", str(csv), "--capacity", "100", "--service-level", bad,
                      "--json", str(out_json), "--no-progress"])
        assert exit_.value.code == 2
        assert "--service-level" in capsys.readouterr().err
    assert not out_json.exists()
    rc = cli.main(["backtest", "--input", str(csv), "--capacity", "100", "--startup-delay", "1h",
                   "--model", "seasonal-naive", "--last", "7d", "--service-level", "99.9%", "--workers", "1",
                   "--quantile", "yhat", "--json", str(out_json), "--no-progress"])
    assert rc == 0
    doc = json.loads(out_json.read_text())
    assert doc["service_level"]["target_pct"] == 99.9
    assert (doc["settings"]["quantile"], doc["settings"]["workers"]) == ("yhat", 1)
    assert "service level 99.9%" in capsys.readouterr().out

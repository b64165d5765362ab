"""The sizing on the scaler's own record (`prescaler.sizing`): service-level calibration, the trust weight and
the level correction; worked examples and the invariants, as properties."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prescaler.errors import InputError
from prescaler.forecasting import Forecast
from prescaler.sizing.calibration import calibrate_sizing, calibrate_sizing_from_forecasts, status_fields
from prescaler.sizing.level_correction import level_correction, level_correction_steps, level_corrections
from prescaler.sizing.loads import floor_plus_trusted_rise
from prescaler.sizing.samples import MIN_SAMPLES, ForecastRecord, Samples, samples_from_forecasts
from prescaler.sizing.service_level import (
    MAX_MULTIPLIER,
    MIN_MULTIPLIER,
    needed_multiplier,
    parse_service_level,
    served_and_coverage,
    shortfall,
)
from prescaler.sizing.trust import choose_trust

H = timedelta(hours=1)
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def samples(actual: list[float] | np.ndarray, forecast: list[float] | np.ndarray,
            observed: list[float] | np.ndarray | None = None, lead_h: float | np.ndarray = 1.0) -> Samples:
    a = np.asarray(actual, dtype=float)
    lead = np.broadcast_to(np.asarray(lead_h, dtype=float) * 3600, a.shape).copy()
    r = np.zeros_like(a) if observed is None else np.asarray(observed, dtype=float)
    return Samples(lead_s=lead, actual=a, forecast=np.asarray(forecast, dtype=float), observed=r)


# ---- parsing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("99.9%", 99.9), ("99.9", 99.9), (" 95 % ", 95.0), ("0.5%", 0.5)])
def test_service_level_parses_a_percentage(text: str, value: float) -> None:
    assert parse_service_level(text) == value


@pytest.mark.parametrize("text", ["100%", "0%", "0", "-1%", "101", "abc", "", "nan%", "99.9%%"])
def test_service_level_outside_0_100_is_rejected_naming_the_field(text: str) -> None:
    with pytest.raises(InputError, match=r"spec\.scaling\.serviceLevel"):
        parse_service_level(text, "spec.scaling.serviceLevel")


# ---- the multiplier -----------------------------------------------------------------------------------


def test_needed_multiplier_worked_example() -> None:
    # Forecast 100 everywhere, nothing observed; loads 90..130, eight of each. Served 99% of 4,400 allows 44
    # unserved (× 41/40 = 45.1): the eight 130s alone may miss by that much, 8·(130 − 100m) ≤ 45.1, so
    # m ≥ 1.2436: the grid's next step up.
    a = np.array([90, 100, 110, 120, 130] * 8, dtype=float)
    s = samples(a, np.full(40, 100.0))
    m = needed_multiplier(s, 99.0)
    budget = 0.01 * a.sum() * 41 / 40
    assert shortfall(a, m * 100) <= budget < shortfall(a, m / 1.0025 * 100)
    assert 1.2436 <= m < 1.2436 * 1.0025


def test_needed_multiplier_edges() -> None:
    # A perfect forecast needs no more than itself (floored at MIN_MULTIPLIER when biased high).
    assert 0.99 < needed_multiplier(samples(np.full(50, 100.0), np.full(50, 100.0)), 99.9) <= 1.0025
    assert needed_multiplier(samples(np.full(50, 100.0), np.full(50, 400.0)), 99.9) == MIN_MULTIPLIER
    # Load where forecast and floor are zero cannot be reached by any multiplier.
    assert needed_multiplier(samples([100.0] * 49 + [1000.0], [100.0] * 49 + [0.0]), 99.9) == MAX_MULTIPLIER
    assert needed_multiplier(samples(np.zeros(10), np.ones(10)), 99.9) == MIN_MULTIPLIER
    # The observed load is a floor the multiplier does not scale: a forecast of half the load with the load
    # observed under it needs no multiplier at all.
    assert needed_multiplier(samples(np.full(50, 100.0), np.full(50, 50.0), np.full(50, 100.0)), 99.9) \
        == MIN_MULTIPLIER


def test_a_bucket_is_served_by_the_least_its_decisions_asked_for() -> None:
    # Two decisions per bucket (a one-step start-up): the later one sized low, so the bucket gets that.
    a = np.full(60, 100.0)
    two = Samples(lead_s=np.full(60, 3600.0), actual=a, forecast=np.tile([100.0, 50.0], (60, 1)),
                  observed=np.zeros((60, 2)))
    assert needed_multiplier(two, 99.0) == pytest.approx(2 * 0.99, abs=0.01)
    # A decision without a forecast (stale) does not limit the bucket.
    stale = Samples(lead_s=np.full(60, 3600.0), actual=a, forecast=np.tile([100.0, np.nan], (60, 1)),
                    observed=np.zeros((60, 2)))
    assert needed_multiplier(stale, 99.0) == pytest.approx(0.99, abs=0.01)


pairs = st.lists(
    st.tuples(st.floats(0, 1e4, allow_nan=False), st.floats(0.01, 1e4, allow_nan=False),
              st.floats(0, 1e4, allow_nan=False)), min_size=1, max_size=80
)


def _from(data: list[tuple[float, float, float]]) -> Samples:
    a, f, r = (np.array(x) for x in zip(*data, strict=True))
    return samples(a, f, r)


@settings(max_examples=200, deadline=None)
@given(pairs, st.floats(50, 99.99), st.floats(50, 99.99), st.sampled_from([0.0, 0.5, 1.0]))
def test_a_higher_service_level_never_needs_a_lower_multiplier(
    data: list[tuple[float, float, float]], s1: float, s2: float, trust: float
) -> None:
    lo, hi = sorted((s1, s2))
    assert needed_multiplier(_from(data), hi, trust) >= needed_multiplier(_from(data), lo, trust)


@settings(max_examples=200, deadline=None)
@given(pairs, st.floats(50, 99.99))
def test_the_multiplier_meets_the_level_in_sample_and_is_the_smallest(data: list[tuple[float, float, float]],
                                                                      service_level: float) -> None:
    s = _from(data)
    m = needed_multiplier(s, service_level)
    budget = (1 - service_level / 100) * float(s.actual.sum()) * (len(s) + 1) / len(s)

    def unserved(mult: float) -> float:
        return shortfall(s.actual, np.maximum(mult * s.forecast, s.observed))

    if m < MAX_MULTIPLIER:
        assert unserved(m) <= budget
    if m > MIN_MULTIPLIER:
        assert unserved(m / 1.0025 * (1 - 1e-12)) > budget


# ---- trust --------------------------------------------------------------------------------------------


def test_floor_plus_trusted_rise() -> None:
    assert floor_plus_trusted_rise(300.0, 100.0, 1.0) == pytest.approx(300.0)
    assert floor_plus_trusted_rise(300.0, 100.0, 0.5) == pytest.approx(200.0)
    assert floor_plus_trusted_rise(300.0, 100.0, 0.0) == pytest.approx(100.0)
    assert floor_plus_trusted_rise(50.0, 100.0, 0.5) == pytest.approx(100.0)  # never below the floor


def _daily(days: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    hod = np.arange(24 * days) % 24
    base = np.where((hod >= 8) & (hod < 20), 1000.0, 100.0)
    return base * (1 + noise * rng.standard_normal(len(base)))


def test_a_good_forecast_keeps_full_trust() -> None:
    rng = np.random.default_rng(1)
    actual = _daily(14, rng, 0.05)
    forecast = _daily(14, np.random.default_rng(2), 0.0)
    observed = np.roll(actual, 2)  # two steps late, as an hourly floor with an hour's start-up
    s = samples(actual, forecast, observed)
    for service_level in (None, 99.9):
        trust = choose_trust(s, service_level=service_level, headroom_percent=10)
        assert trust.weight == 1.0 and not trust.leans_on_reactive, trust.reason


def test_a_forecast_worse_than_reactive_is_leaned_away_from() -> None:
    # The forecast promises spikes at random hours that never come; the load is flat and the floor knows it.
    rng = np.random.default_rng(3)
    actual = np.full(24 * 14, 1000.0) * (1 + 0.02 * rng.standard_normal(24 * 14))
    forecast = np.where(rng.random(24 * 14) < 0.3, 3000.0, 1000.0)
    s = samples(actual, forecast, np.roll(actual, 1))
    for service_level in (None, 99.9):
        trust = choose_trust(s, service_level=service_level, headroom_percent=10)
        assert trust.weight < 1.0 and trust.leans_on_reactive
        assert "forecast trust" in trust.reason
        # The rule's claim, on the record it was chosen on: the blend beats full trust there.
        scores = dict(trust.scores)
        assert scores[trust.weight] < scores[1.0]


def test_too_short_a_record_trusts_the_forecast_and_calibrates_nothing() -> None:
    s = samples([100.0] * (MIN_SAMPLES - 1), [100.0] * (MIN_SAMPLES - 1))
    cal = calibrate_sizing(s, service_level=99.9)
    assert cal.trust.weight == 1.0 and not cal.ready and cal.multiplier(H) is None
    assert "samples" in cal.trust.reason


# ---- lead buckets -------------------------------------------------------------------------------------


def test_each_lead_bucket_is_calibrated_on_its_own_errors() -> None:
    n = 200
    rng = np.random.default_rng(4)
    forecast = np.full(2 * n, 100.0)
    # Short leads err by ±5%, leads of a day by ±30%.
    actual = np.concatenate([100 * (1 + 0.05 * rng.standard_normal(n)), 100 * (1 + 0.3 * rng.standard_normal(n))])
    lead = np.concatenate([np.full(n, 0.5), np.full(n, 20.0)])
    cal = calibrate_sizing(samples(actual, forecast, lead_h=lead), service_level=99.0)
    short, long_ = cal.multiplier(timedelta(minutes=30)), cal.multiplier(timedelta(hours=20))
    assert short is not None and long_ is not None and short < long_
    assert cal.bucket(timedelta(minutes=30)).samples == n  # type: ignore[union-attr]
    # A bucket without its own samples widens to the longer leads (which err more: the safe side).
    between = cal.bucket(timedelta(hours=4))
    assert between is not None and between.multiplier == pytest.approx(long_)
    assert "for 99% served" in cal.describe(timedelta(minutes=30))
    np.testing.assert_allclose(cal.multipliers(np.array([1800.0, 72000.0, -5.0])), [short, long_, short])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(90, 99.99), st.floats(90, 99.99), st.sampled_from([0.0, 0.5, 1.0]))
def test_a_higher_service_level_never_provisions_less_at_any_lead(seed: int, s1: float, s2: float,
                                                                  trust: float) -> None:
    rng = np.random.default_rng(seed)
    n = 150
    forecast = rng.uniform(50, 500, n)
    actual = forecast * rng.lognormal(0, 0.2, n)
    s = samples(actual, forecast, rng.uniform(0, 500, n), lead_h=rng.uniform(0, 30, n))
    lo, hi = sorted((s1, s2))
    c_lo, c_hi = (calibrate_sizing(s, service_level=target, trust=trust) for target in (lo, hi))
    for lead in (0.0, 2.0, 5.0, 11.0, 23.0, 40.0):
        assert c_hi.multiplier(lead * H) >= c_lo.multiplier(lead * H)  # type: ignore[operator]


# ---- the operator's record ----------------------------------------------------------------------------


def _forecast(generated: datetime, values: list[float]) -> Forecast:
    ds = pd.date_range(generated, periods=len(values), freq="1h", tz="UTC")
    y = np.asarray(values, dtype=float)
    return Forecast(ds=ds, yhat=y, lower=y * 0.9, upper=y * 1.1, model="test")


def test_samples_pair_each_bucket_with_the_forecasts_in_force_at_its_decisions() -> None:
    start = NOW - 10 * H
    old = _forecast(start, [100.0] * 30)
    new = _forecast(start + 5 * H, [200.0] * 30)
    actuals = pd.Series(np.arange(12, dtype=float) * 10,
                        index=pd.date_range(start - 2 * H, periods=12, freq="1h", tz="UTC"))
    s = samples_from_forecasts([(start + 5 * H, new), (start, old)], actuals, now=NOW, lead_time=H)
    # Every bucket with a forecast in force at one of its decisions (an hour before it, and at its start),
    # up to the last complete one: from `start` on.
    assert len(s) == 10 and s.forecast.shape == (10, 2)
    # The bucket at start + 5h: decided at start + 4h with the old forecast (lead 5h), and at its start
    # with the new one.
    i = 5
    assert s.forecast[i].tolist() == [100.0, 200.0] and s.lead_s[i] == 5 * 3600
    # Each decision's floor is the bucket complete by then: start + 3h, and start + 4h.
    assert s.observed[i].tolist() == [actuals[start + 3 * H], actuals[start + 4 * H]]
    assert s.actual[i] == actuals[start + 5 * H]
    # The first bucket had no forecast an hour before it: that decision does not limit it.
    assert math.isnan(s.forecast[0][0]) and s.forecast[0][1] == 100.0


def _loop_samples(forecasts: list[tuple[datetime, Forecast]], actuals: pd.Series, now: datetime,
                  lead_time: timedelta) -> tuple[list[float], list[float], list[list[float]], list[list[float]]]:
    """The definition, one bucket and one decision at a time (what the operator ran before it vectorised)."""
    idx = pd.DatetimeIndex(actuals.index)
    step = idx[1] - idx[0]
    ordered = sorted(forecasts, key=lambda gf: gf[0])
    generated = pd.DatetimeIndex([g for g, _ in ordered])
    k = max(0, math.ceil(lead_time / step - 1e-9)) + 1
    leads, loads, fs, rs = [], [], [], []
    for i, u in enumerate(idx):
        if not (u + step <= now and u >= now - timedelta(days=14)):
            continue
        row_f, row_r, first = [math.nan] * k, [math.nan] * k, None
        for j in range(k):
            decided = u - lead_time + j * step if j < k - 1 else u
            g = int(generated.searchsorted(decided, side="right")) - 1
            if g < 0:
                continue
            first = g if first is None else first
            fc = ordered[g][1]
            fstep = fc.ds[1] - fc.ds[0]
            seg = fc.yhat[(fc.ds > decided - fstep) & (fc.ds < decided + lead_time + step)]
            row_f[j] = float(np.nanmax(seg)) if np.isfinite(seg).any() else math.nan
            b = int(idx.searchsorted(decided - step, side="right")) - 1
            row_r[j] = float(actuals.iloc[b]) if b >= 0 else math.nan
        if first is not None:
            leads.append((u - generated[first]).total_seconds())
            loads.append(float(actuals.iloc[i]))
            fs.append(row_f)
            rs.append(row_r)
    return leads, loads, fs, rs


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), forecasts=st.integers(1, 5), lead_steps=st.integers(0, 4),
       minutes=st.sampled_from([5, 60]))
def test_vectorised_samples_match_the_definition(seed: int, forecasts: int, lead_steps: int, minutes: int) -> None:
    rng = np.random.default_rng(seed)
    step = timedelta(minutes=minutes)
    start = NOW - 40 * step
    index = pd.date_range(start, periods=45, freq=step, tz="UTC")
    values = rng.uniform(0, 100, len(index))
    values[rng.random(len(index)) < 0.1] = np.nan
    actuals = pd.Series(values, index=index)
    made = []
    for _ in range(forecasts):
        generated = start + int(rng.integers(-5, 35)) * step
        y = rng.uniform(0, 100, 30)
        y[rng.random(30) < 0.1] = np.nan
        ds = pd.date_range(generated, periods=30, freq=step, tz="UTC")
        made.append((generated.to_pydatetime() if hasattr(generated, "to_pydatetime") else generated,
                     Forecast(ds=ds, yhat=y, lower=y, upper=y, model="test")))
    unique = list({g: (g, f) for g, f in made}.values())
    lead = lead_steps * step
    s = samples_from_forecasts(unique, actuals, now=NOW, lead_time=lead)
    leads, loads, fs, rs = _loop_samples(unique, actuals, NOW, lead)
    assert s.lead_s.tolist() == leads
    np.testing.assert_array_equal(s.actual, np.asarray(loads, dtype=float))
    np.testing.assert_array_equal(s.forecast, np.asarray(fs, dtype=float).reshape(s.forecast.shape))
    np.testing.assert_array_equal(s.observed, np.asarray(rs, dtype=float).reshape(s.observed.shape))


def test_calibration_from_stored_forecasts_end_to_end() -> None:
    start = NOW - 14 * 24 * H
    rng = np.random.default_rng(5)
    hours = pd.date_range(start, NOW, freq="1h", tz="UTC", inclusive="left")
    truth = 1000 * (1 + 0.5 * np.sin(np.arange(len(hours)) * 2 * math.pi / 24))
    actuals = pd.Series(truth * (1 + 0.05 * rng.standard_normal(len(hours))), index=hours)
    stored = [(t, _forecast(t, list(truth[i : i + 30]) + [1000.0] * 30))
              for i, t in enumerate(hours) if i % 24 == 0]
    cal = calibrate_sizing_from_forecasts(stored, actuals, now=NOW, lead_time=H, service_level=99.9)
    assert cal.ready and cal.trust.weight == 1.0
    m = cal.multiplier(2 * H)
    assert m is not None and 1.0 < m < 1.3
    served, coverage = served_and_coverage(actuals.to_numpy(), m * truth)
    assert served is not None and served > 99.5 and coverage is not None and coverage > 90


def test_realized_served_and_coverage() -> None:
    served, coverage = served_and_coverage(np.array([100.0, 100.0, math.nan, 300.0]),
                                           np.array([100.0, 50.0, 10.0, 300.0]))
    assert served == pytest.approx(100 * (1 - 50 / 500)) and coverage == pytest.approx(100 * 2 / 3)
    assert served_and_coverage(np.array([math.nan]), np.array([1.0])) == (None, None)


def test_status_fields_are_strings_for_the_crd() -> None:
    rng = np.random.default_rng(6)
    forecast = rng.uniform(100, 1000, 300)
    s = samples(forecast * rng.lognormal(0, 0.1, 300), forecast, lead_h=rng.uniform(0, 24, 300))
    cal = calibrate_sizing(s, service_level=99.9)
    fields = status_fields(cal, s, lead=2 * H)
    assert fields["forecastTrust"] == "100%"
    served = fields["serviceLevel"]
    assert served["target"] == "99.9%" and served["samples"] == 300 and served["window"] == "14d"
    assert all(isinstance(served[k], str) for k in ("realizedServedPercent", "coveragePercent",
                                                    "calibratedQuantile", "multiplier"))
    assert float(served["realizedServedPercent"].rstrip("%")) >= 99.8
    assert status_fields(calibrate_sizing(s, service_level=None), s, lead=H) == {"forecastTrust": "100%"}


def test_the_record_keeps_only_what_calibration_pairs() -> None:
    record = ForecastRecord(keep_ahead=2 * H, window=timedelta(days=1))
    start = NOW - timedelta(days=3)
    for i in range(72):
        assert record.add(start + i * H, _forecast(start + i * H, [100.0] * 48))
    latest = start + 71 * H
    assert not record.add(latest, _forecast(latest, [1.0] * 48))  # the same generation once
    assert not record.add(start, _forecast(start, [1.0] * 48))  # nor one older than the window
    # A day (plus what is in force ahead of its oldest) of hourly forecasts, two points each.
    assert len(record.entries) == 24 + 2 + 1
    assert all(len(f.ds) == 2 for _, f in record.entries)


def test_the_keeper_calibrates_once_per_forecast_and_reports_status(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from prescaler import history
    from prescaler.reconcile.sizing_record import SizingRecordKeeper
    from prescaler.spec import parse_spec

    hours = pd.date_range(NOW - timedelta(days=15), NOW, freq="1h", tz="UTC", inclusive="left")
    truth = 1000 * (1 + 0.5 * np.sin(np.arange(len(hours)) * 2 * math.pi / 24))
    actuals = pd.Series(truth * np.random.default_rng(8).lognormal(0, 0.05, len(hours)), index=hours)
    reads: list[datetime] = []
    starts: list[datetime] = []

    def read_history(engine: object, source: object, service: str, start: datetime, end: datetime,
                     step: timedelta) -> pd.Series:
        reads.append(end)
        starts.append(start)
        return actuals[(actuals.index >= start) & (actuals.index < end)]

    monkeypatch.setattr(history, "read_history", read_history)
    spec = parse_spec({"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 10,
                       "series": {"service": "web"}, "capacity": {"requestsPerReplica": 100},
                       "forecast": {"step": "1h", "history": "7d"}, "scaling": {"serviceLevel": "99.9%",
                                                                                 "leadTime": "1h"}})
    keeper = SizingRecordKeeper(history.SharedReads(None))  # type: ignore[arg-type]
    cal = None
    status: dict[str, object] = {}
    for i in range(0, len(hours) - 30, 6):
        t = hours[i].to_pydatetime()
        fc = _forecast(t, list(truth[i : i + 30]))
        for _ in range(2):  # two ticks with the same forecast read the traffic once
            cal, status = asyncio.run(keeper.calibration_for("ns", "web", spec, None, fc, t,  # type: ignore[arg-type]
                                                             t + timedelta(minutes=10)))
    assert len(reads) == len(range(0, len(hours) - 30, 6))
    # The record starts with its first forecast: the first read goes back only as far as that forecast's
    # decisions need (lead time and two steps), not the whole 14-day window.
    assert starts[0] == hours[0].to_pydatetime() - timedelta(hours=3)
    assert cal is not None and cal.ready and cal.service_level == 99.9
    served = status["serviceLevel"]
    assert isinstance(served, dict) and served["target"] == "99.9%" and "realizedServedPercent" in served
    # Each tick: the last hour's load against the forecasts that were in force for it (3 hourly steps).
    t = hours[len(hours) - 40].to_pydatetime()
    fc = _forecast(t, list(truth[len(hours) - 40 : len(hours) - 10]))
    _, correction, fields = asyncio.run(keeper.for_tick("ns", "web", spec, None, fc, t,  # type: ignore[arg-type]
                                                        t + timedelta(hours=5, minutes=10)))
    window = actuals[(actuals.index >= t + 2 * H) & (actuals.index < t + 5 * H)]
    assert correction == pytest.approx(level_correction(window.to_numpy(),
                                                        truth[len(hours) - 38 : len(hours) - 35]))
    assert correction != 1.0 and fields["forecastTrust"] == "100%"
    keeper.forget("ns", "web")
    assert asyncio.run(keeper.calibration_for("ns", "web", spec, None, None, None, NOW)) == (None, {})  # type: ignore[arg-type]
    assert asyncio.run(keeper.for_tick("ns", "web", spec, None, None, None, NOW)) == (None, 1.0, {})  # type: ignore[arg-type]


# ---- the level correction -------------------------------------------------------------------------------


def test_level_correction_corrects_half_the_way_within_bounds() -> None:
    assert level_correction([200.0, 200.0, 200.0], [100.0, 100.0, 100.0]) == pytest.approx(math.sqrt(2))
    assert level_correction([900.0] * 3, [100.0] * 3) == pytest.approx(math.sqrt(2))  # bounded at 2× first
    assert level_correction([10.0] * 3, [100.0] * 3) == pytest.approx(math.sqrt(0.5))
    assert level_correction([math.nan, math.nan, 100.0], [100.0] * 3) == 1.0  # too little to go by
    assert level_correction([], []) == 1.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1e4), min_size=20, max_size=60), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_level_corrections_are_level_correction_at_every_bucket(values: list[float], steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    load = np.array(values)
    load[rng.random(len(load)) < 0.2] = math.nan
    forecast = rng.uniform(1, 1e4, len(load))
    at_once = level_corrections(load, forecast, steps)
    for t in range(steps, len(load)):
        assert at_once[t] == pytest.approx(level_correction(load[t - steps : t], forecast[t - steps : t]))
    assert level_correction_steps(timedelta(minutes=5)) == 12 and level_correction_steps(H) == 3


def test_incidents_are_left_out_of_the_fit_and_counted() -> None:
    rng = np.random.default_rng(9)
    forecast = np.full(200, 1000.0)
    actual = forecast * rng.lognormal(0, 0.05, 200)
    actual[50] = 8000.0  # a flash crowd eight times what anything said
    s = samples(actual, forecast, np.full(200, 1000.0))
    cal = calibrate_sizing(s, service_level=99.9)
    assert cal.incidents == 1 and cal.samples == 199
    m = cal.multiplier(H)
    assert m is not None and m < 1.3  # not raised to chase the crowd
    assert status_fields(cal, s, lead=H)["serviceLevel"]["incidents"] == 1

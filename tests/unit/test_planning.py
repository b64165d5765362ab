"""The planner's invariants, as properties (hypothesis), plus worked examples of its rule."""

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
from prescaler.planning import (
    LIMITED_BY,
    Decision,
    Recommendation,
    ScalingPolicy,
    cap_at_hpa_max_replicas,
    hold_scale_down_without_data,
    plan,
    stabilize_recommendation,
)
from prescaler.sizing.calibration import LeadBucket, SizingCalibration, calibrate_sizing
from prescaler.sizing.samples import Samples
from prescaler.sizing.trust import Trust
from prescaler.windows import WindowAsk

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
STEP = timedelta(minutes=5)


def make_forecast(values: list[float], start: datetime = NOW - STEP, spread: float = 0.1) -> Forecast:
    ds = pd.date_range(start, periods=len(values), freq=pd.Timedelta(STEP), tz="UTC")
    y = np.asarray(values, dtype=float)
    return Forecast(ds=ds, yhat=y, lower=y * (1 - spread), upper=y * (1 + spread), model="test")


def policy(**kw: object) -> ScalingPolicy:
    base: dict[str, object] = dict(min_replicas=2, max_replicas=40, capacity=100.0, lead_time=timedelta(minutes=10),
                                   tick=timedelta(minutes=1), headroom_percent=10, quantile="yhat")
    base.update(kw)
    return ScalingPolicy(**base)  # type: ignore[arg-type]


def test_rule_uses_peak_within_lead_time() -> None:
    # Buckets: 11:55 (contains now), 12:00, 12:05, 12:10 (≤ now+lead+tick=12:11), 12:15 (beyond).
    fc = make_forecast([100, 200, 300, 1000, 5000])
    d = plan(policy(), now=NOW, current_replicas=2, forecast=fc, forecast_generated_at=NOW, observed_load=50)
    assert d.desired == math.ceil(1000 * 1.1 / 100)  # 11
    assert d.direction == "up" and not d.stale
    assert "forecast peak 1,000" in d.reason and "lead 10m" in d.reason
    assert d.peak_at == datetime(2026, 3, 2, 12, 10, tzinfo=UTC)


def test_reactive_floor_beats_a_low_forecast() -> None:
    fc = make_forecast([100] * 10)
    d = plan(policy(), now=NOW, current_replicas=2, forecast=fc, forecast_generated_at=NOW, observed_load=2000)
    assert d.desired == 22
    assert "reactive floor" in d.reason


def test_upper_quantile_provisions_the_band() -> None:
    fc = make_forecast([1000] * 10, spread=0.5)
    d = plan(policy(quantile="upper", headroom_percent=0), now=NOW, current_replicas=2, forecast=fc,
             forecast_generated_at=NOW, observed_load=None)
    assert d.desired == 15


def test_scale_down_waits_for_the_window_then_steps() -> None:
    pol = policy(scale_down_window=timedelta(minutes=15), scale_down_max_step_percent=50)
    high = make_forecast([3000] * 30)
    low = make_forecast([100] * 30)
    d = plan(pol, now=NOW, current_replicas=2, forecast=high, forecast_generated_at=NOW, observed_load=None)
    assert d.desired == 33
    recs = d.recommendations
    # Load falls: within the window the earlier high recommendation holds the fleet.
    later = NOW + timedelta(minutes=5)
    d2 = plan(pol, now=later, current_replicas=33, forecast=low, forecast_generated_at=NOW, observed_load=None,
              recent=recs)
    assert d2.desired == 33 and d2.direction == "none"
    # After the window: down, but at most 50% per step.
    after = NOW + timedelta(minutes=16)
    d3 = plan(pol, now=after, current_replicas=33, forecast=low, forecast_generated_at=NOW, observed_load=None,
              recent=d2.recommendations)
    assert d3.desired == 33 - 16
    assert d3.direction == "down"


def test_stale_forecast_holds_and_reports() -> None:
    fc = make_forecast([10] * 100)
    old = NOW - timedelta(hours=3)
    d = plan(policy(stale_after=timedelta(hours=2)), now=NOW, current_replicas=12, forecast=fc,
             forecast_generated_at=old, observed_load=None)
    assert d.stale and d.desired == 12 and "HoldCurrent" in d.reason and "3h" in d.reason


def test_forecast_not_covering_lead_time_is_stale() -> None:
    fc = make_forecast([10, 10])
    d = plan(policy(), now=NOW, current_replicas=5, forecast=fc, forecast_generated_at=NOW, observed_load=None)
    assert d.stale and "does not cover" in d.reason


def test_scale_to_max_fallback() -> None:
    d = plan(policy(fallback="ScaleToMax"), now=NOW, current_replicas=3, forecast=None, forecast_generated_at=None,
             observed_load=None)
    assert d.desired == 40 and d.stale


@pytest.mark.parametrize(
    ("kw", "field"),
    [({"min_replicas": 5, "max_replicas": 2}, "minReplicas"), ({"capacity": 0.0}, "capacity"),
     ({"min_replicas": 0}, "minReplicas"), ({"scale_down_max_step_percent": 0}, "maxStepPercent"),
     ({"quantile": "p99"}, "quantile"), ({"headroom_percent": -1}, "headroomPercent")],
)
def test_impossible_policies_are_rejected(kw: dict[str, object], field: str) -> None:
    with pytest.raises(InputError, match=field):
        policy(**kw)


# ---- properties -------------------------------------------------------------------------------------------

loads = st.floats(min_value=0, max_value=1e6, allow_nan=False)
policies = st.builds(
    lambda lo, span, cap, lead, head, floor, window, step_pct, q: policy(
        min_replicas=lo, max_replicas=lo + span, capacity=cap, lead_time=timedelta(minutes=lead),
        headroom_percent=head, reactive_floor=floor, scale_down_window=timedelta(minutes=window),
        scale_down_max_step_percent=step_pct, quantile=q,
    ),
    st.integers(1, 20), st.integers(0, 200), st.floats(1, 10_000), st.integers(0, 60), st.integers(0, 100),
    st.booleans(), st.integers(0, 60), st.integers(1, 100), st.sampled_from(["yhat", "upper"]),
)


@st.composite
def situations(draw: st.DrawFn) -> dict[str, object]:
    pol = draw(policies)
    values = draw(st.lists(loads, min_size=1, max_size=40))
    fresh = draw(st.booleans())
    has_forecast = draw(st.booleans())
    fc = make_forecast(values) if has_forecast else None
    age = timedelta(minutes=draw(st.integers(0, 600)))
    recent = tuple(
        Recommendation(NOW - timedelta(minutes=m), r)
        for m, r in draw(st.lists(st.tuples(st.integers(0, 90), st.integers(0, 400)), max_size=8))
    )
    return dict(
        policy=pol,
        current=draw(st.integers(0, 400)),
        forecast=fc,
        generated_at=(NOW - age) if fresh else None,
        observed=draw(st.one_of(st.none(), loads)),
        recent=recent,
    )


def run(s: dict[str, object]):  # type: ignore[no-untyped-def]
    return plan(s["policy"], now=NOW, current_replicas=s["current"], forecast=s["forecast"],  # type: ignore[arg-type]
                forecast_generated_at=s["generated_at"], observed_load=s["observed"],  # type: ignore[arg-type]
                recent=s["recent"])  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(situations())
def test_always_within_bounds(s: dict[str, object]) -> None:
    d = run(s)
    pol: ScalingPolicy = s["policy"]  # type: ignore[assignment]
    assert pol.min_replicas <= d.desired <= pol.max_replicas


@settings(max_examples=400, deadline=None)
@given(situations())
def test_never_scales_down_on_stale_data(s: dict[str, object]) -> None:
    d = run(s)
    pol: ScalingPolicy = s["policy"]  # type: ignore[assignment]
    current: int = s["current"]  # type: ignore[assignment]
    if d.stale:
        assert d.desired >= min(current, pol.max_replicas)


@settings(max_examples=400, deadline=None)
@given(situations())
def test_never_below_the_reactive_floor(s: dict[str, object]) -> None:
    d = run(s)
    pol: ScalingPolicy = s["policy"]  # type: ignore[assignment]
    observed = s["observed"]
    if pol.reactive_floor and observed is not None:
        need = math.ceil(float(observed) * (1 + pol.headroom_percent / 100) / pol.capacity - 1e-9)  # type: ignore[arg-type]
        assert d.desired >= min(pol.max_replicas, need)


@settings(max_examples=400, deadline=None)
@given(situations())
def test_scale_down_never_faster_than_the_step_limit(s: dict[str, object]) -> None:
    d = run(s)
    pol: ScalingPolicy = s["policy"]  # type: ignore[assignment]
    current: int = s["current"]  # type: ignore[assignment]
    if d.desired < current and current <= pol.max_replicas:
        allowed = max(1, math.floor(current * pol.scale_down_max_step_percent / 100))
        assert current - d.desired <= allowed


@settings(max_examples=200, deadline=None)
@given(situations())
def test_every_decision_explains_itself(s: dict[str, object]) -> None:
    d = run(s)
    assert d.reason and d.reason.endswith(f"→ {d.desired} replicas")


# ---- limited_by: one worked example per value -------------------------------------------------------------


def _decide(pol: ScalingPolicy, current: int, values: list[float], *, now: datetime = NOW,
            generated_at: datetime = NOW, observed: float | None = None,
            recent: tuple[Recommendation, ...] = (), calibration: SizingCalibration | None = None) -> Decision:
    return plan(pol, now=now, current_replicas=current, forecast=make_forecast(values),
                forecast_generated_at=generated_at, observed_load=observed, recent=recent, calibration=calibration)


def trusting(weight: float, *, service_level: float | None = None,
             buckets: tuple[LeadBucket, ...] = ()) -> SizingCalibration:
    reason = f"forecast trust {weight:.0%}: its record was worse than reactive's"
    return SizingCalibration(service_level=service_level, trust=Trust(weight, reason), buckets=buckets, samples=500)


def _limited_by_cases() -> dict[str, tuple[Decision, int, str]]:
    """Per value: a decision it names, its desired count and a phrase of its reason."""
    down = policy(scale_down_window=timedelta(minutes=15), scale_down_max_step_percent=50)
    # A high recommendation 5 minutes ago holds a scale-down; 16 minutes ago it no longer does.
    earlier = (Recommendation(NOW - timedelta(minutes=5), 33),)
    later = NOW + timedelta(minutes=11)
    return {
        "None": (_decide(policy(), 2, [3000] * 30), 33, "forecast peak 3,000"),
        "ReactiveFloor": (_decide(policy(), 2, [100] * 30, observed=2000), 22, "reactive floor"),
        # Half the forecast's rise above the observed 1,000: sized for 2,000 → ceil(2,000 × 1.1 / 100).
        "ReactiveBlend": (_decide(policy(), 2, [3000] * 30, observed=1000, calibration=trusting(0.5)), 22,
                          "forecast trust 50%: its record was worse than reactive's: sizing for 2,000"),
        "MinReplicas": (_decide(policy(), 2, [1] * 30), 2, "clamped to minReplicas 2"),
        "MaxReplicas": (_decide(policy(), 2, [9000] * 30), 40, "clamped to maxReplicas 40"),
        "ScaleDownStabilization": (_decide(down, 33, [100] * 30, recent=earlier), 33,
                                   "held: highest recommendation within 15m is 33"),
        "ScaleDownStepLimit": (_decide(down, 33, [100] * 30, now=later, recent=earlier), 17,
                               "scale-down limited to 17 (50% step"),
        "StaleForecast": (_decide(policy(), 12, [100] * 30, generated_at=NOW - timedelta(hours=3)), 12,
                          "fallback HoldCurrent"),
        "DataUnavailable": (hold_scale_down_without_data(_decide(policy(), 30, [100] * 30)), 30,
                            "scale-down held: traffic data unavailable → 30 replicas"),
        "HPAMaxReplicas": (cap_at_hpa_max_replicas(_decide(policy(), 2, [3000] * 30), "web", 20), 20,
                           "capped at HPA web's maxReplicas 20 → 20 replicas"),
        # Observed 500 at a window's opening whose past openings rose fourfold: ceil(2,000 × 1.1 / 100).
        "ScheduledWindow": (plan(policy(), now=NOW, current_replicas=2, forecast=make_forecast([1000] * 30),
                                 forecast_generated_at=NOW, observed_load=500,
                                 window=WindowAsk(4.0, 0, "match 20:00")), 22,
                            "window match 20:00: observed ×4.0"),
    }


def test_every_limited_by_value_has_an_example() -> None:
    assert set(_limited_by_cases()) == set(LIMITED_BY)


@pytest.mark.parametrize("value", LIMITED_BY)
def test_limited_by_names_the_step_that_set_the_count(value: str) -> None:
    d, desired, phrase = _limited_by_cases()[value]
    assert d.limited_by == value
    assert d.desired == desired
    assert phrase in d.reason


def test_a_schedule_floor_holds_with_a_fresh_forecast_and_without_one() -> None:
    ask = WindowAsk(1.0, 25, "batch: at least 25 replicas")
    fresh = plan(policy(), now=NOW, current_replicas=2, forecast=make_forecast([100] * 30),
                 forecast_generated_at=NOW, observed_load=100, window=ask)
    assert (fresh.desired, fresh.limited_by) == (25, "ScheduledWindow")
    stale = plan(policy(), now=NOW, current_replicas=2, forecast=None, forecast_generated_at=None,
                 observed_load=100, window=ask)
    assert (stale.desired, stale.limited_by) == (25, "ScheduledWindow")
    assert "window batch: at least 25 replicas" in stale.reason
    above_max = plan(policy(), now=NOW, current_replicas=2, forecast=make_forecast([100] * 30),
                     forecast_generated_at=NOW, observed_load=100, window=WindowAsk(1.0, 90, "x"))
    assert (above_max.desired, above_max.limited_by) == (40, "MaxReplicas")
    quiet = plan(policy(), now=NOW, current_replicas=2, forecast=make_forecast([3000] * 30),
                 forecast_generated_at=NOW, observed_load=100, window=WindowAsk(2.0, 0, "x"))
    assert quiet.limited_by == "None"  # the forecast already asks for more than the window


def test_limited_by_in_a_fallback_names_what_overrode_it() -> None:
    stale = dict(forecast=None, forecast_generated_at=None)
    floor = plan(policy(), now=NOW, current_replicas=3, observed_load=2000, **stale)  # type: ignore[arg-type]
    assert (floor.stale, floor.desired, floor.limited_by) == (True, 22, "ReactiveFloor")
    raised = plan(policy(), now=NOW, current_replicas=1, observed_load=None, **stale)  # type: ignore[arg-type]
    assert (raised.desired, raised.limited_by) == (2, "MinReplicas")
    to_max = plan(policy(fallback="ScaleToMax"), now=NOW, current_replicas=3, observed_load=None,
                  **stale)  # type: ignore[arg-type]
    assert (to_max.desired, to_max.limited_by) == (40, "StaleForecast")


def test_the_hpa_cap_only_ever_lowers_the_count_to_the_hpas_maximum() -> None:
    up = _decide(policy(), 2, [3000] * 30)  # 33 replicas
    assert cap_at_hpa_max_replicas(up, "web", 40) is up
    capped = cap_at_hpa_max_replicas(up, "web", 20)
    assert (capped.desired, capped.direction, capped.recommended) == (20, "up", up.recommended)
    at_max = cap_at_hpa_max_replicas(_decide(policy(), 20, [3000] * 30), "web", 20)
    assert (at_max.desired, at_max.direction, at_max.limited_by) == (20, "none", "HPAMaxReplicas")


def test_without_data_a_scale_down_is_held_and_a_scale_up_goes_ahead() -> None:
    down = _decide(policy(), 30, [100] * 30)
    held = hold_scale_down_without_data(down)
    assert (down.desired, held.desired, held.direction) == (15, 30, "none")
    assert held.limited_by == "DataUnavailable"
    assert held.reason == f"{down.reason}; scale-down held: traffic data unavailable → 30 replicas"
    up = _decide(policy(), 2, [3000] * 30)
    assert hold_scale_down_without_data(up) is up


def test_target_above_max_replicas_is_brought_back_within_bounds() -> None:
    d = plan(policy(), now=NOW, current_replicas=55, forecast=make_forecast([100] * 30), forecast_generated_at=NOW,
             observed_load=None)
    assert (d.desired, d.limited_by) == (40, "MaxReplicas")
    assert d.reason.startswith("current 55 above maxReplicas 40")


def test_a_recommendation_exactly_one_window_old_still_holds() -> None:
    # HPA's boundary: only recommendations older than the window are dropped.
    window = timedelta(minutes=15)
    stabilised, kept = stabilize_recommendation(
        3, now=NOW, window=window,
        recent=(Recommendation(NOW - window - timedelta(seconds=1), 50), Recommendation(NOW - window, 9)),
    )
    assert stabilised == 9
    assert kept == (Recommendation(NOW - window, 9), Recommendation(NOW, 3))


# ---- the shared stabiliser ----------------------------------------------------------------------------------

recommendation_lists = st.lists(st.tuples(st.integers(-30, 120), st.integers(0, 400)), max_size=12)


@settings(max_examples=400, deadline=None)
@given(recommendation_lists, st.integers(0, 400), st.integers(0, 90))
def test_stabiliser_returns_the_highest_recommendation_of_the_window(
    ages: list[tuple[int, int]], recommended: int, window_min: int
) -> None:
    window = timedelta(minutes=window_min)
    recent = [Recommendation(NOW - timedelta(minutes=m), r) for m, r in ages]
    stabilised, kept = stabilize_recommendation(recommended, now=NOW, recent=recent, window=window)
    in_window = [r.replicas for r in recent if NOW - window <= r.at <= NOW]
    assert stabilised == max([recommended, *in_window])
    assert [r.replicas for r in kept] == [*in_window, recommended]


@settings(max_examples=400, deadline=None)
@given(situations())
def test_desired_never_drops_below_the_highest_recommendation_in_the_window(s: dict[str, object]) -> None:
    d = run(s)
    pol: ScalingPolicy = s["policy"]  # type: ignore[assignment]
    current: int = s["current"]  # type: ignore[assignment]
    window_max = max(r.replicas for r in d.recommendations)
    # Stabilisation only ever holds a scale-down; it never pushes the fleet up on its own.
    assert d.desired >= min(current, pol.max_replicas, window_max)
    if d.direction == "down":
        # The planner's own recommendations never exceed maxReplicas; `recent` here may.
        assert d.desired >= min(window_max, pol.max_replicas)


@settings(max_examples=400, deadline=None)
@given(situations())
def test_limited_by_names_a_limit_that_binds(s: dict[str, object]) -> None:
    d = run(s)
    pol: ScalingPolicy = s["policy"]  # type: ignore[assignment]
    current: int = s["current"]  # type: ignore[assignment]
    assert d.limited_by in LIMITED_BY
    if d.limited_by == "None":
        assert not d.stale and d.forecast_load is not None
        assert d.desired == d.recommended == pol.replicas_for(d.forecast_load)
    elif d.limited_by == "ReactiveFloor":
        assert d.observed_load is not None and d.desired == pol.replicas_for(d.observed_load)
    elif d.limited_by == "MinReplicas":
        assert d.desired == pol.min_replicas
    elif d.limited_by == "MaxReplicas":
        assert d.desired == pol.max_replicas
    elif d.limited_by == "ScaleDownStabilization":
        window_max = max(r.replicas for r in d.recommendations)
        assert d.recommended < d.desired == min(current, window_max)
    elif d.limited_by == "ScaleDownStepLimit":
        assert d.desired == current - max(1, math.floor(current * pol.scale_down_max_step_percent / 100))
        assert d.recommended < d.desired < current
    else:
        assert d.limited_by == "StaleForecast" and d.stale
        assert d.desired in (current, pol.max_replicas)


# ---- service level and the blend with reactive ------------------------------------------------------------


def _buckets(*pairs: tuple[timedelta, float]) -> tuple[LeadBucket, ...]:
    starts = [p[0] for p in pairs]
    ends: list[timedelta | None] = [*starts[1:], None]
    return tuple(LeadBucket(start, end, m, 0.95, 100) for (start, m), end in zip(pairs, ends, strict=True))


def test_a_calibrated_service_level_sizes_the_point_forecast_by_its_lead_multiplier() -> None:
    cal = trusting(1.0, service_level=99.9, buckets=_buckets((timedelta(0), 1.2), (timedelta(hours=1), 1.5)))
    pol = policy(service_level=99.9, quantile="upper", headroom_percent=50)
    fc = make_forecast([1000] * 30, spread=0.5)
    # Lead of the capacity: now + 10m − generated_at. Fresh: 1.2 × yhat (not the band, not the headroom).
    d = plan(pol, now=NOW, current_replicas=2, forecast=fc, forecast_generated_at=NOW, observed_load=None,
             calibration=cal)
    assert (d.desired, d.multiplier, d.limited_by) == (12, 1.2, "None")
    assert "×1.200" in d.reason and "for 99.9% served" in d.reason
    # Two hours into the forecast the longer lead's bucket applies.
    d = plan(pol, now=NOW, current_replicas=2, forecast=make_forecast([1000] * 60, start=NOW - 2 * timedelta(hours=1)),
             forecast_generated_at=NOW - 2 * timedelta(hours=1), observed_load=None, calibration=cal)
    assert (d.desired, d.multiplier) == (15, 1.5)


def test_an_uncalibrated_service_level_falls_back_to_the_manual_sizing_and_says_so() -> None:
    pol = policy(service_level=99.9, quantile="upper", headroom_percent=10)
    fc = make_forecast([1000] * 30, spread=0.5)
    for cal in (None, trusting(1.0, service_level=99.9)):
        d = plan(pol, now=NOW, current_replicas=2, forecast=fc, forecast_generated_at=NOW, observed_load=None,
                 calibration=cal)
        assert d.desired == math.ceil(1500 * 1.1 / 100) and d.multiplier is None
        assert "service level 99.9% not calibrated yet" in d.reason


def test_full_trust_and_no_calibration_plan_alike() -> None:
    fc = make_forecast([3000] * 30)
    plain = plan(policy(), now=NOW, current_replicas=2, forecast=fc, forecast_generated_at=NOW, observed_load=1000)
    trusted = plan(policy(), now=NOW, current_replicas=2, forecast=fc, forecast_generated_at=NOW, observed_load=1000,
                   calibration=trusting(1.0))
    assert (plain.desired, plain.limited_by, plain.trust) == (trusted.desired, trusted.limited_by, trusted.trust)


def test_the_blend_never_goes_below_the_reactive_floor_and_needs_it() -> None:
    fc = make_forecast([100] * 30)
    d = _decide(policy(), 2, [100] * 30, observed=2000, calibration=trusting(0.0))
    assert (d.desired, d.limited_by) == (22, "ReactiveFloor")
    # Without a reactive floor there is nothing to lean on: the forecast keeps full trust.
    d = plan(policy(reactive_floor=False), now=NOW, current_replicas=2, forecast=make_forecast([3000] * 30),
             forecast_generated_at=NOW, observed_load=1000, calibration=trusting(0.0))
    assert (d.desired, d.trust) == (33, 1.0)
    del fc


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 5000), st.floats(0, 5000))
def test_more_trust_never_provisions_less_when_the_forecast_rises(w1: float, w2: float, p: float, r: float) -> None:
    lo, hi = sorted((w1, w2))
    d_lo, d_hi = (_decide(policy(max_replicas=1000), 2, [p] * 30, observed=r, calibration=trusting(w))
                  for w in (lo, hi))
    assert d_lo.desired <= d_hi.desired
    # And never below the floor nor above the forecast (both with headroom).
    need_floor = policy().replicas_for(r)
    assert max(2, need_floor) <= d_lo.desired <= max(2, need_floor, policy().replicas_for(p))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(90, 99.99), st.floats(90, 99.99), st.floats(0, 5000))
def test_a_higher_service_level_never_plans_fewer_replicas(seed: int, s1: float, s2: float, observed: float) -> None:
    rng = np.random.default_rng(seed)
    n = 120
    forecast = rng.uniform(100, 3000, n)
    record = Samples(lead_s=rng.uniform(0, 86400, n), actual=forecast * rng.lognormal(0, 0.2, n),
                     forecast=forecast, observed=rng.uniform(0, 3000, n))
    lo, hi = sorted((s1, s2))
    ahead = [float(rng.uniform(0, 3000))] * 30
    desired = []
    for service_level in (lo, hi):
        cal = calibrate_sizing(record, service_level=service_level, trust=1.0)
        d = _decide(policy(max_replicas=10_000, service_level=service_level), 2, ahead, observed=observed,
                    calibration=cal)
        desired.append(d.desired)
    assert desired[0] <= desired[1]


@pytest.mark.parametrize("service_level", [0.0, 100.0, -1.0, float("nan")])
def test_a_service_level_outside_0_100_is_rejected(service_level: float) -> None:
    with pytest.raises(InputError, match="serviceLevel"):
        policy(service_level=service_level)


def test_the_level_correction_scales_the_forecast_and_says_so() -> None:
    fc = make_forecast([1000] * 30)
    d = plan(policy(), now=NOW, current_replicas=2, forecast=fc, forecast_generated_at=NOW, observed_load=None,
             level_correction=1.2)
    assert d.desired == math.ceil(1200 * 1.1 / 100) and d.level_correction == 1.2
    assert "forecast ×1.20 to the recent level" in d.reason
    # The observed load is not scaled: it is the floor.
    d = plan(policy(), now=NOW, current_replicas=2, forecast=fc, forecast_generated_at=NOW, observed_load=2000,
             level_correction=0.5)
    assert (d.desired, d.limited_by) == (22, "ReactiveFloor")

"""Capacity warnings (prescaler.capacity), pure: when the forecast within the horizon needs more than the
scaler may ask for, from when, at its worst, and against which limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from prescaler.capacity import Headroom, Shortfall, capacity_shortfall
from prescaler.forecasting.interface import Forecast
from prescaler.planning import ScalingPolicy

NOW = datetime(2024, 3, 4, 12, 2, tzinfo=UTC)
STEP = timedelta(minutes=5)
# 100 requests per step per replica, 10% headroom, at most 10 replicas.
POLICY = ScalingPolicy(min_replicas=1, max_replicas=10, capacity=100.0, lead_time=STEP, tick=timedelta(minutes=1))


def forecast(values: list[float], start: datetime = datetime(2024, 3, 4, 12, 0, tzinfo=UTC)) -> Forecast:
    ds = pd.date_range(start, periods=len(values), freq=STEP, tz=UTC)
    yhat = np.asarray(values, dtype=float)
    return Forecast(ds=ds, yhat=yhat, lower=yhat * 0.8, upper=yhat * 1.25, model="test")


def test_a_peak_above_max_replicas_names_when_and_by_how_many() -> None:
    # 12:00 ... : the need passes 10 replicas (load over 909) at 12:15 and peaks at 12:20 with 1,300 (15 replicas).
    fc = forecast([500, 600, 800, 1000, 1300, 1000, 400])
    found = capacity_shortfall(fc, POLICY, now=NOW, quantile="yhat")
    assert isinstance(found, Shortfall)
    assert found.first == datetime(2024, 3, 4, 12, 15, tzinfo=UTC)
    assert found.at == datetime(2024, 3, 4, 12, 20, tzinfo=UTC)
    assert (found.needed, found.limit, found.replicas) == (15, 10, 5)
    assert found.message(NOW) == ("the forecast needs 15 replicas at 2024-03-04 12:20 UTC (in 18m), 5 more than "
                                  "maxReplicas 10; above it from 12:15 UTC")
    # The upper band needs more, sooner.
    upper = capacity_shortfall(fc, POLICY, now=NOW, quantile="upper")
    assert isinstance(upper, Shortfall) and upper.needed == 18 and upper.first == datetime(2024, 3, 4, 12, 10,
                                                                                           tzinfo=UTC)


def test_the_hpa_limit_counts_when_it_is_lower() -> None:
    fc = forecast([500, 800, 500])
    found = capacity_shortfall(fc, POLICY, now=NOW, quantile="yhat", hpa=("web", 6))
    assert isinstance(found, Shortfall)
    assert (found.needed, found.limit, found.limit_name) == (9, 6, "HPA web's maxReplicas")
    within = capacity_shortfall(fc, POLICY, now=NOW, quantile="yhat", hpa=("web", 30))
    assert isinstance(within, Headroom) and within.limit_name == "maxReplicas" and within.needed == 9


def test_within_the_limit_says_how_much_is_needed_and_until_when() -> None:
    found = capacity_shortfall(forecast([500, 900, 500]), POLICY, now=NOW, quantile="yhat")
    assert isinstance(found, Headroom)
    assert found.message() == "the forecast until 2024-03-04 12:15 UTC needs at most 10 replicas, within maxReplicas 10"


def test_only_what_lies_ahead_counts() -> None:
    # The peak of 11:55 is past; the step in force at 12:02 (12:00) and those after count.
    fc = forecast([5000, 500, 500], start=datetime(2024, 3, 4, 11, 55, tzinfo=UTC))
    assert isinstance(capacity_shortfall(fc, POLICY, now=NOW, quantile="yhat"), Headroom)
    assert capacity_shortfall(fc, POLICY, now=NOW + timedelta(hours=1), quantile="yhat") is None
    assert capacity_shortfall(forecast([float("nan")] * 3), POLICY, now=NOW, quantile="yhat") is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 5000), min_size=2, max_size=40), st.integers(1, 60))
def test_a_shortfall_is_exactly_a_step_needing_more_than_the_limit(values: list[float], limit: int) -> None:
    policy = ScalingPolicy(min_replicas=1, max_replicas=limit, capacity=100.0, lead_time=STEP,
                           tick=timedelta(minutes=1))
    found = capacity_shortfall(forecast(values), policy, now=NOW, quantile="yhat")
    needs = [policy.replicas_for(v) for v in values]
    if max(needs) > limit:
        assert isinstance(found, Shortfall) and found.needed == max(needs) and found.replicas > 0
        assert found.first <= found.at
    else:
        assert isinstance(found, Headroom) and found.needed == max(needs)

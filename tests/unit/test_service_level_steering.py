"""The service level steered by the record's own out-of-sample misses, and scheduled windows as their own regime."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from prescaler.sizing.calibration import InForce, calibrate_sizing, calibrate_steered, in_windows, steered_aims
from prescaler.sizing.loads import window_floor
from prescaler.sizing.samples import Samples
from prescaler.sizing.service_level import FEEDBACK_BOUNDS, FEEDBACK_MIN_SAMPLES, steered_service_level


def test_more_misses_than_allowed_aim_higher_and_fewer_never_aim_below_the_target() -> None:
    actual = np.full(100, 100.0)
    short = np.full(100, 100.0)
    short[0] = 100.0 - 2.0  # 2 of 10,000 unserved: 0.02%, twice 99.99%'s allowance
    assert steered_service_level(99.99, 99.99, actual, short) == pytest.approx(99.995)
    # Nothing missed: the aim stays at the target, never looser.
    assert steered_service_level(99.9, 99.95, actual, actual) == pytest.approx(99.9)
    # A flood of misses moves the aim at most to the bound.
    flood = np.full(100, 50.0)
    assert steered_service_level(99.9, 99.9, actual, flood) == pytest.approx(100 - 0.1 * FEEDBACK_BOUNDS[0])


def test_too_few_buckets_leave_the_aim_alone() -> None:
    n = FEEDBACK_MIN_SAMPLES - 1
    assert steered_service_level(99.9, 99.93, np.full(n, 100.0), np.zeros(n)) == 99.93


LEAD = timedelta(minutes=10)


def _samples(n: int, *, actual: float, forecast: float, observed: float | None = None, rise: float = 1.0,
             decided: int = 0) -> Samples:
    r = forecast / 2 if observed is None else observed
    return Samples(lead_s=np.full(n, LEAD.total_seconds()), actual=np.full(n, actual),
                   forecast=np.full((n, 1), forecast), observed=np.full((n, 1), r), rise=np.full((n, 1), rise),
                   decided=np.full(n, decided, dtype=np.int64))


def test_windows_are_calibrated_apart_from_the_quiet_hours() -> None:
    quiet = _samples(400, actual=100.0, forecast=100.0)
    # Inside windows the load comes in at twice the forecast; the observation times the rise covers it.
    loud = _samples(100, actual=200.0, forecast=100.0, observed=100.0, rise=2.0)
    both = Samples(lead_s=np.concatenate([quiet.lead_s, loud.lead_s]),
                   actual=np.concatenate([quiet.actual, loud.actual]),
                   forecast=np.concatenate([quiet.forecast, loud.forecast]),
                   observed=np.concatenate([quiet.observed, loud.observed]),
                   rise=np.concatenate([np.asarray(quiet.rise), np.asarray(loud.rise)]))
    assert in_windows(both).sum() == 100
    cal = calibrate_sizing(both, service_level=99.9)
    # Outside, the forecast was exact: no multiplier above 1 is needed (the grid's first that serves all).
    assert cal.multiplier(LEAD) == pytest.approx(1.0, abs=0.003)
    # Inside, the window floor (R × rise × m) serves the load at m = 1, where the forecast alone needed 2.
    assert cal.window_multiplier == pytest.approx(1.0, abs=0.003)
    assert cal.window_samples == 100
    assert cal.multiplier(LEAD, in_window=True) == cal.window_multiplier
    # Pooled, the windows' misses would have raised the multiplier for every hour.
    pooled = calibrate_sizing(Samples(lead_s=both.lead_s, actual=both.actual, forecast=both.forecast,
                                      observed=both.observed), service_level=99.9)
    assert pooled.multiplier(LEAD) > 1.5


def test_the_window_floor_takes_the_multiplier_only_inside_windows() -> None:
    assert window_floor(100.0, 1.0, 2.0).item() == 100.0
    assert window_floor(100.0, 3.0, 2.0).item() == 600.0
    assert window_floor(100.0, 3.0, float("nan")).item() == 300.0


def test_aims_follow_the_misses_of_the_calibrations_in_force() -> None:
    record = _samples(200, actual=100.0, forecast=100.0, decided=10)
    tight = calibrate_sizing(_samples(200, actual=100.0, forecast=100.0), service_level=99.9)
    history = [InForce(0, tight, (99.9, 99.9))]
    # Served exactly: the aims stay.
    assert steered_aims(record, history, 99.9).aims == pytest.approx((99.9, 99.9))
    # Load 10% above what the calibration in force provisioned, in every bucket: aim higher outside windows;
    # no window buckets, so the inside aim keeps its last value.
    m = tight.multiplier(LEAD)
    assert m is not None
    worse = _samples(200, actual=110.0 * m, forecast=100.0, decided=10)
    steering = steered_aims(worse, history, 99.9)
    out, inside = steering.aims
    assert steering.served is not None and steering.served < 99.9 and steering.buckets == 200
    assert out > 99.9 and inside == 99.9
    # Buckets decided before any calibration was in force teach nothing.
    early = _samples(200, actual=500.0, forecast=100.0, decided=-5)
    assert steered_aims(early, history, 99.9).aims == (99.9, 99.9)


def test_a_target_the_record_misses_out_of_sample_is_reported_at_risk() -> None:
    tight = calibrate_sizing(_samples(200, actual=100.0, forecast=100.0), service_level=99.9)
    history = [InForce(0, tight, (99.9, 99.9))]
    m = tight.multiplier(LEAD)
    assert m is not None
    worse = _samples(200, actual=110.0 * m, forecast=100.0, decided=10)
    steered = calibrate_steered(worse, history, service_level=99.9, since=20)
    assert steered.calibration.service_level == 99.9  # the target, whatever the aim
    assert steered.calibration.at_risk.startswith("served 90.91% of the load over the last 200 buckets")
    assert "99.9% target; on the record it takes ×1.10 the forecast, 1.00× the load" in steered.calibration.at_risk
    fine = calibrate_steered(_samples(200, actual=100.0, forecast=100.0, decided=10), history, service_level=99.9,
                             since=20)
    assert fine.calibration.at_risk == ""

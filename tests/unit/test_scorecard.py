"""The scorecard's arithmetic (prescaler.scorecard): replays worked out by hand, and a property test against a
minute-by-minute recount written independently of the module's hourly sums."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prescaler.planning import ScalingPolicy
from prescaler.scorecard import (
    DecisionSample,
    ScoreRecord,
    figures_status,
    reactive_count,
    sample_from_row,
    score,
    summary,
)

T0 = datetime(2024, 3, 4, 10, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def sample(minute: int, planned: int, *, target: int = 3, ready: int | None = None, estimate: int = 0,
           in_charge: bool = False, load: float | None = 100.0, capacity: float = 100.0,
           lead: timedelta = 5 * MIN, interval: timedelta = 10 * MIN) -> DecisionSample:
    return DecisionSample(at=T0 + minute * MIN, planned=planned, target=target,
                          ready=target if ready is None else ready, estimate=estimate, in_charge=in_charge,
                          load=load, capacity=capacity, lead=lead, interval=interval)


def test_a_forecast_only_replay_by_hand() -> None:
    # Decisions every 10 minutes, lead 5 minutes, 100 requests/s per ready replica; the target runs 3.
    samples = [
        sample(0, 2, ready=3, load=150),
        sample(10, 4, ready=3, load=350),
        sample(20, 4, ready=2, load=380),  # a pod of the target not ready
        sample(30, 1, ready=3, load=50),
    ]
    f = score(samples, T0 + 40 * MIN, timedelta(days=1))
    assert f.covered == 40 * MIN
    # (2 + 4 + 4 + 1) × 10 minutes; 3 × 40 minutes.
    assert f.planned_replica_hours == pytest.approx(11 * 600 / 3600)
    assert f.baseline_replica_hours == pytest.approx(2.0)
    assert f.cost_ratio == pytest.approx(11 / 12)
    assert f.load == pytest.approx((150 + 350 + 380 + 50) * 600)
    # The plan's 4 of 10:10 is ready at 10:15: from 10:10 to 10:15 the 2 of 10:00 serve 200 of 350.
    assert f.planned_unserved == pytest.approx(150 * 300)
    # The target: 3 ready serve 300 of 350 from 10:10, 2 ready serve 200 of 380 from 10:20.
    assert f.baseline_unserved == pytest.approx(50 * 600 + 180 * 600)
    assert f.planned_unserved_percent == pytest.approx(100 * 45_000 / 558_000)
    assert f.baseline_unserved_percent == pytest.approx(100 * 138_000 / 558_000)
    assert f.unserved_ratio == pytest.approx(45_000 / 138_000)
    assert f.baseline_kind == "Observed"
    assert figures_status(f) == {
        "coveredHours": 0, "plannedReplicaHours": "1.8", "baselineReplicaHours": "2.0",
        "plannedUnservedPercent": "8.065", "baselineUnservedPercent": "24.731", "costRatio": "0.92",
        "unservedRatio": "0.33", "baseline": "Observed"}


def test_in_charge_the_baseline_is_the_estimate_and_a_gap_counts_nothing() -> None:
    samples = [
        sample(110, 3, estimate=2, in_charge=True, load=250),  # 11:50
        sample(120, 3, estimate=3, in_charge=True, load=250),  # 12:00, then the operator is away for an hour
        sample(180, 2, target=4, estimate=3, load=100),  # 13:00, only reporting again
    ]
    now = T0 + 190 * MIN  # 13:10
    f = score(samples, now, timedelta(days=1))
    # 12:00 holds two intervals (to 12:20), not until 13:00.
    assert f.covered == 40 * MIN
    assert f.planned_replica_hours == pytest.approx((3 * 600 + 3 * 1200 + 2 * 600) / 3600)
    # The estimate while in charge (2, then 3), the target's 4 after.
    assert f.baseline_replica_hours == pytest.approx((2 * 600 + 3 * 1200 + 4 * 600) / 3600)
    assert f.planned_unserved == 0
    # The estimated 3 of 12:00 is ready at 12:05: until then its 2 serve 200 of 250, for 15 minutes.
    assert f.baseline_unserved == pytest.approx(50 * 900)
    assert f.unserved_ratio == pytest.approx(0.01 / (100 * 45_000 / 510_000))
    assert f.baseline_kind == "Mixed"
    assert f.in_charge == 30 * MIN

    # Windows are whole hours back from the current one: 1h is 13:00-13:10, 2h adds 12:00-12:20.
    record = ScoreRecord()
    for s in samples:
        record.add(s)
    assert record.window(now, timedelta(hours=1)).covered == 10 * MIN
    assert record.window(now, timedelta(hours=2)).covered == 30 * MIN
    assert record.window(now, timedelta(hours=1)).baseline_kind == "Observed"
    assert record.window(now, timedelta(hours=2)).planned_replica_hours == pytest.approx((3 * 1200 + 2 * 600) / 3600)


def test_days_split_at_midnight_utc_and_add_up() -> None:
    start = datetime(2024, 3, 4, 23, 0, tzinfo=UTC)
    record = ScoreRecord()
    for i in range(12):  # every 10 minutes from 23:00 to 00:50
        record.add(DecisionSample(at=start + i * 10 * MIN, planned=2, target=4, ready=4, estimate=0,
                                  in_charge=False, load=100.0, capacity=100.0, lead=5 * MIN, interval=10 * MIN))
    now = start + 2 * timedelta(hours=1)  # 01:00
    (d1, f1), (d2, f2) = record.daily(now, 2)
    assert (d1.isoformat(), d2.isoformat()) == ("2024-03-04", "2024-03-05")
    assert f1.covered == f2.covered == timedelta(hours=1)
    total = record.window(now, timedelta(days=1))
    assert total.covered == f1.covered + f2.covered
    assert total.planned_replica_hours == pytest.approx(f1.planned_replica_hours + f2.planned_replica_hours) == 4


def test_the_record_keeps_its_span_and_refuses_the_past() -> None:
    record = ScoreRecord(keep=timedelta(days=1))
    assert record.add(sample(0, 2))
    assert not record.add(sample(0, 5))  # not newer: ignored
    assert record.add(sample(10, 2))
    later = T0 + timedelta(days=3)
    assert record.add(sample(3 * 24 * 60, 2))
    assert record.add(sample(3 * 24 * 60 + 10, 2))
    f = record.window(later + 20 * MIN, timedelta(days=14))
    assert f.covered == 20 * MIN  # the hours of three days ago are gone; the gap between counted nothing


def test_no_load_counts_replica_hours_but_no_shares() -> None:
    f = score([sample(0, 2, load=None), sample(10, 2, load=None)], T0 + 20 * MIN, timedelta(days=1))
    assert f.planned_replica_hours == pytest.approx(2 * 20 / 60)
    assert f.planned_unserved_percent is None and f.unserved_ratio is None
    assert f.cost_ratio == pytest.approx(2 / 3)
    assert "plannedUnservedPercent" not in figures_status(f) and "unservedRatio" not in figures_status(f)


def test_summary_names_the_window_or_how_much_of_it_is_held() -> None:
    record = ScoreRecord()
    assert summary(record.window(T0, timedelta(days=7))) == "no record yet"
    for i in range(0, 7 * 24 * 6 + 1):
        record.add(sample(10 * i, 2, ready=3, load=150 if i % 2 else 350))
    week = T0 + timedelta(days=7)
    # 2 planned against 3 run; at 350 the plan leaves 150 unserved where the target leaves 50.
    assert summary(record.window(week, timedelta(days=7))) == "cost 0.67× unserved 3.00× (7d)"
    assert summary(record.window(T0 + timedelta(hours=5), timedelta(days=7))) == \
        "cost 0.67× unserved 3.00× (5h of 7d)"
    assert summary(record.window(T0 + timedelta(days=2, hours=1), timedelta(days=7))).endswith("(2d of 7d)")


def test_rows_before_the_scorecard_columns_are_left_out() -> None:
    row = {"decided_at": T0, "desired_replicas": 3, "observed_load": 600.0, "mode": None, "target_replicas": None,
           "ready_replicas": None, "baseline_replicas": None, "capacity": None, "step_seconds": None,
           "lead_seconds": None, "interval_seconds": None}
    assert sample_from_row(row) is None
    row.update(mode="Auto", target_replicas=2, ready_replicas=2, baseline_replicas=4, capacity=300.0,
               step_seconds=300, lead_seconds=300, interval_seconds=60)
    s = sample_from_row(row)
    assert s is not None
    # Per step in the row, per second in the sample.
    assert (s.load, s.capacity, s.in_charge, s.baseline) == (2.0, 1.0, True, 4)


def test_the_reactive_baseline_scales_up_at_once_and_down_after_the_hpa_window() -> None:
    policy = ScalingPolicy(min_replicas=1, max_replicas=20, capacity=100.0, lead_time=5 * MIN, tick=MIN,
                           headroom_percent=0.0, scale_down_window=timedelta(hours=1), scale_down_max_step_percent=10)
    count, recent = reactive_count(policy, 800.0, current=2, now=T0, recent=())
    assert count == 8
    count, recent = reactive_count(policy, 200.0, current=count, now=T0 + MIN, recent=recent)
    assert count == 8  # held by the HPA's 5-minute window, not the spec's hour; no 10% step limit
    count, recent = reactive_count(policy, 200.0, current=count, now=T0 + 6 * MIN, recent=recent)
    assert count == 2
    assert reactive_count(policy, None, current=2, now=T0 + 7 * MIN, recent=recent) == (2, recent)


# --- property: the hourly sums against a minute-by-minute recount -----------------------------------------

def _recount(samples: list[DecisionSample], now: datetime) -> tuple[float, float, float, float, float]:
    """(covered s, planned replica-s, baseline replica-s, planned unserved, baseline unserved), minute by minute,
    straight from the definitions: the sample in force, the plan of the newest decision one lead before."""
    covered = planned = baseline = p_unserved = b_unserved = 0.0
    t = samples[0].at
    while t < now:
        holding = [s for s in samples if s.at <= t]
        s = holding[-1]
        nxt = [x.at for x in samples if x.at > s.at]
        if t < s.at + 2 * s.interval and (not nxt or t < nxt[0]):
            ready_from = [x for x in samples if x.at <= t - s.lead] or [samples[0]]
            r = ready_from[-1]
            covered += 60
            planned += s.planned * 60
            baseline += (s.estimate if s.in_charge else s.target) * 60
            if s.load is not None:
                p_unserved += max(0.0, s.load - r.planned * s.capacity) * 60
                b_ready = r.estimate if s.in_charge else s.ready
                b_unserved += max(0.0, s.load - b_ready * s.capacity) * 60
        t += MIN
    return covered, planned, baseline, p_unserved, b_unserved


decisions = st.lists(
    st.tuples(st.integers(1, 25), st.integers(0, 9), st.integers(0, 9), st.integers(0, 9), st.integers(0, 9),
              st.booleans(), st.one_of(st.none(), st.integers(0, 900))),
    min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(decisions, st.integers(0, 30), st.integers(1, 20), st.integers(0, 59))
def test_hourly_sums_equal_a_minute_by_minute_recount(rows: list[tuple[int, int, int, int, int, bool, int | None]],
                                                      lead: int, interval: int, offset: int) -> None:
    samples, at = [], T0 + offset * MIN
    for gap, planned, target, ready, estimate, in_charge, load in rows:
        at += gap * MIN
        samples.append(DecisionSample(at=at, planned=planned, target=target, ready=ready, estimate=estimate,
                                      in_charge=in_charge, load=None if load is None else float(load),
                                      capacity=100.0, lead=lead * MIN, interval=interval * MIN))
    now = at + 17 * MIN
    f = score(samples, now, timedelta(days=2))
    covered, planned, baseline, p_unserved, b_unserved = _recount(samples, now)
    assert f.covered.total_seconds() == pytest.approx(covered)
    assert f.planned_replica_hours * 3600 == pytest.approx(planned)
    assert f.baseline_replica_hours * 3600 == pytest.approx(baseline)
    assert f.planned_unserved == pytest.approx(p_unserved)
    assert f.baseline_unserved == pytest.approx(b_unserved)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 9), st.integers(0, 900)), min_size=2, max_size=30), st.integers(1, 5))
def test_more_planned_replicas_never_serve_less(rows: list[tuple[int, int]], extra: int) -> None:
    base = [sample(10 * i, planned, load=float(load)) for i, (planned, load) in enumerate(rows)]
    more = [sample(10 * i, planned + extra, load=float(load)) for i, (planned, load) in enumerate(rows)]
    now = T0 + 10 * len(rows) * MIN
    a, b = score(base, now, timedelta(days=1)), score(more, now, timedelta(days=1))
    assert b.planned_unserved <= a.planned_unserved
    assert b.planned_replica_hours > a.planned_replica_hours
    assert (a.baseline_unserved, a.baseline_replica_hours) == (b.baseline_unserved, b.baseline_replica_hours)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 9), st.integers(1, 900)), min_size=1, max_size=30))
def test_a_plan_equal_to_what_ran_scores_one(rows: list[tuple[int, int]]) -> None:
    # With no lead time, the plan's replicas are ready when the target's are.
    same = [sample(10 * i, n, target=n, load=float(load), lead=timedelta(0)) for i, (n, load) in enumerate(rows)]
    f = score(same, T0 + 10 * len(rows) * MIN, timedelta(days=1))
    assert f.cost_ratio == pytest.approx(1.0)
    assert f.unserved_ratio == pytest.approx(1.0)

"""Simulator and CSV traces, read without a database; writing them to PostgreSQL is in the integration tier."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prescaler.errors import InputError
from prescaler.ingest import read_trace_csv, simulate_frame

DATA = Path(__file__).parents[1] / "data"
MONDAY = datetime(2024, 3, 4, tzinfo=UTC)


@pytest.fixture(scope="module")
def two_weeks() -> tuple[pd.DataFrame, pd.DataFrame]:
    return simulate_frame(start=MONDAY, days=14, step=timedelta(minutes=5), seed=7)


# --- simulator ---------------------------------------------------------------------------------------------

def test_simulation_is_deterministic_under_seed(two_weeks: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    again = simulate_frame(start=MONDAY, days=14, step=timedelta(minutes=5), seed=7)
    pd.testing.assert_frame_equal(two_weeks[0], again[0])
    pd.testing.assert_frame_equal(two_weeks[1], again[1])
    other = simulate_frame(start=MONDAY, days=14, step=timedelta(minutes=5), seed=8)
    assert not two_weeks[0]["requests"].equals(other[0]["requests"])


def test_simulated_frame_shape(two_weeks: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    traffic, events = two_weeks
    assert list(traffic.columns) == ["ts", "service", "endpoint", "requests"]
    assert traffic["requests"].dtype == np.int64 and (traffic["requests"] >= 0).all()
    assert traffic["endpoint"].nunique() == 5 and set(traffic["service"]) == {"workout-api"}
    assert len(traffic) == 14 * 288 * 5 and str(traffic["ts"].dt.tz) == "UTC"
    assert not traffic.duplicated(["ts", "endpoint"]).any()
    assert list(events.columns) == ["name", "kind", "service", "starts_at", "ends_at", "lift_percent"]
    assert {"challenge", "push"} <= set(events["kind"])
    assert (events["ends_at"] > events["starts_at"]).all()
    assert events["starts_at"].min() >= MONDAY and events["ends_at"].max() <= MONDAY + timedelta(days=14)


def test_simulated_daily_and_weekly_pattern(two_weeks: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    traffic, _ = two_weeks
    per_step = traffic.groupby("ts")["requests"].sum()
    rpm = per_step / 5
    hour = per_step.index.hour + per_step.index.minute / 60
    weekday = per_step.index.dayofweek < 5
    by_hour = rpm[weekday].groupby(hour[weekday].astype(int)).mean()
    assert by_hour[7] > 4 * by_hour[3] and by_hour[18] > 4 * by_hour[3]
    assert by_hour[12] > by_hour[10] and by_hour[12] > by_hour[15]  # lunch bump
    assert 2000 < rpm.quantile(0.99) < 10000  # a few thousand requests per minute at peak
    weekend_by_hour = rpm[~weekday].groupby(hour[~weekday].astype(int)).mean()
    assert weekend_by_hour[7] < 0.8 * by_hour[7]  # weekend mornings start later and softer
    assert weekend_by_hour[9] > by_hour[9]


def test_events_lift_traffic() -> None:
    step = timedelta(minutes=5)
    base, events = simulate_frame(start=MONDAY, days=28, step=step, seed=3)
    total = base.groupby("ts")["requests"].sum()
    launch = events[events["kind"] == "challenge"].iloc[0]
    start = launch["starts_at"]
    during = total[(total.index >= start) & (total.index < start + timedelta(hours=2))]
    # The same hours one week earlier or later (whichever is inside the range) without an event.
    shift = timedelta(days=7) if launch["starts_at"] - timedelta(days=7) < MONDAY else -timedelta(days=7)
    ref = total[(total.index >= launch["starts_at"] + shift)
                & (total.index < launch["starts_at"] + shift + timedelta(hours=2))]
    assert during.mean() > 1.3 * ref.mean()


def test_simulate_rejects_bad_arguments() -> None:
    with pytest.raises(InputError, match="days"):
        simulate_frame(start=MONDAY, days=0, step=timedelta(minutes=1), seed=1)
    with pytest.raises(InputError, match="step"):
        simulate_frame(start=MONDAY, days=1, step=timedelta(0), seed=1)


# --- CSV traces --------------------------------------------------------------------------------------------

def test_read_trace_keeps_gaps_and_zeros() -> None:
    s = read_trace_csv(DATA / "trace_ok.csv")
    assert list(s.index) == list(pd.date_range("2024-01-01", periods=6, freq="h", tz=UTC))
    assert s.dtype == float and math.isnan(s.iloc[2]) and s.iloc[4] == 0.0 and s.iloc[5] == 130


def test_read_trace_localises_daylight_saving_wall_time() -> None:
    s = read_trace_csv(DATA / "trace_dst_europe_berlin.csv", timezone="Europe/Berlin")
    # Spring forward: 02:00 never happened and is dropped; 01:00 CET and 03:00 CEST are one hour apart.
    assert s[pd.Timestamp("2024-03-31T00:00Z")] == 11 and s[pd.Timestamp("2024-03-31T01:00Z")] == 13
    # Fall back: the repeated 02:00 is 00:00 UTC (CEST) and then 01:00 UTC (CET).
    assert s[pd.Timestamp("2024-10-26T23:00Z")] == 20
    assert s[pd.Timestamp("2024-10-27T00:00Z")] == 21 and s[pd.Timestamp("2024-10-27T01:00Z")] == 22
    assert s[pd.Timestamp("2024-10-27T02:00Z")] == 23
    assert s.index.is_monotonic_increasing and s.index.is_unique and len(s) == 7


def test_read_trace_sums_services_and_endpoints() -> None:
    s = read_trace_csv(DATA / "multi_service.csv")
    assert s[pd.Timestamp("2024-01-01T00:00Z")] == 21 and s[pd.Timestamp("2024-01-01T00:05Z")] == 6


@pytest.mark.parametrize(("name", "pattern"), [
    ("bad_negative.csv", r"line 4: negative request count -3"),
    ("bad_duplicate.csv", r"line 5: duplicate timestamp 2024-01-01T01:00:00 \(first on line 3\)"),
    ("bad_non_numeric.csv", r"line 3: y 'lots' is not a number"),
    ("bad_timestamp.csv", r"line 3: cannot parse timestamp 'yesterday at noon'"),
    ("bad_fields.csv", r"line 3: expected 2 fields"),
    ("bad_header.csv", r"line 1: bad header .*missing column\(s\) ds, y"),
    ("bad_all_missing.csv", r"every y is empty"),
    ("bad_empty.csv", r"empty file"),
    ("bad_header_only.csv", r"no data rows"),
])
def test_bad_traces_are_rejected_naming_the_problem(name: str, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern) as info:
        read_trace_csv(DATA / name)
    assert name in str(info.value)


def test_several_bad_lines_are_reported_together(tmp_path: Path) -> None:
    f = tmp_path / "many.csv"
    f.write_text("ds,y\n" + "".join(f"2024-01-01T{h:02d}:00:00,-{h + 1}\n" for h in range(9)))
    with pytest.raises(InputError, match=r"line 2: .*line 6: .*\(and 4 more\)"):
        read_trace_csv(f)


def test_unknown_timezone_and_missing_file() -> None:
    with pytest.raises(InputError, match="Mars/Olympus"):
        read_trace_csv(DATA / "trace_ok.csv", timezone="Mars/Olympus")
    with pytest.raises(InputError, match="no such file"):
        read_trace_csv(DATA / "nope.csv")


def test_real_trace_with_european_daylight_saving_reads_without_crash(tmp_path: Path) -> None:
    # A window of the appserver trace's shape: local time, spring-forward hour present as an empty row.
    rows = ["ds,y"] + [f"2019-03-31T{h:02d}:00:00,{'' if h == 2 else 1000 + h}" for h in range(24)]
    f = tmp_path / "window.csv"
    f.write_text("\n".join(rows) + "\n")
    utc = read_trace_csv(f)
    assert len(utc) == 24 and utc.isna().sum() == 1
    local = read_trace_csv(f, timezone="Europe/Berlin")
    assert len(local) == 23 and local.notna().all() and local.index.is_unique

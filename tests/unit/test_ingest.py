"""Simulator and CSV import against a real PostgreSQL."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from prescaler import db, ingest, storage
from prescaler.errors import InputError
from prescaler.history import default_source, read_events, read_history
from prescaler.ingest import import_csv, read_trace_csv, simulate, simulate_frame

DATA = Path(__file__).parents[1] / "data"
MONDAY = datetime(2024, 3, 4, tzinfo=UTC)


def _count(engine: Engine, service: str | None = None) -> int:
    q = sa.select(sa.func.count()).select_from(db.traffic_log)
    if service is not None:
        q = q.where(db.traffic_log.c.service == service)
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


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


def test_simulate_writes_traffic_and_events_idempotently(engine: Engine) -> None:
    first = simulate(engine, start=MONDAY, days=2, step=timedelta(minutes=1), seed=11, service="sim")
    assert first.rows == 2 * 1440 * 5 and first.events >= 1
    assert _count(engine, "sim") == first.rows
    again = simulate(engine, start=MONDAY, days=2, step=timedelta(minutes=1), seed=11, service="sim")
    assert again == first and _count(engine, "sim") == first.rows
    frame, _ = simulate_frame(start=MONDAY, days=2, step=timedelta(minutes=1), seed=11, service="sim")
    hist = read_history(engine, default_source(), "sim", MONDAY, MONDAY + timedelta(days=2),
                        timedelta(hours=1))
    expected = frame.groupby(frame["ts"].dt.floor("h"))["requests"].sum().astype(float)
    np.testing.assert_array_equal(hist.to_numpy(), expected.to_numpy())
    events = read_events(engine, "sim", MONDAY, MONDAY + timedelta(days=2))
    assert len(events) == first.events


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


# --- import ------------------------------------------------------------------------------------------------

def test_import_is_idempotent_and_updates_changed_values(engine: Engine, tmp_path: Path) -> None:
    first = import_csv(engine, DATA / "trace_ok.csv", service="imp", endpoint="*")
    assert (first.rows_read, first.rows_written, first.rows_unchanged, first.rows_missing) == (6, 5, 0, 1)
    assert _count(engine, "imp") == 5
    again = import_csv(engine, DATA / "trace_ok.csv", service="imp", endpoint="*")
    assert (again.rows_written, again.rows_unchanged) == (0, 5) and _count(engine, "imp") == 5
    changed = tmp_path / "changed.csv"
    changed.write_text("ds,y\n2024-01-01T01:00:00,125\n2024-01-01T03:00:00,90\n2024-01-01T06:00:00,140\n")
    result = import_csv(engine, changed, service="imp", endpoint="*")
    assert (result.rows_written, result.rows_unchanged) == (2, 1) and _count(engine, "imp") == 6
    hist = read_history(engine, default_source(), "imp", datetime(2024, 1, 1, tzinfo=UTC),
                        datetime(2024, 1, 1, 7, tzinfo=UTC), timedelta(hours=1))
    assert hist.iloc[1] == 125 and math.isnan(hist.iloc[2]) and hist.iloc[6] == 140


def test_import_with_service_and_endpoint_columns(engine: Engine) -> None:
    result = import_csv(engine, DATA / "multi_service.csv", service="ignored", endpoint="ignored")
    assert result.rows_written == 4 and result.rows_missing == 1
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.traffic_log.c.service, db.traffic_log.c.endpoint,
                                      db.traffic_log.c.requests)
                            .where(db.traffic_log.c.service.in_(["shop", "search", "ignored"]))
                            .order_by(db.traffic_log.c.service, db.traffic_log.c.endpoint,
                                      db.traffic_log.c.ts)).all()
    assert rows == [("search", "*", 9), ("shop", "/cart", 5), ("shop", "/cart", 6), ("shop", "/pay", 7)]


@pytest.mark.parametrize(("name", "pattern"), [
    ("bad_negative.csv", "line 4"),
    ("bad_duplicate.csv", "line 5"),
    ("bad_non_numeric.csv", "line 3"),
    ("bad_timestamp.csv", "line 3"),
    ("bad_fields.csv", "line 3"),
    ("bad_header.csv", "line 1"),
    ("bad_all_missing.csv", "every y is empty"),
    ("bad_empty.csv", "empty file"),
    ("bad_fractional.csv", "line 2: y '1.5' is not a whole number"),
])
def test_bad_import_writes_nothing(engine: Engine, name: str, pattern: str) -> None:
    before = _count(engine)
    with pytest.raises(InputError, match=pattern):
        import_csv(engine, DATA / name, service="bad", endpoint="*")
    assert _count(engine) == before and _count(engine, "bad") == 0


# --- the write path ----------------------------------------------------------------------------------------

def _rows_of(engine: Engine, service: str) -> list[tuple[datetime, str, int]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            sa.select(db.traffic_log.c.ts, db.traffic_log.c.endpoint, db.traffic_log.c.requests)
            .where(db.traffic_log.c.service == service).order_by(db.traffic_log.c.ts, db.traffic_log.c.endpoint))]


def test_binary_copy_keeps_every_value_exact(engine: Engine, tmp_path: Path) -> None:
    trace = tmp_path / "exact.csv"
    trace.write_text("ds,y,service,endpoint\n"
                     "2024-02-29T23:59:59.999999+00:00,1000000000000000,zürich-ä,/straße\n"
                     "2024-03-01T00:00:00+00:00,0,zürich-ä,/straße\n"
                     "2024-03-01T00:00:00+00:00,7,zürich-ä,/\n")
    assert import_csv(engine, trace, service="x", endpoint="*").rows_written == 3
    assert _rows_of(engine, "zürich-ä") == [
        (datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC), "/straße", 10**15),
        (datetime(2024, 3, 1, tzinfo=UTC), "/", 7), (datetime(2024, 3, 1, tzinfo=UTC), "/straße", 0)]


def test_overlapping_import_merges_and_rollups_follow(engine: Engine, tmp_path: Path) -> None:
    simulate(engine, start=MONDAY, days=1, step=timedelta(minutes=5), seed=2, service="merge")
    before = {(t, e): r for t, e, r in _rows_of(engine, "merge")}
    first = MONDAY + timedelta(hours=7)
    trace = tmp_path / "patch.csv"
    trace.write_text("ds,y\n"
                     f"{first:%Y-%m-%dT%H:%M:%S},{before[(first, '/workouts')]}\n"  # unchanged
                     f"{first + timedelta(minutes=5):%Y-%m-%dT%H:%M:%S},1\n"  # changed
                     f"{first + timedelta(minutes=7):%Y-%m-%dT%H:%M:%S},2\n")  # new minute
    result = import_csv(engine, trace, service="merge", endpoint="/workouts")
    assert (result.rows_written, result.rows_unchanged) == (2, 1)
    assert _count(engine, "merge") == len(before) + 1
    assert storage.verify_rollups(engine, MONDAY) == []
    hist = read_history(engine, default_source(), "merge", first, first + timedelta(minutes=10),
                        timedelta(minutes=5))
    others = sum(v for (t, e), v in before.items() if t == first + timedelta(minutes=5) and e != "/workouts")
    assert hist.iloc[1] == others + 1 + 2


def test_first_load_shortcut_falls_back_to_merging_when_beaten(engine: Engine, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A concurrent writer may fill the range between the emptiness check and the COPY: the key refuses the
    COPY, and the same rows are merged instead, in the same transaction."""
    trace = tmp_path / "race.csv"
    trace.write_text("ds,y\n2024-04-01T00:00:00,1\n2024-04-01T00:01:00,2\n")
    import_csv(engine, trace, service="race", endpoint="*")
    monkeypatch.setattr(ingest, "_range_is_empty", lambda conn, rows: True)
    trace.write_text("ds,y\n2024-04-01T00:00:00,1\n2024-04-01T00:01:00,5\n2024-04-01T00:02:00,3\n")
    result = import_csv(engine, trace, service="race", endpoint="*")
    assert (result.rows_written, result.rows_unchanged) == (2, 1)
    assert [r for _, _, r in _rows_of(engine, "race")] == [1, 5, 3]
    assert storage.verify_rollups(engine, datetime(2024, 4, 1, tzinfo=UTC)) == []

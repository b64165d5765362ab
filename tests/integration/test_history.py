"""History reads against a real PostgreSQL: SQL bucketing, gaps kept as NaN, identifiers validated."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from prescaler import db
from prescaler.errors import DataUnavailable, InputError
from prescaler.history import (
    Retention,
    TrafficSource,
    default_source,
    grid,
    last_timestamp,
    load_sources,
    read_events,
    read_history,
)

T0 = datetime(2024, 5, 6, tzinfo=UTC)
M = timedelta(minutes=1)


@pytest.fixture(scope="module", autouse=True)
def _traffic(engine: Engine) -> None:
    rows = []
    # 00:00-00:09 two endpoints every minute; 00:10-00:19 nothing; 00:20-00:29 one endpoint.
    for i in range(10):
        rows.append({"ts": T0 + i * M, "service": "api", "endpoint": "/a", "requests": 10})
        rows.append({"ts": T0 + i * M, "service": "api", "endpoint": "/b", "requests": i})
    for i in range(20, 30):
        rows.append({"ts": T0 + i * M, "service": "api", "endpoint": "/a", "requests": 5})
    rows.append({"ts": T0 + 3 * M, "service": "other", "endpoint": "*", "requests": 1000})
    rows.append({"ts": T0 + 40 * M, "service": "api", "endpoint": "/a", "requests": 0})
    with engine.begin() as conn:
        conn.execute(db.traffic_log.insert(), rows)
        conn.execute(db.traffic_events.insert(), [
            {"name": "launch", "kind": "challenge", "service": "api", "starts_at": T0 + 5 * M,
             "ends_at": T0 + 65 * M, "lift_percent": 40.0},
            {"name": "push", "kind": "notification", "service": None, "starts_at": T0 + 2 * M,
             "ends_at": T0 + 3 * M, "lift_percent": None},
            {"name": "elsewhere", "kind": "challenge", "service": "other", "starts_at": T0,
             "ends_at": T0 + 60 * M, "lift_percent": 10.0},
            {"name": "later", "kind": "challenge", "service": "api", "starts_at": T0 + 2 * 60 * M,
             "ends_at": T0 + 3 * 60 * M, "lift_percent": 10.0},
        ])


def test_buckets_sum_endpoints_and_keep_gaps_as_nan(engine: Engine) -> None:
    s = read_history(engine, default_source(), "api", T0, T0 + 50 * M, timedelta(minutes=5))
    assert str(s.index.tz) == "UTC"
    assert list(s.index) == list(pd.date_range(T0, periods=10, freq="5min", tz=UTC))
    assert s.dtype == float
    # 5 minutes × 10 on /a plus 0..4 and 5..9 on /b.
    assert s.iloc[0] == 50 + 10 and s.iloc[1] == 50 + 35
    assert math.isnan(s.iloc[2]) and math.isnan(s.iloc[3])  # no rows: missing, not zero
    assert s.iloc[4] == 25 and s.iloc[5] == 25
    assert math.isnan(s.iloc[6]) and math.isnan(s.iloc[7])
    assert s.iloc[8] == 0.0  # a real zero stays zero
    assert math.isnan(s.iloc[9])


def test_grid_is_anchored_to_epoch_and_end_is_exclusive(engine: Engine) -> None:
    s = read_history(engine, default_source(), "api", T0 + 7 * M, T0 + 20 * M, timedelta(minutes=5))
    # The first bucket is rounded down to 00:05 and holds whole 5 minutes; 00:20 is excluded (end).
    assert list(s.index) == [T0 + 5 * M, T0 + 10 * M, T0 + 15 * M]
    assert s.iloc[0] == 50 + 35
    hourly = read_history(engine, default_source(), "api", T0 - 2 * 60 * M, T0 + 60 * M, timedelta(hours=1))
    assert list(hourly.index) == [T0 - 2 * 60 * M, T0 - 60 * M, T0]
    assert math.isnan(hourly.iloc[0]) and hourly.iloc[2] == 10 * 10 + 45 + 10 * 5
    assert len(grid(T0, T0, timedelta(minutes=5))) == 0


def test_other_services_are_not_mixed_in(engine: Engine) -> None:
    other = read_history(engine, default_source(), "other", T0, T0 + 10 * M, timedelta(minutes=5))
    assert other.iloc[0] == 1000 and math.isnan(other.iloc[1])
    unknown = read_history(engine, default_source(), "nope", T0, T0 + 10 * M, timedelta(minutes=5))
    assert unknown.isna().all() and len(unknown) == 2


def test_last_timestamp(engine: Engine) -> None:
    assert last_timestamp(engine, default_source(), "api") == T0 + 40 * M
    assert last_timestamp(engine, default_source(), "nope") is None


def test_custom_source_reads_administrator_table(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS metrics")
        conn.exec_driver_sql('CREATE TABLE metrics.hits (at timestamptz, app text, path text, "Count" bigint)')
        conn.exec_driver_sql("INSERT INTO metrics.hits VALUES "
                             "('2024-05-06 00:00+00', 'x', '/', 4), ('2024-05-06 00:01+00', 'x', '/', 6)")
    src = TrafficSource(table="metrics.hits", time_column="at", value_column="Count", service_column="app",
                        endpoint_column="path")
    s = read_history(engine, src, "x", T0, T0 + 10 * M, timedelta(minutes=5))
    assert s.iloc[0] == 10 and math.isnan(s.iloc[1])
    assert last_timestamp(engine, src, "x") == T0 + M


def test_source_naming_missing_table_or_column_is_unavailable(engine: Engine) -> None:
    with pytest.raises(DataUnavailable, match="no_such_table"):
        read_history(engine, TrafficSource(table="no_such_table"), "api", T0, T0 + 10 * M, timedelta(minutes=5))
    with pytest.raises(DataUnavailable, match="hits"):
        last_timestamp(engine, TrafficSource(table="traffic_log", time_column="hits"), "api")


@pytest.mark.parametrize(("field", "bad"), [
    ("table", "traffic_log; DROP TABLE traffic_log"),
    ("table", "a.b.c"),
    ("time_column", "ts--"),
    ("value_column", "1requests"),
    ("service_column", 'service"'),
    ("endpoint_column", ""),
])
def test_identifiers_are_validated(field: str, bad: str) -> None:
    with pytest.raises(InputError, match=field):
        TrafficSource(**{field: bad})


def test_events_for_a_service_include_global_ones(engine: Engine) -> None:
    ev = read_events(engine, "api", T0, T0 + 60 * M)
    assert list(ev.columns) == ["name", "kind", "start", "end", "lift_percent"]
    assert list(ev["name"]) == ["push", "launch"]
    assert ev["start"].iloc[1] == T0 + 5 * M and str(ev["start"].dt.tz) == "UTC"
    assert math.isnan(ev["lift_percent"].iloc[0]) and ev["lift_percent"].iloc[1] == 40.0
    everything = read_events(engine, None, T0, T0 + 4 * 60 * M)
    assert set(everything["name"]) == {"push", "launch", "elsewhere", "later"}
    assert read_events(engine, "api", T0 + 10 * 60 * M, T0 + 11 * 60 * M).empty


def test_load_sources(tmp_path: Path) -> None:
    assert load_sources(None) == {"default": default_source()}
    cfg = tmp_path / "sources.yaml"
    cfg.write_text("sources:\n  edge:\n    table: edge.requests\n    time_column: minute\n")
    sources = load_sources(cfg)
    assert sources["default"] == default_source()
    assert sources["edge"] == TrafficSource(table="edge.requests", time_column="minute")
    cfg.write_text("sources:\n  edge:\n    table: 'x; drop'\n")
    with pytest.raises(InputError, match=r"edge.*table"):
        load_sources(cfg)
    cfg.write_text("sources:\n  edge:\n    tabel: x\n")
    with pytest.raises(InputError, match="unknown keys"):
        load_sources(cfg)
    with pytest.raises(InputError, match="cannot read"):
        load_sources(tmp_path / "missing.yaml")


def test_naive_times_and_bad_step_are_input_errors(engine: Engine) -> None:
    with pytest.raises(InputError, match="timezone-aware"):
        read_history(engine, default_source(), "api", datetime(2024, 5, 6), T0, timedelta(minutes=5))
    with pytest.raises(InputError, match="step"):
        read_history(engine, default_source(), "api", T0, T0 + M, timedelta(0))


def test_unreachable_database_is_data_unavailable() -> None:
    dead = db.make_engine("postgresql+psycopg2://prescaler:prescaler@127.0.0.1:9/prescaler")
    with pytest.raises(DataUnavailable, match="api"):
        read_history(dead, default_source(), "api", T0, T0 + 10 * M, timedelta(minutes=5))
    with pytest.raises(DataUnavailable):
        read_events(dead, None, T0, T0 + M)


# --- the rollup path -----------------------------------------------------------------------------------------

# The same table under its schema-qualified name is not prescaler's own source, so it is read row by row:
# the reference the rollup path must reproduce exactly.
RAW_PATH = TrafficSource(table="public.traffic_log")


def _random_traffic(engine: Engine, service: str, start: datetime, minutes: int, seed: int) -> None:
    """Minutes with random gaps (whole 5-minute buckets and single minutes), real zeros and three endpoints."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(minutes):
        if (i // 5) % 11 == 3 or rng.random() < 0.1:
            continue
        for endpoint in ("/a", "/b", "/c")[: int(rng.integers(1, 4))]:
            rows.append({"ts": start + i * M + timedelta(seconds=int(rng.integers(0, 60))), "service": service,
                         "endpoint": endpoint, "requests": int(rng.integers(0, 3)) * int(rng.integers(0, 500))})
    with engine.begin() as conn:
        conn.execute(db.traffic_log.insert(), rows)


def test_rollup_and_raw_paths_give_identical_series(engine: Engine) -> None:
    start = datetime(2024, 6, 3, 22, 0, tzinfo=UTC)
    _random_traffic(engine, "rolled", start, 3 * 24 * 60, seed=5)
    windows = [(start, start + timedelta(days=3)),
               (start + timedelta(minutes=7), start + timedelta(days=2, hours=5, minutes=13, seconds=30)),
               (start - timedelta(hours=2), start + timedelta(hours=1, minutes=2)),
               (start + timedelta(hours=30), start + timedelta(hours=30, minutes=4))]
    steps = [timedelta(minutes=5), timedelta(minutes=10), timedelta(minutes=15), timedelta(hours=1),
             timedelta(days=1), timedelta(minutes=1), timedelta(minutes=7)]
    compared = 0
    for lo, hi in windows:
        for step in steps:
            rolled = read_history(engine, default_source(), "rolled", lo, hi, step)
            raw = read_history(engine, RAW_PATH, "rolled", lo, hi, step)
            pd.testing.assert_series_equal(rolled, raw, check_exact=True)
            compared += int(rolled.notna().sum())
    gaps = read_history(engine, default_source(), "rolled", start, start + timedelta(hours=2), timedelta(minutes=5))
    assert gaps.isna().any() and gaps.notna().any() and compared > 1000


def test_rollup_path_keeps_zeros_and_gaps_after_updates_and_deletes(engine: Engine) -> None:
    t = datetime(2024, 6, 10, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(db.traffic_log.insert(), [
            {"ts": t + i * M, "service": "edits", "endpoint": "*", "requests": 4} for i in range(15)])
        conn.execute(sa.text("UPDATE traffic_log SET requests = 0 WHERE service = 'edits' AND ts < :t"),
                     {"t": t + 5 * M})
        conn.execute(sa.text("DELETE FROM traffic_log WHERE service = 'edits' AND ts >= :a AND ts < :b"),
                     {"a": t + 5 * M, "b": t + 10 * M})
    for source in (default_source(), RAW_PATH):
        s = read_history(engine, source, "edits", t, t + 15 * M, timedelta(minutes=5))
        assert s.iloc[0] == 0.0 and math.isnan(s.iloc[1]) and s.iloc[2] == 20.0


def test_load_sources_parses_retention(tmp_path: Path) -> None:
    cfg = tmp_path / "sources.yaml"
    cfg.write_text("sources:\n  default:\n    table: traffic_log\n    retention: 90d\n"
                   "  edge:\n    table: edge.requests\n    retention: {raw: 30d}\n")
    sources = load_sources(cfg)
    assert sources["default"].retention == Retention(raw=timedelta(days=90))
    assert sources["edge"].retention == Retention(raw=timedelta(days=30))
    assert load_sources(None)["default"].retention == Retention()
    cfg.write_text("sources:\n  default:\n    retention: {raw: 90d, 5m: 400d, hourly: 2000d, daily: forever}\n")
    assert load_sources(cfg)["default"].retention == Retention(
        raw=timedelta(days=90), rollup_5m=timedelta(days=400), hourly=timedelta(days=2000), daily=None)


@pytest.mark.parametrize(("retention", "message"), [
    ("ninety days", r"data source 'default': retention: 'ninety days' is not a duration"),
    ("{raw: 90d, weekly: 1y}", r"retention: unknown keys \['weekly'\]"),
    ("{raw: 90d, hourly: 30d}", r"retention.hourly: 30d is shorter than retention.raw \(90d\)"),
    ("12h", r"retention.raw: 12h is shorter than a day"),
    ("[90d]", r"retention: expected a duration"),
    ("{raw: 5}", r"retention.raw: expected a duration such as 90d"),
])
def test_bad_retention_is_an_input_error_naming_the_field(tmp_path: Path, retention: str, message: str) -> None:
    cfg = tmp_path / "sources.yaml"
    cfg.write_text(f"sources:\n  default:\n    retention: {retention}\n")
    with pytest.raises(InputError, match=message):
        load_sources(cfg)


def test_shared_reads_in_flight_query_once_and_a_later_read_queries_again(engine: Engine,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from prescaler import history

    calls: list[tuple[str, datetime]] = []

    def counted(engine: Engine, source: TrafficSource, service: str, start: datetime, end: datetime,
                step: timedelta) -> pd.Series:
        calls.append((service, end))
        return read_history(engine, source, service, start, end, step)

    monkeypatch.setattr(history, "read_history", counted)
    reads = history.SharedReads(engine)
    source = default_source()

    async def together() -> list[pd.Series]:
        same = [reads.read(source, "api", T0, T0 + 30 * M, 5 * M) for _ in range(10)]
        return await asyncio.gather(*same, reads.read(source, "api", T0, T0 + 20 * M, 5 * M))

    first = asyncio.run(together())
    assert sorted(calls) == [("api", T0 + 20 * M), ("api", T0 + 30 * M)]
    expected = read_history(engine, source, "api", T0, T0 + 30 * M, 5 * M)
    for series in first[:10]:
        pd.testing.assert_series_equal(series, expected)
    assert len(first[10]) == 4
    # Nothing is kept once a read is done: new rows are seen by the next tick.
    asyncio.run(reads.read(source, "api", T0, T0 + 30 * M, 5 * M))
    assert len(calls) == 3

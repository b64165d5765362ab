"""Simulator and CSV import against a real PostgreSQL."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from prescaler import db, ingest, storage
from prescaler.errors import InputError
from prescaler.history import default_source, read_events, read_history
from prescaler.ingest import import_csv, simulate, simulate_frame
from unit.test_ingest import DATA, MONDAY


def _count(engine: Engine, service: str | None = None) -> int:
    q = sa.select(sa.func.count()).select_from(db.traffic_log)
    if service is not None:
        q = q.where(db.traffic_log.c.service == service)
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


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

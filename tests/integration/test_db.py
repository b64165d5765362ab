"""Schema, migrations and persistence against a real PostgreSQL."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from prescaler import db
from prescaler.errors import DataUnavailable, InputError
from prescaler.forecasting import Forecast
from prescaler.planning import Decision
from prescaler_dev import pgserver

T0 = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday
# The newest migration file: "head" must reach it, whichever migration was added last.
NEWEST = max(p.name.split("_", 1)[0] for p in (db.MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py"))


def _columns(engine: Engine, table: str) -> dict[str, tuple[str, bool]]:
    cols = sa.inspect(engine).get_columns(table)
    return {c["name"]: (c["type"].compile(dialect=engine.dialect), c["nullable"]) for c in cols}


def _metadata_columns(table: sa.Table, engine: Engine) -> dict[str, tuple[str, bool]]:
    return {c.name: (c.type.compile(dialect=engine.dialect), bool(c.nullable)) for c in table.columns}


def _forecast(start: datetime, n: int, step: timedelta = timedelta(minutes=5),
              base: float = 100.0) -> Forecast:
    ds = pd.date_range(start, periods=n, freq=step, tz=UTC)
    yhat = base + np.arange(n, dtype=float)
    return Forecast(ds=ds, yhat=yhat, lower=yhat - 10, upper=yhat + 10, model="seasonal-naive", note="test")


def test_fresh_database_migrates_to_head(make_database) -> None:
    engine = db.make_engine(make_database(revision=None))
    assert db.current_revision(engine) == ""
    db.migrate(engine)
    assert db.current_revision(engine) == db.head_revision() == NEWEST
    db.migrate(engine)  # idempotent
    assert db.current_revision(engine) == NEWEST
    names = set(sa.inspect(engine).get_table_names())
    assert {t.name for t in db.metadata.sorted_tables} <= names
    assert set(db.VIEWS) <= set(sa.inspect(engine).get_view_names())
    engine.dispose()


def test_older_database_reaches_current_schema_keeping_its_data(make_database) -> None:
    engine = db.make_engine(make_database(revision="0001"))
    assert db.current_revision(engine) == "0001"
    assert "traffic_hourly" not in sa.inspect(engine).get_view_names()
    with engine.begin() as conn:
        conn.execute(db.traffic_log.insert(), [{"ts": T0, "service": "a", "endpoint": "*", "requests": 7}])
    db.migrate(engine)
    assert db.current_revision(engine) == NEWEST
    indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes("traffic_log")}
    assert indexes == {"traffic_log_ts_brin"}  # (service, ts) is the key's own order now
    assert sa.inspect(engine).get_pk_constraint("traffic_log")["constrained_columns"] == ["service", "ts", "endpoint"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT requests FROM traffic_hourly")).scalar_one() == 7
    engine.dispose()


# Rows a migration must carry over exactly: partition (week) and bucket edges to the microsecond, a real zero,
# the endpoint default, far past and future, non-ASCII names, large counts.
EDGE_ROWS = [
    {"ts": T0, "service": "a", "endpoint": "*", "requests": 7},  # Monday 00:00 UTC: first instant of a week
    {"ts": T0 - timedelta(microseconds=1), "service": "a", "endpoint": "*", "requests": 1},  # last of the week before
    {"ts": T0 + timedelta(minutes=4, seconds=59, microseconds=999_999), "service": "a", "endpoint": "*",
     "requests": 0},
    {"ts": T0 + timedelta(minutes=5), "service": "a", "endpoint": "/b", "requests": 3},
    {"ts": datetime(1970, 1, 1, tzinfo=UTC), "service": "old", "endpoint": "*", "requests": 11},
    {"ts": datetime(2099, 12, 31, 23, 59, tzinfo=UTC), "service": "future", "endpoint": "*", "requests": 12},
    {"ts": datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC), "service": "zürich-ä", "endpoint": "/straße",
     "requests": 10**12},
    {"ts": datetime(2025, 1, 1, tzinfo=UTC), "service": "zürich-ä", "endpoint": "/straße", "requests": 10**12 + 1},
] + [{"ts": T0 + timedelta(days=d, minutes=m), "service": f"s{d % 3}", "endpoint": f"/e{m % 4}",
      "requests": (d + 10) * m} for d in range(-10, 20) for m in range(0, 24 * 60, 37)]

_ROWS_SQL = "SELECT ts, service, endpoint, requests FROM traffic_log ORDER BY service, endpoint, ts"
_TOTALS_SQL = "SELECT count(*), sum(requests) FROM traffic_log"
# The analytics views as 0002 defined them over the raw table: what the rollup-backed views must still return.
_RAW_VIEWS = {
    "traffic_hourly": "SELECT date_bin('1 hour', ts, TIMESTAMPTZ '2000-01-01 00:00+00') AS bucket, service, "
                      "sum(requests)::bigint AS requests FROM traffic_log GROUP BY 1, 2",
    "traffic_daily": "SELECT date_bin('1 day', ts, TIMESTAMPTZ '2000-01-01 00:00+00') AS day, service, "
                     "sum(requests)::bigint AS requests FROM traffic_log GROUP BY 1, 2",
    "traffic_top_endpoints": "SELECT t.service, t.endpoint, sum(t.requests)::bigint AS requests, "
                             "sum(t.requests)::double precision / nullif(sum(sum(t.requests)) OVER "
                             "(PARTITION BY t.service), 0) AS share FROM traffic_log t JOIN (SELECT service, "
                             "max(ts) AS last_ts FROM traffic_log GROUP BY service) b USING (service) "
                             "WHERE t.ts > b.last_ts - INTERVAL '7 days' GROUP BY t.service, t.endpoint",
}


def view_rows(conn: sa.Connection, sql: str) -> list[tuple[object, ...]]:
    rows = [tuple(r) for r in conn.execute(sa.text(sql)).all()]
    return sorted(tuple(round(v, 12) if isinstance(v, float) else v for v in r) for r in rows)  # type: ignore[misc]


def assert_views_match_raw(conn: sa.Connection) -> None:
    for name, raw in _RAW_VIEWS.items():
        assert view_rows(conn, f"SELECT * FROM {name}") == view_rows(conn, raw), name


def _in_default_partition(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM traffic_log_default").scalar_one())


def test_migration_partitions_an_existing_table_without_losing_a_row(make_database) -> None:
    """0004 (unpartitioned) → head → 0004 → head: the same rows every time, none left in the default partition,
    rollups and views agreeing with the rows."""
    engine = db.make_engine(make_database(revision="0004"))
    with engine.begin() as conn:
        conn.execute(db.traffic_log.insert(), EDGE_ROWS)
    with engine.connect() as conn:
        before, totals = conn.execute(sa.text(_ROWS_SQL)).all(), conn.execute(sa.text(_TOTALS_SQL)).one()
    assert len(before) == len(EDGE_ROWS)

    db.migrate(engine)
    assert db.current_revision(engine) == NEWEST
    with engine.connect() as conn:
        assert conn.execute(sa.text(_ROWS_SQL)).all() == before
        assert conn.execute(sa.text(_TOTALS_SQL)).one() == totals
        strategy = conn.exec_driver_sql("SELECT partstrat FROM pg_partitioned_table "
                                        "WHERE partrelid = 'traffic_log'::regclass").scalar_one()
        assert strategy == "r"
        for rollup in db.ROLLUPS:
            assert conn.execute(sa.text(f"SELECT count(*) FILTER (WHERE row_count > 0), sum(row_count), "
                                        f"sum(requests) FROM {rollup.name}")).one()[1:] == tuple(totals), rollup.name
        assert_views_match_raw(conn)
    assert _in_default_partition(engine) == 0

    with engine.begin() as conn:
        command.downgrade(db._alembic_config(conn), "0004")
    assert db.current_revision(engine) == "0004"
    with engine.connect() as conn:
        assert conn.execute(sa.text(_ROWS_SQL)).all() == before
        assert sa.inspect(engine).get_pk_constraint("traffic_log")["constrained_columns"] == [
            "service", "endpoint", "ts"]
        assert "traffic_rollup_5m" not in sa.inspect(engine).get_table_names()
        assert conn.execute(sa.text("SELECT sum(requests) FROM traffic_hourly")).scalar_one() == totals[1]
    db.migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text(_ROWS_SQL)).all() == before
    engine.dispose()


def test_migrated_schema_matches_metadata(engine: Engine) -> None:
    for table in db.metadata.sorted_tables:
        assert _columns(engine, table.name) == _metadata_columns(table, engine), table.name
        pk = sa.inspect(engine).get_pk_constraint(table.name)["constrained_columns"]
        assert pk == [c.name for c in table.primary_key.columns], table.name
        reflected_ix = {ix["name"] for ix in sa.inspect(engine).get_indexes(table.name)}
        assert {ix.name for ix in table.indexes} <= reflected_ix, table.name


def test_traffic_tables_match_metadata_exactly_partitions_aside(engine: Engine) -> None:
    """MetaData cannot hold partitions (they come and go); everything else about the traffic tables must
    match: the partitioning, the exact index set (every index is a cost each row pays), the triggers that
    keep the rollups, and the views. The only tables outside MetaData are traffic_log's partitions."""
    inspector = sa.inspect(engine)
    with engine.connect() as conn:
        partitioned = dict(conn.exec_driver_sql(
            "SELECT c.relname, pg_get_partkeydef(c.oid) FROM pg_partitioned_table p "
            "JOIN pg_class c ON c.oid = p.partrelid").all())
        children = set(conn.exec_driver_sql(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'traffic_log'::regclass").scalars())
        triggers = set(conn.exec_driver_sql(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'traffic_log'::regclass AND NOT tgisinternal").scalars())
        # The top endpoints' function runs without JIT (its estimates over every partition would trigger it).
        settings = conn.exec_driver_sql(
            "SELECT proconfig FROM pg_proc WHERE proname = 'traffic_top_endpoints_of'").scalar_one()
    declared = {t.name: t.dialect_options["postgresql"]["partition_by"] for t in db.metadata.sorted_tables
                if t.dialect_options["postgresql"]["partition_by"]}
    assert partitioned == declared == {"traffic_log": "RANGE (ts)"}
    assert "traffic_log_default" in children
    assert set(inspector.get_table_names()) - set(db.metadata.tables) - {db.VERSION_TABLE} == children
    for table in (db.traffic_log, *db.ROLLUPS, db.traffic_horizon):
        assert {ix["name"] for ix in inspector.get_indexes(table.name)} == {ix.name for ix in table.indexes}
        pk = inspector.get_pk_constraint(table.name)
        assert pk["dialect_options"].get("postgresql_include", []) == list(
            table.primary_key.dialect_options["postgresql"]["include"] or []), table.name
    assert triggers == set(db.ROLLUP_TRIGGERS)
    assert "jit=off" in settings
    assert set(inspector.get_view_names()) == set(db.VIEWS)


def test_constraints_reject_bad_rows(engine: Engine) -> None:
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(db.traffic_log.insert(), {"ts": T0, "service": "x", "requests": -1})
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(db.traffic_events.insert(), {"name": "e", "kind": "k", "starts_at": T0, "ends_at": T0})
    with engine.begin() as conn:
        conn.execute(db.traffic_log.insert(), {"ts": T0, "service": "x", "requests": 3})
        assert conn.execute(sa.select(db.traffic_log.c.endpoint)).scalar_one() == "*"
        conn.execute(db.traffic_log.delete())


def test_forecast_round_trip_latest_and_prune(engine: Engine) -> None:
    gen = [T0 + timedelta(hours=h) for h in range(5)]
    ids = [
        db.save_forecast(engine, scaler_key="ns/a", series="svc", forecast=_forecast(g, 12, base=10 * i),
                         generated_at=g, smape=12.5 if i else None, fit_seconds=0.3, params_hash=f"h{i % 2}")
        for i, g in enumerate(gen)
    ]
    db.save_forecast(engine, scaler_key="ns/b", series="svc", forecast=_forecast(T0, 3), generated_at=T0,
                     smape=None, fit_seconds=None, params_hash="h0")
    latest = db.load_latest_forecast(engine, "ns/a")
    assert latest is not None
    assert latest.generated_at == gen[4]
    assert latest.model == "seasonal-naive" and latest.params_hash == "h0" and latest.smape == 12.5
    fc = latest.forecast
    expected = _forecast(gen[4], 12, base=40)
    assert fc.ds.equals(expected.ds) and str(fc.ds.tz) == "UTC" and fc.ds.freq == pd.Timedelta(minutes=5)
    np.testing.assert_allclose(fc.yhat, expected.yhat)
    np.testing.assert_allclose(fc.lower, expected.lower)
    np.testing.assert_allclose(fc.upper, expected.upper)
    by_hash = db.load_latest_forecast(engine, "ns/a", params_hash="h1")
    assert by_hash is not None and by_hash.generated_at == gen[3]
    assert db.load_latest_forecast(engine, "ns/a", params_hash="nope") is None
    assert db.load_latest_forecast(engine, "ns/missing") is None

    assert db.prune_forecasts(engine, "ns/a", keep=2) == 3
    with engine.connect() as conn:
        left = conn.execute(sa.select(db.forecasts.c.id).where(db.forecasts.c.scaler_key == "ns/a")).scalars()
        assert sorted(left) == ids[3:]
        orphans = conn.execute(sa.text(
            "SELECT count(*) FROM forecast_points p LEFT JOIN forecasts f ON f.id = p.forecast_id "
            "WHERE f.id IS NULL")).scalar_one()
        assert orphans == 0
        assert conn.execute(sa.text("SELECT count(*) FROM forecast_points")).scalar_one() == 2 * 12 + 3
    assert db.load_latest_forecast(engine, "ns/b") is not None  # other scalers untouched
    with pytest.raises(InputError):
        db.prune_forecasts(engine, "ns/a", keep=-1)


def test_record_decision(engine: Engine) -> None:
    d = Decision(desired=6, current=4, recommended=6, direction="up", reason="forecast peak 7,000 rpm",
                 stale=False, forecast_load=7000.0, observed_load=float("nan"), peak_at=T0, peak_load=7100.0)
    db.record_decision(engine, namespace="fitness", name="workout-api", target_kind="Deployment",
                       target_name="workout-api", decision=d, decided_at=T0, applied=True)
    with engine.connect() as conn:
        row = conn.execute(sa.select(db.scaling_decisions)).mappings().one()
    assert row["desired_replicas"] == 6 and row["current_replicas"] == 4 and row["direction"] == "up"
    assert row["observed_load"] is None  # NaN is stored as missing
    assert row["peak_at"] == T0 and row["applied"] is True and row["reason"] == "forecast peak 7,000 rpm"


def test_views_aggregate_in_utc(engine: Engine) -> None:
    rows = []
    # Monday 2024-03-04: two endpoints at 07:00-07:59, one at 08:00; a week later the same hour again.
    for minute in range(60):
        at = T0 + timedelta(hours=7, minutes=minute)
        rows.append({"ts": at, "service": "v", "endpoint": "/a", "requests": 3})
        rows.append({"ts": at, "service": "v", "endpoint": "/b", "requests": 1})
    rows.append({"ts": T0 + timedelta(hours=8), "service": "v", "endpoint": "/a", "requests": 40})
    rows.append({"ts": T0 + timedelta(days=7, hours=7), "service": "v", "endpoint": "/a", "requests": 60})
    with engine.begin() as conn:
        conn.execute(db.traffic_log.insert(), rows)
        conn.exec_driver_sql("SET LOCAL timezone = 'America/New_York'")  # views must not depend on it
        def view(sql: str) -> list[sa.Row]:  # type: ignore[type-arg]
            return list(conn.execute(sa.text(sql)).all())

        hourly = view("SELECT bucket, requests FROM traffic_hourly WHERE service = 'v' ORDER BY 1")
        daily = view("SELECT day, requests FROM traffic_daily WHERE service = 'v' ORDER BY 1")
        profile = view("SELECT weekday, hour, avg_requests FROM traffic_profile WHERE service = 'v' ORDER BY 1, 2")
        top = view("SELECT endpoint, requests, share FROM traffic_top_endpoints WHERE service = 'v' ORDER BY 1")
        conn.execute(db.traffic_log.delete().where(db.traffic_log.c.service == "v"))
    assert [(b.astimezone(UTC), r) for b, r in hourly] == [
        (T0 + timedelta(hours=7), 240), (T0 + timedelta(hours=8), 40), (T0 + timedelta(days=7, hours=7), 60)]
    assert [(d.astimezone(UTC), r) for d, r in daily] == [(T0, 280), (T0 + timedelta(days=7), 60)]
    assert profile == [(0, 7, 150.0), (0, 8, 40.0)]
    # Last 7 days of data end at the second Monday 07:00: only that row and nothing from a week earlier.
    assert top == [("/a", 60, 1.0)]


def test_views_over_rollups_return_what_the_raw_views_returned(engine: Engine) -> None:
    """Random minutes of several services, then upserts and deletes: the rollup-backed views give exactly what
    0002's views over the raw rows give (the latter run here as plain queries)."""
    rng = np.random.default_rng(9)
    start = datetime(2024, 9, 2, 21, 17, tzinfo=UTC)
    rows = [{"ts": start + timedelta(minutes=int(m), seconds=int(rng.integers(0, 60))), "service": f"r{k}",
             "endpoint": f"/p{int(rng.integers(0, 4))}", "requests": int(rng.integers(0, 1000))}
            for k in range(3) for m in np.unique(rng.integers(0, 10 * 24 * 60, 3000))]
    with engine.begin() as conn:
        conn.execute(db.traffic_log.insert(), rows)
        conn.execute(sa.text("UPDATE traffic_log SET requests = requests * 2 WHERE service = 'r1' AND ts < :t"),
                     {"t": start + timedelta(days=4)})
        conn.execute(sa.text("DELETE FROM traffic_log WHERE service = 'r2' AND ts > :t"),
                     {"t": start + timedelta(days=6, minutes=13)})
    with engine.connect() as conn:
        assert_views_match_raw(conn)
        assert view_rows(conn, "SELECT count(*) FROM traffic_top_endpoints WHERE service = 'r2'")[0][0] > 0
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM traffic_log WHERE service LIKE 'r_'"))


@pytest.mark.skipif(bool(os.environ.get("PRESCALER_TEST_DATABASE_URL")),
                    reason="the local server is not used when an external test database is given")
def test_local_server_creates_and_drops_databases(pg_server_url: str) -> None:
    assert pgserver.is_running()
    assert pg_server_url == pgserver.ensure_running()  # idempotent while running
    name = "t_pgserver_roundtrip"
    pgserver.drop_database(name)
    url = pgserver.create_database(name)
    engine = db.make_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT current_database(), current_user").one() == (name, "prescaler")
    pgserver.drop_database(name)  # closes the engine's pooled connection too
    with pytest.raises(DataUnavailable):
        db.current_revision(engine)
    engine.dispose()
    with pytest.raises(InputError, match="invalid database name"):
        pgserver.create_database("x; DROP DATABASE prescaler")


def test_the_operators_engine_holds_a_connection_per_sql_thread(pg_url: str) -> None:
    default, sized = db.make_engine(pg_url), db.make_engine(pg_url, threads=20)
    try:
        assert sized.pool.size() == 20 and default.pool.size() == 5  # type: ignore[attr-defined]
        with sized.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        default.dispose()
        sized.dispose()

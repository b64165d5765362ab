"""Traffic data at scale: traffic_log partitioned by week, rollups kept by triggers, views over the rollups.

An existing unpartitioned traffic_log is copied into the partitioned table inside the migration's transaction
and the copy is checked (row count and request sum) before the old table goes, so a failure leaves the schema
as it was. Everything here is frozen SQL on purpose: later changes to prescaler.storage must not rewrite history.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

TS = sa.DateTime(timezone=True)
# Buckets are anchored at a UTC origin so hours and days are UTC whatever the session time zone is.
_ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
_WEEK_ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)  # a Monday: partitions run Monday to Monday, UTC
_WEEK = timedelta(days=7)

# --- the dashboard's views, before (0002) and after --------------------------------------------------------

_VIEWS_0002 = {
    "traffic_hourly": f"""
        SELECT date_bin(INTERVAL '1 hour', ts, {_ORIGIN}) AS bucket, service,
               sum(requests)::bigint AS requests
        FROM traffic_log
        GROUP BY 1, 2""",
    "traffic_daily": f"""
        SELECT date_bin(INTERVAL '1 day', ts, {_ORIGIN}) AS day, service,
               sum(requests)::bigint AS requests
        FROM traffic_log
        GROUP BY 1, 2""",
    "traffic_profile": """
        SELECT service,
               (extract(isodow FROM bucket AT TIME ZONE 'UTC')::int - 1) AS weekday,
               extract(hour FROM bucket AT TIME ZONE 'UTC')::int AS hour,
               avg(requests)::double precision AS avg_requests
        FROM traffic_hourly
        GROUP BY 1, 2, 3""",
    "traffic_top_endpoints": """
        SELECT t.service, t.endpoint, sum(t.requests)::bigint AS requests,
               sum(t.requests)::double precision
                 / nullif(sum(sum(t.requests)) OVER (PARTITION BY t.service), 0) AS share
        FROM traffic_log t
        JOIN (SELECT service, max(ts) AS last_ts FROM traffic_log GROUP BY service) b USING (service)
        WHERE t.ts > b.last_ts - INTERVAL '7 days'
        GROUP BY t.service, t.endpoint""",
}

# Same names, columns and results; the hours and days come from the rollups.
VIEWS = {
    "traffic_hourly": """
        SELECT bucket, service, requests
        FROM traffic_rollup_hourly""",
    "traffic_daily": """
        SELECT bucket AS day, service, sum(requests)::bigint AS requests
        FROM traffic_rollup_daily_endpoint
        GROUP BY 1, 2""",
    "traffic_profile": _VIEWS_0002["traffic_profile"],
    # One call per service: a filter on the service reaches a single call.
    "traffic_top_endpoints": """
        SELECT s.service, t.endpoint, t.requests, t.share
        FROM (SELECT DISTINCT service FROM traffic_rollup_daily_endpoint) s
        CROSS JOIN LATERAL traffic_top_endpoints_of(s.service) t""",
}

# The last 7 days of a service's data end at its newest minute, so the week starts inside an hour: whole hours
# come from the hourly rollup, the minutes of the first, cut hour from traffic_log. A function, planned with
# JIT off: the planner cannot know how few rows a parameterised week holds, and its estimate over every
# partition would pass the JIT thresholds, spending seconds compiling a query that runs in milliseconds.
_TOP_ENDPOINTS = f"""
CREATE FUNCTION traffic_top_endpoints_of(p_service text)
RETURNS TABLE (endpoint text, requests bigint, share double precision)
LANGUAGE sql STABLE PARALLEL SAFE ROWS 10
SET jit = off
SET search_path FROM CURRENT
AS $fn$
    WITH l AS (SELECT max(ts) AS last_ts FROM traffic_log WHERE service = p_service),
    w AS (
        SELECT h.endpoint, h.requests
        FROM l, traffic_rollup_hourly_endpoint h
        WHERE h.service = p_service
          AND h.bucket >= date_bin('1 hour', l.last_ts - INTERVAL '7 days', {_ORIGIN}) + INTERVAL '1 hour'
        UNION ALL
        SELECT t.endpoint, t.requests
        FROM l, traffic_log t
        WHERE t.service = p_service AND t.ts > l.last_ts - INTERVAL '7 days'
          AND t.ts < date_bin('1 hour', l.last_ts - INTERVAL '7 days', {_ORIGIN}) + INTERVAL '1 hour')
    SELECT endpoint, sum(requests)::bigint,
           sum(requests)::double precision / nullif(sum(sum(requests)) OVER (), 0)
    FROM w
    GROUP BY endpoint
$fn$"""

# --- rollups kept by statement triggers --------------------------------------------------------------------

# (table, bucket width, per endpoint): totals per service for history reads and the hourly views, per
# endpoint for the top endpoints and the daily view.
ROLLUPS = (
    ("traffic_rollup_5m", "5 minutes", False),
    ("traffic_rollup_hourly", "1 hour", False),
    ("traffic_rollup_hourly_endpoint", "1 hour", True),
    ("traffic_rollup_daily_endpoint", "1 day", True),
)

_CHANGES = {
    "INSERT": "SELECT service, endpoint, ts, requests, 1 AS row_count FROM new_rows",
    "DELETE": "SELECT service, endpoint, ts, -requests AS requests, -1 AS row_count FROM old_rows",
    "UPDATE": ("SELECT service, endpoint, ts, requests, 1 AS row_count FROM new_rows "
               "UNION ALL SELECT service, endpoint, ts, -requests, -1 FROM old_rows"),
}


# An upsert fires the INSERT and then the UPDATE statement trigger: two rounds of rollup row locks that two
# writers could take in opposite orders. A transaction-scoped lock per service, taken in name order before
# any rollup row, serialises writers of one service instead (short transactions: the collector writes one
# series per transaction); writers of different services never wait for each other.
_SERVICE_LOCK_CLASS = 0x70726566  # "pref"


def _apply_deltas(changes: str) -> str:
    """One statement adding a write's deltas to the three rollups; it counts the buckets left with no rows.

    Deltas (not recomputation) keep concurrent writers exact: each adds its own rows under the rollup row's
    lock, whatever its snapshot saw. `locked` takes the service locks from the already aggregated deltas
    (not another pass over the rows); every upsert reads it, so no rollup row is touched before they are
    held. Rows are upserted in key order. Minutes before the raw horizon belong to rollups that retention
    has made final, so they are left out.
    """
    def upsert(table: str, width: str, per_endpoint: bool) -> str:
        endpoint, keys = (", endpoint", "1, 2, 3") if per_endpoint else ("", "1, 2")
        bucket = f"date_bin('{width}', bucket, {_ORIGIN})"
        return (
            f"INSERT INTO {table} AS r (service, bucket{endpoint}, requests, row_count) "
            f"SELECT service, {bucket}{endpoint}, sum(requests), sum(row_count) FROM e CROSS JOIN locked "
            f"GROUP BY {keys} HAVING sum(requests) <> 0 OR sum(row_count) <> 0 ORDER BY {keys} "
            f"ON CONFLICT (service, bucket{endpoint}) DO UPDATE "
            "SET requests = r.requests + EXCLUDED.requests, row_count = r.row_count + EXCLUDED.row_count "
            "RETURNING r.row_count"
        )

    upserts = ",\n        ".join(f"u{i} AS ({upsert(table, width, per_endpoint)})"
                                   for i, (table, width, per_endpoint) in enumerate(ROLLUPS))
    return f"""
        WITH e AS MATERIALIZED (
            SELECT service, endpoint, date_bin('5 minutes', ts, {_ORIGIN}) AS bucket,
                   sum(requests) AS requests, sum(row_count) AS row_count
            FROM ({changes}) c
            WHERE ts >= coalesce((SELECT raw_kept_from FROM traffic_horizon WHERE relation = 'traffic_log'),
                                 '-infinity')
            GROUP BY 1, 2, 3),
        locked AS MATERIALIZED (
            SELECT count(*) AS services FROM (
                SELECT pg_advisory_xact_lock({_SERVICE_LOCK_CLASS}, hashtext(service))
                FROM (SELECT DISTINCT service FROM e ORDER BY 1) s) l),
        {upserts}
        SELECT count(*) INTO emptied
        FROM ({" UNION ALL ".join(f"SELECT row_count FROM u{i}" for i in range(len(ROLLUPS)))}) x
        WHERE row_count = 0;"""


# Only a delete, or an update that moves rows to another key, can leave a bucket with no rows; the scan for
# such buckets runs only then (an upsert's update keeps every count).
_DROP_EMPTIED = "IF emptied > 0 THEN\n" + "".join(
    f"            DELETE FROM {table} WHERE row_count = 0;\n" for table, _, _ in ROLLUPS) + "        END IF;"

_FUNCTION = f"""
CREATE FUNCTION traffic_log_rollup() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT
SET work_mem = '64MB'
AS $fn$
DECLARE
    emptied bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_apply_deltas(_CHANGES["INSERT"])}
    ELSIF TG_OP = 'UPDATE' THEN
        {_apply_deltas(_CHANGES["UPDATE"])}
        {_DROP_EMPTIED}
    ELSE
        {_apply_deltas(_CHANGES["DELETE"])}
        {_DROP_EMPTIED}
    END IF;
    RETURN NULL;
END
$fn$"""

TRIGGERS = {
    "traffic_log_rollup_insert": "AFTER INSERT ON traffic_log REFERENCING NEW TABLE AS new_rows",
    "traffic_log_rollup_update": "AFTER UPDATE ON traffic_log REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "traffic_log_rollup_delete": "AFTER DELETE ON traffic_log REFERENCING OLD TABLE AS old_rows",
}


# --- upgrade -----------------------------------------------------------------------------------------------

def _week_start(t: datetime) -> datetime:
    return _WEEK_ORIGIN + ((t - _WEEK_ORIGIN) // _WEEK) * _WEEK


def _create_partition(conn: sa.Connection, start: datetime) -> None:
    name = f"traffic_log_p{start:%Y%m%d}"
    conn.exec_driver_sql(
        f"CREATE TABLE {name} PARTITION OF traffic_log FOR VALUES FROM ('{start.isoformat()}') "
        f"TO ('{(start + _WEEK).isoformat()}')")


def _totals(conn: sa.Connection, table: str) -> tuple[int, int]:
    count, total = conn.exec_driver_sql(f"SELECT count(*), coalesce(sum(requests), 0) FROM {table}").one()
    return int(count), int(total)


def _copy_checked(conn: sa.Connection, source: str, target: str) -> None:
    conn.exec_driver_sql(f"INSERT INTO {target} (ts, service, endpoint, requests) "
                         f"SELECT ts, service, endpoint, requests FROM {source}")
    before, after = _totals(conn, source), _totals(conn, target)
    if before != after:
        raise RuntimeError(f"copying {source} into {target} gave (rows, requests) {after}, expected {before}")


def _rollup_tables() -> None:
    for table, _, per_endpoint in ROLLUPS:
        keys = ["service", "bucket", "endpoint"] if per_endpoint else ["service", "bucket"]
        op.create_table(
            table,
            sa.Column("service", sa.Text, nullable=False),
            sa.Column("bucket", TS, nullable=False),
            *([sa.Column("endpoint", sa.Text, nullable=False)] if per_endpoint else []),
            sa.Column("requests", sa.BigInteger, nullable=False),
            sa.Column("row_count", sa.BigInteger, nullable=False),
            # Readers get the counts from the key alone (index-only): a rollup's rows are stored in the order
            # they were written, one bucket of every service after another, not by service.
            sa.PrimaryKeyConstraint(*keys, name=f"{table}_pkey", postgresql_include=["requests"]),
        )
        op.create_index(f"{table}_bucket_brin", table, ["bucket"], postgresql_using="brin")
    op.create_table(
        "traffic_horizon",
        sa.Column("relation", sa.Text, nullable=False),
        sa.Column("raw_kept_from", TS, nullable=False),
        sa.PrimaryKeyConstraint("relation", name="traffic_horizon_pkey"),
    )


def _fill_rollups(conn: sa.Connection) -> None:
    """Two passes over the rows (5-minute totals, hours per endpoint); the rest from the hours."""
    conn.exec_driver_sql(
        "INSERT INTO traffic_rollup_5m (service, bucket, requests, row_count) "
        f"SELECT service, date_bin('5 minutes', ts, {_ORIGIN}), sum(requests), count(*) FROM traffic_log "
        "GROUP BY 1, 2")
    conn.exec_driver_sql(
        "INSERT INTO traffic_rollup_hourly_endpoint (service, bucket, endpoint, requests, row_count) "
        f"SELECT service, date_bin('1 hour', ts, {_ORIGIN}), endpoint, sum(requests), count(*) FROM traffic_log "
        "GROUP BY 1, 2, 3")
    conn.exec_driver_sql(
        "INSERT INTO traffic_rollup_hourly (service, bucket, requests, row_count) "
        "SELECT service, bucket, sum(requests), sum(row_count) FROM traffic_rollup_hourly_endpoint GROUP BY 1, 2")
    conn.exec_driver_sql(
        "INSERT INTO traffic_rollup_daily_endpoint (service, bucket, endpoint, requests, row_count) "
        f"SELECT service, date_bin('1 day', bucket, {_ORIGIN}), endpoint, sum(requests), sum(row_count) "
        "FROM traffic_rollup_hourly_endpoint GROUP BY 1, 2, 3")


def upgrade() -> None:
    conn = op.get_bind()
    conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
    conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '512MB'")
    for name in reversed(_VIEWS_0002):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute("ALTER TABLE traffic_log RENAME TO traffic_log_unpartitioned")
    op.execute("ALTER TABLE traffic_log_unpartitioned RENAME CONSTRAINT traffic_log_pkey "
               "TO traffic_log_unpartitioned_pkey")
    op.execute("DROP INDEX traffic_log_service_ts_idx")
    op.execute("DROP INDEX traffic_log_ts_brin")

    # Keys and indexes are built after the copy: one sort per partition beats 50M single inserts.
    op.execute("""
        CREATE TABLE traffic_log (
            ts timestamptz NOT NULL,
            service text NOT NULL,
            endpoint text NOT NULL DEFAULT '*',
            requests bigint NOT NULL,
            CONSTRAINT traffic_log_requests_nonnegative CHECK (requests >= 0)
        ) PARTITION BY RANGE (ts)""")
    # Rows of a week without a partition land here instead of failing; maintenance moves them out.
    op.execute("CREATE TABLE traffic_log_default PARTITION OF traffic_log DEFAULT")
    weeks = {_week_start(w) for w in conn.exec_driver_sql(
        f"SELECT DISTINCT date_bin('7 days', ts, TIMESTAMPTZ '{_WEEK_ORIGIN.isoformat()}') "
        "FROM traffic_log_unpartitioned").scalars()}
    this_week = _week_start(datetime.now(UTC))
    weeks |= {this_week, this_week + _WEEK}
    for start in sorted(weeks):
        _create_partition(conn, start)
    _copy_checked(conn, "traffic_log_unpartitioned", "traffic_log")
    op.execute("ALTER TABLE traffic_log ADD CONSTRAINT traffic_log_pkey PRIMARY KEY (service, ts, endpoint)")
    op.execute("CREATE INDEX traffic_log_ts_brin ON traffic_log USING brin (ts)")
    op.execute("DROP TABLE traffic_log_unpartitioned")

    _rollup_tables()
    _fill_rollups(conn)
    op.execute(_FUNCTION)
    for name, when in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {when} FOR EACH STATEMENT EXECUTE FUNCTION traffic_log_rollup()")
    op.execute(_TOP_ENDPOINTS)
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


# --- downgrade ---------------------------------------------------------------------------------------------

def downgrade() -> None:
    conn = op.get_bind()
    conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '512MB'")
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON traffic_log")
    op.execute("DROP FUNCTION traffic_log_rollup()")
    op.execute("DROP FUNCTION traffic_top_endpoints_of(text)")
    for table in ("traffic_horizon", *(t for t, _, _ in reversed(ROLLUPS))):
        op.drop_table(table)

    op.execute("ALTER TABLE traffic_log RENAME TO traffic_log_partitioned")
    op.execute("ALTER TABLE traffic_log_partitioned RENAME CONSTRAINT traffic_log_pkey TO traffic_log_partitioned_pkey")
    op.execute("ALTER INDEX traffic_log_ts_brin RENAME TO traffic_log_partitioned_ts_brin")
    op.create_table(
        "traffic_log",
        sa.Column("ts", TS, nullable=False),
        sa.Column("service", sa.Text, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False, server_default="*"),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.CheckConstraint("requests >= 0", name="traffic_log_requests_nonnegative"),
    )
    _copy_checked(conn, "traffic_log_partitioned", "traffic_log")
    op.execute("ALTER TABLE traffic_log ADD CONSTRAINT traffic_log_pkey PRIMARY KEY (service, endpoint, ts)")
    op.create_index("traffic_log_service_ts_idx", "traffic_log", ["service", "ts"])
    op.create_index("traffic_log_ts_brin", "traffic_log", ["ts"], postgresql_using="brin")
    op.execute("DROP TABLE traffic_log_partitioned")  # and its partitions
    for name, body in _VIEWS_0002.items():
        op.execute(f"CREATE VIEW {name} AS {body}")

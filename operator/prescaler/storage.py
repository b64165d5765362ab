"""Upkeep of the traffic store: traffic_log's weekly partitions, retention, and a check of the rollups.

Partitions. traffic_log is range-partitioned on `ts` by UTC week (Monday to Monday). A week keeps the count
small (13 partitions for 90 days, 52 a year), so planning and the queries that cannot prune by time (a
service's newest minute) stay cheap, while one partition stays small enough to drop, vacuum and index
quickly (5M rows for 500 series at one minute). Retention drops whole weeks, so it keeps up to a week more
than asked. Partitions are created ahead by `maintain` and on demand by the importers, as a standalone table
then ATTACHed: readers go on throughout (no ACCESS EXCLUSIVE lock on traffic_log); writers wait the few
milliseconds it takes, since one that had already routed a row to the default partition would fail when the
ATTACH narrows it.

Rows of a week without a partition go to the DEFAULT partition instead of failing, so no writer (the
collector, psql) ever loses a row to a missing partition. Its cost: every ATTACH scans the default partition
under an exclusive lock on it, and rows there escape retention by partition. So it is kept empty: partitions
are made ahead, and `maintain` moves any rows it holds into proper partitions.

Rollups (5 minutes and hours per service; hours and days per service and endpoint) are kept exact by statement
triggers on traffic_log in the writer's own transaction (migration 0005), whoever writes. Writes that bypass
them (into a partition directly, TRUNCATE, a restore with triggers off) are found by `verify_rollups` and
repaired by `rebuild_rollups`. Rollups older than the raw horizon (where retention dropped the minutes) are
final: triggers leave them alone and rebuilds do not touch them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pandas as pd
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from prescaler.db import unavailable_on_error
from prescaler.errors import DataUnavailable, InputError
from prescaler.history import Retention, TrafficSource, uses_rollups

TABLE = "traffic_log"
DEFAULT_PARTITION = "traffic_log_default"
WEEK = timedelta(days=7)
WEEK_ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)
ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)  # the rollups' bucket origin (migration 0005)
# The rollups (migration 0005): table -> (bucket width, per endpoint).
ROLLUPS = {
    "traffic_rollup_5m": ("5 minutes", False),
    "traffic_rollup_hourly": ("1 hour", False),
    "traffic_rollup_hourly_endpoint": ("1 hour", True),
    "traffic_rollup_daily_endpoint": ("1 day", True),
}
# Partition DDL from several processes (maintain, importers) is serialised: two ATTACHes waiting for each
# other's locks on the default partition would deadlock.
_DDL_LOCK_KEY = 0x7072657374726166  # "prestraf"
LOCK_TIMEOUT = "5s"
_ATTEMPTS = 3

T = TypeVar("T")


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime | None  # None for the default partition (or an unbounded one)
    end: datetime | None


def week_start(t: datetime) -> datetime:
    """Start (Monday 00:00 UTC) of the partition week holding `t`."""
    return WEEK_ORIGIN + ((t.astimezone(UTC) - WEEK_ORIGIN) // WEEK) * WEEK


def partition_name(start: datetime) -> str:
    return f"{TABLE}_p{start.astimezone(UTC):%Y%m%d}"


def _day_floor(t: datetime) -> datetime:
    return ORIGIN + ((t.astimezone(UTC) - ORIGIN) // DAY) * DAY


def _day_ceil(t: datetime) -> datetime:
    floor = _day_floor(t)
    return floor if floor == t else floor + DAY


_BOUND = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")


def _bound(text: str) -> datetime | None:
    text = text.strip()
    if text.upper() in ("MINVALUE", "MAXVALUE"):
        return None
    return pd.Timestamp(text.strip("'")).tz_convert(UTC).to_pydatetime()


def partitions(conn: Connection) -> list[Partition]:
    """traffic_log's partitions, the default one last."""
    rows = conn.exec_driver_sql(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'traffic_log'::regclass").all()
    found = []
    for name, bound in rows:
        m = _BOUND.match(bound)
        found.append(Partition(name, _bound(m.group(1)), _bound(m.group(2))) if m else Partition(name, None, None))
    return sorted(found, key=lambda p: (p.start is None and p.end is None, p.start or datetime.min.replace(tzinfo=UTC)))


def raw_horizon(conn: Connection) -> datetime | None:
    """Where retention has dropped traffic_log's minutes (rollups before it are final), or None."""
    value = conn.exec_driver_sql(
        "SELECT raw_kept_from FROM traffic_horizon WHERE relation = 'traffic_log'").scalar()
    return None if value is None else value.astimezone(UTC)


def _retrying(action: str, work: Callable[[], T]) -> T:
    """DDL waits at most LOCK_TIMEOUT for its locks (so it never queues every reader behind a long query);
    a timeout (or a deadlock with some other session) is retried a few times, then reported as transient."""
    for attempt in range(_ATTEMPTS):
        try:
            return work()
        except sa_exc.OperationalError as exc:
            transient = any(m in str(exc.orig) for m in ("lock timeout", "deadlock detected"))
            if not transient or attempt == _ATTEMPTS - 1:
                detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
                raise DataUnavailable(f"{action}: {detail}") from exc
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _ddl_transaction(conn: Connection) -> None:
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")  # bounds the advisory wait too
    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": _DDL_LOCK_KEY})


# --- partitions --------------------------------------------------------------------------------------------

def _overlaps(start: datetime, existing: Sequence[Partition]) -> bool:
    end = start + WEEK
    return any((p.start is None or p.start < end) and (p.end is None or p.end > start)
               for p in existing if not (p.start is None and p.end is None))


def _attach_week(conn: Connection, start: datetime) -> int:
    """Create the week's partition, moving in any rows the default partition holds for it; returns rows moved."""
    _ddl_transaction(conn)
    if _overlaps(start, partitions(conn)):
        return 0  # made meanwhile by another process
    name, end = partition_name(start), start + WEEK
    bounds = {"start": start, "end": end}
    # Writers wait (readers do not) while the partition is made: a writer that had already routed a row to the
    # default partition would otherwise fail once the ATTACH narrows it. The lock waits for writers in flight.
    conn.exec_driver_sql(f"LOCK TABLE ONLY {TABLE} IN SHARE MODE")
    conn.exec_driver_sql(f"LOCK TABLE {DEFAULT_PARTITION} IN ACCESS EXCLUSIVE MODE")
    conn.exec_driver_sql(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    moved = 0
    stray = conn.exec_driver_sql(
        f"SELECT EXISTS (SELECT 1 FROM {DEFAULT_PARTITION} WHERE ts >= %(start)s AND ts < %(end)s)", bounds).scalar()
    if stray:
        # Straight into the partitions, past traffic_log's triggers: the rows move, the rollups already count them.
        moved = conn.exec_driver_sql(
            f"WITH gone AS (DELETE FROM {DEFAULT_PARTITION} WHERE ts >= %(start)s AND ts < %(end)s RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM gone", bounds).rowcount
    conn.exec_driver_sql(
        f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM (%(start)s) TO (%(end)s)", bounds)
    return int(moved)


@dataclass(frozen=True)
class PartitionChange:
    created: tuple[str, ...] = ()
    moved_rows: int = 0


def ensure_partitions(engine: Engine, times: Iterable[datetime]) -> PartitionChange:
    """Partitions for the weeks holding `times` (one transaction each); existing ones are left alone."""
    weeks = sorted({week_start(t) for t in times})
    with unavailable_on_error("listing traffic partitions"), engine.connect() as conn:
        existing = partitions(conn)
    created, moved = [], 0
    for start in weeks:
        if _overlaps(start, existing):
            continue

        def attach(start: datetime = start) -> int:
            with engine.begin() as conn:
                return _attach_week(conn, start)

        with unavailable_on_error(f"creating partition {partition_name(start)}"):
            moved += _retrying(f"creating partition {partition_name(start)}", attach)
        created.append(partition_name(start))
    return PartitionChange(tuple(created), moved)


def move_default_rows(engine: Engine) -> PartitionChange:
    """Give every week found in the default partition its own partition, moving the rows there."""
    with unavailable_on_error("reading the default traffic partition"), engine.connect() as conn:
        weeks = conn.exec_driver_sql(
            f"SELECT DISTINCT date_bin('7 days', ts, %(origin)s) FROM {DEFAULT_PARTITION}",
            {"origin": WEEK_ORIGIN}).scalars().all()
        horizon = raw_horizon(conn)
    # Rows of weeks retention has already dropped stay where they are, for drop_expired to delete.
    return ensure_partitions(engine, [w for w in weeks if horizon is None or w + WEEK > horizon])


@dataclass(frozen=True)
class Expired:
    dropped: tuple[str, ...] = ()
    horizon: datetime | None = None
    default_rows: int = 0


def drop_expired(engine: Engine, cutoff: datetime) -> Expired:
    """Drop the partitions that end at or before `cutoff` and advance the raw horizon to the newest end.

    The horizon moves in the same transaction as the drop, so no trigger ever sees the minutes gone while
    their rollups are still open to change.
    """
    def drop() -> Expired:
        with engine.begin() as conn:
            _ddl_transaction(conn)
            old = [p for p in partitions(conn) if p.end is not None and p.end <= cutoff]
            for p in old:
                conn.exec_driver_sql(f"DROP TABLE {p.name}")
            if old:
                conn.exec_driver_sql(
                    "INSERT INTO traffic_horizon (relation, raw_kept_from) VALUES ('traffic_log', %(h)s) "
                    "ON CONFLICT (relation) DO UPDATE "
                    "SET raw_kept_from = greatest(traffic_horizon.raw_kept_from, EXCLUDED.raw_kept_from)",
                    {"h": max(p.end for p in old if p.end is not None)})
            horizon = raw_horizon(conn)
            stray = 0
            if horizon is not None:
                # Past the triggers on purpose: expired minutes leave the (final) rollups as they are.
                stray = conn.exec_driver_sql(
                    f"DELETE FROM {DEFAULT_PARTITION} WHERE ts < %(h)s", {"h": horizon}).rowcount
            return Expired(tuple(p.name for p in old), horizon, int(stray))

    with unavailable_on_error("dropping expired traffic partitions"):
        return _retrying("dropping expired traffic partitions", drop)


# --- rollups -----------------------------------------------------------------------------------------------

def _service_filter(services: Sequence[str] | None, column: str = "service") -> str:
    return "" if services is None else f" AND {column} = ANY(%(services)s)"


def rebuild_rollups(engine: Engine, start: datetime, end: datetime,
                    services: Sequence[str] | None = None) -> int:
    """Recompute the rollups of the whole UTC days touching [start, end) from traffic_log; returns rows written.

    Only needed after writes that bypassed traffic_log's triggers. Days before the raw horizon are skipped
    (their minutes are gone and their rollups final). Writers wait while it runs; readers do not.
    """
    lo, hi = _day_floor(start), _day_ceil(end)
    services = None if services is None else sorted(set(services))

    def rebuild() -> int:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            conn.exec_driver_sql("SET LOCAL work_mem = '128MB'")
            conn.exec_driver_sql(f"LOCK TABLE {TABLE} IN SHARE MODE")
            horizon = raw_horizon(conn)
            first = max(lo, horizon) if horizon is not None else lo
            if first >= hi:
                return 0
            params: dict[str, object] = {"lo": first, "hi": hi, "origin": ORIGIN, "services": services}
            where = f"WHERE ts >= %(lo)s AND ts < %(hi)s{_service_filter(services)}"
            for table in ROLLUPS:
                conn.exec_driver_sql(
                    f"DELETE FROM {table} WHERE bucket >= %(lo)s AND bucket < %(hi)s{_service_filter(services)}",
                    params)
            # Two passes over the rows (5-minute totals, hours per endpoint); the rest from the hours.
            written = 0
            written += conn.exec_driver_sql(
                "INSERT INTO traffic_rollup_5m (service, bucket, requests, row_count) "
                f"SELECT service, date_bin('5 minutes', ts, %(origin)s), sum(requests), count(*) FROM {TABLE} "
                f"{where} GROUP BY 1, 2", params).rowcount
            written += conn.exec_driver_sql(
                "INSERT INTO traffic_rollup_hourly_endpoint (service, bucket, endpoint, requests, row_count) "
                f"SELECT service, date_bin('1 hour', ts, %(origin)s), endpoint, sum(requests), count(*) "
                f"FROM {TABLE} {where} GROUP BY 1, 2, 3", params).rowcount
            hours = ("FROM traffic_rollup_hourly_endpoint WHERE bucket >= %(lo)s AND bucket < %(hi)s"
                     + _service_filter(services))
            written += conn.exec_driver_sql(
                "INSERT INTO traffic_rollup_hourly (service, bucket, requests, row_count) "
                f"SELECT service, bucket, sum(requests), sum(row_count) {hours} GROUP BY 1, 2", params).rowcount
            written += conn.exec_driver_sql(
                "INSERT INTO traffic_rollup_daily_endpoint (service, bucket, endpoint, requests, row_count) "
                "SELECT service, date_bin('1 day', bucket, %(origin)s), endpoint, sum(requests), sum(row_count) "
                f"{hours} GROUP BY 1, 2, 3", params).rowcount
            return int(written)

    with unavailable_on_error("rebuilding traffic rollups"):
        return _retrying("rebuilding traffic rollups", rebuild)


def verify_rollups(engine: Engine, since: datetime) -> list[tuple[str, datetime]]:
    """(service, day) pairs from the day holding `since` on whose daily rollup disagrees with traffic_log.

    One statement, so one snapshot: a write in flight is in neither side and never shows as a difference.
    """
    with unavailable_on_error("checking traffic rollups"), engine.connect() as conn:
        horizon = raw_horizon(conn)
        lo = _day_floor(since)
        if horizon is not None:
            lo = max(lo, horizon)
        rows = conn.exec_driver_sql(
            "WITH raw AS (SELECT service, endpoint, date_bin('1 day', ts, %(origin)s) AS bucket, "
            f"sum(requests) AS requests, count(*) AS row_count FROM {TABLE} WHERE ts >= %(lo)s GROUP BY 1, 2, 3), "
            "kept AS (SELECT service, endpoint, bucket, requests, row_count FROM traffic_rollup_daily_endpoint "
            "WHERE bucket >= %(lo)s) "
            "SELECT DISTINCT service, bucket FROM raw FULL JOIN kept USING (service, endpoint, bucket) "
            "WHERE raw.requests IS DISTINCT FROM kept.requests OR raw.row_count IS DISTINCT FROM kept.row_count "
            "ORDER BY 2, 1", {"origin": ORIGIN, "lo": lo}).all()
    return [(str(s), b.astimezone(UTC)) for s, b in rows]


def refresh_rollups(engine: Engine, start: datetime, end: datetime,
                    services: Sequence[str] | None = None) -> int:
    """Make the rollups of [start, end) (optionally of some services) right after a write that bypassed the
    triggers; returns the days repaired. A writer that goes through traffic_log (the collector's upserts,
    `prescaler import`) never needs it: its rollups change in its own transaction."""
    wanted = None if services is None else set(services)
    bad = [(s, d) for s, d in verify_rollups(engine, start)
           if d < end and (wanted is None or s in wanted)]
    for service, day in bad:
        rebuild_rollups(engine, day, day + DAY, [service])
    return len(bad)


# --- retention ---------------------------------------------------------------------------------------------

def _longest(values: Iterable[timedelta | None]) -> timedelta | None:
    """Several sources on one table: the longest wish wins (None, keep forever, beats any)."""
    out: timedelta | None = timedelta(0)
    for v in values:
        out = None if v is None or out is None else max(out, v)
    return out


def retention_by_table(sources: Mapping[str, TrafficSource]) -> dict[str, Retention]:
    """Each table's retention from the sources that read it; rollup retention only on traffic_log."""
    by_table: dict[str, list[tuple[str, TrafficSource]]] = {}
    for name, src in sources.items():
        by_table.setdefault(src.table, []).append((name, src))
    out: dict[str, Retention] = {}
    for table, named in by_table.items():
        for name, src in named:
            r = src.retention
            if (r.rollup_5m, r.hourly, r.daily) != (None, None, None) and not uses_rollups(src):
                raise InputError(f"data source {name!r}: retention of rollups (5m, hourly, daily) applies only to "
                                 f"the traffic_log table with its own columns, not to {table!r}")
        if all(src.retention == Retention() for _, src in named):
            continue
        rs = [src.retention for _, src in named]
        out[table] = Retention(raw=_longest(r.raw for r in rs), rollup_5m=_longest(r.rollup_5m for r in rs),
                               hourly=_longest(r.hourly for r in rs), daily=_longest(r.daily for r in rs))
    return out


def _delete_before(engine: Engine, table_sql: str, column_sql: str, cutoff: datetime) -> int:
    with unavailable_on_error(f"applying retention to {table_sql}"), engine.begin() as conn:
        return int(conn.exec_driver_sql(f"DELETE FROM {table_sql} WHERE {column_sql} < %(cutoff)s",
                                        {"cutoff": cutoff}).rowcount)


# --- maintain ----------------------------------------------------------------------------------------------

@dataclass
class MaintenanceReport:
    created: list[str] = field(default_factory=list)
    moved_rows: int = 0
    repaired: list[tuple[str, datetime]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    horizon: datetime | None = None
    deleted: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"partitions: {len(self.created)} created"
               + (f" ({', '.join(self.created)})" if self.created else "")
               + f", {self.moved_rows:,} rows moved out of the default partition"]
        if self.repaired:
            days = ", ".join(f"{s} {d:%Y-%m-%d}" for s, d in self.repaired[:5])
            more = f" and {len(self.repaired) - 5} more" if len(self.repaired) > 5 else ""
            out.append(f"rollups: {len(self.repaired)} service-days repaired ({days}{more})")
        else:
            out.append("rollups: consistent with traffic_log")
        retention = f"retention: {len(self.dropped)} partitions dropped" + (
            f" ({', '.join(self.dropped)})" if self.dropped else "")
        if self.horizon is not None:
            retention += f", raw minutes kept from {self.horizon:%Y-%m-%d %H:%M}"
        deleted = [f"{n:,} rows from {t}" for t, n in self.deleted.items() if n]
        out.append(retention + (f"; deleted {', '.join(deleted)}" if deleted else ""))
        return out


def maintain(engine: Engine, sources: Mapping[str, TrafficSource], *, now: datetime,
             ahead: timedelta = timedelta(days=14), verify: timedelta | None = timedelta(days=2)) -> MaintenanceReport:
    """Idempotent upkeep: partitions for [this week, now + ahead], the default partition emptied, the rollups
    of the last `verify` checked and repaired, then each source's retention applied."""
    if now.tzinfo is None:
        raise InputError(f"now must be timezone-aware, got {now!r}")
    plan = retention_by_table(sources)
    report = MaintenanceReport()

    clock = time.perf_counter()
    weeks = [week_start(now) + i * WEEK for i in range(int(ahead / WEEK) + 2)
             if week_start(now) + i * WEEK <= now + ahead]
    made = ensure_partitions(engine, weeks)
    moved = move_default_rows(engine)
    report.created = [*made.created, *moved.created]
    report.moved_rows = made.moved_rows + moved.moved_rows
    report.seconds["partitions"] = time.perf_counter() - clock

    clock = time.perf_counter()
    if verify is not None:
        report.repaired = verify_rollups(engine, now - verify)
        for service, day in report.repaired:
            rebuild_rollups(engine, day, day + DAY, [service])
    report.seconds["rollups"] = time.perf_counter() - clock

    clock = time.perf_counter()
    preparer = engine.dialect.identifier_preparer
    for table, keep in plan.items():
        if table == TABLE:
            if keep.raw is not None:
                expired = drop_expired(engine, now - keep.raw)
                report.dropped, report.horizon = list(expired.dropped), expired.horizon
                report.deleted[DEFAULT_PARTITION] = expired.default_rows
            for rollup, days in (("traffic_rollup_5m", keep.rollup_5m), ("traffic_rollup_hourly", keep.hourly),
                                 ("traffic_rollup_hourly_endpoint", keep.hourly),
                                 ("traffic_rollup_daily_endpoint", keep.daily)):
                if days is not None:
                    report.deleted[rollup] = _delete_before(engine, rollup, "bucket", now - days)
        elif keep.raw is not None:
            src = next(s for s in sources.values() if s.table == table)
            q = src.quoted(preparer)
            report.deleted[table] = _delete_before(engine, q["table"], q["ts"], now - keep.raw)
    report.seconds["retention"] = time.perf_counter() - clock
    return report

"""Writing collected minutes: rows and the feed's progress in one transaction.

Prometheus minutes are upserted on (service, endpoint, ts) with their value, so collecting a range again
leaves identical rows; the series' watermark advances with them. Kafka counts are *added* to their minute,
so a batch must be applied exactly once: its partitions' offsets move in the same transaction, and only from
the offsets the batch started at (a compare-and-set), so a batch replayed after a crash, or written by a
consumer that lost its partitions meanwhile, is refused whole. The source's table needs the unique key
(traffic_log has it as its primary key). Identifiers come from the administrator's `TrafficSource`
(validated, quoted); every value is a bound parameter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from prescaler.collect.feed import CollectError
from prescaler.db import collector_kafka_offsets, collector_watermarks
from prescaler.history import TrafficSource


@dataclass(frozen=True)
class Watermark:
    backfill_from: datetime
    collected_until: datetime


@contextlib.contextmanager
def database_errors(action: str) -> Iterator[None]:
    """A server that cannot be reached is transient; anything else it refuses is the configuration's fault."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise CollectError("database_unavailable", f"database unavailable while {action}: {detail}",
                           transient=True) from exc
    except sa_exc.DBAPIError as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise CollectError("database", f"database refused {action}: {detail}", transient=False) from exc


def load_watermarks(engine: Engine, feed: str, source: str) -> dict[str, Watermark]:
    """The feed's watermarks by series; one recorded for another source is ignored (that source starts over)."""
    w = collector_watermarks
    stmt = sa.select(w.c.series, w.c.backfill_from, w.c.collected_until).where(w.c.feed == feed,
                                                                                w.c.source == source)
    with database_errors(f"reading the watermarks of feed {feed!r}"), engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return {r[0]: Watermark(r[1].astimezone(UTC), r[2].astimezone(UTC)) for r in rows}


class MinuteWriter:
    """Upserts one series' minutes into a source's table and advances its watermark, atomically."""

    def __init__(self, engine: Engine, source: TrafficSource) -> None:
        self.engine = engine
        q = source.quoted(engine.dialect.identifier_preparer)
        # Epoch seconds travel as a bigint array: exact, and one statement per chunk whatever its length.
        self._upsert = sa.text(
            f"INSERT INTO {q['table']} AS t ({q['ts']}, {q['service']}, {q['endpoint']}, {q['value']}) "
            "SELECT TIMESTAMPTZ 'epoch' + x.s * INTERVAL '1 second', :service, :endpoint, x.v "
            "FROM unnest(CAST(:starts AS bigint[]), CAST(:values AS bigint[])) AS x(s, v) "
            f"ON CONFLICT ({q['service']}, {q['endpoint']}, {q['ts']}) "
            f"DO UPDATE SET {q['value']} = EXCLUDED.{q['value']} "
            f"WHERE t.{q['value']} IS DISTINCT FROM EXCLUDED.{q['value']}"
        )

    def write(self, *, feed: str, source_name: str, service: str, endpoint: str, starts: Sequence[int],
              values: Sequence[int], backfill_from: datetime, collected_until: datetime) -> int:
        """Rows (bucket start in epoch seconds, requests) and the new watermark; returns rows inserted or changed."""
        with database_errors(f"writing {len(starts)} minutes of {service!r} (feed {feed!r})"), \
                self.engine.begin() as conn:
            written = 0
            if starts:
                written = int(conn.execute(self._upsert, {
                    "service": service, "endpoint": endpoint, "starts": list(starts), "values": list(values),
                }).rowcount)
            self._advance(conn, feed, source_name, service, backfill_from, collected_until)
        return written

    @staticmethod
    def _advance(conn: Connection, feed: str, source_name: str, series: str, backfill_from: datetime,
                 collected_until: datetime) -> None:
        w = collector_watermarks
        stmt = pg_insert(w).values(feed=feed, series=series, source=source_name, backfill_from=backfill_from,
                                   collected_until=collected_until, updated_at=sa.func.now())
        # Never backwards: a second writer (before leader election exists) cannot undo the first one's progress;
        # a watermark of another source is replaced, since that source starts over.
        stmt = stmt.on_conflict_do_update(
            constraint="collector_watermarks_pkey",
            set_={"source": stmt.excluded.source, "backfill_from": stmt.excluded.backfill_from,
                  "collected_until": stmt.excluded.collected_until, "updated_at": stmt.excluded.updated_at},
            where=sa.or_(w.c.source != stmt.excluded.source, w.c.collected_until <= stmt.excluded.collected_until),
        )
        conn.execute(stmt)


# --- Kafka: counts added exactly once, fenced by the partitions' stored offsets ---------------------------

_UNIQUE_VIOLATION = "23505"


@dataclass(frozen=True)
class PartitionMark:
    """What the database holds for one partition: the next offset to count, and its stream time."""

    next_offset: int
    stream_time: float | None  # epoch seconds of the newest event seen (capped at the clock)


@dataclass(frozen=True)
class OffsetMove:
    partition: int
    expected: int | None  # the stored next_offset the batch started from; None: no row yet
    next_offset: int
    stream_time: float | None


class Fenced(Exception):
    """The stored offsets are not where the batch started: another consumer wrote these partitions."""


def load_offsets(engine: Engine, feed: str, source: str, topic: str,
                 partitions: Iterable[int]) -> dict[int, PartitionMark]:
    o = collector_kafka_offsets
    stmt = sa.select(o.c.partition, o.c.next_offset, o.c.stream_time).where(
        o.c.feed == feed, o.c.source == source, o.c.topic == topic, o.c.partition.in_(list(partitions)))
    with database_errors(f"reading the offsets of feed {feed!r}"), engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return {int(r[0]): PartitionMark(int(r[1]), r[2].timestamp() if r[2] is not None else None) for r in rows}


def _epoch(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


class CountWriter:
    """Adds one batch's per-minute counts to a source's table and moves its partitions' offsets, atomically."""

    def __init__(self, engine: Engine, source: TrafficSource) -> None:
        self.engine = engine
        q = source.quoted(engine.dialect.identifier_preparer)
        self._add = sa.text(
            f"INSERT INTO {q['table']} AS t ({q['ts']}, {q['service']}, {q['endpoint']}, {q['value']}) "
            "SELECT TIMESTAMPTZ 'epoch' + x.s * INTERVAL '1 second', x.svc, x.ep, x.v "
            "FROM unnest(CAST(:starts AS bigint[]), CAST(:services AS text[]), CAST(:endpoints AS text[]), "
            "CAST(:values AS bigint[])) AS x(s, svc, ep, v) "
            f"ON CONFLICT ({q['service']}, {q['endpoint']}, {q['ts']}) "
            f"DO UPDATE SET {q['value']} = t.{q['value']} + EXCLUDED.{q['value']}"
        )
        o = collector_kafka_offsets
        self._advance = (
            sa.update(o)
            .where(o.c.feed == sa.bindparam("f"), o.c.source == sa.bindparam("src"), o.c.topic == sa.bindparam("t"),
                   o.c.partition == sa.bindparam("p"), o.c.next_offset == sa.bindparam("expected"))
            .values(next_offset=sa.bindparam("n"), stream_time=sa.bindparam("st"), updated_at=sa.func.now())
        )

    def write(self, *, feed: str, source_name: str, topic: str,
              counts: Mapping[tuple[int, str, str], int], moves: Sequence[OffsetMove]) -> int:
        """Counts keyed by (bucket start in epoch seconds, service, endpoint); returns rows inserted or updated.

        Raises Fenced (nothing written) when a partition's stored offset is not the move's `expected`."""
        with database_errors(f"adding {len(counts)} minute counts (feed {feed!r})"):
            try:
                with self.engine.begin() as conn:
                    # Offsets first: a fenced batch stops before the heavier row upsert.
                    for move in moves:
                        self._move(conn, feed, source_name, topic, move)
                    if not counts:
                        return 0
                    keys = list(counts)
                    return int(conn.execute(self._add, {
                        "starts": [k[0] for k in keys], "services": [k[1] for k in keys],
                        "endpoints": [k[2] for k in keys], "values": [counts[k] for k in keys],
                    }).rowcount)
            except sa_exc.IntegrityError as exc:
                if getattr(exc.orig, "pgcode", None) == _UNIQUE_VIOLATION and _offsets_key(exc):
                    raise Fenced(f"another consumer stored the first offsets of feed {feed!r}") from exc
                raise

    def _move(self, conn: Connection, feed: str, source_name: str, topic: str, move: OffsetMove) -> None:
        if move.expected is None:
            # A plain insert: if another consumer created the row meanwhile, the unique key refuses it.
            conn.execute(collector_kafka_offsets.insert().values(
                feed=feed, source=source_name, topic=topic, partition=move.partition,
                next_offset=move.next_offset, stream_time=_epoch(move.stream_time)))
            return
        done = conn.execute(self._advance, {"f": feed, "src": source_name, "t": topic, "p": move.partition,
                                            "expected": move.expected, "n": move.next_offset,
                                            "st": _epoch(move.stream_time)})
        if done.rowcount != 1:
            raise Fenced(f"partition {move.partition} of {topic!r} is no longer at offset {move.expected}")


def _offsets_key(exc: sa_exc.IntegrityError) -> bool:
    diag = getattr(exc.orig, "diag", None)
    return getattr(diag, "constraint_name", None) == "collector_kafka_offsets_pkey"

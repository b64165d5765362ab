"""Writing collected minutes: rows and the series' watermark in one transaction.

Rows are upserted on (service, endpoint, ts), so collecting a range again leaves identical rows; the source's
table needs that unique key (traffic_log has it as its primary key). Identifiers come from the administrator's
`TrafficSource` (validated, quoted); every value is a bound parameter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from prescaler.collect.feed import CollectError
from prescaler.db import collector_watermarks
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

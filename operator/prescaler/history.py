"""History reads: request counts bucketed to a step in SQL, with missing buckets kept as NaN.

Table and column names come only from the administrator's configuration (`TrafficSource`), are validated
as plain identifiers and quoted; every value (service, time range, step) is a bound parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
import yaml
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from prescaler.db import traffic_events, unavailable_on_error
from prescaler.durations import format_duration, parse_duration
from prescaler.errors import DataUnavailable, InputError

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _check_identifier(field_name: str, value: object, *, qualified: bool = False) -> str:
    if not isinstance(value, str):
        raise InputError(f"{field_name}: identifier must be a string, got {value!r}")
    parts = value.split(".") if qualified else [value]
    if len(parts) > 2 or not all(_IDENT.match(p) and len(p) <= 63 for p in parts):
        what = "a table name (optionally schema.table)" if qualified else "a column name"
        raise InputError(f"{field_name}: {value!r} is not {what} of letters, digits and _")
    return value


# `retention:` of a source: a duration for the raw minutes alone, or a mapping of these keys.
RETENTION_KEYS = {"raw": "raw", "5m": "rollup_5m", "hourly": "hourly", "daily": "daily"}
_KEEP_FOREVER = ("forever", "")


@dataclass(frozen=True)
class Retention:
    """How long a source's data is kept, per level; None keeps it forever (the default for every level).

    Rollups must outlive the minutes they summarise: a history read at a 5-minute multiple, and the
    dashboard's views, read the rollups, and must not find them empty where the minutes still are.
    """

    raw: timedelta | None = None
    rollup_5m: timedelta | None = None
    hourly: timedelta | None = None
    daily: timedelta | None = None

    def __post_init__(self) -> None:
        names = {v: k for k, v in RETENTION_KEYS.items()}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value < timedelta(days=1):
                raise InputError(f"retention.{names[f.name]}: {format_duration(value)} is shorter than a day")
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if self.raw is not None and value is not None and value < self.raw:
                raise InputError(f"retention.{names[f.name]}: {format_duration(value)} is shorter than "
                                 f"retention.raw ({format_duration(self.raw)}); rollups must outlive the minutes")


def parse_retention(value: object) -> Retention:
    """`90d` (raw minutes only) or `{raw: 90d, 5m: 400d, hourly: 800d, daily: forever}`; absent keeps all."""
    def duration(key: str, text: object) -> timedelta | None:
        if text is None or (isinstance(text, str) and text.strip().lower() in _KEEP_FOREVER):
            return None
        if not isinstance(text, str):
            raise InputError(f"{key}: expected a duration such as 90d or 'forever', got {text!r}")
        return parse_duration(text, field=key)

    if value is None:
        return Retention()
    if isinstance(value, str):
        return Retention(raw=duration("retention", value))
    if not isinstance(value, dict):
        raise InputError(f"retention: expected a duration (raw minutes) or a mapping of {sorted(RETENTION_KEYS)}, "
                         f"got {value!r}")
    unknown = sorted(str(k) for k in value if k not in RETENTION_KEYS)
    if unknown:
        raise InputError(f"retention: unknown keys {unknown}; allowed: {list(RETENTION_KEYS)}")
    return Retention(**{RETENTION_KEYS[k]: duration(f"retention.{k}", v) for k, v in value.items()})


@dataclass(frozen=True)
class TrafficSource:
    """Where a series lives: one table with a time, a count, a service and an endpoint column, and how long
    its data is kept (`retention`, parsed from the administrator's text when given as such)."""

    table: str = "traffic_log"
    time_column: str = "ts"
    value_column: str = "requests"
    service_column: str = "service"
    endpoint_column: str = "endpoint"
    retention: Retention = Retention()

    def __post_init__(self) -> None:
        _check_identifier("table", self.table, qualified=True)
        for f in fields(self):
            if f.name not in ("table", "retention"):
                _check_identifier(f.name, getattr(self, f.name))
        if not isinstance(self.retention, Retention):
            object.__setattr__(self, "retention", parse_retention(self.retention))

    def quoted(self, preparer: Any) -> dict[str, str]:
        """Identifiers quoted for the dialect, for use in SQL text."""
        table = ".".join(preparer.quote_identifier(p) for p in self.table.split("."))
        return {
            "table": table, "ts": preparer.quote_identifier(self.time_column),
            "value": preparer.quote_identifier(self.value_column),
            "service": preparer.quote_identifier(self.service_column),
            "endpoint": preparer.quote_identifier(self.endpoint_column),
        }


@contextlib.contextmanager
def _source_errors(source: TrafficSource) -> Iterator[None]:
    """A source naming a missing table or column (or a non-numeric value column) leaves the series unreadable.

    Reported as DataUnavailable with the server's reason, so the operator shows it as a condition and the
    administrator can fix the configuration; the tenant's CR cannot cause it.
    """
    try:
        yield
    except sa_exc.ProgrammingError as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise DataUnavailable(f"data source table {source.table!r} cannot be read as configured: {detail}") from exc


def default_source() -> TrafficSource:
    return TrafficSource()


def uses_rollups(source: TrafficSource) -> bool:
    """Whether the source is prescaler's own traffic_log, which has rollups (see prescaler.storage)."""
    plain = TrafficSource()
    return all(getattr(source, f.name) == getattr(plain, f.name) for f in fields(plain) if f.name != "retention")


CONFIG_SECTIONS = ("sources", "feeds")


def read_config(path: Path | None) -> dict[str, Any]:
    """The administrator's YAML file as a mapping: `sources:` (read here) and `feeds:` (read by the collector).

    One file holds both so a feed can only write into a source the operator reads from; an unknown
    top-level key is an error rather than a silently ignored typo.
    """
    if path is None:
        return {}
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"cannot read data source config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"data source config {path} is not valid YAML: {exc}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise InputError(f"data source config {path}: expected a mapping 'sources: {{NAME: {{table: ...}}}}'")
    unknown = sorted(str(k) for k in doc if k not in CONFIG_SECTIONS)
    if unknown:
        raise InputError(f"data source config {path}: unknown top-level keys {unknown}; "
                         f"allowed: {list(CONFIG_SECTIONS)}")
    return doc


def parse_sources(doc: dict[str, Any], path: Path | None = None) -> dict[str, TrafficSource]:
    """The `sources:` section of a config document (see `read_config`), with "default" always present."""
    sources = {"default": default_source()}
    section = doc.get("sources") or {}
    if not isinstance(section, dict):
        raise InputError(f"data source config {path}: expected a mapping 'sources: {{NAME: {{table: ...}}}}'")
    allowed = {f.name for f in fields(TrafficSource)}
    for name, spec in section.items():
        if not isinstance(name, str) or not re.match(r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$", name):
            raise InputError(f"data source config {path}: invalid source name {name!r}")
        spec = spec or {}
        if not isinstance(spec, dict):
            raise InputError(f"data source {name!r}: expected a mapping of table and column names")
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise InputError(f"data source {name!r}: unknown keys {unknown}; allowed: {sorted(allowed)}")
        try:
            sources[name] = TrafficSource(**spec)
        except InputError as exc:
            raise InputError(f"data source {name!r}: {exc}") from exc
    return sources


def load_sources(path: Path | None) -> dict[str, TrafficSource]:
    """Data sources from the administrator's YAML (`sources: {NAME: {table: ..., ...}}`).

    "default" (the `traffic_log` table) is always present unless the file redefines it.
    """
    return parse_sources(read_config(path), path)


def _utc(value: datetime, what: str) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        raise InputError(f"{what} must be timezone-aware, got {value!r}")
    return ts.tz_convert(UTC)


def grid(start: datetime, end: datetime, step: timedelta) -> pd.DatetimeIndex:
    """Epoch-anchored bucket starts from the bucket holding `start` to the last before `end`."""
    if step <= timedelta(0):
        raise InputError(f"step must be positive, got {step}")
    s, e = _utc(start, "start"), _utc(end, "end")
    step_td = pd.Timedelta(step)
    first = pd.Timestamp(_EPOCH) + ((s - pd.Timestamp(_EPOCH)) // step_td) * step_td
    if e <= first:
        return pd.DatetimeIndex([], tz=UTC, name="ds")
    return pd.date_range(first, e - pd.Timedelta(1, "ns"), freq=step_td, name="ds", inclusive="both")


ROLLUP_STEP = timedelta(minutes=5)
# A 5-minute multiple sums 5-minute rollup buckets; a final bucket cut by `end` inside 5 minutes takes its
# minutes from traffic_log. The rollup has a bucket exactly where traffic_log has rows, so gaps stay NaN.
# Summed as doubles (exact for whole numbers below 2**53, so the same values as the rows' numeric sum),
# which halves the server's time for the aggregate.
_FROM_ROLLUP = (
    "SELECT date_bin(:step, b, :origin) AS bucket, sum(v) AS v FROM ("
    " SELECT bucket AS b, requests::double precision AS v FROM traffic_rollup_5m"
    " WHERE service = :service AND bucket >= :start AND bucket < :cut"
    " UNION ALL"
    " SELECT ts, requests::double precision FROM traffic_log"
    " WHERE service = :service AND ts >= :cut AND ts < :end"
    ") x GROUP BY 1"
)


def _as_arrays(buckets: str) -> sa.TextClause:
    """The buckets as one row of two arrays (microseconds since the epoch, values): parsing two arrays costs
    the client a quarter of what thousands of rows of timestamps do."""
    return sa.text("SELECT array_agg((extract(epoch FROM bucket) * 1000000)::bigint ORDER BY bucket), "
                   f"array_agg(v ORDER BY bucket) FROM ({buckets}) buckets")


def read_history(engine: Engine, source: TrafficSource, service: str, start: datetime, end: datetime,
                 step: timedelta) -> pd.Series:
    """Requests per `step` bucket (all endpoints summed) for [start, end), NaN where no rows exist.

    `start` is rounded down to the grid so the first bucket is whole; a bucket cut by `end` holds only
    the rows before `end`. On traffic_log a step of whole 5 minutes reads the 5-minute rollup (the same
    numbers, ~300 times fewer rows for a 14-day read); other steps and other sources read the rows.
    """
    index = grid(start, end, step)
    if len(index) == 0:
        return pd.Series([], index=index, dtype=float, name=service)
    end_utc = _utc(end, "end")
    params: dict[str, Any] = {"step": step, "origin": _EPOCH, "service": service,
                              "start": index[0].to_pydatetime(), "end": end_utc.to_pydatetime()}
    if uses_rollups(source) and step % ROLLUP_STEP == timedelta(0):
        buckets = _FROM_ROLLUP
        params["cut"] = max(index[0], end_utc.floor(ROLLUP_STEP)).to_pydatetime()
    else:
        q = source.quoted(engine.dialect.identifier_preparer)
        buckets = (
            f"SELECT date_bin(:step, {q['ts']}, :origin) AS bucket, sum({q['value']})::double precision AS v "
            f"FROM {q['table']} WHERE {q['service']} = :service AND {q['ts']} >= :start AND {q['ts']} < :end "
            "GROUP BY 1"
        )
    with (unavailable_on_error(f"reading history of {service!r}"), _source_errors(source),
          engine.connect() as conn):
        micros, values = conn.execute(_as_arrays(buckets), params).one()
    out = np.full(len(index), np.nan)
    if micros:
        # Buckets come from the same epoch-anchored grid, so each lands on one position.
        step_us = step // timedelta(microseconds=1)
        out[(np.asarray(micros, dtype=np.int64) - index[0].value // 1000) // step_us] = np.asarray(values, dtype=float)
    return pd.Series(out, index=index, name=service)


class SharedReads:
    """`read_history` from the event loop, with reads in flight shared: the scalers of one service that tick
    together (a fleet's first decisions after a start) ask for the same buckets, and each query costs a pool
    checkout, a liveness ping and a rollback besides itself. Callers only read the series they get."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._reads: dict[tuple[Any, ...], asyncio.Future[pd.Series]] = {}

    async def read(self, source: TrafficSource, service: str, start: datetime, end: datetime,
                   step: timedelta) -> pd.Series:
        key = (source, service, start, end, step)
        read = self._reads.get(key)
        if read is None or read.get_loop() is not asyncio.get_running_loop():
            read = asyncio.ensure_future(asyncio.to_thread(read_history, self.engine, source, service, start, end,
                                                           step))
            self._reads[key] = read
            read.add_done_callback(lambda done: self._reads.pop(key, None) if self._reads.get(key) is done
                                   else None)
        return await asyncio.shield(read)


def last_timestamp(engine: Engine, source: TrafficSource, service: str) -> datetime | None:
    """Timestamp of the newest row of a service, or None when it has none."""
    q = source.quoted(engine.dialect.identifier_preparer)
    stmt = sa.text(f"SELECT max({q['ts']}) FROM {q['table']} WHERE {q['service']} = :service")
    with (unavailable_on_error(f"reading the newest timestamp of {service!r}"), _source_errors(source),
          engine.connect() as conn):
        value = conn.execute(stmt, {"service": service}).scalar()
    return None if value is None else value.astimezone(UTC)


def read_events(engine: Engine, service: str | None, start: datetime, end: datetime) -> pd.DataFrame:
    """Events overlapping [start, end): a service's own plus those for every service (service NULL)."""
    t = traffic_events
    lo, hi = _utc(start, "start").to_pydatetime(), _utc(end, "end").to_pydatetime()
    stmt = (
        sa.select(t.c.name, t.c.kind, t.c.starts_at, t.c.ends_at, t.c.lift_percent)
        .where(t.c.starts_at < hi, t.c.ends_at > lo)
        .order_by(t.c.starts_at, t.c.name)
    )
    if service is not None:
        stmt = stmt.where(sa.or_(t.c.service.is_(None), t.c.service == service))
    with unavailable_on_error("reading traffic events"), engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return pd.DataFrame({
        "name": pd.Series([r[0] for r in rows], dtype=object),
        "kind": pd.Series([r[1] for r in rows], dtype=object),
        "start": pd.to_datetime([r[2] for r in rows], utc=True),
        "end": pd.to_datetime([r[3] for r in rows], utc=True),
        "lift_percent": pd.Series([r[4] for r in rows], dtype=float),
    })

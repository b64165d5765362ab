"""Getting traffic into PostgreSQL: the fitness-app simulator and validated, idempotent CSV imports.

Both write with binary COPY in one transaction, so a re-run never duplicates and a failure writes nothing: a
first load of a range goes straight into `traffic_log`, anything else through a staging table merged with
`INSERT ... ON CONFLICT`. Partitions for the rows' weeks are made beforehand; the rollups follow by trigger.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import psycopg2
import psycopg2.errors
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from prescaler import storage
from prescaler.db import traffic_events, unavailable_on_error
from prescaler.errors import DataUnavailable, InputError

if TYPE_CHECKING:
    import _csv

# --- the simulator -----------------------------------------------------------------------------------------

# Share of the service's requests per endpoint (fixed; sums to 1).
ENDPOINT_SHARES: dict[str, float] = {
    "/workouts": 0.34,
    "/coach/chat": 0.22,
    "/metrics/ingest": 0.20,
    "/plans": 0.14,
    "/auth": 0.10,
}
PEAK_RPM = 4000.0  # requests per minute at a typical weekday evening peak in the first days
GROWTH_PER_DAY = 0.004  # slow organic growth, +12% over 30 days
_MAX_ROWS = 20_000_000


@dataclass(frozen=True)
class SimulateResult:
    rows: int
    events: int


@dataclass(frozen=True)
class ImportResult:
    rows_read: int
    rows_written: int
    rows_unchanged: int
    rows_missing: int = 0


def _bump(hour: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A daily Gaussian bump around `centre` o'clock, wrapping around midnight."""
    d = np.abs(hour - centre)
    d = np.minimum(d, 24.0 - d)
    return np.exp(-0.5 * (d / width) ** 2)


def _daily_shape(hour: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """Relative load by hour of day: workout peaks at ~7:00 and ~18:30, a lunch bump, quiet nights.

    Weekends start later and softer in the morning and peak a little earlier and lower in the evening.
    """
    awake = 1.0 / (1.0 + np.exp(-(hour - 6.0) * 1.5)) * (1.0 / (1.0 + np.exp((hour - 23.0) * 1.2)))
    weekday = (0.08 + 0.30 * awake + 0.95 * _bump(hour, 7.0, 0.8) + 0.40 * _bump(hour, 12.5, 0.9)
               + 1.00 * _bump(hour, 18.5, 1.2))
    weekend_shape = (0.08 + 0.34 * awake + 0.55 * _bump(hour, 9.0, 1.4) + 0.35 * _bump(hour, 13.0, 1.2)
                     + 0.80 * _bump(hour, 18.0, 1.5))
    return np.where(weekend, weekend_shape, weekday)


def _plan_events(start: pd.Timestamp, end: pd.Timestamp, rng: np.random.Generator,
                 service: str) -> list[dict[str, object]]:
    """A challenge launch every four weeks and a push notification every week, at plausible hours."""
    span_days = (end - start) / pd.Timedelta(days=1)
    first_day = start.normalize() + pd.Timedelta(days=1)
    events: list[dict[str, object]] = []

    def add(name: str, kind: str, at: pd.Timestamp, hours: float, lift: float) -> None:
        ends = at + pd.Timedelta(hours=hours)
        if at >= start and ends <= end:
            events.append({"name": name, "kind": kind, "service": service, "starts_at": at.to_pydatetime(),
                           "ends_at": ends.to_pydatetime(), "lift_percent": lift})

    if span_days < 1:
        return events
    for block in range(max(1, math.ceil(span_days / 28))):
        offset = int(rng.integers(0, max(1, min(28, int(span_days) - 1))))
        at = first_day + pd.Timedelta(days=28 * block + offset, hours=17)
        add("30-day challenge launch", "challenge", at, 6.0, float(np.round(rng.uniform(50, 80))))
    for week in range(max(1, math.ceil(span_days / 7))):
        offset = int(rng.integers(0, 7))
        at = first_day + pd.Timedelta(days=7 * week + offset, hours=12)
        add("push notification: streak reminder", "push", at, 2.0, float(np.round(rng.uniform(25, 45))))
    return events


def simulate_frame(*, start: datetime, days: float, step: timedelta, seed: int,
                   service: str = "workout-api") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic traffic of the AI-fitness app; the same arguments always give the same frames.

    Returns (traffic: ts, service, endpoint, requests per step; events: name, kind, service, starts_at,
    ends_at, lift_percent).
    """
    if not days > 0:
        raise InputError(f"days must be greater than zero, got {days}")
    if step <= timedelta(0) or step > timedelta(days=1):
        raise InputError(f"step must be within (0, 1d], got {step}")
    if not service.strip():
        raise InputError("service must not be empty")
    t0 = pd.Timestamp(start)
    t0 = t0.tz_localize(UTC) if t0.tzinfo is None else t0.tz_convert(UTC)
    step_td = pd.Timedelta(step)
    n = int(pd.Timedelta(days=days) // step_td)
    if n == 0:
        raise InputError(f"{days} days is shorter than one step of {step}")
    if n * len(ENDPOINT_SHARES) > _MAX_ROWS:
        rows = n * len(ENDPOINT_SHARES)
        raise InputError(f"{days} days at {step} would be {rows:,} rows; use a coarser step")
    ts = pd.date_range(t0, periods=n, freq=step_td)
    end = ts[-1] + step_td
    rng = np.random.default_rng(seed)

    hour = np.asarray(ts.hour + ts.minute / 60.0 + ts.second / 3600.0, dtype=float)
    weekend = np.asarray(ts.dayofweek >= 5)
    elapsed_days = ((ts - t0) / pd.Timedelta(days=1)).to_numpy(dtype=float)
    shape = _daily_shape(hour, weekend)
    peak_shape = float(_daily_shape(np.array([18.5]), np.array([False]))[0])
    level = PEAK_RPM / peak_shape * (step_td / pd.Timedelta(minutes=1))

    # Day-to-day variation (weather, motivation) plus short-term jitter, both multiplicative.
    day_index = ((ts - t0.normalize()) // pd.Timedelta(days=1)).to_numpy(dtype=np.int64)
    daily = rng.lognormal(0.0, 0.05, size=int(day_index.max()) + 1)[day_index]
    jitter = rng.lognormal(0.0, 0.03, size=n)
    expected = level * shape * (1.0 + GROWTH_PER_DAY * elapsed_days) * daily * jitter

    events = _plan_events(ts[0], end, rng, service)
    ts_ns = ts.asi8
    for ev in events:
        a = pd.Timestamp(ev["starts_at"]).value  # type: ignore[arg-type]
        b = pd.Timestamp(ev["ends_at"]).value  # type: ignore[arg-type]
        inside = (ts_ns >= a) & (ts_ns < b)
        # Full lift at once, fading to half of it by the end of the event.
        frac = (ts_ns[inside] - a) / (b - a)
        expected[inside] *= 1.0 + float(ev["lift_percent"]) / 100.0 * (1.0 - 0.5 * frac)  # type: ignore[arg-type]

    names = list(ENDPOINT_SHARES)
    shares = np.array([ENDPOINT_SHARES[e] for e in names])
    counts = rng.poisson(np.outer(expected, shares)).astype(np.int64)
    traffic = pd.DataFrame({
        "ts": np.repeat(ts, len(names)),
        "service": service,
        "endpoint": np.tile(np.array(names, dtype=object), n),
        "requests": counts.reshape(-1),
    })
    event_frame = pd.DataFrame(events, columns=["name", "kind", "service", "starts_at", "ends_at",
                                                "lift_percent"])
    if not event_frame.empty:
        event_frame["starts_at"] = pd.to_datetime(event_frame["starts_at"], utc=True)
        event_frame["ends_at"] = pd.to_datetime(event_frame["ends_at"], utc=True)
    return traffic, event_frame


# --- writing through COPY ----------------------------------------------------------------------------------

_STAGE = "prescaler_stage_traffic"
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 UTC in Unix microseconds: binary COPY's timestamp origin
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_COPY_CHUNK = 1_000_000  # rows per COPY, which bounds the encoded buffer to ~50 MB


@dataclass(frozen=True)
class _Rows:
    """Traffic rows as columns, sorted in traffic_log's key order (service, ts, endpoint), so each insert
    lands next to the previous one in the key's index."""

    ts_us: np.ndarray
    service_codes: np.ndarray
    services: list[str]
    endpoint_codes: np.ndarray
    endpoints: list[str]
    requests: np.ndarray

    @classmethod
    def of(cls, ts_us: np.ndarray, service: np.ndarray | str, endpoint: np.ndarray | str,
           requests: np.ndarray) -> _Rows:
        n = len(ts_us)
        s_codes, services = pd.factorize(np.broadcast_to(np.asarray(service, dtype=object), (n,)), sort=True)
        e_codes, endpoints = pd.factorize(np.broadcast_to(np.asarray(endpoint, dtype=object), (n,)), sort=True)
        order = np.lexsort((e_codes, ts_us, s_codes))
        return cls(np.asarray(ts_us, dtype=np.int64)[order], s_codes[order], [str(x) for x in services],
                   e_codes[order], [str(x) for x in endpoints], np.asarray(requests, dtype=np.int64)[order])

    def __len__(self) -> int:
        return len(self.ts_us)

    def weeks(self) -> list[datetime]:
        """Starts of the partition weeks these rows fall in."""
        week_us = int(storage.WEEK / timedelta(microseconds=1))
        origin_us = int((storage.WEEK_ORIGIN - _EPOCH).total_seconds()) * 1_000_000
        starts = np.unique((self.ts_us - origin_us) // week_us) * week_us + origin_us
        return [_EPOCH + timedelta(microseconds=int(us)) for us in starts]

    def copy_chunks(self) -> Iterator[bytes]:
        for lo in range(0, len(self), _COPY_CHUNK):
            yield _binary_copy(self, slice(lo, lo + _COPY_CHUNK))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _put_int(out: np.ndarray, at: np.ndarray, values: np.ndarray | int, dtype: str) -> None:
    """Write big-endian integers at byte offsets `at` (one per row)."""
    raw = np.ascontiguousarray(np.broadcast_to(np.asarray(values).astype(dtype), at.shape))
    width = raw.dtype.itemsize
    columns = raw.view(np.uint8).reshape(len(at), width)
    for j in range(width):
        out[at + j] = columns[:, j]


def _put_text(out: np.ndarray, at: np.ndarray, codes: np.ndarray, texts: list[bytes]) -> None:
    """Write each row's text (texts[code]) at its offset, all rows at once."""
    flat = np.frombuffer(b"".join(texts), dtype=np.uint8)
    sizes = np.array([len(t) for t in texts], dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    lens = sizes[codes]
    row = np.repeat(np.arange(len(codes)), lens)
    within = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    out[at[row] + within] = flat[starts[codes][row] + within]


def _binary_copy(rows: _Rows, part: slice) -> bytes:
    """Rows (ts, service, endpoint, requests) of `part` in COPY's binary format.

    Binary spares the server parsing text timestamps and numbers. A row is a field count (int16), then each
    field as its byte length (int32) and bytes: ts as int64 microseconds since 2000-01-01, the two texts in
    UTF-8, requests as int64; all big-endian.
    """
    services = [s.encode() for s in rows.services]
    endpoints = [e.encode() for e in rows.endpoints]
    s_codes, e_codes = rows.service_codes[part], rows.endpoint_codes[part]
    s_len = np.array([len(s) for s in services], dtype=np.int64)[s_codes]
    e_len = np.array([len(e) for e in endpoints], dtype=np.int64)[e_codes]
    size = 2 + 12 + 4 + s_len + 4 + e_len + 12
    at = np.cumsum(size) - size
    out = np.empty(int(size.sum()), dtype=np.uint8)
    _put_int(out, at, 4, ">i2")
    _put_int(out, at + 2, 8, ">i4")
    _put_int(out, at + 6, rows.ts_us[part] - _PG_EPOCH_US, ">i8")
    _put_int(out, at + 14, s_len, ">i4")
    _put_text(out, at + 18, s_codes, services)
    at = at + 18 + s_len
    _put_int(out, at, e_len, ">i4")
    _put_text(out, at + 4, e_codes, endpoints)
    at = at + 4 + e_len
    _put_int(out, at, 8, ">i4")
    _put_int(out, at + 4, rows.requests[part], ">i8")
    return _COPY_HEADER + out.tobytes() + _COPY_TRAILER


@contextlib.contextmanager
def _driver_errors(action: str) -> Iterator[None]:
    """COPY runs on the driver's cursor, below SQLAlchemy: map its connection failures the same way."""
    try:
        yield
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        detail = str(exc).strip().splitlines()[0]
        raise DataUnavailable(f"database unavailable while {action}: {detail}") from exc


def _copy(conn: Connection, table: str, rows: _Rows) -> None:
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:  # type: ignore[union-attr]
        for chunk in rows.copy_chunks():
            cur.copy_expert(f"COPY {table} (ts, service, endpoint, requests) FROM STDIN WITH (FORMAT binary)",
                            io.BytesIO(chunk))


def _prepare(engine: Engine, rows: _Rows, what: str) -> None:
    """Refuse rows older than the raw horizon, then make sure their weeks have partitions.

    Before the horizon, retention has dropped the minutes and made the rollups final: rows written there
    would be dropped again and never counted. A partition that cannot be made now (its lock is busy) is no
    loss: those rows go to the default partition and `prescaler maintain` moves them later.
    """
    if not len(rows):
        return
    with unavailable_on_error("reading the raw retention horizon"), engine.connect() as conn:
        horizon = storage.raw_horizon(conn)
    first = _EPOCH + timedelta(microseconds=int(rows.ts_us.min()))
    if horizon is not None and first < horizon:
        raise InputError(f"{what}: rows from {first:%Y-%m-%d %H:%M} are older than the raw retention keeps "
                         f"(minutes before {horizon:%Y-%m-%d %H:%M} UTC are dropped and their rollups final); "
                         "nothing was written")
    with contextlib.suppress(DataUnavailable):
        storage.ensure_partitions(engine, rows.weeks())


def _range_is_empty(conn: Connection, rows: _Rows) -> bool:
    """No row of these services in their time range yet (one index probe per service)."""
    lo, hi = (_EPOCH + timedelta(microseconds=int(v)) for v in (rows.ts_us.min(), rows.ts_us.max()))
    return not conn.exec_driver_sql(
        "SELECT EXISTS (SELECT 1 FROM traffic_log WHERE service = ANY(%(services)s) "
        "AND ts >= %(lo)s AND ts <= %(hi)s)", {"services": rows.services, "lo": lo, "hi": hi}).scalar()


def _write_rows(conn: Connection, rows: _Rows) -> int:
    """COPY rows into traffic_log, merging on its key; returns rows inserted or changed.

    When no row of these services exists in the time range (a first load) the rows are COPYed straight into
    traffic_log; should a concurrent writer get there first, the key refuses the COPY and the merge path
    runs instead. The merge path COPYs into a staging table and upserts from it.
    """
    if not len(rows):
        return 0
    # The rollup trigger's transition table holds a COPY's rows (up to _COPY_CHUNK): in memory, not a temp file.
    conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
    if _range_is_empty(conn, rows):
        fresh = conn.begin_nested()
        try:
            _copy(conn, "traffic_log", rows)
        except psycopg2.errors.UniqueViolation:
            fresh.rollback()
        else:
            fresh.commit()
            return len(rows)
    conn.exec_driver_sql(
        f"CREATE TEMP TABLE {_STAGE} (ts timestamptz NOT NULL, service text NOT NULL, endpoint text NOT NULL, "
        "requests bigint NOT NULL) ON COMMIT DROP")
    _copy(conn, _STAGE, rows)
    result = conn.exec_driver_sql(
        "INSERT INTO traffic_log AS t (ts, service, endpoint, requests) "
        f"SELECT ts, service, endpoint, requests FROM {_STAGE} ORDER BY service, ts, endpoint "
        "ON CONFLICT (service, endpoint, ts) DO UPDATE SET requests = EXCLUDED.requests "
        "WHERE t.requests IS DISTINCT FROM EXCLUDED.requests")
    return int(result.rowcount)


def _epoch_us(index: pd.DatetimeIndex | pd.Series) -> np.ndarray:
    values = pd.DatetimeIndex(index).tz_convert(UTC).as_unit("us").asi8
    return np.asarray(values, dtype=np.int64)


def write_traffic(engine: Engine, traffic: pd.DataFrame, *, what: str = "traffic") -> int:
    """Merge a frame of ts (UTC), service, endpoint, requests rows into traffic_log in one transaction;
    returns rows inserted or changed. The bulk path of `simulate` and `import`, for other loaders too."""
    rows = _Rows.of(_epoch_us(traffic["ts"]), traffic["service"].to_numpy(), traffic["endpoint"].to_numpy(),
                    traffic["requests"].to_numpy())
    _prepare(engine, rows, what)
    with unavailable_on_error(f"writing {what}"), _driver_errors(f"writing {what}"), engine.begin() as conn:
        return _write_rows(conn, rows)


def simulate(engine: Engine, *, start: datetime, days: float, step: timedelta, seed: int,
             service: str = "workout-api") -> SimulateResult:
    """Simulate fitness traffic and its events into PostgreSQL (idempotent: a re-run overwrites)."""
    traffic, events = simulate_frame(start=start, days=days, step=step, seed=seed, service=service)
    minutes = _Rows.of(_epoch_us(traffic["ts"]), service, traffic["endpoint"].to_numpy(),
                       traffic["requests"].to_numpy())
    _prepare(engine, minutes, f"simulated traffic of {service!r}")
    with (unavailable_on_error("writing simulated traffic"), _driver_errors("writing simulated traffic"),
          engine.begin() as conn):
        _write_rows(conn, minutes)
        if not events.empty:
            stmt = postgresql.insert(traffic_events)
            stmt = stmt.on_conflict_do_update(
                constraint="traffic_events_name_starts_at_key",
                set_={c: stmt.excluded[c] for c in ("kind", "service", "ends_at", "lift_percent")})
            rows: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in events.to_dict("records")]
            conn.execute(stmt, rows)
    return SimulateResult(rows=len(traffic), events=len(events))


# --- CSV traces --------------------------------------------------------------------------------------------

_REQUIRED = ("ds", "y")
_OPTIONAL = ("service", "endpoint")
_MAX_REPORTED = 5


@dataclass
class _Parsed:
    lines: list[int]
    ts: list[datetime]
    y: np.ndarray
    service: list[str] | None
    endpoint: list[str] | None
    rows_read: int
    skipped_nonexistent: int


def _zone(timezone: str) -> tzinfo | None:
    """None for UTC (nothing to localise), else the zone; an unknown name is bad input."""
    if timezone.upper() in ("UTC", "Z", "ETC/UTC"):
        return None
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InputError(f"unknown time zone {timezone!r} (use an IANA name such as Europe/Berlin)") from exc


class _Problems:
    """Collects the first few problems so one run names several bad lines, not only the first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []
        self.total = 0

    def add(self, line: int, message: str) -> None:
        self.total += 1
        if len(self.items) < _MAX_REPORTED:
            self.items.append(f"line {line}: {message}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        more = f" (and {self.total - len(self.items)} more)" if self.total > len(self.items) else ""
        raise InputError(f"{self.path}: " + "; ".join(self.items) + more + "; nothing was written")


def _localise(naive: datetime, zone: tzinfo, seen_ambiguous: dict[object, int],
              key: object) -> datetime | None:
    """Local wall time → UTC. A nonexistent time (spring forward) gives None; a repeated ambiguous time
    (fall back) is the first, then the second occurrence, in file order."""
    early = naive.replace(tzinfo=zone, fold=0)
    late = naive.replace(tzinfo=zone, fold=1)
    if early.utcoffset() == late.utcoffset():
        return early.astimezone(UTC)
    if early.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        return None
    count = seen_ambiguous.get(key, 0)
    seen_ambiguous[key] = count + 1
    return (early if count == 0 else late).astimezone(UTC)


def csv_rows(path: Path) -> _csv.Reader:
    """A csv.reader over a UTF-8 file (a BOM allowed); a missing, unreadable or non-UTF-8 file is an InputError
    naming it. The reader's `line_num` is the line a row ends on, for messages."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return csv.reader(io.StringIO(text, newline=""))


def _parse_csv(path: Path, timezone: str, *, whole_numbers: bool) -> _Parsed:
    zone = _zone(timezone)
    path = Path(path)
    problems = _Problems(path)
    reader = csv_rows(path)
    header: list[str] | None = None
    header_line = 0
    lines: list[int] = []
    ts: list[datetime] = []
    ys: list[float] = []
    services: list[str] = []
    endpoints: list[str] = []
    first_seen: dict[tuple[str, str, datetime], int] = {}
    seen_ambiguous: dict[object, int] = {}
    aware_mode: bool | None = None
    rows_read = 0
    skipped = 0
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if header is None:
                header = [c.strip().lower() for c in row]
                header_line = line
                missing = [c for c in _REQUIRED if c not in header]
                unknown = [c for c in header if c not in _REQUIRED + _OPTIONAL]
                dupes = sorted({c for c in header if header.count(c) > 1})
                if missing or unknown or dupes:
                    detail = []
                    if missing:
                        detail.append(f"missing column(s) {', '.join(missing)}")
                    if unknown:
                        detail.append(f"unknown column(s) {', '.join(repr(c) for c in unknown)}")
                    if dupes:
                        detail.append(f"repeated column(s) {', '.join(dupes)}")
                    raise InputError(
                        f"{path}: line {line}: bad header {','.join(row)!r}: {'; '.join(detail)} "
                        "(expected ds,y and optionally service,endpoint); nothing was written")
                col = {c: header.index(c) for c in header}
                continue
            rows_read += 1
            if len(row) != len(header):
                problems.add(line, f"expected {len(header)} fields ({','.join(header)}), got {len(row)}")
                continue
            raw_ds = row[col["ds"]].strip()
            raw_y = row[col["y"]].strip()
            svc = row[col["service"]].strip() if "service" in col else ""
            ep = row[col["endpoint"]].strip() if "endpoint" in col else ""
            if "service" in col and not svc:
                problems.add(line, "empty service")
                continue
            if "endpoint" in col and not ep:
                problems.add(line, "empty endpoint")
                continue
            try:
                stamp = datetime.fromisoformat(raw_ds)
            except ValueError:
                problems.add(line, f"cannot parse timestamp {raw_ds!r} "
                                   "(expected ISO 8601, e.g. 2024-01-31T14:00:00)")
                continue
            aware = stamp.tzinfo is not None
            if aware_mode is None:
                aware_mode = aware
            elif aware != aware_mode:
                problems.add(line, f"timestamp {raw_ds!r} mixes zone-qualified and naive timestamps")
                continue
            if raw_y == "":
                value = math.nan
            else:
                try:
                    value = float(raw_y)
                except ValueError:
                    problems.add(line, f"y {raw_y!r} is not a number")
                    continue
                if not math.isfinite(value):
                    problems.add(line, f"y {raw_y!r} is not a finite number")
                    continue
                if value < 0:
                    problems.add(line, f"negative request count {raw_y}")
                    continue
                if whole_numbers and not value.is_integer():
                    problems.add(line, f"y {raw_y!r} is not a whole number of requests")
                    continue
            if aware:
                utc = stamp.astimezone(UTC)
            elif zone is None:
                utc = stamp.replace(tzinfo=UTC)
            else:
                local = _localise(stamp, zone, seen_ambiguous, (svc, ep, stamp))
                if local is None:
                    # Spring-forward: this wall time never happened; the row carries no usable instant.
                    skipped += 1
                    continue
                utc = local
            key = (svc, ep, utc)
            if key in first_seen:
                problems.add(line, f"duplicate timestamp {raw_ds} (first on line {first_seen[key]})")
                continue
            first_seen[key] = line
            lines.append(line)
            ts.append(utc)
            ys.append(value)
            services.append(svc)
            endpoints.append(ep)
    except csv.Error as exc:
        problems.add(reader.line_num, f"malformed CSV: {exc}")
    problems.raise_if_any()
    if header is None:
        raise InputError(f"{path}: empty file (expected a header ds,y and data rows); nothing was written")
    if rows_read == 0:
        raise InputError(f"{path}: no data rows after the header on line {header_line}; nothing was written")
    y = np.array(ys, dtype=float)
    if len(y) == 0 or np.isnan(y).all():
        raise InputError(f"{path}: every y is empty, the series has no values; nothing was written")
    return _Parsed(lines=lines, ts=ts, y=y, service=services if "service" in header else None,
                   endpoint=endpoints if "endpoint" in header else None, rows_read=rows_read,
                   skipped_nonexistent=skipped)


def read_trace_csv(path: Path, *, timezone: str = "UTC") -> pd.Series:
    """A `ds,y` trace as a float Series on a sorted UTC index; empty y stays NaN.

    Naive timestamps are wall time in `timezone`: a spring-forward hour (which never happened) is dropped,
    a repeated fall-back hour maps to its two distinct instants. Rows of several services or endpoints
    are summed per timestamp.
    """
    parsed = _parse_csv(Path(path), timezone, whole_numbers=False)
    index = pd.DatetimeIndex(pd.to_datetime(parsed.ts, utc=True), name="ds")
    series = pd.Series(parsed.y, index=index, name="y", dtype=float)
    if parsed.service is not None or parsed.endpoint is not None:
        series = series.groupby(level=0).sum(min_count=1)
        series.index.name = "ds"
    return series.sort_index()


def import_csv(engine: Engine, path: Path, *, service: str, endpoint: str,
               timezone: str = "UTC") -> ImportResult:
    """Validate a whole `ds,y[,service][,endpoint]` file, then merge it into traffic_log in one transaction.

    Re-importing a range changes only rows whose value differs; rows with an empty y are not written.
    """
    if not service.strip() or not endpoint.strip():
        raise InputError("--service and --endpoint must not be empty")
    parsed = _parse_csv(Path(path), timezone, whole_numbers=True)
    present = ~np.isnan(parsed.y)
    n = int(present.sum())
    svc = np.array(parsed.service, dtype=object)[present] if parsed.service is not None else service
    ep = np.array(parsed.endpoint, dtype=object)[present] if parsed.endpoint is not None else endpoint
    ts_us = _epoch_us(pd.DatetimeIndex(pd.to_datetime(parsed.ts, utc=True)))[present]
    rows = _Rows.of(ts_us, svc, ep, parsed.y[present].astype(np.int64))
    _prepare(engine, rows, str(path))
    with unavailable_on_error(f"importing {path}"), _driver_errors(f"importing {path}"), engine.begin() as conn:
        written = _write_rows(conn, rows)
    return ImportResult(rows_read=parsed.rows_read, rows_written=written, rows_unchanged=n - written,
                        rows_missing=parsed.rows_read - n)

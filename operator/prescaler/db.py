"""PostgreSQL access: engine, schema (SQLAlchemy Core), alembic migrations, forecast and decision persistence.

The MetaData below describes the schema the migrations build; a test fails when the two drift apart.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url

from prescaler.errors import DataUnavailable, InputError
from prescaler.forecasting.interface import Forecast
from prescaler.planning import Decision

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "prescaler_alembic_version"

metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)

# Raw minutes, range-partitioned by week on `ts` (see prescaler.storage for the partitions and why a week).
# The key's column order (service, ts, endpoint) lets one index serve the upsert's conflict check, a service's
# time range and its newest minute; ON CONFLICT (service, endpoint, ts) infers it, since inference matches the
# set of columns. Partitions are not in this MetaData: they come and go with `prescaler maintain`.
traffic_log = sa.Table(
    "traffic_log", metadata,
    sa.Column("ts", TS, nullable=False),
    sa.Column("service", sa.Text, nullable=False),
    sa.Column("endpoint", sa.Text, nullable=False, server_default="*"),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("service", "ts", "endpoint", name="traffic_log_pkey"),
    sa.CheckConstraint("requests >= 0", name="traffic_log_requests_nonnegative"),
    sa.Index("traffic_log_ts_brin", "ts", postgresql_using="brin"),
    postgresql_partition_by="RANGE (ts)",
)

# Rollups of traffic_log, kept exact in the same transaction as the rows by statement triggers on traffic_log
# (migration 0005). `row_count` counts the raw rows behind a bucket, so a bucket whose rows are all deleted
# disappears (a gap stays a gap) while a bucket of real zeros stays. Totals per service serve history reads
# (5 minutes) and the hourly views; per endpoint, the top endpoints and the daily view.
def _rollup(name: str, *, per_endpoint: bool) -> sa.Table:
    keys = ("service", "bucket", "endpoint") if per_endpoint else ("service", "bucket")
    return sa.Table(
        name, metadata,
        sa.Column("service", sa.Text, nullable=False),
        sa.Column("bucket", TS, nullable=False),
        *([sa.Column("endpoint", sa.Text, nullable=False)] if per_endpoint else []),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("row_count", sa.BigInteger, nullable=False),
        # INCLUDE: history reads and the views are index-only scans (see migration 0005).
        sa.PrimaryKeyConstraint(*keys, name=f"{name}_pkey", postgresql_include=["requests"]),
        sa.Index(f"{name}_bucket_brin", "bucket", postgresql_using="brin"),
    )


traffic_rollup_5m = _rollup("traffic_rollup_5m", per_endpoint=False)
traffic_rollup_hourly = _rollup("traffic_rollup_hourly", per_endpoint=False)
traffic_rollup_hourly_endpoint = _rollup("traffic_rollup_hourly_endpoint", per_endpoint=True)
traffic_rollup_daily_endpoint = _rollup("traffic_rollup_daily_endpoint", per_endpoint=True)

# Where raw retention has dropped traffic_log's minutes: rollups before `raw_kept_from` are final, and rows
# written there later (a late backfill) no longer change them. No row: nothing was ever dropped.
traffic_horizon = sa.Table(
    "traffic_horizon", metadata,
    sa.Column("relation", sa.Text, nullable=False),
    sa.Column("raw_kept_from", TS, nullable=False),
    sa.PrimaryKeyConstraint("relation", name="traffic_horizon_pkey"),
)

ROLLUPS = (traffic_rollup_5m, traffic_rollup_hourly, traffic_rollup_hourly_endpoint, traffic_rollup_daily_endpoint)

traffic_events = sa.Table(
    "traffic_events", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("service", sa.Text, nullable=True),
    sa.Column("starts_at", TS, nullable=False),
    sa.Column("ends_at", TS, nullable=False),
    sa.Column("lift_percent", sa.Double(), nullable=True),
    sa.UniqueConstraint("name", "starts_at", name="traffic_events_name_starts_at_key"),
    sa.CheckConstraint("ends_at > starts_at", name="traffic_events_ends_after_start"),
)

forecasts = sa.Table(
    "forecasts", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("scaler_key", sa.Text, nullable=False),
    sa.Column("series", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("params_hash", sa.Text, nullable=False),
    sa.Column("generated_at", TS, nullable=False),
    sa.Column("step_seconds", sa.Integer, nullable=False),
    sa.Column("horizon_seconds", sa.Integer, nullable=False),
    sa.Column("smape", sa.Double(), nullable=True),
    sa.Column("fit_seconds", sa.Double(), nullable=True),
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    sa.Index("forecasts_scaler_generated_idx", "scaler_key", sa.text("generated_at DESC")),
)

forecast_points = sa.Table(
    "forecast_points", metadata,
    sa.Column("forecast_id", sa.BigInteger, sa.ForeignKey("forecasts.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("ds", TS, nullable=False),
    sa.Column("yhat", sa.Double(), nullable=False),
    sa.Column("yhat_lower", sa.Double(), nullable=False),
    sa.Column("yhat_upper", sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint("forecast_id", "ds", name="forecast_points_pkey"),
)

scaling_decisions = sa.Table(
    "scaling_decisions", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("decided_at", TS, nullable=False),
    sa.Column("namespace", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("target_kind", sa.Text, nullable=False),
    sa.Column("target_name", sa.Text, nullable=False),
    sa.Column("current_replicas", sa.Integer, nullable=False),
    sa.Column("desired_replicas", sa.Integer, nullable=False),
    sa.Column("recommended_replicas", sa.Integer, nullable=False),
    sa.Column("direction", sa.Text, nullable=False),
    sa.Column("stale", sa.Boolean, nullable=False),
    sa.Column("forecast_load", sa.Double(), nullable=True),
    sa.Column("observed_load", sa.Double(), nullable=True),
    sa.Column("peak_at", TS, nullable=True),
    sa.Column("peak_load", sa.Double(), nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("applied", sa.Boolean, nullable=False),
    # The scorecard's inputs (migration 0006; NULL in older rows): the effective mode, what the target ran, what
    # the baseline would run while the plan is in charge, and the units and times that turn counts and loads
    # into replica-hours and requests.
    sa.Column("mode", sa.Text, nullable=True),
    sa.Column("target_replicas", sa.Integer, nullable=True),
    sa.Column("ready_replicas", sa.Integer, nullable=True),
    sa.Column("baseline_replicas", sa.Integer, nullable=True),
    sa.Column("capacity", sa.Double(), nullable=True),
    sa.Column("step_seconds", sa.Integer, nullable=True),
    sa.Column("lead_seconds", sa.Integer, nullable=True),
    sa.Column("interval_seconds", sa.Integer, nullable=True),
    sa.Index("scaling_decisions_scaler_idx", "namespace", "name", "decided_at"),
)

# Per-series progress of `prescaler collect`: minutes with bucket starts in [backfill_from, collected_until)
# are in the source's table. Advanced in the same transaction as the rows, so a restart resumes exactly.
collector_watermarks = sa.Table(
    "collector_watermarks", metadata,
    sa.Column("feed", sa.Text, nullable=False),
    sa.Column("series", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("backfill_from", TS, nullable=False),
    sa.Column("collected_until", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("feed", "series", name="collector_watermarks_pkey"),
    sa.CheckConstraint("collected_until >= backfill_from", name="collector_watermarks_ordered"),
)

# Per-partition progress of a Kafka feed: messages below next_offset are counted in the source's table, and
# stream_time (the newest event time seen) judges lateness. Written in the same transaction as the rows, so
# it is the consumer's true position; Kafka's committed offsets only follow it.
collector_kafka_offsets = sa.Table(
    "collector_kafka_offsets", metadata,
    sa.Column("feed", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
    sa.Column("stream_time", TS, nullable=True),
    sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("feed", "source", "topic", "partition", name="collector_kafka_offsets_pkey"),
    sa.CheckConstraint("next_offset >= 0", name="collector_kafka_offsets_nonnegative"),
)

# The dashboard's analytics views (names and columns are the dashboard's contract; since 0005 they read the
# rollups) and the statement triggers on traffic_log that keep the rollups.
VIEWS = ("traffic_hourly", "traffic_daily", "traffic_profile", "traffic_top_endpoints")
ROLLUP_TRIGGERS = ("traffic_log_rollup_insert", "traffic_log_rollup_update", "traffic_log_rollup_delete")


# --- engine and errors -------------------------------------------------------------------------------------

def make_engine(url: str, *, threads: int | None = None) -> Engine:
    """An engine with liveness checks, a connect timeout and UTC sessions; `threads` sizes its pool to the
    threads that use it at once (SQLAlchemy's default pool holds 5 connections and 10 more on demand)."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise InputError(f"invalid database URL: {exc}") from exc
    connect_args: dict[str, object] = {}
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg2":
        # Fail fast when the server is down instead of hanging a reconcile, and read timestamps in UTC.
        connect_args = {"connect_timeout": 5, "options": "-c timezone=UTC"}
    try:
        pool: dict[str, int] = {} if threads is None or parsed.get_backend_name() == "sqlite" else \
            {"pool_size": threads, "max_overflow": 4}
        return sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, **pool)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as exc:
        raise InputError(f"unsupported database URL {parsed.render_as_string()!r}: {exc}") from exc


@contextlib.contextmanager
def unavailable_on_error(action: str) -> Iterator[None]:
    """Map connection-level failures to DataUnavailable (transient) with a message naming the action."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise DataUnavailable(f"database unavailable while {action}: {detail}") from exc


# --- migrations --------------------------------------------------------------------------------------------

def _alembic_config(connection: sa.Connection):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (default: the newest); safe to run from several processes at once."""
    from alembic import command

    with unavailable_on_error("migrating the schema"), engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)


def current_revision(engine: Engine) -> str:
    """The schema revision of the database, or "" when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with unavailable_on_error("reading the schema revision"), engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision() or ""


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    return head or ""


# --- forecasts ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoredForecast:
    forecast: Forecast
    generated_at: datetime
    smape: float | None
    fit_seconds: float | None
    model: str
    params_hash: str


def _opt_float(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _step_seconds(ds: pd.DatetimeIndex) -> int:
    if len(ds) < 2:
        return 0
    return int((ds[1] - ds[0]).total_seconds())


def save_forecast(engine: Engine, *, scaler_key: str, series: str, forecast: Forecast, generated_at: datetime,
                  smape: float | None, fit_seconds: float | None, params_hash: str, note: str = "") -> int:
    """Store a forecast and its points in one transaction; returns the forecast id."""
    ds = pd.DatetimeIndex(forecast.ds)
    ds = ds.tz_localize(UTC) if ds.tz is None else ds.tz_convert(UTC)
    step = _step_seconds(ds)
    header = {
        "scaler_key": scaler_key, "series": series, "model": forecast.model, "params_hash": params_hash,
        "generated_at": generated_at, "step_seconds": step, "horizon_seconds": step * len(ds),
        "smape": _opt_float(smape), "fit_seconds": _opt_float(fit_seconds),
        "note": note or forecast.note,
    }
    with unavailable_on_error("saving a forecast"), engine.begin() as conn:
        fid = int(conn.execute(forecasts.insert().returning(forecasts.c.id), header).scalar_one())
        if len(ds):
            rows = [
                {"forecast_id": fid, "ds": t, "yhat": float(y), "yhat_lower": float(lo),
                 "yhat_upper": float(up)}
                for t, y, lo, up in zip(ds.to_pydatetime(), forecast.yhat, forecast.lower, forecast.upper,
                                        strict=True)
            ]
            conn.execute(forecast_points.insert(), rows)
    return fid


def load_latest_forecast(engine: Engine, scaler_key: str,
                         params_hash: str | None = None) -> StoredForecast | None:
    """The newest stored forecast of a scaler (optionally only one made with the same parameters)."""
    query = sa.select(forecasts).where(forecasts.c.scaler_key == scaler_key)
    if params_hash is not None:
        query = query.where(forecasts.c.params_hash == params_hash)
    query = query.order_by(forecasts.c.generated_at.desc(), forecasts.c.id.desc()).limit(1)
    with unavailable_on_error("loading a stored forecast"), engine.connect() as conn:
        head = conn.execute(query).mappings().first()
        if head is None:
            return None
        points = conn.execute(
            sa.select(forecast_points.c.ds, forecast_points.c.yhat, forecast_points.c.yhat_lower,
                      forecast_points.c.yhat_upper)
            .where(forecast_points.c.forecast_id == head["id"]).order_by(forecast_points.c.ds)
        ).all()
    return _stored_forecast(head, _forecast_from_points(head, points))


def load_latest_forecasts(engine: Engine) -> dict[str, StoredForecast]:
    """The newest stored forecast of every scaler, by scaler key, in two queries (an operator's start-up).

    Scalers that share a fit stored the same points under their own rows: the points of each fit are read and
    converted once, and those scalers share one `Forecast` (read-only) object.
    """
    newest = (
        sa.select(forecasts).distinct(forecasts.c.scaler_key)
        .order_by(forecasts.c.scaler_key, forecasts.c.generated_at.desc(), forecasts.c.id.desc())
    )
    with unavailable_on_error("loading the stored forecasts"), engine.connect() as conn:
        heads = list(conn.execute(newest).mappings())
        same = ("params_hash", "generated_at", "model", "note", "step_seconds", "horizon_seconds")
        first_of: dict[tuple[object, ...], int] = {}
        for head in heads:
            first_of.setdefault(tuple(head[c] for c in same), int(head["id"]))
        by_fit: dict[int, list[Any]] = {fid: [] for fid in first_of.values()}
        if by_fit:
            rows = conn.execute(
                sa.select(forecast_points.c.forecast_id, forecast_points.c.ds, forecast_points.c.yhat,
                          forecast_points.c.yhat_lower, forecast_points.c.yhat_upper)
                .where(forecast_points.c.forecast_id.in_(sorted(by_fit)))
                .order_by(forecast_points.c.forecast_id, forecast_points.c.ds)
            )
            for row in rows:
                by_fit[row[0]].append(row[1:])
    heads_by_id = {int(h["id"]): h for h in heads}
    converted = {fid: _forecast_from_points(heads_by_id[fid], points) for fid, points in by_fit.items()}
    return {head["scaler_key"]: _stored_forecast(head, converted[first_of[tuple(head[c] for c in same)]])
            for head in heads}


def _forecast_from_points(head: sa.RowMapping, points: Sequence[Sequence[Any]]) -> Forecast:
    ds = pd.DatetimeIndex(pd.to_datetime([p[0] for p in points], utc=True), name="ds")
    if head["step_seconds"] > 0 and len(ds) > 1:
        freq = pd.tseries.frequencies.to_offset(pd.Timedelta(seconds=head["step_seconds"]))
        with contextlib.suppress(ValueError):  # irregular points keep no freq
            ds = pd.DatetimeIndex(ds, freq=freq)
    values = np.array([[p[1], p[2], p[3]] for p in points], dtype=float).reshape(-1, 3)
    return Forecast(ds=ds, yhat=values[:, 0], lower=values[:, 1], upper=values[:, 2], model=head["model"],
                    note=head["note"])


def _stored_forecast(head: sa.RowMapping, forecast: Forecast) -> StoredForecast:
    return StoredForecast(forecast=forecast, generated_at=head["generated_at"], smape=head["smape"],
                          fit_seconds=head["fit_seconds"], model=head["model"], params_hash=head["params_hash"])


def prune_forecasts(engine: Engine, scaler_key: str, keep: int = 3) -> int:
    """Delete all but the `keep` newest forecasts of a scaler (points cascade); returns how many went."""
    if keep < 0:
        raise InputError(f"keep must not be negative, got {keep}")
    newest = (
        sa.select(forecasts.c.id).where(forecasts.c.scaler_key == scaler_key)
        .order_by(forecasts.c.generated_at.desc(), forecasts.c.id.desc()).limit(keep)
    )
    stmt = forecasts.delete().where(forecasts.c.scaler_key == scaler_key, forecasts.c.id.not_in(newest))
    with unavailable_on_error("pruning forecasts"), engine.begin() as conn:
        return int(conn.execute(stmt).rowcount)


# --- decisions ---------------------------------------------------------------------------------------------

def record_decision(engine: Engine, *, namespace: str, name: str, target_kind: str, target_name: str,
                    decision: Decision, decided_at: datetime, applied: bool) -> None:
    """Append one planner decision (with its reason) to scaling_decisions."""
    record_decisions(engine, [decision_row(namespace=namespace, name=name, target_kind=target_kind,
                                           target_name=target_name, decision=decision, decided_at=decided_at,
                                           applied=applied)])


@dataclass(frozen=True)
class ScoreInputs:
    """What a decision row carries for the scorecard (`prescaler.scorecard`) beyond the decision itself."""

    mode: str  # the effective mode: Auto (the plan is applied) or ForecastOnly
    target_replicas: int  # what the target ran when the decision was made
    ready_replicas: int
    baseline_replicas: int  # what the baseline would run while the plan is in charge (`prescaler.scorecard`)
    capacity: float  # requests one ready replica serves per step
    step_seconds: int
    lead_seconds: int
    interval_seconds: int


def decision_row(*, namespace: str, name: str, target_kind: str, target_name: str, decision: Decision,
                 decided_at: datetime, applied: bool, score: ScoreInputs | None = None) -> dict[str, Any]:
    """One scaling_decisions row."""
    return {
        "decided_at": decided_at, "namespace": namespace, "name": name, "target_kind": target_kind,
        "target_name": target_name, "current_replicas": decision.current,
        "desired_replicas": decision.desired, "recommended_replicas": decision.recommended,
        "direction": decision.direction, "stale": decision.stale,
        "forecast_load": _opt_float(decision.forecast_load),
        "observed_load": _opt_float(decision.observed_load), "peak_at": decision.peak_at,
        "peak_load": _opt_float(decision.peak_load), "reason": decision.reason, "applied": applied,
        "mode": score.mode if score else None,
        "target_replicas": score.target_replicas if score else None,
        "ready_replicas": score.ready_replicas if score else None,
        "baseline_replicas": score.baseline_replicas if score else None,
        "capacity": score.capacity if score else None,
        "step_seconds": score.step_seconds if score else None,
        "lead_seconds": score.lead_seconds if score else None,
        "interval_seconds": score.interval_seconds if score else None,
    }


# The columns the scorecard reads back, in `scaling_decisions` order.
SCORE_COLUMNS = ("namespace", "name", "decided_at", "desired_replicas", "observed_load", "mode", "target_replicas",
                 "ready_replicas", "baseline_replicas", "capacity", "step_seconds", "lead_seconds",
                 "interval_seconds")


def read_score_rows(engine: Engine, *, since: datetime, until: datetime | None = None,
                    namespace: str | None = None, name: str | None = None) -> Iterator[dict[str, Any]]:
    """Decision rows with the scorecard's columns from `since`, by scaler then time (rows older than the
    columns left out); streamed, so a fleet's weeks are never held at once."""
    t = scaling_decisions.c
    query = (sa.select(*(t[c] for c in SCORE_COLUMNS))
             .where(t.decided_at >= since, t.capacity.is_not(None))
             .order_by(t.namespace, t.name, t.decided_at))
    if until is not None:
        query = query.where(t.decided_at <= until)
    if namespace is not None:
        query = query.where(t.namespace == namespace)
    if name is not None:
        query = query.where(t.name == name)
    with unavailable_on_error("reading the decision record"), engine.connect() as conn:
        result = conn.execution_options(yield_per=5000).execute(query).mappings()
        for row in result:
            yield dict(row)


def record_decisions(engine: Engine, rows: Sequence[dict[str, Any]], *, skip_recorded: bool = False) -> int:
    """Append decision rows in one transaction: ticks that decide at the same moment share one commit.

    `skip_recorded` leaves out rows whose (namespace, name, decided_at) is already stored: a retried batch whose
    first commit went through but whose answer was lost is then not written twice. Returns the rows written."""
    if not rows:
        return 0
    with unavailable_on_error("recording a scaling decision"), engine.begin() as conn:
        if skip_recorded:
            t = scaling_decisions.c
            keys = {(r["namespace"], r["name"], r["decided_at"]) for r in rows}
            stored = set(conn.execute(sa.select(t.namespace, t.name, t.decided_at)
                                      .where(sa.tuple_(t.namespace, t.name, t.decided_at).in_(list(keys)))).tuples())
            rows = [r for r in rows if (r["namespace"], r["name"], r["decided_at"]) not in stored]
        if rows:
            conn.execute(scaling_decisions.insert(), list(rows))
        return len(rows)


def mark_decision_not_applied(engine: Engine, row: dict[str, Any]) -> None:
    """A decision row written before its patch, whose patch then failed: stored as not applied, with the row's
    reason (which says why)."""
    t = scaling_decisions.c
    with unavailable_on_error("correcting a scaling decision"), engine.begin() as conn:
        conn.execute(scaling_decisions.update()
                     .where(t.namespace == row["namespace"], t.name == row["name"], t.decided_at == row["decided_at"])
                     .values(applied=False, reason=row["reason"]))

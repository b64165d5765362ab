"""The `prescaler` command line. Parses arguments, calls the stage modules, maps errors to exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prescaler.durations import format_duration, parse_duration
from prescaler.errors import ConfigError, DataUnavailable, InputError, PrescalerError

EXIT_INPUT = 2
EXIT_UNAVAILABLE = 3


def _duration(field: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> timedelta:
        try:
            return parse_duration(text, field=field)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse


def _positive_float(field: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{field}: {text!r} is not a number") from exc
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{field} must be greater than zero, got {text}")
        return value

    return parse


def _service_level(field: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> float:
        try:
            value = float(text.strip().removesuffix("%"))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{field}: {text!r} is not a percentage") from exc
        if not (0 < value < 100):
            raise argparse.ArgumentTypeError(f"{field} must be greater than 0 and less than 100, got {text}")
        return value

    return parse


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO timestamp") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prescaler", description=__doc__)
    p.add_argument("--database-url", help="SQLAlchemy URL of the PostgreSQL database (default: "
                   "$PRESCALER_DATABASE_URL; commands that use the database need one of them)")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("migrate", help="bring the database schema to the current version")
    m.set_defaults(func=cmd_migrate)

    s = sub.add_parser("simulate", help="simulate fitness-app traffic into PostgreSQL")
    s.add_argument("--days", type=_positive_float("--days"), default=28.0)
    s.add_argument("--start", type=_timestamp, help="first timestamp (default: --days before now, midnight)")
    s.add_argument("--step", type=_duration("--step"), default=timedelta(minutes=1))
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--service", default="workout-api")
    s.set_defaults(func=cmd_simulate)

    i = sub.add_parser("import", help="import a ds,y CSV trace (optional service, endpoint columns)")
    i.add_argument("file", type=Path)
    i.add_argument("--service", default="default", help="service for rows without a service column")
    i.add_argument("--endpoint", default="*", help="endpoint for rows without an endpoint column")
    i.add_argument("--timezone", default="UTC", help="zone of naive timestamps in the file")
    i.set_defaults(func=cmd_import)

    mt = sub.add_parser("maintain", help="traffic storage upkeep: partitions ahead, rollup check, retention "
                                         "(idempotent; run it on a schedule)")
    mt.add_argument("--config", type=Path, help="administrator config: sources, with their retention")
    mt.add_argument("--ahead", type=_duration("--ahead"), default=timedelta(days=14),
                    help="create traffic_log partitions this far ahead (default 14d)")
    mt.add_argument("--verify", type=_duration("--verify"), default=timedelta(days=2),
                    help="check the rollups of this recent span against the rows; repair what differs")
    mt.add_argument("--rebuild-rollups", type=_duration("--rebuild-rollups"), metavar="SPAN",
                    help="recompute every rollup of the last SPAN from the rows first (after writes that "
                         "bypassed traffic_log's triggers, e.g. a restore with triggers disabled)")
    mt.add_argument("--now", type=_timestamp, help=argparse.SUPPRESS)  # for tests and what-if runs
    mt.set_defaults(func=cmd_maintain)

    ev = sub.add_parser("events", help="the calendar of scheduled traffic events (launches, pushes, holidays)")
    ev_sub = ev.add_subparsers(dest="events_command", required=True)
    ei = ev_sub.add_parser("import", help="import a name,kind,start,end[,service] CSV into traffic_events "
                                          "(validated whole, idempotent on name and start)")
    ei.add_argument("file", type=Path)
    ei.add_argument("--timezone", default="UTC", help="zone of naive timestamps in the file")
    ei.set_defaults(func=cmd_events_import)

    f = sub.add_parser("forecast", help="fit a model on a stored series and store its forecast")
    f.add_argument("--series", required=True, help="service name in traffic_log")
    f.add_argument("--model", default="auto")
    f.add_argument("--step", type=_duration("--step"), default=timedelta(minutes=5))
    f.add_argument("--history", type=_duration("--history"), default=timedelta(days=14))
    f.add_argument("--horizon", type=_duration("--horizon"), default=timedelta(days=7))
    f.add_argument("--now", type=_timestamp, help="forecast origin (default: the end of the stored data)")
    f.add_argument("--output", type=Path, help="also write the forecast as CSV")
    f.set_defaults(func=cmd_forecast)

    b = sub.add_parser("backtest", help="replay a trace through static/reactive/predictive/oracle policies")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=Path, help="CSV with ds,y")
    src.add_argument("--series", help="a series (service) stored in PostgreSQL")
    b.add_argument("--step", type=_duration("--step"), default=None, help="resample to this step")
    b.add_argument("--capacity", type=_positive_float("--capacity"), required=True,
                   help="requests one replica serves per step")
    b.add_argument("--startup-delay", type=_duration("--startup-delay"), default=timedelta(minutes=10))
    b.add_argument("--model", default="auto")
    b.add_argument("--headroom", type=float, default=10.0, help="headroom percent for predictive/reactive")
    b.add_argument("--last", type=_duration("--last"), help="only the last part of the trace, e.g. 120d")
    b.add_argument("--timezone", default="UTC", help="zone of naive timestamps in the CSV")
    b.add_argument("--events", type=Path, help="scheduled events CSV (name,kind,start,end[,service]; naive times "
                   "in --timezone); default with --series: the series' stored events")
    b.add_argument("--schedules", type=Path, help="YAML list of cron schedules ({name, cron, duration, timeZone, "
                   "minReplicas?}, as spec.schedules): their windows are sized like calendar kinds, or held at "
                   "minReplicas")
    b.add_argument("--json", type=Path, dest="json_out")
    b.add_argument("--report", type=Path)
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("--service-level", type=_service_level("--service-level"), default=None, metavar="PERCENT",
                   help="percent of requests to serve, e.g. 99.9: predictive sizes by its calibrated errors "
                        "instead of --headroom (which stays the frontier's sweep and the fallback)")
    b.add_argument("--workers", type=int, default=None,
                   help="refits in this many parallel processes (default: one per usable core)")
    b.add_argument("--quantile", choices=("yhat", "upper"), default="upper",
                   help="the forecast the headroom sizing reads (default: upper, the CRD's default)")
    b.set_defaults(func=cmd_backtest)

    sc = sub.add_parser("scorecard", help="each scaler's plan against what ran, over the same observed load, from "
                                          "the decision log: replica-hours and unserved load per window and day")
    sc.add_argument("--namespace", help="only the scalers of this namespace")
    sc.add_argument("--name", help="only the scalers of this name")
    sc.add_argument("--now", type=_timestamp, help="the time the windows and days end at (default: now)")
    sc.add_argument("--daily", action="store_true", help="also a line per UTC day of the last 14")
    sc.add_argument("--json", action="store_true", dest="as_json", help="print JSON instead of a table")
    sc.set_defaults(func=cmd_scorecard)

    c = sub.add_parser("collect", help="keep traffic tables current from the feeds in --config (Prometheus, Kafka)")
    c.add_argument("--config", type=Path, required=True, help="administrator config: sources: and feeds:")
    c.add_argument("--once", action="store_true",
                   help="collect every complete minute (backfill included), then exit")
    c.add_argument("--database-url", dest="collect_database_url",
                   help="SQLAlchemy URL (default: $PRESCALER_DATABASE_URL)")
    c.add_argument("--metrics-port", type=int, default=9091, help="/metrics and /healthz (0: none)")
    c.add_argument("--settle", type=_duration("--settle"), default=timedelta(seconds=20),
                   help="how long after a minute ends it counts as complete (scrape and ingestion delay)")
    c.add_argument("--concurrency", type=int, default=4, help="series collected in parallel per feed")
    c.add_argument("--leader-election", action=argparse.BooleanOptionalAction, default=None,
                   help="hold a Lease so only one replica collects the Prometheus feeds (default: on in a pod)")
    c.add_argument("--lease-name", default="prescaler-collector", help="the Lease's name")
    c.add_argument("--lease-namespace", help="the Lease's namespace (default: the pod's own)")
    c.add_argument("--lease-duration", type=_duration("--lease-duration"), default=timedelta(seconds=15),
                   help="how long a silent leader keeps the Lease before a standby takes it")
    c.add_argument("--renew-deadline", type=_duration("--renew-deadline"), default=timedelta(seconds=10),
                   help="a leader that has not renewed for this long stops writing (shorter than the duration)")
    c.add_argument("--retry-period", type=_duration("--retry-period"), default=timedelta(seconds=2),
                   help="how often the Lease is renewed or tried")
    c.set_defaults(func=cmd_collect)

    r = sub.add_parser("run", help="run the operator (kopf)")
    scope = r.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", help="watch these namespaces (repeatable)")
    scope.add_argument("--all-namespaces", action="store_true", default=True)
    r.add_argument("--config", type=Path, help="administrator config (data sources) YAML")
    r.add_argument("--metrics-port", type=int, default=9090)
    r.add_argument("--liveness-port", type=int, default=8081)
    r.add_argument("--peering", default="prescaler", help="kopf peering name ('' disables peering)")
    r.add_argument("--priority", type=int, default=None,
                   help="kopf peering priority (default: random, so replicas never tie and freeze)")
    r.add_argument("--workers", type=int, default=2, help="forecast fit processes")
    r.set_defaults(func=cmd_run)
    return p


def _engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from prescaler import config, db

    engine = db.make_engine(config.database_url(args.database_url))
    db.migrate(engine)
    return engine


def cmd_migrate(args: argparse.Namespace) -> int:
    from prescaler import config, db

    engine = db.make_engine(config.database_url(args.database_url))
    db.migrate(engine)
    print(f"schema at revision {db.current_revision(engine)}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from prescaler import ingest

    start = args.start
    if start is None:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        start = today - timedelta(days=args.days)
    result = ingest.simulate(_engine(args), start=start, days=args.days, step=args.step, seed=args.seed,
                             service=args.service)
    print(f"simulated {result.rows:,} rows and {result.events} events for {args.service} "
          f"from {start:%Y-%m-%d %H:%M} ({args.days:g} days at {format_duration(args.step)})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from prescaler import ingest

    result = ingest.import_csv(_engine(args), args.file, service=args.service, endpoint=args.endpoint,
                               timezone=args.timezone)
    print(f"read {result.rows_read:,} rows from {args.file}: {result.rows_written:,} written, "
          f"{result.rows_unchanged:,} already present, {result.rows_missing:,} empty rows skipped")
    return 0


def cmd_maintain(args: argparse.Namespace) -> int:
    import time

    from prescaler import history, storage

    sources = history.load_sources(args.config)
    engine = _engine(args)
    now = args.now or datetime.now(UTC)
    started = time.perf_counter()
    if args.rebuild_rollups is not None:
        rows = storage.rebuild_rollups(engine, now - args.rebuild_rollups, now + timedelta(days=1))
        print(f"rollups: rebuilt from the rows of the last {format_duration(args.rebuild_rollups)} "
              f"({rows:,} rollup rows)")
    report = storage.maintain(engine, sources, now=now, ahead=args.ahead, verify=args.verify)
    for line in report.lines():
        print(line)
    print(f"done in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_events_import(args: argparse.Namespace) -> int:
    from prescaler import events

    # The file is validated before any connection: a bad line is reported even without a database.
    events.read_events_csv(args.file, timezone=args.timezone)
    result = events.import_events(_engine(args), args.file, timezone=args.timezone)
    print(f"read {result.rows_read:,} events from {args.file}: {result.written:,} written, "
          f"{result.unchanged:,} already present")
    return 0


def cmd_forecast(args: argparse.Namespace) -> int:
    from prescaler import db, forecasting, history
    from prescaler import events as event_lift

    forecasting.check_model_name(args.model)
    engine = _engine(args)
    source = history.default_source()
    now = args.now or history.last_timestamp(engine, source, args.series)
    if now is None:
        raise InputError(f"series {args.series!r} has no data")
    series = history.read_history(engine, source, args.series, now - args.history, now, args.step)
    events = history.read_events(engine, args.series, now - args.history, now + args.horizon)
    result = event_lift.fit_predict(args.model, series, args.horizon, events=events)
    fc = result.forecast
    db.save_forecast(engine, scaler_key=f"cli/{args.series}", series=args.series, forecast=fc,
                     generated_at=now, smape=result.smape, fit_seconds=result.fit_seconds, params_hash="cli")
    frame = fc.to_frame()
    if args.output:
        frame.to_csv(args.output, index=False)
    peak = frame.iloc[int(frame["yhat"].to_numpy().argmax())]
    print(f"model {result.model} ({result.reason}); fit {result.fit_seconds:.2f}s; "
          f"sMAPE {result.smape if result.smape is not None else float('nan'):.1f}%")
    print(f"{len(frame)} steps of {format_duration(args.step)} from {frame['ds'].iloc[0]:%Y-%m-%d %H:%M}; "
          f"peak {peak['yhat']:,.0f} (upper {peak['upper']:,.0f}) at {peak['ds']:%Y-%m-%d %H:%M}")
    return 0


def _utc_span(series: Any) -> tuple[datetime, datetime]:
    """First and last timestamp of a series (naive ones are UTC), the last widened by a day."""
    import pandas as pd

    idx = pd.DatetimeIndex(series.index)
    idx = idx.tz_localize(UTC) if idx.tz is None else idx.tz_convert(UTC)
    return idx.min().to_pydatetime(), idx.max().to_pydatetime() + timedelta(days=1)


def cmd_backtest(args: argparse.Namespace) -> int:
    from prescaler import backtest, events, forecasting, history, ingest, report, schedules

    forecasting.check_model_name(args.model)
    # Validated before the trace is read or any fit starts, like the calendar below.
    cron = schedules.load_schedules_file(args.schedules) if args.schedules is not None else []
    calendar = None
    if args.events is not None:
        # Validated before the trace is read or any fit starts: a bad line fails at once, with its number.
        calendar = events.for_service(events.read_events_csv(args.events, timezone=args.timezone), args.series)
    if args.input is not None:
        series = ingest.read_trace_csv(args.input, timezone=args.timezone)
    else:
        engine = _engine(args)
        source = history.default_source()
        end = history.last_timestamp(engine, source, args.series)
        if end is None:
            raise InputError(f"series {args.series!r} has no data")
        step = args.step or timedelta(minutes=5)
        # --last is the evaluated window; the forecaster also needs warm-up history before it.
        span = args.last + backtest.DEFAULT_WARMUP if args.last else timedelta(days=60)
        series = history.read_history(engine, source, args.series, end - span, end + step, step)
        if calendar is None:
            calendar = history.read_events(engine, args.series, end - span, end + step)
    result = backtest.run_backtest(
        series, capacity=args.capacity, startup_delay=args.startup_delay, step=args.step, model=args.model,
        headroom_percent=args.headroom, last=args.last, progress=not args.no_progress,
        events=calendar, service_level=args.service_level, workers=args.workers, quantile=args.quantile,
        schedules=schedules.windows_between(cron, *_utc_span(series)),
    )
    print(backtest.format_table(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result.to_json(), indent=2))
        print(f"wrote {args.json_out}")
    if args.report:
        report.write_html(result, args.report)
        print(f"wrote {args.report}")
    return 0


def cmd_scorecard(args: argparse.Namespace) -> int:
    from prescaler import db, scorecard

    now = args.now or datetime.now(UTC)
    span = max(scorecard.WINDOWS.values())
    rows = db.read_score_rows(_engine(args), since=now - span - timedelta(hours=1), until=now,
                              namespace=args.namespace, name=args.name)
    scalers = scorecard.report(scorecard.records_by_scaler(rows, keep=span), now)
    if args.as_json:
        print(json.dumps({"now": now.isoformat(), "scalers": scalers}, indent=2))
        return 0
    if not scalers:
        print("no decisions with a scorecard in the last 14 days")
        return 0
    print(_scorecard_table(scalers, daily=args.daily))
    return 0


def _scorecard_table(scalers: list[dict[str, Any]], *, daily: bool) -> str:
    """Planned against baseline per scaler and window (and day): replica-hours, unserved percent, ratios."""
    def cells(label: str, w: dict[str, Any]) -> list[str]:
        return [label, w.get("plannedReplicaHours", "–"), w.get("baselineReplicaHours", "–"),
                w.get("plannedUnservedPercent", "–"), w.get("baselineUnservedPercent", "–"),
                w.get("costRatio", "–"), w.get("unservedRatio", "–"), w.get("baseline", "–")]

    header = ["SCALER", "SPAN", "PLANNED RH", "BASELINE RH", "PLANNED UNSERVED %", "BASELINE UNSERVED %", "COST",
              "UNSERVED", "BASELINE"]
    lines = [header]
    for s in scalers:
        scaler = f"{s['namespace']}/{s['name']}"
        for label, window in s["windows"].items():
            lines.append([scaler, *cells(label, window)])
            scaler = ""
        for day in s["daily"] if daily else []:
            lines.append(["", *cells(day["date"], day)])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def cmd_collect(args: argparse.Namespace) -> int:
    from prescaler import collect, db
    from prescaler.collect import leader
    from prescaler.collect.config import CollectorSettings

    config = collect.load_config(args.config)
    if not 0 <= args.metrics_port < 65536:
        raise InputError(f"--metrics-port: {args.metrics_port} is not a TCP port")
    if args.concurrency < 1:
        raise InputError(f"--concurrency: must be at least 1, got {args.concurrency}")
    settings = CollectorSettings.build(database_url=args.collect_database_url or args.database_url)
    election = None
    in_pod = leader.pod_namespace()
    if not args.once and (args.leader_election or (args.leader_election is None and in_pod)):
        election = leader.ElectionSettings(
            lease_name=args.lease_name, namespace=args.lease_namespace or in_pod or "",
            identity=leader.default_identity(settings.pod_name), lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline, retry_period=args.retry_period)
        election.check()
    engine = db.make_engine(settings.database_url)
    return collect.main(config, engine, once=args.once, settle=args.settle, port=args.metrics_port or None,
                        concurrency=args.concurrency, election=election, clock=settings.clock,
                        log_level=settings.log_level)


def cmd_run(args: argparse.Namespace) -> int:
    from prescaler import handlers
    from prescaler.actuation import load_client_config
    from prescaler.config import OperatorConfig

    try:
        config = OperatorConfig.build(
            database_url=args.database_url, sources_path=args.config,
            namespaces=tuple(args.namespace or ()), metrics_port=args.metrics_port,
            liveness_port=args.liveness_port, peering=args.peering or None, priority=args.priority,
            workers=args.workers, check_cluster=load_client_config,
        )
    except ConfigError as exc:
        for line in exc.problems:
            print(f"prescaler run: {line}", file=sys.stderr)
        return EXIT_INPUT
    handlers.run(config)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except InputError as exc:
        print(f"prescaler: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except ConfigError as exc:
        for line in exc.problems:
            print(f"prescaler: error: {line}", file=sys.stderr)
        return EXIT_INPUT
    except DataUnavailable as exc:
        print(f"prescaler: unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except PrescalerError as exc:
        print(f"prescaler: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

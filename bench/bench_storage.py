"""Traffic storage at scale: ingest, the 14-day history read, the dashboard's analytics, rollup upkeep.

    python bench/bench_storage.py [--scale 1.0] [--baseline] [--keep]

Builds traffic_log with 100 services × 5 endpoints × 69 days at one minute (49.7M rows; `--scale 0.1` keeps
10 services) in a throwaway database on the local PostgreSQL server (prescaler_dev.pgserver), ending at
today's midnight UTC, and measures:

- ingest: rows/s of `ingest.write_traffic` (the path of `prescaler simulate` and `import`: partitions, binary
  COPY, rollups by trigger), one service (496,800 rows) per transaction; then the merge path (every value
  changed) on a few services;
- the 14-day history read at a 5-minute step (`history.read_history`, the operator's read), p50/p90/p99 over
  200 reads of random services ending at random minutes of the last day;
- each dashboard analytics panel's SQL (from the dashboard JSON, for one scaler's service over the whole
  range), median of 5 runs, plus the whole views unfiltered;
- rollup upkeep: one new minute for all 500 series (one upsert transaction per series, as `prescaler collect`
  writes; the rollups follow in the same transactions), a `prescaler maintain` run, and a full rebuild of
  every rollup from the rows (the repair of last resort, and about what migration 0005 spends on them).

`--baseline` builds the same data on the schema before partitioning (migration 0004) with the previous
write path (CSV COPY into a staging table, then INSERT ... ON CONFLICT) and measures the same reads and
panels on it (the "before" column), then times migration 0005 of that table and checks rows and sums.

Reports, never asserts (targets: ingest >= 200k rows/s, read p99 < 100 ms, panels < 200 ms); results go
to bench/results/storage[-baseline].json. The exit code is non-zero only when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from prescaler import db, ingest, storage
from prescaler.history import TrafficSource, default_source, read_history
from prescaler_dev import pgserver

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DASHBOARD = REPO / "charts" / "prescaler" / "dashboards" / "prescaler.json"
SERVICES, DAYS = 100, 69
READS = 200
TARGETS = {"ingest_rows_per_s": 200_000, "read_p99_ms": 100.0, "panel_ms": 200.0}
SCALER_KEY = "bench/storage"
COLLECTOR_UPSERT = (
    "INSERT INTO traffic_log AS t (ts, service, endpoint, requests) "
    "SELECT TIMESTAMPTZ 'epoch' + x.s * INTERVAL '1 second', %(service)s, %(endpoint)s, x.v "
    "FROM unnest(%(starts)s::bigint[], %(values)s::bigint[]) AS x(s, v) "
    "ON CONFLICT (service, endpoint, ts) DO UPDATE SET requests = EXCLUDED.requests "
    "WHERE t.requests IS DISTINCT FROM EXCLUDED.requests")


def service_name(i: int) -> str:
    return f"svc-{i:03d}"


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def log(message: str) -> None:
    load = os.getloadavg()[0]
    print(f"[{datetime.now():%H:%M:%S} load {load:.1f}] {message}", flush=True)


def server_cpu_s(engine: Engine) -> float:
    """CPU seconds used so far by this database's client backends (from /proc: same machine)."""
    with engine.connect() as conn:
        pids = conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend'").scalars().all()
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Client and server CPU over a phase: on a machine shared with other work, rows per CPU-second say
    what the code costs when wall-clock rates mostly say how busy the machine was."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.client, self.server, self.wall = time.process_time(), server_cpu_s(engine), time.perf_counter()
        self.load = os.getloadavg()[0]

    def stop(self) -> dict[str, float]:
        return {"client_cpu_s": time.process_time() - self.client,
                "server_cpu_s": server_cpu_s(self.engine) - self.server,
                "wall_s": time.perf_counter() - self.wall, "loadavg_start": self.load,
                "loadavg_end": os.getloadavg()[0]}


# --- loading -----------------------------------------------------------------------------------------------

def frame(i: int, start: datetime, seed_offset: int = 0) -> pd.DataFrame:
    traffic, _ = ingest.simulate_frame(start=start, days=DAYS, step=timedelta(minutes=1), seed=i + seed_offset,
                                       service=service_name(i))
    return traffic


def write_baseline(engine: Engine, traffic: pd.DataFrame) -> None:
    """The write path before partitioning: CSV COPY into a staging table, INSERT ... ON CONFLICT."""
    buf = io.StringIO()
    us = traffic["ts"].dt.tz_convert(UTC).astype("int64") // 1000
    pd.DataFrame({"us": us, "service": traffic["service"], "endpoint": traffic["endpoint"],
                  "requests": traffic["requests"]}).to_csv(buf, index=False, header=False)
    buf.seek(0)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TEMP TABLE stage (us bigint NOT NULL, service text NOT NULL, "
                             "endpoint text NOT NULL, requests bigint NOT NULL) ON COMMIT DROP")
        raw: Any = conn.connection.driver_connection
        with raw.cursor() as cur:
            cur.copy_expert("COPY stage FROM STDIN WITH (FORMAT csv)", buf)
        conn.exec_driver_sql(
            "INSERT INTO traffic_log AS t (ts, service, endpoint, requests) "
            "SELECT TIMESTAMPTZ 'epoch' + us * INTERVAL '1 microsecond', service, endpoint, requests FROM stage "
            "ON CONFLICT (service, endpoint, ts) DO UPDATE SET requests = EXCLUDED.requests "
            "WHERE t.requests IS DISTINCT FROM EXCLUDED.requests")


def load(engine: Engine, services: int, start: datetime, baseline: bool) -> dict[str, Any]:
    rows, write_s, frame_s = 0, 0.0, 0.0
    engine.dispose()  # one pooled connection from here on, so the server's CPU is that backend's
    meter: CpuMeter | None = None
    write_cpu = 0.0
    for i in range(services):
        started = time.perf_counter()
        traffic = frame(i, start)
        written = time.perf_counter()
        if meter is None:
            meter = CpuMeter(engine)
        client_before = time.process_time()
        if baseline:
            write_baseline(engine, traffic)
        else:
            ingest.write_traffic(engine, traffic, what=f"bench traffic {i}")
        frame_s += written - started
        write_s += time.perf_counter() - written
        write_cpu += time.process_time() - client_before
        rows += len(traffic)
        if i % 10 == 9 or i == services - 1:
            log(f"loaded {i + 1}/{services} services, {rows:,} rows, {rows / write_s:,.0f} rows/s")
    assert meter is not None
    cpu = meter.stop()
    return {"rows": rows, "write_s": write_s, "rows_per_s": rows / write_s, "frame_s": frame_s,
            "rows_per_s_with_generation": rows / (write_s + frame_s), "client_write_cpu_s": write_cpu,
            **cpu, "rows_per_cpu_s": rows / (write_cpu + cpu["server_cpu_s"])}


def merge(engine: Engine, services: int, start: datetime) -> dict[str, Any]:
    """The same services again with other values: the staging + ON CONFLICT DO UPDATE path."""
    rows, changed, spent, client = 0, 0, 0.0, 0.0
    meter = CpuMeter(engine)
    for i in range(services):
        traffic = frame(i, start, seed_offset=1000)
        started, cpu = time.perf_counter(), time.process_time()
        changed += ingest.write_traffic(engine, traffic)
        spent += time.perf_counter() - started
        client += time.process_time() - cpu
        rows += len(traffic)
    used = meter.stop()
    return {"rows": rows, "seconds": spent, "rows_per_s": rows / spent, "changed": changed, **used,
            "rows_per_cpu_s": rows / (client + used["server_cpu_s"])}


# --- reads -------------------------------------------------------------------------------------------------

def reads(engine: Engine, services: int, end: datetime, source: TrafficSource, n: int) -> dict[str, float]:
    rng = random.Random(7)
    times = []
    meter = CpuMeter(engine)
    client = time.process_time()
    for _ in range(n):
        service = service_name(rng.randrange(services))
        now = end - timedelta(minutes=rng.randrange(24 * 60))
        started = time.perf_counter()
        series = read_history(engine, source, service, now - timedelta(days=14), now, timedelta(minutes=5))
        times.append((time.perf_counter() - started) * 1000)
        assert series.notna().sum() > 14 * 280
    client = time.process_time() - client
    used = meter.stop()
    return {"n": n, "p50_ms": percentile(times, 50), "p90_ms": percentile(times, 90),
            "p99_ms": percentile(times, 99), "max_ms": max(times),
            "server_cpu_ms_per_read": used["server_cpu_s"] * 1000 / n, "client_cpu_ms_per_read": client * 1000 / n,
            "loadavg": used["loadavg_end"]}


def analytics_panels() -> dict[str, str]:
    """The dashboard panels that read the traffic analytics views, by title."""
    doc = json.loads(DASHBOARD.read_text())
    found: dict[str, str] = {}

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                sql = target.get("rawSql", "")
                if re.search(r"\btraffic_(hourly|daily|profile|top_endpoints)\b", sql):
                    found[panel["title"]] = sql
            walk(panel.get("panels", []))

    walk(doc["panels"])
    return found


def render(sql: str, start: datetime, end: datetime) -> str:
    namespace, scaler = SCALER_KEY.split("/")
    sql = sql.replace("$namespace", namespace).replace("$scaler", scaler)
    return re.sub(r"\$__timeFilter\(([^)]+)\)",
                  lambda m: f"{m.group(1)} BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'", sql)


def panels(engine: Engine, start: datetime, end: datetime, service: str) -> dict[str, Any]:
    with engine.begin() as conn:
        conn.execute(db.forecasts.insert(), {
            "scaler_key": SCALER_KEY, "series": service, "model": "bench", "params_hash": "bench",
            "generated_at": end, "step_seconds": 300, "horizon_seconds": 0})
    out: dict[str, Any] = {}
    for title, sql in analytics_panels().items():
        text = render(sql, start, end)
        runs = []
        with engine.connect() as conn:
            rows = len(conn.exec_driver_sql(text.replace("%", "%%")).all())  # warm-up, and the row count
            for _ in range(5):
                started = time.perf_counter()
                conn.exec_driver_sql(text.replace("%", "%%")).all()
                runs.append((time.perf_counter() - started) * 1000)
        out[title] = {"median_ms": statistics.median(runs), "max_ms": max(runs), "rows": rows}
        log(f"panel {title!r}: {out[title]['median_ms']:.1f} ms ({rows} rows)")
    # Whole views, unfiltered: the server's execution time (EXPLAIN ANALYZE runs the query and discards the
    # rows), since shipping 165k rows to Python would measure the client instead.
    for view in db.VIEWS:
        runs = []
        with engine.connect() as conn:
            rows = int(conn.exec_driver_sql(f"SELECT count(*) FROM {view}").scalar_one())
            for _ in range(3):
                plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, TIMING OFF) SELECT * FROM {view}").scalars().all()
                runs.append(float(next(line for line in plan if line.startswith("Execution Time")).split()[2]))
        out[f"whole view {view} (server)"] = {"median_ms": statistics.median(runs), "max_ms": max(runs), "rows": rows}
        log(f"whole view {view}: {statistics.median(runs):.0f} ms on the server ({rows:,} rows)")
    return out


# --- rollup upkeep -----------------------------------------------------------------------------------------

def collector_minute(engine: Engine, services: int, at: datetime) -> dict[str, float]:
    """One new minute for every series, one upsert transaction per series, as the collector writes."""
    rng = np.random.default_rng(3)
    raw: Any = engine.raw_connection()
    try:
        started = time.perf_counter()
        with raw.cursor() as cur:
            for i in range(services):
                for endpoint in ingest.ENDPOINT_SHARES:
                    cur.execute(COLLECTOR_UPSERT, {"service": service_name(i), "endpoint": endpoint,
                                                   "starts": [int(at.timestamp())],
                                                   "values": [int(rng.integers(0, 1000))]})
                    raw.commit()
        took = time.perf_counter() - started
    finally:
        raw.close()
    series = services * len(ingest.ENDPOINT_SHARES)
    return {"series": series, "seconds": took, "ms_per_series": took * 1000 / series}


def migrate_loaded(engine: Engine) -> dict[str, Any]:
    """Migrate the loaded unpartitioned table to head, timed; rows and request sums before and after."""
    totals = "SELECT count(*), sum(requests) FROM traffic_log"
    with engine.connect() as conn:
        before = tuple(conn.exec_driver_sql(totals).one())
    took, _ = timed(lambda: db.migrate(engine))
    with engine.connect() as conn:
        after = tuple(conn.exec_driver_sql(totals).one())
        in_default = conn.exec_driver_sql("SELECT count(*) FROM traffic_log_default").scalar_one()
    return {"seconds": took, "rows_before": int(before[0]), "rows_after": int(after[0]),
            "requests_equal": before[1] == after[1], "rows_in_default_partition": int(in_default)}


def sizes(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        parts = conn.exec_driver_sql(
            "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
            "WHERE inhparent = 'traffic_log'::regclass").scalar_one()
        out = {"traffic_log": int(parts) or int(conn.exec_driver_sql(
            "SELECT pg_total_relation_size('traffic_log')").scalar_one())}
        for table in storage.ROLLUPS:
            if conn.exec_driver_sql("SELECT to_regclass(%(t)s)", {"t": table}).scalar() is not None:
                out[table] = int(conn.exec_driver_sql("SELECT pg_total_relation_size(%(t)s)",
                                                      {"t": table}).scalar_one())
    return out


# --- main --------------------------------------------------------------------------------------------------

def remeasure(name: str) -> dict[str, Any]:
    """Reads and panels again on a database kept by --keep (e.g. once the machine is quieter)."""
    pgserver.ensure_running()
    engine = db.make_engine(pgserver.url(database=name))
    try:
        with engine.connect() as conn:
            services = int(conn.exec_driver_sql("SELECT count(DISTINCT service) FROM traffic_rollup_daily_endpoint "
                                                "WHERE service LIKE 'svc-%%'").scalar_one())
            # The data end at a midnight; the bench's collector minute is the only row after it.
            end = conn.exec_driver_sql("SELECT date_bin('1 day', max(bucket), TIMESTAMPTZ '2000-01-01+00') "
                                       "FROM traffic_rollup_5m").scalar_one().astimezone(UTC)
            conn.execute(db.forecasts.delete().where(db.forecasts.c.scaler_key == SCALER_KEY))
            conn.commit()
        start = end - timedelta(days=DAYS)
        result: dict[str, Any] = {"database": name, "services": services}
        result["read_14d_5m"] = reads(engine, services, end, default_source(), READS)
        log(f"14-day 5-minute read: {result['read_14d_5m']}")
        result["read_14d_5m_from_rows"] = reads(engine, services, end, TrafficSource(table="public.traffic_log"), 40)
        log(f"the same read from the rows (no rollup): {result['read_14d_5m_from_rows']}")
        result["panels"] = panels(engine, start, end, service_name(services // 2))
    finally:
        engine.dispose()
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    services = max(1, round(SERVICES * args.scale))
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=DAYS)
    name = f"bench_storage_{os.getpid()}"
    pgserver.ensure_running()
    url = pgserver.create_database(name)
    engine = db.make_engine(url)
    result: dict[str, Any] = {"services": services, "endpoints": len(ingest.ENDPOINT_SHARES), "days": DAYS,
                              "baseline": args.baseline, "start": start.isoformat(), "end": end.isoformat()}
    try:
        db.migrate(engine, "0004" if args.baseline else "head")
        log(f"database {name}: {services} services x 5 endpoints x {DAYS} days at 1 minute"
            f"{' (baseline schema 0004)' if args.baseline else ''}")
        result["ingest"] = load(engine, services, start, args.baseline)
        took, _ = timed(lambda: _analyze(engine, args.baseline))
        result["analyze_s"] = took
        log(f"ANALYZE (and VACUUM of the rollups): {took:.0f}s")
        result["sizes"] = sizes(engine)

        source = TrafficSource(table="public.traffic_log") if args.baseline else default_source()
        result["read_14d_5m"] = reads(engine, services, end, source, READS)
        log(f"14-day 5-minute read: {result['read_14d_5m']}")
        if not args.baseline:
            raw_reads = reads(engine, services, end, TrafficSource(table="public.traffic_log"), 40)
            result["read_14d_5m_from_rows"] = raw_reads
            log(f"the same read from the rows (no rollup): {raw_reads}")
        result["panels"] = panels(engine, start, end, service_name(services // 2))

        if not args.baseline:
            result["collector_minute"] = collector_minute(engine, services, end)
            log(f"collector minute: {result['collector_minute']}")
            took, report = timed(lambda: storage.maintain(engine, {"default": default_source()}, now=end))
            result["maintain_s"] = took
            log(f"maintain: {took:.1f}s; " + "; ".join(report.lines()))
            took, written = timed(lambda: storage.rebuild_rollups(engine, start, end))
            result["rebuild_rollups"] = {"seconds": took, "rollup_rows": written,
                                         "rows_per_s": result["ingest"]["rows"] / took}
            log(f"full rollup rebuild: {took:.0f}s ({written:,} rollup rows)")
            merged = merge(engine, max(1, services // 20), start)
            result["merge"] = merged
            log(f"merge path (every value changed): {merged}")
        else:
            result["migration"] = migrate_loaded(engine)
            log(f"migration 0005 of the loaded table: {result['migration']}")
    finally:
        engine.dispose()
        if args.keep:
            log(f"kept database {name}: {url}")
        else:
            pgserver.drop_database(name)
    return result


def _analyze(engine: Engine, baseline: bool) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE traffic_log")
        if not baseline:
            for table in storage.ROLLUPS:
                conn.exec_driver_sql(f"VACUUM ANALYZE {table}")


def report(result: dict[str, Any]) -> str:
    ing, rd = result["ingest"], result["read_14d_5m"]
    lines = [
        f"| rows | {result['ingest']['rows']:,} ({result['services']} services x 5 endpoints x {result['days']} "
        "days x 1 min) |",
        f"| ingest | {ing['rows_per_s']:,.0f} rows/s wall clock at load {ing['loadavg_start']:.0f}-"
        f"{ing['loadavg_end']:.0f}; {ing['rows_per_cpu_s']:,.0f} rows per CPU-second (client + server) |",
        f"| 14-day read at 5 min | p50 {rd['p50_ms']:.1f} ms, p90 {rd['p90_ms']:.1f} ms, p99 {rd['p99_ms']:.1f} ms "
        f"(CPU per read: {rd['server_cpu_ms_per_read']:.1f} ms server, {rd['client_cpu_ms_per_read']:.1f} ms client) |",
    ]
    if "read_14d_5m_from_rows" in result:
        raw = result["read_14d_5m_from_rows"]
        lines.append(f"| same read from the rows | p50 {raw['p50_ms']:.0f} ms, p99 {raw['p99_ms']:.0f} ms |")
    for title, p in result["panels"].items():
        lines.append(f"| {title} | {p['median_ms']:.1f} ms (max {p['max_ms']:.1f}, {p['rows']:,} rows) |")
    if "migration" in result:
        mg = result["migration"]
        lines.append(f"| migration 0005 of this table | {mg['seconds'] / 60:.1f} min, {mg['rows_after']:,} of "
                     f"{mg['rows_before']:,} rows, request sums equal: {mg['requests_equal']} |")
    if "collector_minute" in result:
        c = result["collector_minute"]
        lines.append(f"| collector minute ({c['series']} series upserted) | {c['seconds']:.2f} s "
                     f"({c['ms_per_series']:.2f} ms per series, rollups included) |")
        lines.append(f"| prescaler maintain | {result['maintain_s']:.1f} s |")
        rb = result["rebuild_rollups"]
        lines.append(f"| full rollup rebuild | {rb['seconds']:.0f} s ({rb['rows_per_s']:,.0f} rows/s) |")
        lines.append(f"| merge path (values changed) | {result['merge']['rows_per_s']:,.0f} rows/s wall clock; "
                     f"{result['merge']['rows_per_cpu_s']:,.0f} rows per CPU-second |")
    lines.append("| sizes | " + ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in result["sizes"].items()) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the 100 services (0.1: 10)")
    p.add_argument("--baseline", action="store_true", help="schema and write path before partitioning")
    p.add_argument("--keep", action="store_true", help="keep the database (prints its URL)")
    p.add_argument("--remeasure", metavar="DATABASE", help="only the reads and panels, on a kept database")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not 0 < args.scale <= 1:
        p.error("--scale must be in (0, 1]")
    if args.remeasure:
        again = remeasure(args.remeasure)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "storage-remeasured.json").write_text(json.dumps(again, indent=2, default=str))
        print(json.dumps(again, indent=2, default=str))
        return 0
    result = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"storage{'-baseline' if args.baseline else ''}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print("\n" + report(result))
    ing, rd = result["ingest"], result["read_14d_5m"]
    slowest = max(v["median_ms"] for k, v in result["panels"].items() if not k.startswith("whole view"))
    for what, ok in (("ingest >= 200k rows/s", ing["rows_per_s"] >= TARGETS["ingest_rows_per_s"]),
                     ("14-day read p99 < 100 ms", rd["p99_ms"] < TARGETS["read_p99_ms"]),
                     ("dashboard panels < 200 ms", slowest < TARGETS["panel_ms"])):
        print(f"{'PASS' if ok else 'FAIL'}: {what}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

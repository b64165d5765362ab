"""Traffic storage at scale against a real PostgreSQL: partitions, the default partition, rollups kept by
triggers under concurrent writers, their check and repair, retention, and `prescaler maintain`."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Engine

from prescaler import db, storage
from prescaler.cli import EXIT_INPUT, main
from prescaler.errors import InputError
from prescaler.history import Retention, TrafficSource, default_source, read_history
from prescaler.ingest import import_csv, simulate

NOW = datetime(2030, 1, 9, 12, 0, tzinfo=UTC)  # a Wednesday
M = timedelta(minutes=1)
RAW_PATH = TrafficSource(table="public.traffic_log")  # the same rows, read without the rollups

# The collector's statement (prescaler.collect.store): one series' minutes upserted on the key.
COLLECTOR_UPSERT = sa.text(
    "INSERT INTO traffic_log AS t (ts, service, endpoint, requests) "
    "SELECT TIMESTAMPTZ 'epoch' + x.s * INTERVAL '1 second', :service, :endpoint, x.v "
    "FROM unnest(CAST(:starts AS bigint[]), CAST(:values AS bigint[])) AS x(s, v) "
    "ON CONFLICT (service, endpoint, ts) DO UPDATE SET requests = EXCLUDED.requests "
    "WHERE t.requests IS DISTINCT FROM EXCLUDED.requests")


@pytest.fixture
def fresh(make_database) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    engine = db.make_engine(make_database())
    yield engine
    engine.dispose()


def _upsert(engine: Engine, service: str, endpoint: str, at: list[datetime], values: list[int]) -> None:
    with engine.begin() as conn:
        conn.execute(COLLECTOR_UPSERT, {"service": service, "endpoint": endpoint, "values": values,
                                        "starts": [int(t.timestamp()) for t in at]})


def _scalar(engine: Engine, sql: str, **params: object) -> object:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar_one()


def _partition_names(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [p.name for p in storage.partitions(conn)]


def _rollups_equal_rows(engine: Engine) -> None:
    """Every rollup equals the rows aggregated afresh (not only the daily one that verify_rollups reads)."""
    with engine.connect() as conn:
        for table, (width, per_endpoint) in storage.ROLLUPS.items():
            keys = "service, bucket, endpoint" if per_endpoint else "service, bucket"
            fresh = conn.execute(sa.text(
                f"SELECT service, date_bin('{width}', ts, TIMESTAMPTZ '2000-01-01 00:00+00') AS bucket"
                + (", endpoint" if per_endpoint else "")
                + f", sum(requests)::bigint, count(*) FROM traffic_log GROUP BY {keys} ORDER BY {keys}")).all()
            kept = conn.execute(sa.text(
                f"SELECT {keys}, requests, row_count FROM {table} ORDER BY {keys}")).all()
            assert kept == fresh, table


# --- partitions --------------------------------------------------------------------------------------------

def test_maintain_creates_weekly_partitions_ahead_idempotently(fresh: Engine) -> None:
    first = storage.maintain(fresh, {"default": default_source()}, now=NOW, ahead=timedelta(days=14))
    assert {"traffic_log_p20300107", "traffic_log_p20300114", "traffic_log_p20300121"} <= set(first.created)
    with fresh.connect() as conn:
        weeks = {p.name: (p.start, p.end) for p in storage.partitions(conn)}
    assert weeks["traffic_log_p20300107"] == (datetime(2030, 1, 7, tzinfo=UTC), datetime(2030, 1, 14, tzinfo=UTC))
    assert weeks["traffic_log_default"] == (None, None)
    again = storage.maintain(fresh, {"default": default_source()}, now=NOW, ahead=timedelta(days=14))
    assert again.created == [] and again.moved_rows == 0 and again.repaired == [] and again.dropped == []


def test_rows_of_a_week_without_partition_land_in_default_then_move(fresh: Engine) -> None:
    far = datetime(2031, 5, 14, 23, 58, tzinfo=UTC)
    _upsert(fresh, "api", "/a", [far, far + M, far + 2 * M], [5, 0, 7])  # crosses midnight, same week
    assert _scalar(fresh, "SELECT count(*) FROM traffic_log_default") == 3
    before = read_history(fresh, default_source(), "api", far, far + 3 * M, timedelta(minutes=5))
    report = storage.maintain(fresh, {}, now=NOW, ahead=timedelta(days=7))
    assert "traffic_log_p20310512" in report.created and report.moved_rows == 3
    assert _scalar(fresh, "SELECT count(*) FROM traffic_log_default") == 0
    assert _scalar(fresh, "SELECT count(*) FROM traffic_log_p20310512") == 3
    after = read_history(fresh, default_source(), "api", far, far + 3 * M, timedelta(minutes=5))
    pd.testing.assert_series_equal(before, after)
    _rollups_equal_rows(fresh)


def test_a_partition_made_while_a_writer_fills_its_week_loses_nothing(fresh: Engine) -> None:
    week = datetime(2032, 3, 1, tzinfo=UTC)
    written: list[datetime] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(60):
                _upsert(fresh, "busy", "*", [week + i * M], [i])
                written.append(week + i * M)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    while len(written) < 10 and thread.is_alive():
        threading.Event().wait(0.01)
    made = storage.ensure_partitions(fresh, [week])
    thread.join()
    assert not errors and made.created == ("traffic_log_p20320301",) and len(written) == 60
    assert _scalar(fresh, "SELECT count(*) FROM traffic_log_p20320301") == 60
    assert _scalar(fresh, "SELECT count(*) FROM traffic_log_default") == 0
    _rollups_equal_rows(fresh)


def test_import_makes_the_partitions_it_needs(fresh: Engine, tmp_path: Path) -> None:
    trace = tmp_path / "old.csv"
    trace.write_text("ds,y\n2019-02-03T23:59:00,4\n2019-02-04T00:00:00,6\n2021-07-01T12:00:00,1\n")
    assert import_csv(fresh, trace, service="old", endpoint="*").rows_written == 3
    names = _partition_names(fresh)
    assert {"traffic_log_p20190128", "traffic_log_p20190204", "traffic_log_p20210628"} <= set(names)
    assert "traffic_log_p20200106" not in names  # only weeks with rows
    assert _scalar(fresh, "SELECT count(*) FROM traffic_log_default") == 0


# --- rollups -----------------------------------------------------------------------------------------------

def test_concurrent_writers_keep_the_rollups_exact(fresh: Engine) -> None:
    """Writers of the same service's minutes (other endpoints, and the same keys with other values) in
    parallel: each adds its own delta under the rollup row's lock, so nothing is lost or counted twice."""
    start = datetime(2030, 1, 6, 23, 30, tzinfo=UTC)  # across a partition and a day boundary
    minutes = [start + i * M for i in range(90)]
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        rng = np.random.default_rng(k)
        try:
            for _ in range(15):
                lo = int(rng.integers(0, 60))
                chunk = minutes[lo: lo + int(rng.integers(1, 30))]
                _upsert(fresh, "conc", f"/e{k % 3}", chunk, [int(v) for v in rng.integers(0, 100, len(chunk))])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    _rollups_equal_rows(fresh)
    assert storage.verify_rollups(fresh, start) == []


def test_writes_past_the_triggers_are_found_and_repaired(fresh: Engine) -> None:
    day = datetime(2030, 1, 8, tzinfo=UTC)
    simulate(fresh, start=day, days=1, step=timedelta(minutes=1), seed=3, service="sim")
    storage.ensure_partitions(fresh, [day])
    # Straight into the partition: the parent's statement triggers do not fire.
    with fresh.begin() as conn:
        conn.exec_driver_sql("INSERT INTO traffic_log_p20300107 VALUES ('2030-01-08 10:00:30+00', 'sim', '/new', 1000)")
    window = (day + timedelta(hours=10), day + timedelta(hours=11), timedelta(minutes=5))
    assert read_history(fresh, default_source(), "sim", *window).iloc[0] + 1000 == read_history(
        fresh, RAW_PATH, "sim", *window).iloc[0]
    assert storage.verify_rollups(fresh, day) == [("sim", day)]
    assert storage.refresh_rollups(fresh, day, day + timedelta(days=1), ["sim"]) == 1
    pd.testing.assert_series_equal(read_history(fresh, default_source(), "sim", *window),
                                   read_history(fresh, RAW_PATH, "sim", *window))
    _rollups_equal_rows(fresh)


def test_maintain_repairs_recent_rollups(fresh: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    storage.ensure_partitions(fresh, [NOW])
    _upsert(fresh, "svc", "*", [NOW - timedelta(hours=3)], [10])
    with fresh.begin() as conn:
        conn.exec_driver_sql("TRUNCATE traffic_log_p20300107")
    url = fresh.url.render_as_string(hide_password=False)
    assert main(["--database-url", url, "maintain", "--now", NOW.isoformat(), "--ahead", "7d"]) == 0
    out = capsys.readouterr().out
    assert "rollups: 1 service-days repaired (svc 2030-01-09)" in out and "partitions:" in out
    assert _scalar(fresh, "SELECT count(*) FROM traffic_rollup_5m") == 0
    _rollups_equal_rows(fresh)


# --- retention ---------------------------------------------------------------------------------------------

def test_retention_drops_raw_weeks_keeps_rollups_and_freezes_them(fresh: Engine, tmp_path: Path) -> None:
    start = NOW - timedelta(days=56)
    simulate(fresh, start=start, days=56, step=timedelta(minutes=5), seed=1, service="ret")
    hours = (NOW - timedelta(days=25), NOW - timedelta(days=22), timedelta(hours=1))
    kept_hours = read_history(fresh, default_source(), "ret", *hours)
    assert kept_hours.notna().all()
    keep = Retention(raw=timedelta(days=14), rollup_5m=timedelta(days=28), hourly=timedelta(days=40))
    report = storage.maintain(fresh, {"default": TrafficSource(retention=keep)}, now=NOW)

    cutoff = NOW - timedelta(days=14)
    horizon = storage.week_start(cutoff)
    data_weeks = {storage.partition_name(storage.week_start(start) + i * storage.WEEK) for i in range(6)}
    assert report.horizon == horizon and data_weeks <= set(report.dropped)
    with fresh.connect() as conn:
        assert all(p.end is None or p.end > cutoff for p in storage.partitions(conn))
    assert _scalar(fresh, "SELECT min(ts) FROM traffic_log") >= horizon
    assert _scalar(fresh, "SELECT min(bucket) FROM traffic_rollup_5m") >= NOW - timedelta(days=28)
    assert _scalar(fresh, "SELECT min(bucket) FROM traffic_rollup_hourly") >= NOW - timedelta(days=40)
    assert _scalar(fresh, "SELECT min(bucket) FROM traffic_rollup_hourly_endpoint") >= NOW - timedelta(days=40)
    assert _scalar(fresh, "SELECT min(bucket) FROM traffic_rollup_daily_endpoint") < start + timedelta(days=1)
    # Long histories still read from the rollups where the minutes are gone.
    pd.testing.assert_series_equal(read_history(fresh, default_source(), "ret", *hours), kept_hours)
    assert read_history(fresh, RAW_PATH, "ret", *hours).isna().all()

    # Before the horizon the rollups are final: an importer refuses, any other writer changes nothing there.
    trace = tmp_path / "late.csv"
    trace.write_text(f"ds,y\n{(horizon - timedelta(days=1)):%Y-%m-%dT%H:%M:%S},5\n")
    with pytest.raises(InputError, match="older than the raw retention keeps"):
        import_csv(fresh, trace, service="ret", endpoint="/late")
    daily = _scalar(fresh, "SELECT sum(requests) FROM traffic_rollup_daily_endpoint")
    _upsert(fresh, "ret", "/late", [horizon - timedelta(days=1)], [5])
    assert _scalar(fresh, "SELECT sum(requests) FROM traffic_rollup_daily_endpoint") == daily
    again = storage.maintain(fresh, {"default": TrafficSource(retention=keep)}, now=NOW)
    assert again.deleted["traffic_log_default"] == 1 and again.repaired == [] and again.dropped == []
    assert storage.verify_rollups(fresh, start) == []


def test_retention_of_an_administrators_table_deletes_old_rows(fresh: Engine) -> None:
    with fresh.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA metrics")
        conn.exec_driver_sql("CREATE TABLE metrics.hits (at timestamptz, app text, path text, n bigint)")
        conn.exec_driver_sql("INSERT INTO metrics.hits VALUES ('2029-12-01+00', 'x', '/', 1), "
                             "('2030-01-08+00', 'x', '/', 2)")
    src = TrafficSource(table="metrics.hits", time_column="at", value_column="n", service_column="app",
                        endpoint_column="path", retention=Retention(raw=timedelta(days=7)))
    report = storage.maintain(fresh, {"default": default_source(), "hits": src}, now=NOW)
    assert report.deleted == {"metrics.hits": 1}
    assert _scalar(fresh, "SELECT sum(n) FROM metrics.hits") == 2


def test_maintain_with_a_bad_config_exits_2(fresh: Engine, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("sources:\n  default:\n    retention: {raw: 30d, 5m: 7d}\n")
    url = fresh.url.render_as_string(hide_password=False)
    assert main(["--database-url", url, "maintain", "--config", str(cfg)]) == EXIT_INPUT
    assert "retention.5m: 7d is shorter than retention.raw (30d)" in capsys.readouterr().err


def test_gaps_stay_gaps_through_partitions_and_rollups(fresh: Engine) -> None:
    t = datetime(2030, 1, 13, 23, 50, tzinfo=UTC)  # the last minutes of a partition week, then the next
    _upsert(fresh, "gap", "*", [t, t + M, t + 20 * M], [3, 0, 4])
    s = read_history(fresh, default_source(), "gap", t, t + 25 * M, timedelta(minutes=5))
    assert s.iloc[0] == 3 and math.isnan(s.iloc[1]) and math.isnan(s.iloc[2]) and s.iloc[4] == 4


# --- the chart's maintenance CronJob ---------------------------------------------------------------------

CHART = Path(__file__).resolve().parents[2] / "charts" / "prescaler"


def _helm() -> str | None:
    found = os.environ.get("HELM") or shutil.which("helm")
    if found:
        return found
    built = sorted((Path(os.environ.get("PRESCALER_CACHE") or Path.home() / ".cache" / "prescaler")).glob("bin/*/helm"))
    return str(built[-1]) if built else None


def test_chart_runs_maintain_on_a_schedule_with_the_sources_and_the_database() -> None:
    helm = _helm()
    if helm is None:
        pytest.skip("helm not built yet (hack/build-components.sh)")
    out = subprocess.run([helm, "template", "rel", str(CHART), "--namespace", "ns", "--kube-version", "1.33.0",
                          "--set", "sources.default.retention=90d"], capture_output=True, text=True, check=True)
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    (service,) = [d for d in docs if d["kind"] == "Service"]
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {})]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert container["args"][:2] == ["maintain", "--config=/etc/prescaler/config.yaml"]
    assert {"name": "config", "mountPath": "/etc/prescaler", "readOnly": True} in container["volumeMounts"]
    assert any(v.get("configMap", {}).get("name") == config["metadata"]["name"] for v in pod["spec"]["volumes"])
    assert "secretKeyRef" in {e["name"]: e for e in container["env"]}["PRESCALER_DATABASE_URL"]["valueFrom"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert not service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    sources = yaml.safe_load(config["data"]["config.yaml"])["sources"]
    assert storage_sources(sources)["default"].retention == Retention(raw=timedelta(days=90))


def storage_sources(section: dict[str, object]) -> dict[str, TrafficSource]:
    from prescaler.history import parse_sources

    return parse_sources({"sources": section})

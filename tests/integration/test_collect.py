"""`prescaler collect`: the Prometheus feed against a real Prometheus (Debian's, history loaded with promtool) and
a real PostgreSQL.

The history is 14.5 days of one-minute samples made from the vendored Wikipedia trace, each stamped at the end
of its minute, ending two hours ago, with a seven-minute hole in the middle. Beside it: series named to break
out of a label matcher, two series that one query would mix, and values that are not request counts.
"""

from __future__ import annotations

import csv
import datetime as dt
import ipaddress
import math
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy.engine import Engine

from collector_process import CollectorProcess
from prescaler import db
from prescaler.clock import Clock
from prescaler.collect import collect_once, load_config, metrics, run_forever
from prescaler.collect.prometheus import PrometheusClient, PrometheusFeed, floor_minute
from prescaler.collect.promql import QueryTemplate, escape_label_value
from promserver import PrometheusServer, find_binary, free_port
from unit.test_collect import _cli, _write_config
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "bench" / "data" / "wikipedia_en_2016-01_1h.csv"
UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)
DAYS = 14.5
GAP = range(9000, 9007)  # minutes of the trace missing in Prometheus
HOSTILE = 'a"} or vector(1) or {x="'
NEWLINE = "line\nbreak"
BACKSLASH = "back\\slash\\"

pytestmark = pytest.mark.timeout(300)


@dataclass
class History:
    prom: PrometheusServer
    end: dt.datetime  # stamp of the last sample (the end of the trace's last minute)
    trace: dict[dt.datetime, int]  # bucket start -> requests, as the collector must write it
    hostile: dict[dt.datetime, int]
    newline: dict[dt.datetime, int]

    @property
    def url(self) -> str:
        return self.prom.url


def _minute_values(n: int) -> list[int]:
    """The hourly Wikipedia trace spread over minutes (linear between hours, a deterministic ripple)."""
    with TRACE.open() as f:
        hourly = [float(row["y"]) for row in csv.DictReader(f)]
    out = []
    for i in range(n):
        h, m = divmod(i, 60)
        a, b = hourly[h % len(hourly)], hourly[(h + 1) % len(hourly)]
        rate = (a + (b - a) * m / 60) / 60
        out.append(int(rate * (1 + 0.03 * math.sin(i * 0.7))))
    return out


def _series(name: str, labels: dict[str, str], samples: list[tuple[int, str]]) -> list[str]:
    text = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
    return [f"{name}{{{text}}} {v} {t}" for t, v in samples]


@pytest.fixture(scope="module")
def history() -> Iterator[History]:
    now = floor_minute(dt.datetime.now(UTC))
    end = now - dt.timedelta(hours=2)
    n = int(DAYS * 1440)
    stamps = [end - (n - 1 - i) * MINUTE for i in range(n)]
    values = _minute_values(n)
    nasa = [(int(t.timestamp()), str(v)) for i, (t, v) in enumerate(zip(stamps, values, strict=True))
            if i not in GAP]
    few = stamps[-30:]
    hostile = [(int(t.timestamp()), str(7 + i)) for i, t in enumerate(few)]
    newline = [(int(t.timestamp()), str(100 + i)) for i, t in enumerate(few)]
    weird_values = ["5", "-3", "NaN", "7.5", "2.4", "+Inf"]
    weird = [(int(t.timestamp()), v) for t, v in zip(few, weird_values, strict=False)]
    lines = ["# TYPE nasa_requests_per_minute gauge"]
    lines += _series("nasa_requests_per_minute", {"service": "nasa"}, nasa)
    lines += _series("nasa_requests_per_minute", {"service": HOSTILE}, hostile)
    lines += _series("nasa_requests_per_minute", {"service": NEWLINE}, newline)
    lines += _series("nasa_requests_per_minute", {"service": "twins", "instance": "a"}, hostile)
    lines += _series("nasa_requests_per_minute", {"service": "twins", "instance": "b"}, hostile)
    lines += _series("nasa_requests_per_minute", {"service": "weird"}, weird)
    lines.append("# EOF")
    prom = PrometheusServer([], retention="60d")
    prom.backfill_openmetrics("\n".join(lines) + "\n")
    prom.start()
    try:
        yield History(
            prom=prom, end=end,
            trace={t - MINUTE: v for i, (t, v) in enumerate(zip(stamps, values, strict=True)) if i not in GAP},
            hostile={dt.datetime.fromtimestamp(t, UTC) - MINUTE: int(v) for t, v in hostile},
            newline={dt.datetime.fromtimestamp(t, UTC) - MINUTE: int(v) for t, v in newline},
        )
    finally:
        prom.stop()


def _rows(engine: Engine, service: str, table: str = "traffic_log") -> dict[dt.datetime, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT ts, requests FROM {table} WHERE service = :s AND endpoint = '*'"),
                            {"s": service}).all()
    return {r[0].astimezone(UTC): int(r[1]) for r in rows}


def _count(engine: Engine, table: str = "traffic_log") -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def _watermarks(engine: Engine) -> dict[str, tuple[dt.datetime, dt.datetime]]:
    w = db.collector_watermarks
    with engine.connect() as conn:
        rows = conn.execute(sa.select(w.c.series, w.c.backfill_from, w.c.collected_until)).all()
    return {r[0]: (r[1].astimezone(UTC), r[2].astimezone(UTC)) for r in rows}


def _once(config_path: Path, engine: Engine, capsys: pytest.CaptureFixture[str] | None = None,
          **kwargs: Any) -> tuple[int, str, str]:
    code = collect_once(load_config(config_path), engine, settle=dt.timedelta(seconds=20), **kwargs)
    if capsys is None:
        return code, "", ""
    out, err = capsys.readouterr()
    return code, out, err


def _metric(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


# --- the acceptance check ------------------------------------------------------------------------------------

def test_acceptance_once_fills_every_minute_exactly_and_again_changes_nothing(
        history: History, engine_for: Any, tmp_path: Path) -> None:
    url, engine = engine_for()
    config = tmp_path / "config.yaml"
    # The file, with only the url pointing at this test's Prometheus.
    config.write_text(f"""sources:
  default: {{}}
feeds:
  - name: nasa
    source: default
    prometheus:
      url: {history.url}
      query: 'sum(nasa_requests_per_minute{{service="$service"}})'
      services: [nasa]
      backfill: 15d
""")
    first = _cli("collect", "--config", str(config), "--once", "--database-url", url)
    assert first.returncode == 0, first.stderr
    rows = _rows(engine, "nasa")
    assert rows == history.trace  # every minute once, exact values, no row in the hole or after the end
    assert _count(engine) == len(history.trace)
    assert all(t - MINUTE not in rows for t in [history.end + MINUTE * k for k in range(1, 6)])
    assert f"{len(history.trace):,} rows written" in first.stdout

    with engine.connect() as conn:
        before = conn.execute(sa.text("SELECT ts, requests, xmin::text FROM traffic_log ORDER BY ts")).all()
    second = _cli("collect", "--config", str(config), "--once", "--database-url", url)
    assert second.returncode == 0, second.stderr
    assert " 0 rows written" in second.stdout
    with engine.connect() as conn:
        after = conn.execute(sa.text("SELECT ts, requests, xmin::text FROM traffic_log ORDER BY ts")).all()
    assert after == before  # not even rewritten with the same values


# --- semantics -----------------------------------------------------------------------------------------------

def test_gap_stays_missing_and_the_minute_ending_at_t_goes_to_t_minus_one(history: History, engine_for: Any,
                                                                         tmp_path: Path) -> None:
    _, engine = engine_for()
    code, _, _ = _once(_write_config(tmp_path / "c.yaml", history.url), engine)
    assert code == 0
    rows = _rows(engine, "nasa")
    first_stamp = history.end - (int(DAYS * 1440) - 1) * MINUTE
    assert min(rows) == first_stamp - MINUTE  # the first sample, stamped at the end of its minute
    assert max(rows) == history.end - MINUTE
    hole = [first_stamp - MINUTE + i * MINUTE for i in GAP]
    assert all(t not in rows for t in hole)
    assert first_stamp - MINUTE + (GAP.start - 1) * MINUTE in rows
    assert first_stamp - MINUTE + GAP.stop * MINUTE in rows


def test_watermark_advances_with_the_rows_and_later_cycles_write_only_new_minutes(
        history: History, engine_for: Any, tmp_path: Path) -> None:
    _, engine = engine_for()
    config = load_config(_write_config(tmp_path / "c.yaml", history.url))
    feed = PrometheusFeed(config.feeds[0], config.sources["default"], engine)
    stop = threading.Event()
    early = history.end - dt.timedelta(hours=5)
    report = feed.collect(early, stop)
    assert not report.errors
    marks = _watermarks(engine)
    assert marks["nasa"] == (early - dt.timedelta(days=15), early)
    assert _rows(engine, "nasa") == {t: v for t, v in history.trace.items() if t < early}
    later = feed.collect(early + 10 * MINUTE, stop)
    assert later.minutes == 10 and later.rows_written == 10
    assert _watermarks(engine)["nasa"] == (early - dt.timedelta(days=15), early + 10 * MINUTE)
    nothing = feed.collect(early + 10 * MINUTE, stop)
    assert nothing.minutes == 0 and nothing.rows_written == 0
    feed.close()


def test_backfill_is_chunked_under_the_point_limit(history: History, engine_for: Any, tmp_path: Path) -> None:
    _, engine = engine_for()
    config = load_config(_write_config(tmp_path / "c.yaml", history.url, backfill="15d", chunk="10999m"))
    spans: list[int] = []

    class Recording(requests.Session):
        def post(self, url: str | bytes, data: Any = None, **kw: Any) -> requests.Response:  # type: ignore[override]
            spans.append((int(data["end"]) - int(data["start"])) // 60 + 1)
            return super().post(url, data=data, **kw)

    feed = PrometheusFeed(config.feeds[0], config.sources["default"], engine, session=Recording())
    report = feed.collect(floor_minute(dt.datetime.now(UTC)), threading.Event())
    assert not report.errors and report.rows_written == len(history.trace)
    assert max(spans) == 10999 and sum(spans) == 15 * 1440 and len(spans) == 2


def test_interrupted_backfill_resumes_without_gap_or_duplicate(history: History, engine_for: Any,
                                                             tmp_path: Path) -> None:
    _, engine = engine_for()
    config = load_config(_write_config(tmp_path / "c.yaml", history.url, chunk="1d"))

    class DiesAfterThree(requests.Session):
        calls = 0

        def post(self, url: str | bytes, data: Any = None, **kw: Any) -> requests.Response:  # type: ignore[override]
            DiesAfterThree.calls += 1
            if DiesAfterThree.calls > 3:
                raise requests.ConnectionError("connection reset by peer")
            return super().post(url, data=data, **kw)

    newest = floor_minute(dt.datetime.now(UTC))
    feed = PrometheusFeed(config.feeds[0], config.sources["default"], engine, session=DiesAfterThree())
    report = feed.collect(newest, threading.Event())
    assert [e.kind for _, e in report.errors] == ["unreachable"]
    start, until = _watermarks(engine)["nasa"]
    assert (start, until) == (newest - dt.timedelta(days=15), newest - dt.timedelta(days=12))
    assert _rows(engine, "nasa") == {t: v for t, v in history.trace.items() if t < until}

    resumed = PrometheusFeed(config.feeds[0], config.sources["default"], engine)
    again = resumed.collect(newest, threading.Event())
    assert not again.errors and again.minutes == 12 * 1440
    assert _rows(engine, "nasa") == history.trace
    assert _watermarks(engine)["nasa"] == (start, newest)


def test_sigkill_mid_backfill_then_restart(history: History, engine_for: Any, tmp_path: Path) -> None:
    url, engine = engine_for()
    config = _write_config(tmp_path / "c.yaml", history.url, chunk="1h")
    proc = subprocess.Popen([sys.executable, "-m", "prescaler.cli", "collect", "--config", str(config), "--once",
                             "--database-url", url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            marks = _watermarks(engine)
            if "nasa" in marks and marks["nasa"][1] - marks["nasa"][0] >= dt.timedelta(days=2):
                break
            assert proc.poll() is None, "the collector finished before it could be interrupted"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    start, until = _watermarks(engine)["nasa"]
    assert until < start + dt.timedelta(days=15)  # it really was cut short
    assert _rows(engine, "nasa") == {t: v for t, v in history.trace.items() if t < until}  # no half chunk

    rerun = _cli("collect", "--config", str(config), "--once", "--database-url", url)
    assert rerun.returncode == 0, rerun.stderr
    assert _rows(engine, "nasa") == history.trace
    assert _watermarks(engine)["nasa"][0] == start  # the same backfill window, resumed


def test_upsert_repairs_and_recollecting_leaves_identical_rows(history: History, engine_for: Any,
                                                              tmp_path: Path) -> None:
    _, engine = engine_for()
    config = _write_config(tmp_path / "c.yaml", history.url)
    assert _once(config, engine)[0] == 0
    victim = sorted(history.trace)[100]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE traffic_log SET requests = 1 WHERE ts = :t"), {"t": victim})
        conn.execute(db.collector_watermarks.delete())  # forget everything: the whole window again
    rows_before = _metric("prescaler_collector_rows_written_total", feed="nasa")
    assert _once(config, engine)[0] == 0
    assert _rows(engine, "nasa") == history.trace
    assert _count(engine) == len(history.trace)
    assert _metric("prescaler_collector_rows_written_total", feed="nasa") - rows_before == 1


def test_values_are_rounded_and_negative_nan_and_infinite_skipped(history: History, engine_for: Any,
                                                                  tmp_path: Path) -> None:
    _, engine = engine_for()
    skipped_before = {r: _metric("prescaler_collector_samples_skipped_total", feed="nasa", reason=r)
                      for r in ("negative", "nan", "infinite")}
    code, _, _ = _once(_write_config(tmp_path / "c.yaml", history.url, services=["weird"], backfill="1d"), engine)
    assert code == 0
    base = history.end - 30 * MINUTE  # bucket start of the first of the last 30 minutes
    assert _rows(engine, "weird") == {base: 5, base + 3 * MINUTE: 8, base + 4 * MINUTE: 2}
    for reason in ("negative", "nan", "infinite"):
        assert _metric("prescaler_collector_samples_skipped_total", feed="nasa", reason=reason) \
            - skipped_before[reason] == 1


# --- hostile service names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [HOSTILE, NEWLINE, BACKSLASH, '"', "\\", 'x"}', "} or up", "\t\x01é€"])
def test_a_rendered_name_selects_exactly_its_own_series(history: History, name: str) -> None:
    query = QueryTemplate('nasa_requests_per_minute{service="$service"}').render(name)
    result = history.prom.query(query, history.end)
    expected = {HOSTILE: 1, NEWLINE: 1}.get(name, 0)
    assert len(result) == expected, (query, result)
    for series in result:
        assert series["metric"]["service"] == name


def test_hostile_names_collect_only_their_own_series(history: History, engine_for: Any, tmp_path: Path) -> None:
    _, engine = engine_for()
    services = [HOSTILE, NEWLINE, BACKSLASH, "nasa\" or vector(1)", "nasa\\", "} or {"]
    code, _, _ = _once(_write_config(tmp_path / "c.yaml", history.url, services=services, backfill="1d"),
                       engine)
    assert code == 0
    assert _rows(engine, HOSTILE) == history.hostile
    assert _rows(engine, NEWLINE) == history.newline
    assert _count(engine) == len(history.hostile) + len(history.newline)  # nothing else, no vector(1)


# --- bad input -----------------------------------------------------------------------------------------------

def test_promql_error_shows_prometheus_message_and_writes_nothing(history: History, engine_for: Any,
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _, engine = engine_for()
    before = _metric("prescaler_collector_errors_total", feed="nasa", kind="query")
    config = _write_config(tmp_path / "c.yaml", history.url,
                           query='sum(rate(nasa_requests_per_minute{service="$service"}[1m)')
    code, _, err = _once(config, engine, capsys)
    assert code == 2
    assert "feed 'nasa': service 'nasa': query: Prometheus: bad_data:" in err and "parse error" in err
    assert len(err.strip().splitlines()) == 1
    assert _count(engine) == 0 and not _watermarks(engine)
    assert _metric("prescaler_collector_errors_total", feed="nasa", kind="query") - before == 1


def test_several_series_are_an_error_naming_their_labels(history: History, engine_for: Any, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, engine = engine_for()
    config = _write_config(tmp_path / "c.yaml", history.url, services=["twins", "nasa"],
                           query='nasa_requests_per_minute{service="$service"}', backfill="1d")
    code, _, err = _once(config, engine, capsys)
    assert code == 2
    assert "multiple_series" in err and "2 series" in err
    assert 'instance="a"' in err and 'instance="b"' in err
    assert _rows(engine, "twins") == {}
    assert set(_watermarks(engine)) == {"nasa"}  # the other service of the feed is collected


def test_unreachable_prometheus_exits_3_and_writes_nothing(engine_for: Any, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _, engine = engine_for()
    before = _metric("prescaler_collector_errors_total", feed="nasa", kind="unreachable")
    config = _write_config(tmp_path / "c.yaml", f"http://127.0.0.1:{free_port()}", timeout="3s")
    code, _, err = _once(config, engine, capsys)
    assert code == 3
    assert "unreachable" in err and len(err.strip().splitlines()) == 1
    assert _count(engine) == 0 and not _watermarks(engine)
    assert _metric("prescaler_collector_errors_total", feed="nasa", kind="unreachable") - before == 1


def test_a_table_without_the_upsert_key_is_refused_and_nothing_half_written(
        history: History, engine_for: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, engine = engine_for()
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE edge_requests (ts timestamptz, service text, endpoint text, "
                             "requests bigint)")
    config = _write_config(tmp_path / "c.yaml", history.url, feed={"source": "edge"},
                           sources={"edge": {"table": "edge_requests"}})
    code, _, err = _once(config, engine, capsys)
    assert code == 2
    assert "database refused" in err and "ON CONFLICT" in err
    assert _count(engine, "edge_requests") == 0 and not _watermarks(engine)


# --- credentials and TLS against a real Prometheus -----------------------------------------------------------

def _bcrypt(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # the standard library's, backed by libxcrypt (bcrypt is what Prometheus accepts)

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


def test_basic_auth_with_password_from_file_or_env(engine_for: Any, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    prom = PrometheusServer([], retention="60d", web_config={"basic_auth_users": {"collector": _bcrypt("s3cret")}})
    prom.request_options = {"auth": ("collector", "s3cret")}
    end = floor_minute(dt.datetime.now(UTC)) - dt.timedelta(hours=3)
    samples = [(int((end - i * MINUTE).timestamp()), str(1000 + i)) for i in reversed(range(30))]
    prom.backfill_openmetrics("\n".join(["# TYPE nasa_requests_per_minute gauge",
                                         *_series("nasa_requests_per_minute", {"service": "nasa"}, samples),
                                         "# EOF", ""]))
    with prom:
        _, engine = engine_for()
        password = tmp_path / "password"
        password.write_text("s3cret\n")
        ok = _write_config(tmp_path / "ok.yaml", prom.url, backfill="1d",
                           basic_auth={"username": "collector", "password_file": str(password)})
        assert _once(ok, engine, capsys)[0] == 0
        assert _rows(engine, "nasa") == {dt.datetime.fromtimestamp(t, UTC) - MINUTE: int(v) for t, v in samples}
        monkeypatch.setenv("PRESCALER_TEST_PROM_PASSWORD", "wrong")
        bad = _write_config(tmp_path / "bad.yaml", prom.url, backfill="1d",
                            basic_auth={"username": "collector", "password_env": "PRESCALER_TEST_PROM_PASSWORD"})
        _, engine2 = engine_for()
        code, _, err = _once(bad, engine2, capsys)
        assert code == 3 and "auth" in err and "HTTP 401" in err
        assert _count(engine2) == 0 and not _watermarks(engine2)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prometheus test")])
    now = dt.datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_with_a_ca_bundle_and_bearer_token_header(engine_for: Any, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = _self_signed(tmp_path)
    prom = PrometheusServer([], web_config={"tls_server_config": {"cert_file": str(cert), "key_file": str(key)}})
    prom.request_options = {"verify": str(cert)}
    with prom:
        _, engine = engine_for()
        token = tmp_path / "token"
        token.write_text("t0ken\n")
        trusted = _write_config(tmp_path / "ok.yaml", prom.url, backfill="1h", ca_file=str(cert),
                                bearer_token_file=str(token))
        code, out, err = _once(trusted, engine, capsys)
        assert code == 0, err
        assert "60 minutes evaluated, 0 rows written" in out  # an empty Prometheus: no sample, no row
        untrusted = _write_config(tmp_path / "bad.yaml", prom.url, backfill="1h")
        code, _, err = _once(untrusted, engine_for()[1], capsys)
        assert code == 3 and "tls:" in err
    config = load_config(trusted)
    spec = config.feeds[0].prometheus
    assert spec is not None and spec.bearer_token is not None
    client = PrometheusClient(spec)
    assert client._credentials()[0] == {"Authorization": "Bearer t0ken"}
    token.write_text("rotated")
    assert client._credentials()[0] == {"Authorization": "Bearer rotated"}  # a rotated Secret is picked up


# --- the long-running process --------------------------------------------------------------------------------

def test_loop_serves_metrics_and_health_and_stops_on_sigterm(history: History, engine_for: Any,
                                                             tmp_path: Path) -> None:
    url, engine = engine_for()
    config = _write_config(tmp_path / "c.yaml", history.url, backfill="2d")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "prescaler.cli", "collect", "--config", str(config),
                             "--database-url", url, "--metrics-port", str(port), "--settle", "5s"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        text = ""
        while time.monotonic() < deadline:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except requests.ConnectionError:
                text = ""
            if 'prescaler_collector_rows_written_total{feed="nasa"}' in text and "lag_seconds{" in text:
                break
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.5)
        assert 'prescaler_collector_backfill_progress_ratio{feed="nasa"} 1.0' in text
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        check = subprocess.run([find_binary("promtool", "PRESCALER_PROMTOOL"), "check", "metrics"], input=text,
                               capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = _rows(engine, "nasa")
    assert rows and all(history.trace[t] == v for t, v in rows.items())


def test_prometheus_down_for_five_minutes_then_the_gap_is_filled_once(history: History, engine_for: Any,
                                                                      tmp_path: Path) -> None:
    """The collector in loop mode on a clock 30x real time, Prometheus stopped for over five of its minutes
    (cycles fail as unreachable) and started again: the minutes of the outage are collected afterwards, each
    once, with its exact value, and nothing else is written."""
    url, engine = engine_for()
    config = _write_config(tmp_path / "c.yaml", history.url, backfill="1h")
    clock = Clock.scaled_from(history.end - dt.timedelta(minutes=45), 30.0)
    collector = CollectorProcess(["--config", str(config), "--database-url", url, "--settle", "5s",
                                  "--no-leader-election"], tmp_path / "collector.log", env=clock.env()).start()

    def collected_until() -> dt.datetime | None:
        marks = _watermarks(engine)
        return marks["nasa"][1] if "nasa" in marks else None

    try:
        wait_for("the backfill", lambda: (collected_until() or clock.now() - dt.timedelta(hours=9))
                 >= floor_minute(clock.now()) - 2 * MINUTE, timeout=120)
        history.prom.stop(keep=True)
        try:
            down_at = clock.now()
            wait_for("cycles failing as unreachable", lambda: collector.metric(
                "prescaler_collector_errors_total", feed="nasa", kind="unreachable") >= 2, timeout=120)
            wait_for("five minutes of outage", lambda: clock.now() >= down_at + 5 * MINUTE, timeout=60)
            stalled = collected_until()
            assert stalled is not None and stalled <= floor_minute(down_at) + MINUTE, "written while down?"
        finally:
            history.prom.start()
        up_at = clock.now()
        wait_for("the outage's minutes collected", lambda: (collected_until() or down_at) >= floor_minute(up_at),
                 timeout=120)
    finally:
        assert collector.stop() == 0, collector.log_tail()
    rows = _rows(engine, "nasa")
    until = collected_until()
    assert until is not None
    first = min(rows)
    expected = {t: v for t, v in history.trace.items() if first <= t < until}
    assert rows == expected, "a minute of the outage is missing, extra or wrong"
    assert until - (floor_minute(down_at) - MINUTE) >= 6 * MINUTE, "the outage did not span five minutes"
    assert _count(engine) == len(rows)


def test_run_forever_cycles_on_the_minute_with_an_injected_stop(history: History, engine_for: Any,
                                                                tmp_path: Path) -> None:
    _, engine = engine_for()
    config = load_config(_write_config(tmp_path / "c.yaml", history.url, backfill="1d"))
    stop = threading.Event()
    cycles: list[int] = []

    def on_cycle(reports: list[Any]) -> None:
        cycles.append(sum(r.rows_written for r in reports))
        stop.set()

    thread = threading.Thread(target=run_forever, args=(config, engine), daemon=True,
                              kwargs={"settle": dt.timedelta(seconds=20), "port": None, "stop": stop,
                                      "on_cycle": on_cycle})
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and len(cycles) == 1 and cycles[0] > 0

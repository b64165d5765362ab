"""`prescaler collect`'s Kafka feed without a broker: the message parser, the settings and their errors."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from prescaler.collect import load_config
from prescaler.collect.kafka import Drop, MessageParser
from prescaler.errors import InputError

if TYPE_CHECKING:  # the integration half passes a running broker; this tier only names one
    from prescaler_dev.kafka import KafkaBroker

UTC = dt.UTC


def write_config(path: Path, broker: KafkaBroker | str, topic: str, **kafka: Any) -> Path:
    bootstrap = broker if isinstance(broker, str) else broker.bootstrap
    settings = {"bootstrap_servers": bootstrap, "topic": topic, "group": f"collector-{topic}", **kafka}
    path.write_text(yaml.safe_dump({"sources": {"default": {}}, "feeds": [{"name": "requests", "kafka": settings}]},
                                   sort_keys=False))
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prescaler.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, **(env or {})})


def test_message_parser_formats_and_reasons(tmp_path: Path) -> None:
    now = dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()
    events_format = MessageParser(load_spec(tmp_path, format="events"))
    counts_format = MessageParser(load_spec(tmp_path, format="counts"))
    assert events_format(b'{"ts": "2026-06-01T11:59:30.5Z", "service": "a", "endpoint": "/"}', now) == \
        (now - 29.5, "a", "/", 1)
    assert events_format(b'{"ts": "2026-06-01T13:59:30+02:00", "service": "a", "endpoint": "/"}', now) == \
        (now - 30, "a", "/", 1)
    assert events_format(b'{"ts": "2026-06-01T11:59:30", "service": "a", "endpoint": "/"}', now)[0] == now - 30
    assert counts_format(json.dumps({"ts": now - 60, "service": "a", "endpoint": "/", "requests": 12}).encode(),
                         now) == (now - 60, "a", "/", 12)
    assert counts_format(b'{"ts": 1, "service": "a", "endpoint": "/"}', now) == Drop("missing_field", "no 'requests'")
    assert isinstance(events_format(b'{"ts": NaN, "service": "a", "endpoint": "/"}', now), Drop)
    assert events_format(json.dumps({"ts": now + 299, "service": "a", "endpoint": "/"}).encode(), now)[0] == now + 299
    assert events_format(json.dumps({"ts": now + 301, "service": "a", "endpoint": "/"}).encode(),
                         now).reason == "future"  # type: ignore[union-attr]


def load_spec(folder: Path, **kafka: Any) -> Any:
    path = folder / f"{uuid.uuid4().hex}.yaml"
    return load_config(write_config(path, "127.0.0.1:9092", "t", **kafka)).feeds[0].kafka


@pytest.mark.parametrize(("change", "message"), [
    ({"bootstrap_servers": "kafka"}, r"kafka\.bootstrap_servers\[0\]: 'kafka' is not host:port"),
    ({"bootstrap_servers": []}, r"kafka\.bootstrap_servers: expected host:port"),
    ({"topic": "a topic"}, r"kafka\.topic: 'a topic' is not a Kafka topic name"),
    ({"group": None}, r"kafka\.group: is required"),
    ({"format": "avro"}, r"kafka\.format: expected one of \['events', 'counts'\]"),
    ({"grace": "2x"}, r"kafka\.grace: '2x' is not a duration"),
    ({"batch_messages": 0}, r"kafka\.batch_messages: expected a whole number"),
    ({"start": "middle"}, r"kafka\.start: expected one of"),
    ({"sasl": {"username": "u", "mechanism": "PLAIN"}}, r"kafka\.sasl\.password_file: SASL needs"),
    ({"sasl": {"username": "u", "password_env": "PRESCALER_TEST_UNSET"}}, r"PRESCALER_TEST_UNSET is not set"),
    ({"sasl": {"username": "u", "mechanism": "GSSAPI", "password_env": "HOME"}}, r"sasl\.mechanism: expected one"),
    ({"tls": {"cert_file": "/nonexistent"}}, r"kafka\.tls\.cert_file: /nonexistent is not a readable file"),
    ({"topik": "x"}, r"unknown keys \['topik'\]"),
])
def test_kafka_config_errors_name_feed_and_field(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    settings = {"bootstrap_servers": "127.0.0.1:9092", "topic": "t", "group": "g", **change}
    settings = {k: v for k, v in settings.items() if v is not None}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"feeds": [{"name": "requests", "kafka": settings}]}))
    with pytest.raises(InputError, match=message):
        load_config(path)


def test_a_kafka_config_error_stops_the_command_with_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"feeds": [{"name": "requests", "kafka": {
        "bootstrap_servers": "127.0.0.1:9092", "topic": "t", "group": "g", "format": "avro"}}]}))
    done = cli("collect", "--config", str(path), "--once", "--database-url", "postgresql+psycopg2://x@127.0.0.1:9/x")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"prescaler: error: {path}: feed 'requests': kafka.format: expected one of ['events', 'counts'], got 'avro'"]


def test_kafka_settings_parse_with_defaults_and_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRESCALER_TEST_KAFKA_PASSWORD", "s3cret")
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    spec = load_spec(tmp_path, bootstrap_servers="a:9093, b:9093", services=["web"],
                     sasl={"username": "collector", "password_env": "PRESCALER_TEST_KAFKA_PASSWORD"},
                     tls={"ca_file": str(ca)}, grace="0s")
    assert spec.bootstrap_servers == ("a:9093", "b:9093")
    assert spec.security_protocol == "SASL_SSL" and spec.sasl.mechanism == "SCRAM-SHA-512"
    assert spec.grace == dt.timedelta(0) and spec.services == frozenset({"web"})
    assert (spec.format, spec.start, spec.batch_messages) == ("events", "earliest", 50_000)
    from prescaler.collect.kafka import consumer_config

    conf = consumer_config("requests", spec)
    assert conf["sasl.password"] == "s3cret" and conf["ssl.ca.location"] == str(ca)
    assert conf["enable.auto.commit"] is False and conf["group.id"] == "collector-t"

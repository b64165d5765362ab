"""The collector's configuration: `feeds:` beside `sources:` in the administrator's one YAML file, and the
settings it reads from its environment (`CollectorSettings`, from rows of `prescaler.config.SETTINGS`).

Every problem is an InputError of one line naming the file, the feed and the field (or a ConfigError line
naming the variable), raised before anything is collected (`prescaler collect` exits 2). A feed is one kind of
traffic source (`prometheus` or `kafka`) under a common header: a unique `name` and the `source` whose table it
fills.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from prescaler import history
from prescaler.clock import Clock
from prescaler.collect.promql import QueryTemplate
from prescaler.config import DATABASE_URL, LOG_LEVEL, POD_NAME, environment, read_clock
from prescaler.durations import parse_duration
from prescaler.errors import ConfigError, InputError

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's own rule for topic names
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")
MAX_POINTS = 11_000  # Prometheus refuses a range query with more points per series
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Secret:
    """A credential read when needed (a mounted Secret rotates), from a file or an environment variable."""

    file: Path | None = None
    env: str | None = None

    def read(self, environ: Mapping[str, str] | None = None) -> str:
        env = environment() if environ is None else environ
        if self.file is not None:
            try:
                return self.file.read_text().strip()
            except OSError as exc:
                raise InputError(f"cannot read {self.file}: {exc.strerror or exc}") from exc
        if self.env is not None:
            value = env.get(self.env, "")
            if not value:
                raise InputError(f"environment variable {self.env} is not set")
            return value
        return ""

    def describe(self) -> str:
        return f"file {self.file}" if self.file is not None else f"${self.env}"


@dataclass(frozen=True)
class PrometheusSpec:
    url: str
    query: QueryTemplate
    services: tuple[str, ...]
    backfill: timedelta = timedelta(days=14)
    chunk: timedelta = timedelta(days=7)
    timeout: timedelta = timedelta(seconds=30)
    bearer_token: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    ca_file: Path | None = None


@dataclass(frozen=True)
class KafkaTls:
    """TLS to the brokers: a CA bundle (else the system's), and a client certificate for mutual TLS."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: Secret | None = None


@dataclass(frozen=True)
class KafkaSasl:
    mechanism: str
    username: str
    password: Secret


SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MessageFormat = Literal["events", "counts"]


@dataclass(frozen=True)
class KafkaSpec:
    """A topic of request events (one JSON object per request) or of per-minute counts."""

    bootstrap_servers: tuple[str, ...]
    topic: str
    group: str
    format: MessageFormat = "events"
    services: frozenset[str] | None = None  # when set, messages of other services are dropped
    start: Literal["earliest", "latest"] = "earliest"  # where a partition never collected begins
    grace: timedelta = timedelta(minutes=2)
    max_future: timedelta = timedelta(minutes=5)
    batch_messages: int = 50_000
    batch_time: timedelta = timedelta(seconds=5)
    timeout: timedelta = timedelta(seconds=30)
    tls: KafkaTls | None = None
    sasl: KafkaSasl | None = None

    @property
    def security_protocol(self) -> str:
        if self.sasl is not None:
            return "SASL_SSL" if self.tls is not None else "SASL_PLAINTEXT"
        return "SSL" if self.tls is not None else "PLAINTEXT"


FeedSettings = PrometheusSpec | KafkaSpec


@dataclass(frozen=True)
class FeedSpec:
    """One feed: a header common to every kind, and the kind's own settings."""

    name: str
    source: str
    kind: str
    prometheus: PrometheusSpec | None = None
    kafka: KafkaSpec | None = None


@dataclass(frozen=True)
class CollectorConfig:
    path: Path
    sources: Mapping[str, history.TrafficSource]
    feeds: tuple[FeedSpec, ...]


@dataclass(frozen=True)
class CollectorSettings:
    """What `prescaler collect` reads from its environment; the feeds come from the file (`load_config`)."""

    database_url: str
    log_level: str = LOG_LEVEL.default
    clock: Clock = field(default_factory=Clock)
    pod_name: str = POD_NAME.default

    @classmethod
    def build(cls, environ: Mapping[str, str] | None = None, *, database_url: str | None = None
              ) -> CollectorSettings:
        """`database_url` is the --database-url flag, which wins; raises ConfigError naming every problem."""
        env = environment() if environ is None else environ
        problems: list[str] = []
        url = (database_url or "").strip() or DATABASE_URL.read(env, problems) or ""
        if not url:
            problems.append(f"no database URL: set {DATABASE_URL.name} or pass --database-url")
        settings = cls(database_url=url, log_level=LOG_LEVEL.read(env, problems), clock=read_clock(env, problems),
                       pod_name=POD_NAME.read(env, problems))
        if problems:
            raise ConfigError(problems)
        return settings


class _Fields:
    """Reads one mapping, naming `where` and the key in every error, and refusing keys nobody read."""

    def __init__(self, where: str, mapping: object, allowed: tuple[str, ...]) -> None:
        if not isinstance(mapping, dict):
            raise InputError(f"{where}: expected a mapping with keys {', '.join(allowed)}")
        unknown = sorted(str(k) for k in mapping if k not in allowed)
        if unknown:
            raise InputError(f"{where}: unknown keys {unknown}; allowed: {list(allowed)}")
        self.where = where
        self.mapping: dict[str, Any] = mapping

    def error(self, key: str, message: str) -> InputError:
        return InputError(f"{self.where}.{key}: {message}")

    def string(self, key: str, *, required: bool = False) -> str | None:
        value = self.mapping.get(key)
        if value is None:
            if required:
                raise self.error(key, "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"expected a non-empty string, got {value!r}")
        return value

    def duration(self, key: str, default: timedelta, *, whole_minutes: bool = False) -> timedelta:
        value = self.mapping.get(key)
        if value is None:
            return default
        delta = parse_duration(str(value), field=f"{self.where}.{key}")
        if whole_minutes and delta % MINUTE:
            raise self.error(key, f"{value!r} must be a whole number of minutes")
        return delta

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self.mapping.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self.error(key, f"expected a whole number from {minimum:,} to {maximum:,}, got {value!r}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.mapping.get(key, default)
        if value not in choices:
            raise self.error(key, f"expected one of {list(choices)}, got {value!r}")
        return str(value)

    def path(self, key: str) -> Path | None:
        text = self.string(key)
        if text is None:
            return None
        path = Path(text)
        if not path.is_file():
            raise self.error(key, f"{text} is not a readable file")
        return path

    def secret(self, file_key: str, env_key: str, environ: Mapping[str, str]) -> Secret | None:
        file = self.path(file_key)
        env = self.string(env_key)
        if file is not None and env is not None:
            raise self.error(file_key, f"set either {file_key} or {env_key}, not both")
        if env is not None:
            if not _ENV_NAME.match(env):
                raise self.error(env_key, f"{env!r} is not an environment variable name")
            if not environ.get(env):
                raise self.error(env_key, f"environment variable {env} is not set")
        if file is None and env is None:
            return None
        secret = Secret(file=file, env=env)
        if not secret.read(environ):
            raise self.error(file_key if file else env_key, f"{secret.describe()} is empty")
        return secret


def _url(f: _Fields) -> str:
    text = f.string("url", required=True)
    assert text is not None
    try:
        parts = urlsplit(text.strip())
        parts.port  # noqa: B018 -- raises on a malformed port
    except ValueError as exc:
        raise f.error("url", f"{text!r} is not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise f.error("url", f"{text!r} is not an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise f.error("url", "must not carry credentials; use basic_auth with password_file or password_env")
    if parts.query or parts.fragment:
        raise f.error("url", f"{text!r} must not have a query or fragment (give the server's base URL)")
    return text.strip().rstrip("/")


def _services(f: _Fields) -> tuple[str, ...]:
    value = f.mapping.get("services")
    if not isinstance(value, list) or not value:
        raise f.error("services", "expected a non-empty list of service names")
    seen: set[str] = set()
    for i, name in enumerate(value):
        if not isinstance(name, str):
            raise f.error(f"services[{i}]", f"expected a string, got {name!r} (quote it)")
        if not name:
            raise f.error(f"services[{i}]", "must not be empty (an empty label value matches series without "
                                            "the label)")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise f.error(f"services[{i}]", f"{name!r} is not valid UTF-8") from exc
        if name in seen:
            raise f.error(f"services[{i}]", f"{name!r} is listed twice")
        seen.add(name)
    return tuple(value)


def parse_prometheus(where: str, mapping: object, environ: Mapping[str, str]) -> PrometheusSpec:
    f = _Fields(where, mapping, ("url", "query", "services", "backfill", "chunk", "timeout",
                                 "bearer_token_file", "bearer_token_env", "basic_auth", "ca_file"))
    url = _url(f)
    query_text = f.string("query", required=True)
    assert query_text is not None
    query = QueryTemplate(query_text, field=f"{where}.query")
    services = _services(f)
    backfill = f.duration("backfill", timedelta(days=14), whole_minutes=True)
    chunk = f.duration("chunk", timedelta(days=7), whole_minutes=True)
    if chunk // MINUTE >= MAX_POINTS:
        raise f.error("chunk", f"at most {MAX_POINTS - 1} minutes: Prometheus answers at most {MAX_POINTS:,} "
                               "points per series")
    timeout = f.duration("timeout", timedelta(seconds=30))
    bearer = f.secret("bearer_token_file", "bearer_token_env", environ)
    username: str | None = None
    password: Secret | None = None
    if f.mapping.get("basic_auth") is not None:
        if bearer is not None:
            raise f.error("basic_auth", "set either a bearer token or basic_auth, not both")
        b = _Fields(f"{where}.basic_auth", f.mapping["basic_auth"], ("username", "password_file", "password_env"))
        username = b.string("username", required=True)
        password = b.secret("password_file", "password_env", environ)
        if password is None:
            raise b.error("password_file", "basic_auth needs password_file or password_env")
    return PrometheusSpec(url=url, query=query, services=services, backfill=backfill, chunk=chunk,
                          timeout=timeout, bearer_token=bearer, username=username, password=password,
                          ca_file=f.path("ca_file"))


def _bootstrap(f: _Fields) -> tuple[str, ...]:
    value = f.mapping.get("bootstrap_servers")
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise f.error("bootstrap_servers", "expected host:port, or a list of them")
    servers = []
    for i, item in enumerate(items):
        text = item.strip() if isinstance(item, str) else ""
        match = _HOST_PORT.match(text)
        if not match or not 0 < int(match.group(2)) < 65536:
            raise f.error(f"bootstrap_servers[{i}]", f"{item!r} is not host:port")
        servers.append(text)
    return tuple(servers)


def _tls(where: str, value: object, environ: Mapping[str, str]) -> KafkaTls:
    t = _Fields(where, value if value is not None else {}, ("ca_file", "cert_file", "key_file",
                                                           "key_password_file", "key_password_env"))
    cert, key = t.path("cert_file"), t.path("key_file")
    if (cert is None) != (key is None):
        raise t.error("cert_file" if cert is None else "key_file", "a client certificate needs both cert_file "
                                                                   "and key_file")
    return KafkaTls(ca_file=t.path("ca_file"), cert_file=cert, key_file=key,
                    key_password=t.secret("key_password_file", "key_password_env", environ))


def _sasl(where: str, value: object, environ: Mapping[str, str]) -> KafkaSasl:
    s = _Fields(where, value, ("mechanism", "username", "password_file", "password_env"))
    mechanism = s.choice("mechanism", SASL_MECHANISMS, "SCRAM-SHA-512")
    username = s.string("username", required=True)
    password = s.secret("password_file", "password_env", environ)
    if username is None or password is None:
        raise s.error("password_file", "SASL needs password_file or password_env")
    return KafkaSasl(mechanism=mechanism, username=username, password=password)


def parse_kafka(where: str, mapping: object, environ: Mapping[str, str]) -> KafkaSpec:
    f = _Fields(where, mapping, ("bootstrap_servers", "topic", "group", "format", "services", "start", "grace",
                                 "max_future", "batch_messages", "batch_time", "timeout", "tls", "sasl"))
    servers = _bootstrap(f)
    topic = f.string("topic", required=True)
    assert topic is not None
    if not _TOPIC.match(topic) or topic in (".", ".."):
        raise f.error("topic", f"{topic!r} is not a Kafka topic name (letters, digits, '.', '_', '-')")
    group = f.string("group", required=True)
    assert group is not None
    fmt: MessageFormat = "counts" if f.choice("format", ("events", "counts"), "events") == "counts" else "events"
    services = frozenset(_services(f)) if f.mapping.get("services") is not None else None
    start: Literal["earliest", "latest"] = "latest" if f.choice("start", ("earliest", "latest"),
                                                                "earliest") == "latest" else "earliest"
    # A grace of zero is legitimate (every minute closes as soon as a later event is seen).
    grace = timedelta(0) if str(f.mapping.get("grace")).strip() in ("0", "0s") else \
        f.duration("grace", timedelta(minutes=2))
    return KafkaSpec(
        bootstrap_servers=servers, topic=topic, group=group, format=fmt, services=services, start=start,
        grace=grace, max_future=f.duration("max_future", timedelta(minutes=5)),
        batch_messages=f.integer("batch_messages", 50_000, minimum=1, maximum=10_000_000),
        batch_time=f.duration("batch_time", timedelta(seconds=5)), timeout=f.duration("timeout", timedelta(seconds=30)),
        tls=_tls(f"{where}.tls", f.mapping["tls"], environ) if "tls" in f.mapping else None,
        sasl=_sasl(f"{where}.sasl", f.mapping["sasl"], environ) if "sasl" in f.mapping else None,
    )


# Each feed kind parses its own settings into the FeedSpec field of the same name.
FEED_KINDS: dict[str, Callable[[str, object, Mapping[str, str]], FeedSettings]] = {
    "prometheus": parse_prometheus,
    "kafka": parse_kafka,
}


def parse_feeds(doc: Mapping[str, Any], sources: Mapping[str, history.TrafficSource],
                environ: Mapping[str, str]) -> tuple[FeedSpec, ...]:
    section = doc.get("feeds")
    if section is None:
        return ()
    if not isinstance(section, list):
        raise InputError("feeds: expected a list of feeds (- name: ..., source: ..., prometheus|kafka: {...})")
    feeds: list[FeedSpec] = []
    names: set[str] = set()
    for i, item in enumerate(section):
        name = item.get("name") if isinstance(item, dict) else None
        where = f"feed {name!r}" if isinstance(name, str) else f"feeds[{i}]"
        f = _Fields(where, item, ("name", "source", *FEED_KINDS))
        if not isinstance(name, str) or not _NAME.match(name) or len(name) > 63:
            raise f.error("name", f"{name!r} is not a feed name (lower-case letters, digits, - and _)")
        if name in names:
            raise f.error("name", f"{name!r} is used by another feed")
        names.add(name)
        source = f.string("source") or "default"
        if source not in sources:
            raise f.error("source", f"unknown source {source!r}; the sources are {sorted(sources)}")
        kinds = [k for k in FEED_KINDS if k in f.mapping]
        if len(kinds) != 1:
            raise InputError(f"{where}: needs exactly one of {sorted(FEED_KINDS)}, got {kinds or 'none'}")
        settings = FEED_KINDS[kinds[0]](f"{where}: {kinds[0]}", f.mapping[kinds[0]], environ)
        feeds.append(FeedSpec(name=name, source=source, kind=kinds[0],
                              prometheus=settings if isinstance(settings, PrometheusSpec) else None,
                              kafka=settings if isinstance(settings, KafkaSpec) else None))
    return tuple(feeds)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> CollectorConfig:
    """Sources and feeds from the administrator's file; raises InputError naming the file, feed and field."""
    env = environment() if environ is None else environ
    doc = history.read_config(path)
    sources = history.parse_sources(doc, path)
    try:
        feeds = parse_feeds(doc, sources, env)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
    if not feeds:
        raise InputError(f"{path}: no feeds to collect (add a 'feeds:' list beside 'sources:')")
    return CollectorConfig(path=Path(path), sources=sources, feeds=feeds)

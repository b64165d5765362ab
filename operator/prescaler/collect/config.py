"""The collector's configuration: `feeds:` beside `sources:` in the administrator's one YAML file.

Every problem is an InputError of one line naming the file, the feed and the field, raised before anything
is collected (`prescaler collect` exits 2). A feed is one kind of traffic source (today `prometheus`; Kafka
comes next) under a common header: a unique `name` and the `source` whose table it fills.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prescaler import history
from prescaler.collect.promql import QueryTemplate
from prescaler.durations import parse_duration
from prescaler.errors import InputError

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_POINTS = 11_000  # Prometheus refuses a range query with more points per series
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Secret:
    """A credential read when needed (a mounted Secret rotates), from a file or an environment variable."""

    file: Path | None = None
    env: str | None = None

    def read(self, environ: Mapping[str, str] | None = None) -> str:
        env = os.environ if environ is None else environ
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
class FeedSpec:
    """One feed: a header common to every kind, and the kind's own settings."""

    name: str
    source: str
    kind: str
    prometheus: PrometheusSpec | None = None


@dataclass(frozen=True)
class CollectorConfig:
    path: Path
    sources: Mapping[str, history.TrafficSource]
    feeds: tuple[FeedSpec, ...]


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


# Each feed kind parses its own settings; a Kafka feed adds its parser here.
FEED_KINDS: dict[str, Callable[[str, object, Mapping[str, str]], PrometheusSpec]] = {
    "prometheus": parse_prometheus,
}


def parse_feeds(doc: Mapping[str, Any], sources: Mapping[str, history.TrafficSource],
                environ: Mapping[str, str]) -> tuple[FeedSpec, ...]:
    section = doc.get("feeds")
    if section is None:
        return ()
    if not isinstance(section, list):
        raise InputError("feeds: expected a list of feeds (- name: ..., source: ..., prometheus: {...})")
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
        feeds.append(FeedSpec(name=name, source=source, kind=kinds[0], prometheus=settings))
    return tuple(feeds)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> CollectorConfig:
    """Sources and feeds from the administrator's file; raises InputError naming the file, feed and field."""
    env = os.environ if environ is None else environ
    doc = history.read_config(path)
    sources = history.parse_sources(doc, path)
    try:
        feeds = parse_feeds(doc, sources, env)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
    if not feeds:
        raise InputError(f"{path}: no feeds to collect (add a 'feeds:' list beside 'sources:')")
    return CollectorConfig(path=Path(path), sources=sources, feeds=feeds)

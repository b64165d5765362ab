"""Settings: every environment variable the package reads, in one table, and the operator's typed configuration.

`SETTINGS` lists each variable once: its type, default, what it does, which processes read it and which chart
value sets it; docs/settings.md is generated from it (hack/settings-doc.py). Only this module and
`prescaler.collect.config` read the environment: the operator's `OperatorConfig`, the collector's
`CollectorSettings` and `database_url` for the other commands; everything else gets values passed in.

Every setting is checked before anything starts. A missing or malformed one is a `ConfigError` holding one
line per problem, each naming the flag or variable to fix, so `prescaler run` exits 2 instead of crash-looping.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from prescaler import history
from prescaler.clock import Clock
from prescaler.errors import ConfigError, InputError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
V = TypeVar("V")
N = TypeVar("N", int, float)

# The processes that read settings: `prescaler run`, `prescaler collect`, and the one-shot commands that use
# the database (migrate, maintain, import, simulate, forecast, backtest --series, events import).
OPERATOR = "operator"
COLLECTOR = "collector"
COMMANDS = "commands"
PROCESSES = (OPERATOR, COLLECTOR, COMMANDS)


@dataclass(frozen=True)
class Setting(Generic[V]):
    """One environment variable. Unset or blank, it takes `default`; else `parse` turns its text into the value
    or raises ValueError saying what is wrong with it."""

    name: str
    type: str  # as the docs show it
    default: V
    description: str  # one line, for the docs
    parse: Callable[[str], V]
    read_by: tuple[str, ...]
    chart: str = ""  # the chart value that sets it; blank: the chart leaves it to `extraEnv`
    shown_default: str = ""  # how the docs show the default when the value itself does not say it

    def read(self, environ: Mapping[str, str], problems: list[str]) -> V:
        """The value, or the default with a line naming this variable added to `problems`."""
        text = environ.get(self.name, "").strip()
        if not text:
            return self.default
        try:
            return self.parse(text)
        except ValueError as exc:
            problems.append(f"{self.name}: {exc}")
            return self.default

    @property
    def default_text(self) -> str:
        if self.shown_default:
            return self.shown_default
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


def _number(kind: Callable[[str], N], *, minimum: N, strict: bool = False, below: N | None = None,
            below_why: str = "") -> Callable[[str], N]:
    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not math.isfinite(value):
            raise ValueError(f"{text!r} is not a finite number")
        if value < minimum or (strict and value == minimum):
            raise ValueError(f"must be {'greater than' if strict else 'at least'} {minimum:g}, got {text}")
        if below is not None and value >= below:
            raise ValueError(f"must be less than {below:g}{below_why}, got {text}")
        return value

    return parse


def _unix_time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a unix time in seconds") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a unix time in seconds")
    return value


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 timestamp") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


DATABASE_URL: Setting[str | None] = Setting(
    "PRESCALER_DATABASE_URL", "SQLAlchemy URL", None,
    "The PostgreSQL database, e.g. `postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB`; `--database-url` wins "
    "over it. No default on purpose: a forgotten setting never quietly reaches some local database.",
    str, PROCESSES,
    chart="`database.url` (kept in a Secret), or `database.existingSecret` and `database.secretKey`",
    shown_default="none: required unless `--database-url` is given")
LOG_LEVEL = Setting(
    "PRESCALER_LOG_LEVEL", f"one of {', '.join(LOG_LEVELS)} (any case)", "INFO",
    "The least severe log lines written to stderr.",
    _log_level, (OPERATOR, COLLECTOR), chart="`logLevel` (both deployments)")
FIT_TIMEOUT = Setting(
    "PRESCALER_FIT_TIMEOUT", "seconds, > 0", 120.0,
    "A forecast fit running longer is killed and the previous forecast kept.",
    _number(float, minimum=0.0, strict=True), (OPERATOR,))
MAX_CONCURRENT_RECONCILES = Setting(
    "PRESCALER_MAX_CONCURRENT_RECONCILES", "integer, ≥ 1", 16,
    "Scalers decided at once; the database connection pool and the SQL threads are sized from it.",
    _number(int, minimum=1), (OPERATOR,))
REFIT_SPREAD = Setting(
    "PRESCALER_REFIT_SPREAD", "share, 0 ≤ x < 1", 0.5,
    "A refit may come up to this share of `spec.forecast.refreshInterval` early, so forecasts made at the same "
    "time (a cold start, a restore) refit spread out instead of all at once; 0 refits exactly on time.",
    _number(float, minimum=0.0, below=1.0, below_why=" (a share of the refresh interval)"), (OPERATOR,))
TIMER_INTERVAL = Setting(
    "PRESCALER_TIMER_INTERVAL", "seconds, > 0", 10.0,
    "How often each scaler's timer wakes to see whether its `spec.scaling.interval` is due.",
    _number(float, minimum=0.0, strict=True), (OPERATOR,))
PEERING_SETTLE = Setting(
    "PRESCALER_PEERING_SETTLE", "seconds, ≥ 0", 5.0,
    "With peering, a starting replica waits this long to see its peers before it acts.",
    _number(float, minimum=0.0), (OPERATOR,))
PEERING_LIFETIME = Setting(
    "PRESCALER_PEERING_LIFETIME", "whole seconds, ≥ 1", 60,
    "A silent peer still counts this long: a standby replica takes over this long after the active one dies.",
    _number(int, minimum=1), (OPERATOR,))
CLOCK_START: Setting[datetime | None] = Setting(
    "PRESCALER_CLOCK_START", "ISO 8601 timestamp (naive: UTC)", None,
    "Runs the process on a scaled clock that read this time at `PRESCALER_CLOCK_EPOCH` (the demo and the "
    "tests live through a day in minutes).",
    _timestamp, (OPERATOR, COLLECTOR), shown_default="unset: the wall clock")
CLOCK_EPOCH: Setting[float | None] = Setting(
    "PRESCALER_CLOCK_EPOCH", "unix time, seconds", None,
    "The real time at which the scaled clock read `PRESCALER_CLOCK_START`; read only with it.",
    _unix_time, (OPERATOR, COLLECTOR), shown_default="when the process starts")
CLOCK_SPEED = Setting(
    "PRESCALER_CLOCK_SPEED", "number, > 0", 1.0,
    "Simulated seconds per real second of the scaled clock; read only with `PRESCALER_CLOCK_START`.",
    _number(float, minimum=0.0, strict=True), (OPERATOR, COLLECTOR))
POD_NAME = Setting(
    "POD_NAME", "string", "",
    "The collector's name in the leader-election Lease (a random suffix is added, so a restart is a new "
    "candidate).",
    str, (COLLECTOR,), chart="set by the chart to the pod's name", shown_default="the host name")

SETTINGS: tuple[Setting[Any], ...] = (
    DATABASE_URL, LOG_LEVEL, FIT_TIMEOUT, MAX_CONCURRENT_RECONCILES, REFIT_SPREAD, TIMER_INTERVAL,
    PEERING_SETTLE, PEERING_LIFETIME, CLOCK_START, CLOCK_EPOCH, CLOCK_SPEED, POD_NAME,
)


def environment() -> Mapping[str, str]:
    """The process environment; the config modules read it through here, the rest of the package never does."""
    return os.environ


def read_clock(environ: Mapping[str, str], problems: list[str]) -> Clock:
    """The wall clock, or the scaled clock the `PRESCALER_CLOCK_*` variables describe."""
    start = CLOCK_START.read(environ, problems)
    if start is None:
        return Clock()
    epoch = CLOCK_EPOCH.read(environ, problems)
    speed = CLOCK_SPEED.read(environ, problems)
    return Clock(start=start, epoch=time.time() if epoch is None else epoch, speed=speed)


def database_url(flag: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """`flag` (the command line's --database-url) when given, else $PRESCALER_DATABASE_URL; raises InputError
    when neither is set."""
    url = (flag or "").strip() or DATABASE_URL.read(environment() if environ is None else environ, [])
    if not url:
        raise InputError(f"no database URL: set {DATABASE_URL.name} or pass --database-url")
    return url


@dataclass(frozen=True)
class OperatorConfig:
    """`prescaler run`: its flags and its settings, typed and checked."""

    database_url: str
    sources: Mapping[str, history.TrafficSource]
    sources_path: Path | None
    namespaces: tuple[str, ...] = ()
    metrics_port: int = 9090
    liveness_port: int = 8081
    peering: str | None = "prescaler"
    priority: int = 0
    workers: int = 2  # forecast fit processes
    fit_timeout_s: float = FIT_TIMEOUT.default
    # A restart's first decisions wait on SQL round trips more than on CPU, so more run at once than there
    # are cores.
    max_concurrent_reconciles: int = MAX_CONCURRENT_RECONCILES.default
    refit_spread: float = REFIT_SPREAD.default
    timer_interval_s: float = TIMER_INTERVAL.default
    peering_settle_s: float = PEERING_SETTLE.default
    peering_lifetime_s: int = PEERING_LIFETIME.default
    # The start-up pass (every scaler's first decision in one sweep) starts no tick after this; with the chart's
    # liveness probe (10 s delay, 6 failures 10 s apart) a start must answer within 70 s.
    first_pass_budget_s: float = 30.0
    log_level: str = LOG_LEVEL.default
    clock: Clock = field(default_factory=Clock)

    @classmethod
    def build(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        database_url: str | None = None,
        sources_path: Path | None = None,
        namespaces: tuple[str, ...] = (),
        metrics_port: int = 9090,
        liveness_port: int = 8081,
        peering: str | None = "prescaler",
        priority: int | None = None,
        workers: int = 2,
        check_cluster: Callable[[], None] | None = None,
    ) -> OperatorConfig:
        """Flags (keyword arguments) and the settings read by the operator (from `environ`, default the
        process environment); raises ConfigError naming every problem.

        `check_cluster` loads the cluster credentials; what it raises becomes one problem line.
        """
        env = environment() if environ is None else environ
        problems: list[str] = []

        url = (database_url or "").strip() or DATABASE_URL.read(env, problems) or ""
        if not url:
            problems.append(f"database: no URL; set --database-url or {DATABASE_URL.name}")
        else:
            try:
                make_url(url)
            except sa_exc.ArgumentError:
                problems.append(f"database: --database-url / {DATABASE_URL.name} is not a database URL "
                                "(expected postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DB)")
        sources: Mapping[str, history.TrafficSource] = {}
        try:
            sources = history.load_sources(sources_path)
        except InputError as exc:
            problems.append(f"--config: {exc}")
        for flag, port in (("--metrics-port", metrics_port), ("--liveness-port", liveness_port)):
            if not 0 < port < 65536:
                problems.append(f"{flag}: {port} is not a TCP port (1-65535)")
        if workers < 1:
            problems.append(f"--workers: must be at least 1, got {workers}")
        fit_timeout = FIT_TIMEOUT.read(env, problems)
        concurrent = MAX_CONCURRENT_RECONCILES.read(env, problems)
        spread = REFIT_SPREAD.read(env, problems)
        timer = TIMER_INTERVAL.read(env, problems)
        settle = PEERING_SETTLE.read(env, problems)
        lifetime = PEERING_LIFETIME.read(env, problems)
        level = LOG_LEVEL.read(env, problems)
        clock = read_clock(env, problems)
        if check_cluster is not None:
            try:
                check_cluster()
            except Exception as exc:  # the kubernetes client raises several types; each is one line here
                detail = " ".join(str(exc).split()) or type(exc).__name__
                problems.append("cluster credentials: no in-cluster service account and no usable kubeconfig "
                                f"(set KUBECONFIG or run in a pod): {detail}")
        if problems:
            raise ConfigError(problems)
        return cls(
            database_url=url, sources=sources, sources_path=sources_path, namespaces=tuple(namespaces),
            metrics_port=metrics_port, liveness_port=liveness_port, peering=peering or None,
            priority=priority if priority is not None else random.randint(1, 1_000_000),  # replicas never tie
            workers=workers, fit_timeout_s=fit_timeout, max_concurrent_reconciles=concurrent, refit_spread=spread,
            timer_interval_s=timer, peering_settle_s=settle, peering_lifetime_s=lifetime, log_level=level,
            clock=clock,
        )

    @property
    def logging_level(self) -> int:
        return int(logging.getLevelName(self.log_level))

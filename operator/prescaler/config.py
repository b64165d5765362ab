"""The operator's configuration: one typed object, built once at start from flags and environment.

Every setting is checked before anything starts. A missing or malformed one is a `ConfigError` holding one
line per problem, each naming the flag or variable to fix, so `prescaler run` exits 2 instead of crash-looping.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from prescaler import history
from prescaler.clock import Clock
from prescaler.errors import InputError, PrescalerError

ENV_PREFIX = "PRESCALER_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
T = TypeVar("T", int, float)


class ConfigError(PrescalerError):
    """The configuration cannot start the process: one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class OperatorConfig:
    database_url: str
    sources: Mapping[str, history.TrafficSource]
    sources_path: Path | None
    namespaces: tuple[str, ...] = ()
    metrics_port: int = 9090
    liveness_port: int = 8081
    peering: str | None = "prescaler"
    priority: int = 0
    workers: int = 2  # forecast fit processes
    fit_timeout_s: float = 120.0  # a fit running longer is killed and the previous forecast kept
    # 16, not 8: a restart's first decisions wait on SQL round trips more than on CPU (bench/fleet.py p99 12.0 s
    # at 8, 8.4 s at 16).
    max_concurrent_reconciles: int = 16
    # A refit may come this share of spec.forecast.refreshInterval early, so a fleet whose forecasts were made
    # at once (a cold start) refits spread out instead of all in one minute; 0 refits exactly on time.
    refit_spread: float = 0.5
    timer_interval_s: float = 10.0  # timer wake-ups; each scaler's cadence is its own spec.scaling.interval
    peering_settle_s: float = 5.0  # a new replica waits this long for its peers before acting
    peering_lifetime_s: int = 60  # a silent peer still counts this long
    # The start-up pass (every scaler's first decision in one sweep) starts no tick after this; with the chart's
    # liveness probe (10 s delay, 6 failures 10 s apart) a start must answer within 70 s.
    first_pass_budget_s: float = 30.0
    log_level: str = "INFO"
    clock: Clock = field(default_factory=Clock)

    @classmethod
    def build(
        cls,
        environ: Mapping[str, str],
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
        """Flags (keyword arguments) and `PRESCALER_*` variables; raises ConfigError naming every problem.

        `check_cluster` loads the cluster credentials; what it raises becomes one problem line.
        """
        problems: list[str] = []

        url = database_url or environ.get(ENV_PREFIX + "DATABASE_URL", "")
        if not url:
            problems.append("database: no URL; set --database-url or PRESCALER_DATABASE_URL")
        else:
            try:
                make_url(url)
            except sa_exc.ArgumentError:
                problems.append("database: --database-url / PRESCALER_DATABASE_URL is not a database URL "
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

        def number(name: str, kind: Callable[[str], T], default: T, minimum: T, strict: bool) -> T:
            text = environ.get(ENV_PREFIX + name)
            if text is None or text == "":
                return default
            try:
                value = kind(text)
            except ValueError:
                problems.append(f"{ENV_PREFIX}{name}: {text!r} is not a number")
                return default
            if value < minimum or (strict and value == minimum):
                bound = "greater than" if strict else "at least"
                problems.append(f"{ENV_PREFIX}{name}: must be {bound} {minimum}, got {text}")
                return default
            return value

        fit_timeout = number("FIT_TIMEOUT", float, 120.0, 0.0, True)
        concurrent = number("MAX_CONCURRENT_RECONCILES", int, 16, 1, False)
        spread = number("REFIT_SPREAD", float, 0.5, 0.0, False)
        if spread >= 1.0:
            problems.append(f"{ENV_PREFIX}REFIT_SPREAD: must be less than 1 (a share of the refresh interval), "
                            f"got {spread:g}")
            spread = 0.5
        timer = number("TIMER_INTERVAL", float, 10.0, 0.0, True)
        settle = number("PEERING_SETTLE", float, 5.0, 0.0, False)
        lifetime = number("PEERING_LIFETIME", int, 60, 1, False)
        level = environ.get(ENV_PREFIX + "LOG_LEVEL", "INFO").upper()
        if level not in LOG_LEVELS:
            problems.append(f"{ENV_PREFIX}LOG_LEVEL: {level!r} is not one of {', '.join(LOG_LEVELS)}")
            level = "INFO"
        clock = Clock()
        try:
            clock = Clock.from_env(dict(environ))
        except InputError as exc:
            problems.append(f"{ENV_PREFIX}CLOCK_*: {exc}")
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

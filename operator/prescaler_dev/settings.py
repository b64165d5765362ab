"""The development kit's settings: every environment variable `prescaler_dev` reads, in one table.

docs/settings.md lists them beside the runtime's (hack/settings-doc.py). Nothing else in `prescaler_dev` reads
the environment: the other modules call the functions below, and `inherited()` hands the child processes they
start a copy to extend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DevSetting:
    name: str
    default: str  # as the docs show it
    description: str  # one line, for the docs

    def get(self) -> str:
        """The value, or "" when unset or blank."""
        return os.environ.get(self.name, "").strip()


DEFAULT_PG_BIN = "/usr/lib/postgresql/15/bin"
DEFAULT_KAFKA_VERSION = "4.1.1"

CACHE = DevSetting(
    "PRESCALER_CACHE", "`$XDG_CACHE_HOME/prescaler`, else `~/.cache/prescaler`",
    "Downloads and builds (control-plane binaries, helm, Kafka), port locks, and the demo's state.")
XDG_CACHE_HOME = DevSetting(
    "XDG_CACHE_HOME", "`~/.cache`",
    "The user's cache directory, under which `PRESCALER_CACHE` defaults.")
STATE_DIR = DevSetting(
    "PRESCALER_STATE_DIR", "unset: the cluster lives in `~/.cache/prescaler/pg-15`",
    "The local PostgreSQL cluster (`python -m prescaler_dev.pgserver`) lives in `$PRESCALER_STATE_DIR/pg`.")
PG_BIN = DevSetting(
    "PRESCALER_PG_BIN", f"`{DEFAULT_PG_BIN}`",
    "PostgreSQL's server programs (initdb, pg_ctl) for the local server.")
KAFKA_VERSION = DevSetting(
    "PRESCALER_KAFKA_VERSION", f"`{DEFAULT_KAFKA_VERSION}`",
    "The Apache Kafka release the local broker (`python -m prescaler_dev.kafka`) downloads and runs.")
JAVA_HOME = DevSetting(
    "JAVA_HOME", "unset: `java` on the PATH",
    "The Java runtime the local Kafka broker runs on.")

SETTINGS = (CACHE, XDG_CACHE_HOME, STATE_DIR, PG_BIN, KAFKA_VERSION, JAVA_HOME)


def cache_dir() -> Path:
    base = XDG_CACHE_HOME.get() or os.path.expanduser("~/.cache")
    return Path(CACHE.get() or os.path.join(base, "prescaler"))


def pg_state_dir() -> Path:
    base = STATE_DIR.get()
    if base:
        return Path(base).expanduser() / "pg"
    return Path.home() / ".cache" / "prescaler" / "pg-15"


def pg_bin() -> Path:
    return Path(PG_BIN.get() or DEFAULT_PG_BIN)


def kafka_version() -> str:
    return KAFKA_VERSION.get() or DEFAULT_KAFKA_VERSION


def java_home() -> Path | None:
    home = JAVA_HOME.get()
    return Path(home) if home else None


def inherited() -> dict[str, str]:
    """A copy of this process's environment, for a child process to start from."""
    return dict(os.environ)

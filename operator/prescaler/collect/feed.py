"""What every feed kind shares: the interface the runner drives, its report, and its error kinds.

A feed is asked once per cycle to bring its series up to `newest` (the end of the newest complete minute)
and reports what it wrote. Prometheus feeds pull ranges; a Kafka feed consumes until its partitions reach the
end offsets they had when the cycle began, storing its offsets with the rows. Either way the runner, the
metrics and `--once` stay the same.

`stop` is checked before every write: the runner sets it on SIGTERM, and for feeds that need the leader's
lease it also reads as set once this replica may no longer be sure it holds the lease.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from prescaler.collect.config import FeedSpec
from prescaler.errors import PrescalerError


class CollectError(PrescalerError):
    """A runtime failure of one series or feed: `kind` labels the error metric, `transient` ones are retried
    next cycle without operator action (unreachable server, database down); the others need a config fix."""

    def __init__(self, kind: str, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.transient = transient


@dataclass
class SeriesProgress:
    """Where one series stands after a cycle (for lag and backfill metrics)."""

    series: str
    backfill_from: datetime | None
    collected_until: datetime | None


@dataclass
class FeedReport:
    feed: str
    newest: datetime
    minutes: int = 0  # minutes evaluated (a minute without a sample counts, and writes no row)
    rows_written: int = 0  # rows inserted or changed
    skipped: Counter[str] = field(default_factory=Counter)  # samples not written, by reason
    errors: list[tuple[str, CollectError]] = field(default_factory=list)  # (series or "", error)
    progress: list[SeriesProgress] = field(default_factory=list)
    # Kafka only: messages consumed and committed, those dropped by reason, and what is left behind.
    messages: int | None = None
    dropped: Counter[str] = field(default_factory=Counter)
    backlog: int | None = None

    def merge(self, other: FeedReport) -> None:
        self.minutes += other.minutes
        self.rows_written += other.rows_written
        self.skipped.update(other.skipped)
        self.errors.extend(other.errors)
        self.progress.extend(other.progress)
        self.dropped.update(other.dropped)
        if other.messages is not None:
            self.messages = (self.messages or 0) + other.messages


class StopSignal(Protocol):
    """`threading.Event`, or anything else that can say "stop before the next write"."""

    def is_set(self) -> bool: ...


class Feed(Protocol):
    spec: FeedSpec
    # Feeds whose writes must come from one replica only wait for the lease; a Kafka feed's partitions are
    # owned through its consumer group and its offsets fence stale writers in the database instead.
    needs_leader: bool

    def collect(self, newest: datetime, stop: StopSignal) -> FeedReport:
        """Write every complete minute up to `newest` not yet written; stop early (consistently) on `stop`."""
        ...

    def close(self) -> None: ...

"""The operator's side of the scorecard: each scaler's record, its status field and its gauges.

A scaler's record (`prescaler.scorecard.ScoreRecord`) is read back from `scaling_decisions` once, in the
background, and from then on fed each decision as the tick makes it: no decision waits for the read, and a
restart resumes the record from the table. Reads go one at a time (a fleet's start reads weeks of rows per
scaler), and decisions made while a scaler's read runs are kept and added after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from prescaler import db, metrics
from prescaler.errors import DataUnavailable
from prescaler.scorecard import (
    WINDOWS,
    DecisionSample,
    Figures,
    ScoreRecord,
    figures_status,
    sample_from_row,
    summary,
)

log = logging.getLogger("prescaler.reconcile")

# The record kept per scaler: the longest window, or the promotion gate's `after` when longer.
RECORD_SPAN = max(WINDOWS.values())
# A failed read is tried again after this long.
RETRY_AFTER = timedelta(minutes=1)
# Reads of the table at once, for the whole fleet.
READ_SLOTS = 1


@dataclass
class _Kept:
    keep: timedelta
    record: ScoreRecord | None = None  # None until the table was read
    waiting: list[DecisionSample] = field(default_factory=list)  # decided while the read ran
    task: asyncio.Task[None] | None = None
    failed_at: datetime | None = None


class ScorecardKeeper:
    """Per scaler (namespace/name): its scorecard record."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._kept: dict[str, _Kept] = {}
        self._slots: asyncio.Semaphore | None = None

    def forget(self, key: str) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None and kept.task is not None:
            kept.task.cancel()

    def record(self, key: str) -> ScoreRecord | None:
        """The scaler's record once read back (None before)."""
        kept = self._kept.get(key)
        return kept.record if kept is not None else None

    def ensure(self, namespace: str, name: str, now: datetime, keep: timedelta = RECORD_SPAN) -> None:
        """Start reading the scaler's record back when it was not (or a longer span is needed)."""
        key = f"{namespace}/{name}"
        kept = self._kept.get(key)
        if kept is None or keep > kept.keep:
            if kept is not None and kept.task is not None:
                kept.task.cancel()
            kept = self._kept[key] = _Kept(keep=keep)
        if kept.record is not None or (kept.task is not None and not kept.task.done()):
            return
        if kept.failed_at is not None and now - kept.failed_at < RETRY_AFTER:
            return
        kept.task = asyncio.get_running_loop().create_task(self._read(kept, namespace, name, now))

    def feed(self, key: str, row: dict[str, Any]) -> None:
        """Add a decision row as the tick made it."""
        sample = sample_from_row(row)
        kept = self._kept.get(key)
        if sample is None or kept is None:
            return
        if kept.record is None:
            kept.waiting.append(sample)
        else:
            kept.record.add(sample)

    async def _read(self, kept: _Kept, namespace: str, name: str, now: datetime) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(READ_SLOTS)
        async with self._slots:
            try:
                # Built in the thread too: weeks of rows are a fraction of a second of work, not the loop's.
                record = await asyncio.to_thread(_read_record, self.engine, namespace, name,
                                                 now - kept.keep - timedelta(hours=1), kept.keep)
            except DataUnavailable as exc:
                log.warning("scorecard of %s/%s not read back yet: %s", namespace, name, exc)
                kept.failed_at = now
                return
        for sample in kept.waiting:
            record.add(sample)  # those the read already held are not newer: left out
        kept.waiting = []
        kept.record = record

    async def drain(self) -> None:
        """Wait for the reads under way."""
        tasks = [k.task for k in self._kept.values() if k.task is not None and not k.task.done()]
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _read_record(engine: Engine, namespace: str, name: str, since: datetime, keep: timedelta) -> ScoreRecord:
    record = ScoreRecord(keep=keep)
    for row in db.read_score_rows(engine, since=since, namespace=namespace, name=name):
        sample = sample_from_row(row)
        if sample is not None:
            record.add(sample)
    return record


def windows(record: ScoreRecord, now: datetime) -> dict[str, Figures]:
    """The figures of every window of the status and the gauges, each summed once."""
    return {label: record.window(now, length) for label, length in WINDOWS.items()}


def scorecard_status(figures: dict[str, Figures]) -> dict[str, Any]:
    """`status.scorecard`: each window's figures, the days of record within the longest, the summary."""
    out: dict[str, Any] = {f"window{label}": figures_status(f) for label, f in figures.items()}
    out["days"] = int(max(f.covered for f in figures.values()) / timedelta(days=1))
    out["summary"] = summary(figures["7d"], "7d")
    return out


def export(namespace: str, name: str, figures: dict[str, Figures]) -> None:
    """The scorecard's gauges per window; a figure the record cannot give (no load, no baseline) is absent."""
    for label, f in figures.items():
        held = f.covered > timedelta(0)
        sides: dict[Any, dict[str, float | None]] = {
            metrics.SCORECARD_REPLICA_SECONDS: {"planned": 3600 * f.planned_replica_hours if held else None,
                                                "baseline": 3600 * f.baseline_replica_hours if held else None},
            metrics.SCORECARD_UNSERVED_PERCENT: {"planned": f.planned_unserved_percent,
                                                 "baseline": f.baseline_unserved_percent},
        }
        for gauge, values in sides.items():
            for side, value in values.items():
                _set(gauge, value, namespace, name, label, side)
        _set(metrics.SCORECARD_COST_RATIO, f.cost_ratio, namespace, name, label)
        _set(metrics.SCORECARD_UNSERVED_RATIO, f.unserved_ratio, namespace, name, label)


def _set(gauge: Any, value: float | None, *labels: str) -> None:
    if value is None:
        metrics.remove(gauge, *labels)
    else:
        metrics.child(gauge, *labels).set(value)

"""Cron schedules as scheduled windows: `spec.schedules[]` and `prescaler backtest --schedules FILE.yaml`.

A schedule is `{name, cron, duration, timeZone, minReplicas?}`. With `minReplicas` its windows hold a hard
floor (what KEDA's cron scaler and cloud scheduled actions do); without, they are a learned regime like a
calendar kind (`prescaler.windows`), the schedule's name standing for the kind.

The cron expression is read in the schedule's time zone, so its windows follow daylight-saving time. A wall
time that does not exist on a day (the hour skipped in spring) starts the window at the next valid minute; a
wall time that happens twice (the hour repeated in autumn) starts it once, at the first.

Validation errors name the field. Pure but for `load_schedules_file`, which reads the backtest's YAML.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import yaml
from cronsim import CronSim, CronSimError

from prescaler.durations import format_duration, parse_duration
from prescaler.errors import InputError
from prescaler.windows import Window

# How many firings are looked at to find a cron's shortest period (a year of a daily schedule).
_PERIOD_SAMPLE = 400
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9 ._:-]{0,61}[A-Za-z0-9])?$")
FIELDS = ("name", "cron", "duration", "timeZone", "minReplicas")


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str
    duration: timedelta
    time_zone: str
    min_replicas: int | None = None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


def shortest_period(cron: str, zone: ZoneInfo, after: datetime) -> timedelta:
    """The shortest gap between consecutive firings of `cron` (over its next firings from `after`)."""
    it = CronSim(cron, after.astimezone(zone).replace(second=0, microsecond=0))
    prev = next(it)
    best: timedelta | None = None
    for _ in range(_PERIOD_SAMPLE):
        try:
            nxt = next(it)
        except StopIteration:
            break
        gap = nxt - prev
        best = gap if best is None else min(best, gap)
        prev = nxt
    return best if best is not None else timedelta(days=366)


@functools.lru_cache(maxsize=1024)
def _period(cron: str, zone_name: str) -> timedelta:
    """`shortest_period` from a fixed reference: the spec is parsed at every tick, the cron rarely changes."""
    zone = ZoneInfo(zone_name)
    return shortest_period(cron, zone, datetime(2026, 1, 1, tzinfo=zone))


def parse_schedule(raw: Mapping[str, Any], where: str, *, max_replicas: int | None = None,
                   reference: datetime | None = None) -> Schedule:
    """One schedule from its spec object; every problem raises InputError naming `where.field`."""
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: must be an object with name, cron, duration and timeZone")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(FIELDS)})")
    for field in ("name", "cron", "duration"):
        if not isinstance(raw.get(field), str) or not str(raw[field]).strip():
            raise InputError(f"{where}.{field}: required, a non-empty string")
    name = str(raw["name"]).strip()
    if not _NAME.match(name):
        raise InputError(f"{where}.name: {name!r} must be 1-63 letters, digits, spaces or ._:- "
                         "and start and end with a letter or digit")
    zone_name = raw.get("timeZone", "UTC")
    if not isinstance(zone_name, str) or not zone_name.strip():
        raise InputError(f"{where}.timeZone: must be an IANA time zone name such as Europe/Berlin")
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InputError(f"{where}.timeZone: unknown time zone {zone_name!r}") from exc
    cron = " ".join(str(raw["cron"]).split())
    if len(cron.split()) != 5:
        raise InputError(f"{where}.cron: {cron!r} must have five fields (minute hour day month weekday)")
    try:
        period = shortest_period(cron, zone, reference) if reference else _period(cron, zone_name)
    except (CronSimError, ValueError) as exc:
        raise InputError(f"{where}.cron: {cron!r} does not parse: {exc}") from exc
    duration = parse_duration(str(raw["duration"]), field=f"{where}.duration")
    if duration > period:
        raise InputError(f"{where}.duration: {format_duration(duration)} is longer than the cron's period "
                         f"({format_duration(period)}): windows would overlap")
    min_replicas = raw.get("minReplicas")
    if min_replicas is not None:
        if isinstance(min_replicas, bool) or not isinstance(min_replicas, int) or min_replicas < 0:
            raise InputError(f"{where}.minReplicas: must be a whole number ≥ 0, got {min_replicas!r}")
        if max_replicas is not None and min_replicas > max_replicas:
            raise InputError(f"{where}.minReplicas: {min_replicas} is above maxReplicas ({max_replicas})")
    return Schedule(name, cron, duration, zone_name, min_replicas)


def parse_schedules(items: Any, where: str = "schedules", *, max_replicas: int | None = None) -> list[Schedule]:
    """A list of schedule objects; names must be unique."""
    if items is None:
        return []
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise InputError(f"{where}: must be a list of schedules")
    out: list[Schedule] = []
    seen: set[str] = set()
    for i, raw in enumerate(items):
        sched = parse_schedule(raw, f"{where}[{i}]", max_replicas=max_replicas)
        if sched.name in seen:
            raise InputError(f"{where}[{i}].name: {sched.name!r} is used twice")
        seen.add(sched.name)
        out.append(sched)
    return out


def windows_between(schedules: Iterable[Schedule], start: datetime, end: datetime) -> list[Window]:
    """Every window of `schedules` that overlaps [start, end), in UTC, sorted by start."""
    out: list[Window] = []
    for s in schedules:
        zone = s.zone
        first = (start - s.duration).astimezone(zone).replace(second=0, microsecond=0)
        # CronSim yields firings strictly after its start: step back a minute to include one exactly on it.
        it = CronSim(s.cron, first - timedelta(minutes=1))
        for fire in it:
            if fire >= end:
                break
            opens = pd.Timestamp(fire).tz_convert("UTC")
            closes = opens + pd.Timedelta(s.duration)
            if closes.to_pydatetime() <= start:
                continue
            out.append(Window(s.name, f"{s.name} {fire:%Y-%m-%d %H:%M %Z}", opens, closes,
                              min_replicas=s.min_replicas))
    return sorted(out, key=lambda w: (w.start, w.name))


def next_window(schedules: Iterable[Schedule], now: datetime) -> Window | None:
    """The window in force at `now`, else the next one to open (within a year)."""
    found = windows_between(schedules, now, now + timedelta(days=366))
    return found[0] if found else None


def describe(schedule: Schedule) -> str:
    floor = "" if schedule.min_replicas is None else f", at least {schedule.min_replicas} replicas"
    return (f"{schedule.name}: {schedule.cron!r} in {schedule.time_zone} for "
            f"{format_duration(schedule.duration)}{floor}")



def load_schedules_file(path: Path) -> list[Schedule]:
    """The schedules of a YAML file: a list of schedule objects, or a mapping with a `schedules:` list."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from exc
    if isinstance(doc, Mapping):
        doc = doc.get("schedules")
    if not doc:
        raise InputError(f"{path}: no schedules (expected a list, or a mapping with a schedules: list)")
    try:
        return parse_schedules(doc)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc

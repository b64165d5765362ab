"""The scorecard: what prescaler planned against what the target ran, over the same observed load. Pure.

Each decision is a `DecisionSample`: the count the plan asked for, the baseline's count (below), the load
observed and what one ready replica serves. A sample's counts and load hold from its decision to the next,
for at most `MAX_GAP_INTERVALS` of its interval: a longer gap (the operator away) counts as no record.

- **Replica-hours**: the counts times the time they held (a starting pod costs as much as a ready one).
- **Unserved load**: the load above ready capacity. The plan's replicas are ready one lead time after the
  decision that asked for them (`spec.scaling.leadTime` states pod start and readiness time).

The baseline is what would have run without the plan:
- while prescaler was not in charge (`ForecastOnly`), what the target ran: its replicas, and its ready
  replicas as observed — an HPA's count or a fixed one;
- while it was in charge (`Auto`), the target ran the plan itself, so the baseline is an estimate of what the
  controller it took over from would have run, ready one lead time later: the count it was handed at a
  promotion (a fixed count), else the count an HPA sized on the same observed load would have asked for
  (`reactive_count`). Either way the plan is measured against the same controller in both modes.

Figures are summed per UTC hour, so a record of weeks stays small and a window is a sum of hours: a window of
length W ending at `now` covers the hours from `ceil_hour(now) - W`.
"""

from __future__ import annotations

import itertools
import math
from array import array
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from prescaler.planning import Recommendation, ScalingPolicy, apply_replica_limits

# A sample holds for at most this many of its intervals: beyond, the operator was away and nothing is known.
MAX_GAP_INTERVALS = 2
# Unserved shares below this (percent of the load) are noise: ratios floor both sides at it, so that 0 against
# 0 reads 1, not 0/0, and a hundredth of a request does not swing a ratio.
UNSERVED_FLOOR_PERCENT = 0.01
# The windows of the status and the metrics.
WINDOWS: dict[str, timedelta] = {"1d": timedelta(days=1), "7d": timedelta(days=7), "14d": timedelta(days=14)}
# The HorizontalPodAutoscaler's default scale-down stabilisation: the reactive baseline scales as an HPA would.
HPA_SCALE_DOWN_WINDOW = timedelta(minutes=5)

HOUR = 3600
Baseline = Literal["Observed", "Estimated", "Mixed"]


@dataclass(frozen=True, slots=True)
class DecisionSample:
    """One decision as the scorecard sees it. Loads and capacities are requests per second."""

    at: datetime
    planned: int  # replicas the plan asked for
    target: int  # replicas the target ran when the decision was made
    ready: int  # ready replicas of the target then
    estimate: int  # what the baseline would run had the plan been in charge (see the module's docstring)
    in_charge: bool  # the plan was applied (effective mode Auto): the baseline is `estimate`
    load: float | None  # observed load; None when nothing was observed
    capacity: float  # what one ready replica serves
    lead: timedelta
    interval: timedelta

    @property
    def baseline(self) -> int:
        return self.estimate if self.in_charge else self.target


# The columns of an hour's sums: seconds with a record, of those seconds in charge, planned and baseline
# replica-seconds, requests observed, planned and baseline requests unserved.
COVERED, IN_CHARGE, PLANNED, BASELINE, LOAD, PLANNED_UNSERVED, BASELINE_UNSERVED = range(7)
COLUMNS = 7


class _Hours:
    """Hourly sums in a ring of rows, one per hour of the span kept, in flat arrays of machine numbers: two
    weeks of a scaler in a few kilobytes (a fleet keeps one per scaler). Hours come in time order, so a row is
    only ever reused for a later hour."""

    def __init__(self, span: timedelta) -> None:
        self.size = int(span.total_seconds() // HOUR) + 2
        self.keys = array("q", [-1]) * self.size
        self.sums = array("d", [0.0]) * (self.size * COLUMNS)
        self.newest = -1

    def add(self, hour: int, values: Sequence[float]) -> None:
        row = hour % self.size
        base = row * COLUMNS
        if self.keys[row] != hour:
            self.keys[row] = hour
            for c in range(COLUMNS):
                self.sums[base + c] = 0.0
        for c in range(COLUMNS):
            self.sums[base + c] += values[c]
        self.newest = max(self.newest, hour)

    def total(self, first: int, end: int) -> list[float]:
        """The sums of the hours in [first, end) still kept (those a later hour has not passed by the span)."""
        first = max(first, self.newest - self.size + 2)
        out = [0.0] * COLUMNS
        for row, hour in enumerate(self.keys):
            if first <= hour < end:
                base = row * COLUMNS
                for c in range(COLUMNS):
                    out[c] += self.sums[base + c]
        return out


@dataclass(frozen=True)
class Figures:
    """The scorecard over one span of time."""

    start: datetime
    end: datetime
    covered: timedelta  # time with a record within [start, end)
    planned_replica_hours: float
    baseline_replica_hours: float
    load: float  # requests observed
    planned_unserved: float  # requests
    baseline_unserved: float
    in_charge: timedelta  # of `covered`, how long prescaler was in charge

    @property
    def planned_unserved_percent(self) -> float | None:
        return 100 * self.planned_unserved / self.load if self.load > 0 else None

    @property
    def baseline_unserved_percent(self) -> float | None:
        return 100 * self.baseline_unserved / self.load if self.load > 0 else None

    @property
    def cost_ratio(self) -> float | None:
        """Planned over baseline replica-hours (None without a baseline)."""
        if self.baseline_replica_hours <= 0:
            return None
        return self.planned_replica_hours / self.baseline_replica_hours

    @property
    def unserved_ratio(self) -> float | None:
        """Planned over baseline unserved share, both floored at `UNSERVED_FLOOR_PERCENT` (None without load)."""
        planned, baseline = self.planned_unserved_percent, self.baseline_unserved_percent
        if planned is None or baseline is None:
            return None
        return max(planned, UNSERVED_FLOOR_PERCENT) / max(baseline, UNSERVED_FLOOR_PERCENT)

    @property
    def baseline_kind(self) -> Baseline | None:
        """What the baseline was: the target's own count, an estimate (the plan was in charge), or both in turn."""
        if self.covered <= timedelta(0):
            return None
        if self.in_charge <= timedelta(0):
            return "Observed"
        if self.in_charge >= self.covered:
            return "Estimated"
        return "Mixed"


@dataclass
class ScoreRecord:
    """A scaler's scorecard, fed its decisions in time order; hourly sums over the last `keep`."""

    keep: timedelta = timedelta(days=14)
    _recent: deque[DecisionSample] = field(default_factory=deque)  # the newest sample and those its lead reaches
    first_at: datetime | None = None
    _hours: _Hours = field(init=False)

    def __post_init__(self) -> None:
        self._hours = _Hours(self.keep)

    @property
    def last(self) -> DecisionSample | None:
        return self._recent[-1] if self._recent else None

    def add(self, sample: DecisionSample) -> bool:
        """Append a decision; False (and nothing changes) when it is not newer than the last one."""
        last = self.last
        if last is not None and sample.at <= last.at:
            return False
        if last is not None:
            for hour, values in self._pieces(last, last.at, min(sample.at, _hold_end(last))):
                self._hours.add(hour, values)
        self._recent.append(sample)
        if self.first_at is None:
            self.first_at = sample.at
        # Keep the newest sample at or before `at - lead`: the plan ready from then on is its.
        while len(self._recent) >= 2 and self._recent[1].at <= sample.at - sample.lead:
            self._recent.popleft()
        return True

    def window(self, now: datetime, length: timedelta) -> Figures:
        """The figures of the hours from `ceil_hour(now) - length` to `now`."""
        end_hour = -(-int(now.timestamp()) // HOUR)
        first = end_hour - int(length.total_seconds() // HOUR)
        return self._figures(now, first, end_hour)

    def daily(self, now: datetime, days: int) -> list[tuple[date, Figures]]:
        """The figures of each UTC day, the last `days` up to `now`'s, oldest first."""
        today = datetime(now.year, now.month, now.day, tzinfo=UTC)
        out = []
        for back in range(days - 1, -1, -1):
            start = today - timedelta(days=back)
            first = int(start.timestamp()) // HOUR
            out.append((start.date(), self._figures(now, first, first + 24)))
        return out

    def _figures(self, now: datetime, first: int, end: int) -> Figures:
        total = self._hours.total(first, end)
        last = self.last
        if last is not None and now > last.at:
            # The newest decision holds until now (or its gap limit): counted, not yet stored.
            for hour, values in self._pieces(last, last.at, min(now, _hold_end(last))):
                if first <= hour < end:
                    total = [t + v for t, v in zip(total, values, strict=True)]
        return Figures(
            start=datetime.fromtimestamp(first * HOUR, UTC),
            end=min(now, datetime.fromtimestamp(end * HOUR, UTC)),
            covered=timedelta(seconds=float(total[COVERED])),
            planned_replica_hours=float(total[PLANNED]) / HOUR,
            baseline_replica_hours=float(total[BASELINE]) / HOUR,
            load=float(total[LOAD]),
            planned_unserved=float(total[PLANNED_UNSERVED]),
            baseline_unserved=float(total[BASELINE_UNSERVED]),
            in_charge=timedelta(seconds=float(total[IN_CHARGE])),
        )

    def _ready_source(self, at: datetime) -> DecisionSample:
        """The decision whose counts are ready at `at`: the newest made one lead time before (the oldest kept
        when none was: a record starts warm)."""
        found = self._recent[0]
        for s in self._recent:
            if s.at <= at:
                found = s
            else:
                break
        return found

    def _pieces(self, s: DecisionSample, start: datetime, end: datetime) -> list[tuple[int, list[float]]]:
        """The span [start, end) that sample `s` holds, cut where an hour ends or a plan becomes ready: each
        piece's hour and sums."""
        if end <= start:
            return []
        cuts = {start, end}
        cuts.update(r.at + s.lead for r in self._recent if start < r.at + s.lead < end)
        hour = (int(start.timestamp()) // HOUR + 1) * HOUR
        while hour < end.timestamp():
            cuts.add(datetime.fromtimestamp(hour, UTC))
            hour += HOUR
        pieces = []
        for a, b in itertools.pairwise(sorted(cuts)):
            seconds = (b - a).total_seconds()
            values = [0.0] * COLUMNS
            values[COVERED] = seconds
            values[IN_CHARGE] = seconds if s.in_charge else 0.0
            values[PLANNED] = s.planned * seconds
            values[BASELINE] = s.baseline * seconds
            if s.load is not None:
                ready = self._ready_source(a - s.lead)
                baseline_ready = ready.estimate if s.in_charge else s.ready
                values[LOAD] = s.load * seconds
                values[PLANNED_UNSERVED] = max(0.0, s.load - ready.planned * s.capacity) * seconds
                values[BASELINE_UNSERVED] = max(0.0, s.load - baseline_ready * s.capacity) * seconds
            pieces.append((_hour_of(a), values))
        return pieces


def _hold_end(s: DecisionSample) -> datetime:
    return s.at + MAX_GAP_INTERVALS * s.interval


def _hour_of(t: datetime) -> int:
    return int(t.timestamp()) // HOUR


def score(samples: Iterable[DecisionSample], now: datetime, length: timedelta,
          keep: timedelta | None = None) -> Figures:
    """The figures of a window, from samples in any order (the newest of equal times is dropped)."""
    record = ScoreRecord(keep=keep or max(length, timedelta(days=14)))
    for s in sorted(samples, key=lambda s: s.at):
        record.add(s)
    return record.window(now, length)


def reactive_count(policy: ScalingPolicy, observed: float | None, *, current: int, now: datetime,
                   recent: tuple[Recommendation, ...]) -> tuple[int, tuple[Recommendation, ...]]:
    """The count an HPA would ask for on the observed load (requests per step, as the planner's): the plan's
    sizing of it with headroom, the bounds, the HPA's scale-down stabilisation and no step limit. Nothing
    observed: the count holds. Returns the count and the recommendations to pass back next time."""
    if observed is None or math.isnan(observed):
        return current, recent
    hpa = replace(policy, scale_down_window=HPA_SCALE_DOWN_WINDOW, scale_down_max_step_percent=100)
    limited = apply_replica_limits(hpa, hpa.replicas_for(observed), current=current, now=now, recent=recent)
    return limited.desired, limited.recommendations


def sample_from_row(row: Mapping[str, Any]) -> DecisionSample | None:
    """A `scaling_decisions` row as a sample; None for a row written before the scorecard's columns existed."""
    needed = ("mode", "target_replicas", "ready_replicas", "baseline_replicas", "capacity", "step_seconds",
              "lead_seconds", "interval_seconds")
    if any(row.get(k) is None for k in needed) or not row["step_seconds"] or not row["interval_seconds"]:
        return None
    step = float(row["step_seconds"])
    load = row.get("observed_load")
    return DecisionSample(
        at=row["decided_at"],
        planned=int(row["desired_replicas"]),
        target=int(row["target_replicas"]),
        ready=int(row["ready_replicas"]),
        estimate=int(row["baseline_replicas"]),
        in_charge=row["mode"] == "Auto",
        load=None if load is None or math.isnan(float(load)) else float(load) / step,
        capacity=float(row["capacity"]) / step,
        lead=timedelta(seconds=int(row["lead_seconds"])),
        interval=timedelta(seconds=int(row["interval_seconds"])),
    )


# --- figures for people ------------------------------------------------------------------------------------

def ratio_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def summary(figures: Figures, window: str = "7d") -> str:
    """What `kubectl get psc` shows in its SCORE column: "cost 0.92× unserved 0.31× (7d)" for the figures of
    that window. A record shorter than the window names how much it holds: "(2d of 7d)"."""
    if figures.covered <= timedelta(0) or figures.cost_ratio is None:
        return "no record yet"
    text = f"cost {ratio_text(figures.cost_ratio)} unserved {ratio_text(figures.unserved_ratio)}"
    if figures.covered >= WINDOWS[window] * 0.9:
        return f"{text} ({window})"
    return f"{text} ({_held(figures.covered)} of {window})"


def _held(covered: timedelta) -> str:
    if covered >= timedelta(days=1):
        return f"{covered / timedelta(days=1):.0f}d"
    return f"{max(1, int(covered / timedelta(hours=1)))}h"


def figures_status(figures: Figures) -> dict[str, Any]:
    """One window of `status.scorecard` (numbers as strings: no floats in the resource)."""
    out: dict[str, Any] = {
        "coveredHours": int(figures.covered / timedelta(hours=1)),
        "plannedReplicaHours": f"{figures.planned_replica_hours:.1f}",
        "baselineReplicaHours": f"{figures.baseline_replica_hours:.1f}",
    }
    for key, value in (("plannedUnservedPercent", figures.planned_unserved_percent),
                       ("baselineUnservedPercent", figures.baseline_unserved_percent)):
        if value is not None:
            out[key] = f"{value:.3f}"
    for key, value in (("costRatio", figures.cost_ratio), ("unservedRatio", figures.unserved_ratio)):
        if value is not None:
            out[key] = f"{value:.2f}"
    if figures.baseline_kind is not None:
        out["baseline"] = figures.baseline_kind
    return out


# --- across scalers: `prescaler scorecard` ------------------------------------------------------------------

def records_by_scaler(rows: Iterable[Mapping[str, Any]], keep: timedelta = timedelta(days=14)
                      ) -> dict[tuple[str, str], ScoreRecord]:
    """Each scaler's record from `scaling_decisions` rows (with `namespace` and `name`), in time order per
    scaler; rows without the scorecard's columns are left out."""
    records: dict[tuple[str, str], ScoreRecord] = {}
    for row in rows:
        sample = sample_from_row(row)
        if sample is None:
            continue
        key = (str(row["namespace"]), str(row["name"]))
        records.setdefault(key, ScoreRecord(keep=keep)).add(sample)
    return records


def report(records: Mapping[tuple[str, str], ScoreRecord], now: datetime, days: int = 14) -> list[dict[str, Any]]:
    """The scorecard of every scaler, as `prescaler scorecard --json` prints it: each window as in the status,
    and each of the last `days` UTC days."""
    out = []
    for (namespace, name), record in sorted(records.items()):
        figures = {label: record.window(now, length) for label, length in WINDOWS.items()}
        out.append({
            "namespace": namespace,
            "name": name,
            "days": int(max(f.covered for f in figures.values()) / timedelta(days=1)),
            "summary": summary(figures["7d"]),
            "windows": {label: figures_status(f) for label, f in figures.items()},
            "daily": [{"date": day.isoformat(), **figures_status(f)} for day, f in record.daily(now, days)
                      if f.covered > timedelta(0)],
        })
    return out

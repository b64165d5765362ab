"""The promotion gate: a scaler's plan takes charge once its scorecard has earned it, and hands back when its
live record stops earning it. Pure: the record's figures, the gate's memory and `now` come in as arguments.

`spec.promotion {after, maxCostRatio, maxUnservedRatio}`. Over the last `after` of the scorecard
(`prescaler.scorecard`):

- **meets** the bounds: cost ratio ≤ maxCostRatio, and unserved ratio ≤ maxUnservedRatio or the plan left a
  negligible share unserved (`UNSERVED_FLOOR_PERCENT`: it cannot serve better than everything);
- **breaks** them: cost ratio above maxCostRatio by `COST_MARGIN`, or unserved ratio above maxUnservedRatio by
  `UNSERVED_MARGIN` with more than a negligible share unserved. Between the two is a dead band where nothing
  changes.

A scaler starts in its spec's mode. `ForecastOnly` becomes effectively `Auto` when the record meets the bounds;
`Auto` goes back to `ForecastOnly` behaviour when it breaks them. A change needs a record covering
`COVERAGE` of `after`, fresh data, and the previous change (or the start) at least `dwell(after)` ago, so it
never flaps. A change of `spec.mode` starts the gate afresh from the new mode. The user's spec is never
rewritten: the effective mode lives in the status.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from prescaler.durations import format_duration, parse_duration
from prescaler.errors import InputError
from prescaler.scorecard import UNSERVED_FLOOR_PERCENT, Figures, ratio_text

Effective = Literal["Auto", "ForecastOnly"]

# Relative margins beyond the bounds before an Auto scaler hands back: cost figures move little from week to
# week, unserved shares are small numbers and move more.
COST_MARGIN = 0.10
UNSERVED_MARGIN = 0.25
# The share of `after` the record must cover before the gate acts on it.
COVERAGE = 0.9
# The shortest stay in an effective mode; shorter when `after` is.
MAX_DWELL = timedelta(days=1)
# `after` is judged on whole hours (the scorecard sums hours) and kept within what is worth reading back.
MIN_AFTER = timedelta(hours=1)
MAX_AFTER = timedelta(days=30)

DEFAULT_AFTER = "7d"
DEFAULT_MAX_COST_RATIO = "1.0"
DEFAULT_MAX_UNSERVED_RATIO = "0.5"
# What the CRD's pattern accepts: a plain decimal, no sign, no exponent.
_DECIMAL = re.compile(r"[0-9]{1,6}([.][0-9]{1,4})?")


@dataclass(frozen=True)
class Promotion:
    """`spec.promotion`, parsed."""

    after: timedelta
    max_cost_ratio: float
    max_unserved_ratio: float

    @property
    def dwell(self) -> timedelta:
        return min(self.after, MAX_DWELL)


def parse_promotion(value: Any, path: str = "spec.promotion") -> Promotion | None:
    """`spec.promotion` (absent: no gate); InputError names the field."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InputError(f"{path} must be an object")
    after = parse_duration(str(value.get("after", DEFAULT_AFTER)), field=f"{path}.after")
    if not MIN_AFTER <= after <= MAX_AFTER:
        raise InputError(f"{path}.after must be within {format_duration(MIN_AFTER)}..{format_duration(MAX_AFTER)}, "
                         f"got {format_duration(after)}")
    return Promotion(
        after=after,
        max_cost_ratio=parse_ratio(value.get("maxCostRatio", DEFAULT_MAX_COST_RATIO), f"{path}.maxCostRatio"),
        max_unserved_ratio=parse_ratio(value.get("maxUnservedRatio", DEFAULT_MAX_UNSERVED_RATIO),
                                       f"{path}.maxUnservedRatio"),
    )


def parse_ratio(value: Any, path: str) -> float:
    """A ratio written as a decimal string ("0.5"): no floats in the spec."""
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise InputError(f"{path} must be a decimal string such as \"0.5\", got {value!r}")
    ratio = float(value)
    if not (math.isfinite(ratio) and ratio > 0):
        raise InputError(f"{path} must be greater than 0, got {value!r}")
    return ratio


@dataclass(frozen=True)
class GateMemory:
    """What the gate remembers between decisions (kept in the status, so a restart resumes it)."""

    effective: Effective
    spec_mode: Effective  # the spec's mode the gate started from
    since: datetime  # when the effective mode last changed, or the gate started


@dataclass(frozen=True)
class Verdict:
    """The figures against the bounds."""

    meets: bool
    breaks: bool
    text: str  # the figures and bounds in words


def judge(promotion: Promotion, figures: Figures) -> Verdict | None:
    """Meets, breaks or neither; None when the record cannot say (no load, no baseline, too short)."""
    cost, unserved, planned = figures.cost_ratio, figures.unserved_ratio, figures.planned_unserved_percent
    if cost is None or unserved is None or planned is None:
        return None
    if figures.covered < COVERAGE * promotion.after:
        return None
    negligible = planned <= UNSERVED_FLOOR_PERCENT
    meets = cost <= promotion.max_cost_ratio and (negligible or unserved <= promotion.max_unserved_ratio)
    breaks = (cost > promotion.max_cost_ratio * (1 + COST_MARGIN)
              or (planned > UNSERVED_FLOOR_PERCENT * (1 + UNSERVED_MARGIN)
                  and unserved > promotion.max_unserved_ratio * (1 + UNSERVED_MARGIN)))
    baseline = figures.baseline_unserved_percent or 0.0
    text = (f"over {format_duration(promotion.after)}: cost {ratio_text(cost)} (bound {promotion.max_cost_ratio:g}×), "
            f"unserved {ratio_text(unserved)} (bound {promotion.max_unserved_ratio:g}×; "
            f"{planned:.3f}% planned against {baseline:.3f}%)")
    return Verdict(meets=meets, breaks=breaks, text=text)


@dataclass(frozen=True)
class GateDecision:
    memory: GateMemory
    changed: bool  # the effective mode changed at this decision
    reason: str  # CamelCase, for the Promoted condition
    message: str


def decide(promotion: Promotion, spec_mode: Effective, memory: GateMemory | None, figures: Figures | None, *,
           now: datetime, fresh: bool, stale_why: str = "") -> GateDecision:
    """The effective mode at `now`.

    `figures` is the scorecard over the last `promotion.after`; `fresh` says whether the data behind this
    decision can be acted on (traffic read, forecast in date, record current): while it is not, nothing
    changes."""
    if memory is None or memory.spec_mode != spec_mode:
        start = "starts" if memory is None else "starts afresh"
        memory = GateMemory(effective=spec_mode, spec_mode=spec_mode, since=now)
        return GateDecision(memory, False, *_standing(memory, f"the gate {start} from spec.mode {spec_mode}"))
    verdict = judge(promotion, figures) if figures is not None else None
    if not fresh:
        return GateDecision(memory, False, *_standing(memory, f"held: {stale_why or 'data not current'}"))
    if verdict is None:
        held = figures.covered if figures is not None else timedelta(0)
        return GateDecision(memory, False, *_standing(
            memory, f"awaiting the record: {_hours(held)} of {format_duration(promotion.after)} with load"))
    waited = now - memory.since
    if waited < promotion.dwell:
        return GateDecision(memory, False, *_standing(
            memory, f"{verdict.text}; the last change was {_hours(waited)} ago, changes wait "
                    f"{format_duration(promotion.dwell)}"))
    if memory.effective == "ForecastOnly" and verdict.meets:
        promoted = GateMemory("Auto", spec_mode, now)
        return GateDecision(promoted, True, _standing(promoted, "")[0], f"the plan takes charge: {verdict.text}")
    if memory.effective == "Auto" and verdict.breaks:
        demoted = GateMemory("ForecastOnly", spec_mode, now)
        return GateDecision(demoted, True, _standing(demoted, "")[0], f"the plan hands back: {verdict.text}")
    return GateDecision(memory, False, *_standing(memory, verdict.text))


def _standing(memory: GateMemory, why: str) -> tuple[str, str]:
    """The Promoted condition's reason and message in an effective mode: the reason names where the mode stands
    against the spec's (the Events of a change say Promoted or Demoted)."""
    if memory.effective == "Auto":
        reason = "Promoted" if memory.spec_mode == "ForecastOnly" else "InChargeBySpec"
        return reason, f"the plan is in charge; {why}"
    reason = "Demoted" if memory.spec_mode == "Auto" else "NotPromoted"
    return reason, f"the plan only reports; {why}"


def _hours(td: timedelta) -> str:
    if td >= timedelta(days=1):
        return f"{td / timedelta(days=1):.1f}d"
    return f"{int(td / timedelta(hours=1))}h"

"""The operator's side of the promotion gate: its memory in the status, the Promoted condition, its events.

The gate itself is pure (`prescaler.promotion`). Its memory is the status (`effectiveMode`, and
`promotion.specMode` and `promotion.since`), so an operator restart or a standby taking over resumes it where
it was: a scaler never falls back to its spec's mode because a process restarted.

Promoted, the plan takes over from a controller that a hand-back returns to: with `HPAMinReplicas` the HPA,
with `Replicas` the count the target ran at the promotion (`promotion.handBackReplicas`). While in charge, the
scorecard's baseline is that same controller's estimated count, so the gate judges the plan against one
baseline in both modes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from prescaler.promotion import Effective, GateDecision, GateMemory, decide
from prescaler.reconcile.conditions import Cond, now_iso
from prescaler.scorecard import ScoreRecord
from prescaler.spec import ScalerSpec

_EFFECTIVE = ("Auto", "ForecastOnly")


def _hand_back(status: Mapping[str, Any]) -> int | None:
    value = (status.get("promotion") or {}).get("handBackReplicas")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def memory_from_status(status: Mapping[str, Any]) -> GateMemory | None:
    """The gate's memory as the last status wrote it; None when there is none (or it cannot be read)."""
    promotion = status.get("promotion")
    effective = status.get("effectiveMode")
    if not isinstance(promotion, Mapping) or effective not in _EFFECTIVE:
        return None
    spec_mode, since = promotion.get("specMode"), promotion.get("since")
    if spec_mode not in _EFFECTIVE or not isinstance(since, str):
        return None
    try:
        at = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        return None
    return GateMemory(effective=cast(Effective, effective), spec_mode=cast(Effective, spec_mode), since=at)


@dataclass
class GateOutcome:
    """What the gate step leaves for the tick: the mode in force, and what the status and events say."""

    effective: Effective
    status: dict[str, Any] = field(default_factory=dict)
    condition: Cond | None = None  # Promoted; None without a gate
    events: list[tuple[str, str, str]] = field(default_factory=list)
    demoted: bool = False  # handed back at this decision
    hand_back: int | None = None  # in charge: the count a hand-back returns the target to (Replicas)


def run_gate(spec: ScalerSpec, status: Mapping[str, Any], record: ScoreRecord | None, *, now: datetime,
             fresh: bool, stale_why: str, target_replicas: int) -> GateOutcome:
    """The effective mode of an Auto or ForecastOnly scaler at `now`, with its status fields and events;
    `target_replicas` is what the target runs now (the count a promotion takes over from)."""
    spec_mode = cast(Effective, spec.mode)
    if spec.promotion is None:
        clear: dict[str, Any] = {"effectiveMode": spec_mode}
        if status.get("promotion") is not None:
            clear["promotion"] = None  # a merge patch's null removes the field
        return GateOutcome(spec_mode, clear)
    figures = record.window(now, spec.promotion.after) if record is not None else None
    if record is None:
        fresh, stale_why = False, stale_why or "the decision record is still being read back"
    decision: GateDecision = decide(spec.promotion, spec_mode, memory_from_status(status), figures, now=now,
                                    fresh=fresh, stale_why=stale_why)
    memory = decision.memory
    out = GateOutcome(memory.effective)
    kept = _hand_back(status)
    if decision.changed and memory.effective == "Auto" and spec.actuation == "Replicas":
        kept = target_replicas
    if memory.effective == "Auto" and memory.spec_mode == "ForecastOnly":
        out.hand_back = kept
    promotion: dict[str, Any] = {"specMode": memory.spec_mode, "since": now_iso(memory.since)}
    # Null removes a count no longer held (a merge patch); a value keeps it for the next decision.
    promotion["handBackReplicas"] = out.hand_back
    out.status = {"effectiveMode": memory.effective, "promotion": promotion}
    out.condition = Cond("True" if memory.effective == "Auto" else "False", decision.reason, decision.message)
    if decision.changed:
        if memory.effective == "Auto":
            out.events.append(("Normal", "Promoted", decision.message))
        else:
            out.events.append(("Warning", "Demoted", decision.message))
            out.demoted = True
            out.hand_back = kept  # the count to return the target to, this once
    return out

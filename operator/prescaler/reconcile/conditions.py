"""metav1.Condition bookkeeping for a PredictiveScaler's status."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

CONDITION_TYPES = ("Ready", "DataAvailable", "ForecastReady", "ScalingActive", "Promoted", "CapacityShortfall",
                   "ServiceLevelAtRisk")
# Conditions whose True is the bad news: their Event is a Warning when they turn True, Normal when they clear.
TRUE_IS_WARNING = frozenset({"CapacityShortfall", "ServiceLevelAtRisk"})


@dataclass(frozen=True)
class Cond:
    status: str
    reason: str
    message: str


def now_iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    old: list[Mapping[str, Any]] | None, new: Mapping[str, Cond], generation: int, now: datetime,
    drop: Collection[str] = (),
) -> tuple[list[dict[str, Any]], list[tuple[str, Cond]]]:
    """metav1.Conditions with lastTransitionTime kept unless the status changed; returns the changes. Types in
    `drop` are removed (a condition whose subject is gone, such as Promoted without a gate)."""
    previous = {c.get("type"): c for c in (old or [])}
    merged: list[dict[str, Any]] = []
    changed: list[tuple[str, Cond]] = []
    for ctype in CONDITION_TYPES:
        cond = new.get(ctype)
        prev = previous.get(ctype)
        if ctype in drop:
            continue
        if cond is None:
            if prev is not None:
                merged.append(dict(prev))
            continue
        transition = prev.get("lastTransitionTime") if prev and prev.get("status") == cond.status else None
        if prev is None or prev.get("status") != cond.status or prev.get("reason") != cond.reason:
            changed.append((ctype, cond))
        merged.append({
            "type": ctype,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message[:1024],
            "observedGeneration": generation,
            "lastTransitionTime": transition or now_iso(now),
        })
    return merged, changed


def condition_event(ctype: str, cond: Cond, first: bool) -> tuple[str, str, str] | None:
    """The Event for a condition that changed (`first`: it was not there before); None when there is nothing to
    tell: a warning-type condition that appears already clear."""
    warning = cond.status == "True" if ctype in TRUE_IS_WARNING else cond.status != "True"
    if ctype in TRUE_IS_WARNING and first and not warning:
        return None
    return ("Warning" if warning else "Normal", cond.reason, f"{ctype}={cond.status}: {cond.message}")

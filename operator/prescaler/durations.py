"""Kubernetes-style duration strings ("90s", "5m", "1h30m", "14d") as timedeltas."""

import re
from datetime import timedelta

from prescaler.errors import InputError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")
_WHOLE = re.compile(r"^(?:\d+[smhdw])+$")


def parse_duration(text: str, *, field: str = "duration") -> timedelta:
    """Parse "1h30m"; raise InputError naming `field` when malformed or zero."""
    value = str(text).strip()
    if not _WHOLE.match(value):
        raise InputError(f"{field}: {text!r} is not a duration like 30s, 5m, 1h30m or 14d")
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(value))
    if seconds <= 0:
        raise InputError(f"{field}: {text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Shortest exact form: 300s -> "5m", 5400s -> "1h30m"."""
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNITS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)

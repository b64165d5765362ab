"""The one polling helper of the tests that wait on real processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], *, timeout: float = 120.0, interval: float = 0.25) -> T:
    """Call `check` until it returns something truthy and return that; fail naming `what` after `timeout`.

    `check` runs at least once and once more at the deadline, so a slow machine never fails a condition
    that held by then.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)

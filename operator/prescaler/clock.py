"""Wall clock, or a scaled clock so the demo and the tests can live through a day in minutes.

A scaled clock is shared by several processes through three environment variables (`env()` writes them for a
child process; `prescaler.config.read_clock` reads them): the simulated time `PRESCALER_CLOCK_START` was
current at the real unix time `PRESCALER_CLOCK_EPOCH`, and simulated time runs `PRESCALER_CLOCK_SPEED` times
faster than real time. A restarted operator resumes the same timeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class Clock:
    start: datetime | None = None
    epoch: float = 0.0
    speed: float = 1.0

    def now(self) -> datetime:
        if self.start is None:
            return datetime.now(UTC)
        return self.start + timedelta(seconds=(time.time() - self.epoch) * self.speed)

    def real_seconds(self, simulated: timedelta) -> float:
        """How long `simulated` lasts in real seconds on this clock."""
        return simulated.total_seconds() / self.speed

    @property
    def scaled(self) -> bool:
        return self.start is not None

    def env(self) -> dict[str, str]:
        if self.start is None:
            return {}
        return {
            "PRESCALER_CLOCK_START": self.start.isoformat(),
            "PRESCALER_CLOCK_EPOCH": repr(self.epoch),
            "PRESCALER_CLOCK_SPEED": repr(self.speed),
        }

    @classmethod
    def scaled_from(cls, start: datetime, speed: float) -> Clock:
        return cls(start=start, epoch=time.time(), speed=speed)

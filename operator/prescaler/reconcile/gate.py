"""Admission of reconciles: a bounded number at once, scalers that never decided first."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class Gate:
    """At most `slots` reconciles run at once, each start to finish; scalers that never decided go first.

    Without it every due scaler starts at once and their blocking steps interleave in the thread pool, so
    after a restart no decision lands until the whole fleet has done every step.
    """

    def __init__(self, slots: int) -> None:
        self.free = max(1, slots)
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, urgent: bool) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (0 if urgent else 1, next(self._order), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            fut = heapq.heappop(self._waiters)[2]
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1

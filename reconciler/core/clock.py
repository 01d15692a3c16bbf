"""Time, injected: a real clock for the agent and a fake one that tests advance by hand.

Everything that waits (retry backoff, restart delays, resync intervals, health-check
intervals) takes a ``Clock`` so tests run those paths without sleeping. ``time()`` is wall-clock
time, used for timestamps and for deadlines that are persisted; ``monotonic()`` and ``sleep()``
are for in-process waits, which must not jump when a device without a real-time clock sets its
time at boot.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait for ``seconds`` of monotonic time."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when ``advance`` is called; sleepers wake in deadline order."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper whose deadline passed, in order.

        Between wake-ups the event loop runs until it is idle, so work scheduled by a woken
        sleeper happens before later sleepers wake.
        """
        target = self._mono + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._wall += deadline - self._mono
            self._mono = deadline
            fut.set_result(None)
            await settle()
        self._wall += target - self._mono
        self._mono = target
        await settle()


async def sleep_or_wake(clock: Clock, seconds: float, wake: asyncio.Event) -> bool:
    """Wait ``seconds`` on ``clock``, or less if ``wake`` is set first (or already is).

    Returns True when ``wake`` ended the wait. The event is left as it is: clearing it is the
    caller's choice. Cancelling the caller cancels both waits; nothing is left running.
    """
    if wake.is_set():
        return True
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waker = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waker.cancel()
        await asyncio.gather(sleeper, waker, return_exceptions=True)
    return wake.is_set()


async def settle(rounds: int = 50) -> None:
    """Let the event loop run every ready callback, a bounded number of rounds."""
    for _ in range(rounds):
        await asyncio.sleep(0)

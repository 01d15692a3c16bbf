"""Capped exponential backoff with jitter: the one retry rule of the whole agent.

Every loop that retries something that failed (a task step, a status delivery, a supervised
loop, the runtime's event stream, the local manager's round) waits by this rule, on the
injected clock, so tests drive it without sleeping and a fleet of agents never retries in
lock-step. Attempt ``n`` waits about ``initial * factor**n``, capped at ``cap``, spread by
``jitter`` either way.

``Backoff`` is the immutable rule; ``Retry`` is one loop's running count of consecutive
failures under it (in the manner of kopf's throttler): ``await retry.wait()`` after a failure,
``retry.reset()`` after a success.

The restart policy's delay (``restart.delay`` doubling up to ``restart.maxDelay``) is not a
retry: it is the contract's own formula, exact and without jitter, and lives with the restart
policy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from reconciler.core.clock import Clock

__all__ = ["Backoff", "Retry"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt n waits about initial * factor**n."""

    initial: float = 0.25
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.2  # +/- this fraction

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before retry number ``attempt`` (0 for the first retry)."""
        base = min(self.cap, self.initial * self.factor ** min(max(attempt, 0), 64))
        return base * (1.0 + self.jitter * (2.0 * rng.random() - 1.0))


class Retry:
    """Consecutive failures of one loop, and the wait the next retry owes."""

    def __init__(self, backoff: Backoff, *, clock: Clock, rng: random.Random | None = None) -> None:
        self.backoff = backoff
        self._clock = clock
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay(self) -> float:
        """The wait for this failure; counts it."""
        delay = self.backoff.delay(self.attempts, self._rng)
        self.attempts += 1
        return delay

    async def wait(self) -> None:
        """Count a failure and sleep its delay on the clock."""
        await self._clock.sleep(self.next_delay())

    def reset(self) -> None:
        """A success: the next failure starts again from ``initial``."""
        self.attempts = 0

"""The fleet manager's bucket watches: one per bucket it reads, and their restarts with backoff.

The driver (``reconciler.manager.driver``) reads every bucket through one filtered watch
(``reconciler.fleet.watch.KeyWatch``). This module owns those watches for one connection epoch:

* **Starting.** ``start(bucket)`` stops the bucket's old watch (and its pump), starts a new one
  and returns its initial values, which the driver takes as that bucket's whole picture. A
  start that JetStream does not answer is tried again, up to ``WATCH_ATTEMPTS`` times, because
  a cluster that lost a server may place a new watch's consumer on that server (nats-server 2.9
  picks among the stream's peers, the offline one included) and the next try lands elsewhere.
  Between tries it waits the bucket's backoff; after the last, ``WatchLost`` ends the epoch.
* **Pumping.** Each live watch has a pump task that puts its deliveries, and the error that
  ends it, on the driver's queue as ``WatchEvent``s tagged with the bucket and the watch's
  generation, so deliveries of a replaced watch still queued are told apart and dropped.
* **Restarting.** A watch lost while running is started again by ``restart(bucket)`` after the
  bucket's backoff (``reconciler.core.backoff.Retry``), so a watch that JetStream keeps ending
  is not restarted in a tight loop. A watch that ran for ``healthy_after`` seconds before it
  was lost starts again from the shortest wait, as a supervised loop does.

Time is the injected clock's, so tests drive the backoff without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from reconciler.core.backoff import Backoff, Retry
from reconciler.core.clock import Clock
from reconciler.fleet.watch import BucketMissing, Entry, WatchLost

__all__ = [
    "HEALTHY_AFTER",
    "WATCH_ATTEMPTS",
    "WATCH_BACKOFF",
    "WATCH_TIMEOUT",
    "BucketWatches",
    "Watch",
    "WatchEvent",
]

log = logging.getLogger(__name__)

WATCH_ATTEMPTS: Final = 5
WATCH_TIMEOUT: Final = 2.0
"""A watch that JetStream does not answer within this many seconds is tried again."""
WATCH_BACKOFF: Final = Backoff(initial=0.1, cap=2.0)
"""The wait before restarting a lost watch, and between tries of a start."""
HEALTHY_AFTER: Final = 30.0
"""A watch that ran this many seconds before it was lost restarts after the shortest wait."""


class Watch(Protocol):
    """What the manager needs of a watch (``KeyWatch``)."""

    async def start(self) -> Mapping[str, Entry]:
        """The values present when it started. Raises ``WatchLost`` (``BucketMissing``)."""
        ...

    async def next(self) -> Entry:
        """The next put or delete. Raises ``WatchLost`` when the watch can not be trusted."""
        ...

    async def stop(self) -> None:
        """Stop watching; never raises."""
        ...


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """What the driver's loop wakes for: a delivery or the error that ended a watch (``tag``
    the bucket, ``generation`` the watch's), or one of the driver's own tags."""

    tag: str
    generation: int = 0
    entry: Entry | None = None
    error: BaseException | None = None


class BucketWatches:
    """The watches of one connection epoch; see the module docstring. ``open(bucket)`` makes an
    unstarted watch of the whole bucket; deliveries go to ``events``."""

    def __init__(
        self,
        *,
        open: Callable[[str], Watch],
        events: asyncio.Queue[WatchEvent],
        clock: Clock,
        backoff: Backoff = WATCH_BACKOFF,
        healthy_after: float = HEALTHY_AFTER,
        attempts: int = WATCH_ATTEMPTS,
        rng: random.Random | None = None,
    ) -> None:
        self._open = open
        self._events = events
        self._clock = clock
        self._backoff = backoff
        self._healthy_after = healthy_after
        self._attempts = attempts
        self._rng = rng or random.Random()
        self._watches: dict[str, Watch] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._generation: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._retries: dict[str, Retry] = {}

    def current(self, event: WatchEvent) -> bool:
        """Whether ``event`` comes from the bucket's current watch (not a replaced one)."""
        return event.generation == self._generation.get(event.tag)

    def retry(self, bucket: str) -> Retry:
        """The bucket's running count of failures (tests read ``attempts``)."""
        retry = self._retries.get(bucket)
        if retry is None:
            retry = self._retries[bucket] = Retry(self._backoff, clock=self._clock, rng=self._rng)
        return retry

    async def start(self, bucket: str) -> Mapping[str, Entry]:
        """(Re)start the watch of ``bucket`` and return its initial values; deliveries of an
        earlier watch of it still queued are no longer ``current``. Raises ``BucketMissing``
        at once, ``WatchLost`` after ``attempts`` tries that failed."""
        await self._stop(bucket)
        self._generation[bucket] = generation = self._generation.get(bucket, 0) + 1
        retry = self.retry(bucket)
        for attempt in range(1, self._attempts + 1):
            watch = self._open(bucket)
            try:
                initial = await watch.start()
                break
            except BucketMissing:
                await watch.stop()
                raise
            except WatchLost as err:
                await watch.stop()
                if attempt == self._attempts:
                    raise
                log.debug("watch of %s failed, trying again: %s", bucket, err)
                await retry.wait()
        self._watches[bucket] = watch
        self._started[bucket] = self._clock.monotonic()
        self._pumps[bucket] = asyncio.create_task(
            _pump(bucket, generation, watch, self._events), name=f"watch-{bucket}"
        )
        return initial

    async def restart(self, bucket: str) -> Mapping[str, Entry]:
        """Start the watch of ``bucket`` again after it was lost, once its backoff has passed
        (from the shortest wait when it had run ``healthy_after`` seconds). As ``start``."""
        retry = self.retry(bucket)
        began = self._started.get(bucket)
        if began is not None and self._clock.monotonic() - began >= self._healthy_after:
            retry.reset()
        await retry.wait()
        return await self.start(bucket)

    async def stop(self) -> None:
        """Stop every watch and its pump. Never raises."""
        for bucket in list(self._watches.keys() | self._pumps.keys()):
            await self._stop(bucket)

    async def _stop(self, bucket: str) -> None:
        pump = self._pumps.pop(bucket, None)
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        watch = self._watches.pop(bucket, None)
        if watch is not None:
            await watch.stop()


async def _pump(tag: str, generation: int, watch: Watch, events: asyncio.Queue[WatchEvent]) -> None:
    try:
        while True:
            events.put_nowait(WatchEvent(tag, generation, await watch.next()))
    except asyncio.CancelledError:
        raise
    except Exception as err:
        events.put_nowait(WatchEvent(tag, generation, error=err))

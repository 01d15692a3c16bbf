"""The liveness probe: the runtime's own cheap, fast judgement of whether podman answers.

A hung podman (its socket accepts connections and never answers) makes no call fail quickly:
each waits for its deadline, and some deadlines are long. So the runtime watches podman with one
``GET /_ping`` on a lane of its own (``PodmanAPI.probe``) with a short deadline, and this probe
alone decides that podman is down:

* **Idle cost.** While podman is up, the probe pings only when nothing has answered for
  ``PROBE_INTERVAL`` seconds: an agent whose calls succeed sends no pings at all, an idle one one
  every two seconds.
* **Down.** A ping that gets no answer within its deadline turns the runtime down, unless some
  other call got an answer meanwhile (a busy podman is slow, not hung). The executor then ends
  every call in flight and the event stream, so their waiters retry when podman is back instead
  of sitting on a dead socket. Worst case from the last answer to "down": the interval plus the
  ping's deadline, under four seconds.
* **Suspicion.** A call that gets no answer (refused, reset, past its deadline) asks the probe
  to look now (``poke``) instead of deciding anything itself.
* **Back up.** While down, the probe pings on a short backoff (``DOWN_BACKOFF``, at most a
  second apart), and the first answer turns the runtime up again.
* **Rediscovery.** While down, if the executor was given a ``discover`` callable (the socket was
  found by discovery, not given explicitly), it is run every ``REDISCOVER_INTERVAL`` seconds in a
  thread of its own; a different URL that answers is handed to ``moved`` and probed at once.

The schedule runs on the injected clock; each ping's deadline is real time (``lanes``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable

from reconciler.core.backoff import Backoff, Retry
from reconciler.core.clock import Clock, sleep_or_wake
from runtime.podman.client import PodmanAPI
from runtime.podman.reach import Reachability

log = logging.getLogger(__name__)

PROBE_INTERVAL = 2.0
"""While up: ping when podman has not answered anything for this long."""

DOWN_BACKOFF = Backoff(initial=0.25, factor=2.0, cap=1.0, jitter=0.2)
"""While down: the wait between pings."""

REDISCOVER_INTERVAL = 2.0
"""While down: how often socket discovery runs again (when there is a ``discover``)."""

Discover = Callable[[], str | None]
"""Blocking: the URL of a podman socket that answers now, or None."""


class Liveness:
    """Pings podman when it has been quiet, and owns the up/down verdict."""

    def __init__(
        self,
        *,
        api: PodmanAPI,
        reachability: Reachability,
        clock: Clock,
        discover: Discover | None = None,
        moved: Callable[[str], None] | None = None,
    ) -> None:
        self._api = api
        self._reach = reachability
        self._clock = clock
        self._discover = discover
        self._moved = moved
        self._poked = asyncio.Event()
        self._check: asyncio.Task[bool] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._finder: asyncio.Task[None] | None = None
        self._finder_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._last_discovery = float("-inf")
        self.pings = 0
        """How many pings were sent (for tests and benchmarks)."""
        reachability.add_suspect_listener(self.poke)

    # ------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="podman-liveness")

    async def close(self) -> None:
        for task in (self._loop_task, self._finder, self._check):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._loop_task = self._finder = self._check = None
        if self._finder_pool is not None:
            pool, self._finder_pool = self._finder_pool, None
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)

    # ---------------------------------------------------------------------------- probe

    def poke(self) -> None:
        """Look now (a call got no answer). Cheap; coalesced while a ping is in flight."""
        self._poked.set()

    async def check(self) -> bool:
        """Ping once now and settle the verdict. Concurrent checks share one ping."""
        if self._check is None or self._check.done():
            self._check = asyncio.create_task(self._ping(), name="podman-ping")
        return await asyncio.shield(self._check)

    async def _ping(self) -> bool:
        answers_before = self._reach.answers
        self.pings += 1
        if await self._api.ping():
            self._reach.answered()
            return True
        if self._reach.answers > answers_before:
            return True  # something else was answered meanwhile: podman is slow, not hung
        self._reach.set(False)
        return False

    async def _run(self) -> None:
        retry = Retry(DOWN_BACKOFF, clock=self._clock)
        while True:
            self._poked.clear()
            try:
                up = await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug; the probe must never die of it
                log.exception("liveness probe failed")
                up = False
            if up:
                retry.reset()
                await self._until_quiet()
            else:
                self._rediscover()
                await self._pause(retry.next_delay(), wake_on_poke=False)

    async def _until_quiet(self) -> None:
        """Return once podman has been quiet for ``PROBE_INTERVAL``, or on a poke."""
        while True:
            wait = self._reach.last_answer + PROBE_INTERVAL - self._clock.monotonic()
            if wait <= 0 or self._reach.down:
                return
            if await self._pause(wait, wake_on_poke=True):
                return

    async def _pause(self, seconds: float, *, wake_on_poke: bool) -> bool:
        """Sleep on the clock; returns True if woken early by a poke."""
        if not wake_on_poke:
            await self._clock.sleep(seconds)
            return False
        return await sleep_or_wake(self._clock, seconds, self._poked)

    # ---------------------------------------------------------------------- rediscovery

    def _rediscover(self) -> None:
        if self._discover is None or (self._finder is not None and not self._finder.done()):
            return
        now = self._clock.monotonic()
        if now - self._last_discovery < REDISCOVER_INTERVAL:
            return
        self._last_discovery = now
        self._finder = asyncio.create_task(self._find(self._discover), name="podman-discovery")

    async def _find(self, discover: Discover) -> None:
        if self._finder_pool is None:
            self._finder_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="podman-discovery"
            )
        loop = asyncio.get_running_loop()
        try:
            url = await loop.run_in_executor(self._finder_pool, discover)
        except Exception as err:
            log.warning("podman socket discovery failed err=%r", str(err))
            return
        if url is None or url == self._api.url or not self._reach.down:
            return
        log.info("podman answers on another socket url=%s", url)
        if self._moved is not None:
            self._moved(url)
        # Probe the new socket now (the loop is in its down-backoff sleep; a ping here
        # shares nothing with it but the verdict, which it settles).
        await self.check()

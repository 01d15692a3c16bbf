"""The resync loop: the level-triggered safety net under the runtime's event stream.

Every ``resync_interval`` one pass asks whether the runtime answers, describes the node the
first time it does, has the runtime relist its containers (``Executor.resync``), removes
orphans, drops the bookkeeping of tasks that are gone, and ends with the image GC
(``reconciler.agent.imagegc``), which keeps every image a kept instance or a desired task
names; a failed GC is logged and never fails the pass. While the runtime is down the loop
retries sooner, with backoff, and ``/readyz`` says why; when the runtime answers again the pass
runs at once (``wake``).

**Orphans only once it is safe.** After a store was created or rebuilt, an unknown container may
be a task the store lost. No orphan is removed until a valid desired set has been applied and a
pass that began after it has adopted what exists.

The usage sampler (``reconciler.observe.usage``) runs beside this loop, on its own
``stats_interval``, and shares its life and its name: a failed sampling pass is logged and
counted as a restart of ``resync``, and never interrupts the relist or readiness.
"""

from __future__ import annotations

import asyncio
import logging
import time

from reconciler.agent.imagegc import ImageCollector
from reconciler.agent.observer import NO_ANSWER, AgentState
from reconciler.agent.pump import SessionPump
from reconciler.core.backoff import Backoff, Retry
from reconciler.core.clock import sleep_or_wake
from reconciler.core.executor import Executor
from reconciler.core.store import ADOPT_PENDING
from reconciler.core.supervisor import describe_error
from reconciler.observe.metrics import Metrics
from reconciler.observe.usage import UsageMonitor

__all__ = ["Resync"]

log = logging.getLogger(__name__)


class Resync:
    """The supervised ``resync`` loop and the usage sampler beside it."""

    def __init__(
        self,
        *,
        state: AgentState,
        executor: Executor,
        pump: SessionPump,
        usage: UsageMonitor,
        images: ImageCollector,
        metrics: Metrics,
        interval: float,
    ) -> None:
        self._state = state
        self._executor = executor
        self._pump = pump
        self._usage = usage
        self._images = images
        self._metrics = metrics
        self._interval = interval
        self.wake = asyncio.Event()  # the runtime came back: resync without waiting
        # See the module docstring: after a store was created or rebuilt, orphans wait.
        self._orphans_allowed = not state.store.get_meta(ADOPT_PENDING)

    async def run(self) -> None:
        """The loop, with the sampler beside it when sampling is on."""
        sampler = None
        if self._usage.interval > 0:
            sampler = asyncio.create_task(
                self._usage.run(self._executor, self._current_ids), name="usage"
            )
        try:
            await self._loop()
        finally:
            if sampler is not None:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)

    def _current_ids(self) -> set[str]:
        return {v.id for v in self._state.snapshot().tasks if v.current}

    async def _loop(self) -> None:
        retry = Retry(Backoff(initial=0.5, cap=self._interval), clock=self._state.clock)
        while True:
            if await self.once():
                retry.reset()
                self.wake.clear()
                delay = self._interval
            else:
                delay = retry.next_delay()
            await sleep_or_wake(self._state.clock, delay, self.wake)

    async def once(self) -> bool:
        """One pass. Returns whether the runtime answered it through."""
        state = self._state
        began = time.perf_counter()
        applied_before = self._pump.applied
        try:
            if not await self._executor.ping():
                state.set_runtime_up(False, NO_ANSWER)
                return False
            if state.node is None:
                state.node = node = await self._executor.describe()
                log.info(
                    "node described hostname=%s runtime=%s/%s",
                    node.hostname,
                    node.runtime_name,
                    node.runtime_version,
                )
            state.set_runtime_up(True, "ready")
            await self._executor.resync()
            known = state.store.task_ids()
            await self._remove_orphans(known, applied_before)
            self._pump.forget_unknown(known)
            if state.manager is not None:
                self._usage.forget(state.manager.restarts().keys())
            await self._collect_images()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("resync failed err=%s", describe_error(err))
            state.set_runtime_up(False, f"container runtime error: {describe_error(err)}")
            return False
        finally:
            state.changed()
        self._metrics.observe_reconcile(time.perf_counter() - began)
        return True

    async def _remove_orphans(self, known: set[str], applied_before: int) -> None:
        if self._orphans_allowed:
            removed = await self._executor.remove_orphans(known)
            if removed:
                log.info("orphans removed n=%d", len(removed))
        elif applied_before > 0:
            self._orphans_allowed = True  # the next pass may remove what is left over

    async def _collect_images(self) -> None:
        """The image GC's pass, keeping every image a kept instance or a desired task names."""
        manager = self._state.manager
        if manager is None:
            return
        needed = {v.image for v in manager.views() if v.image}
        needed.update(t.spec.image for t in self._pump.desired.values())
        try:
            await self._images.run(self._executor, needed)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("image GC failed err=%s", describe_error(err))

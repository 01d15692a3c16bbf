"""The status reporter: delivers task statuses upstream, latest first, until each one lands.

Modelled on SwarmKit's ``agent/reporter.go``. The worker broadcasts every status change to the
reporter (a cheap, synchronous ``update``); a single delivery loop sends them to the manager
session. Between the two sits a map of the latest pending status per task, so a burst of
changes for one task is delivered as its newest status only.

Rules:
* a status older than one already pending or delivered (a lower state) is stale and dropped;
* a status equal to the last one delivered for that task is never delivered again;
* a failed delivery is retried with capped exponential backoff on the injected clock (a
  ``Retry``: the wait grows with each pass that failed, and starts again from the shortest
  after a pass that delivered everything), unless a newer status for that task arrived
  meanwhile, which then goes instead.

``pending`` is what ``reconciler_status_reports_pending`` exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Collection

from reconciler.core.backoff import Backoff, Retry
from reconciler.core.clock import Clock
from reconciler.core.model import TaskStatus

log = logging.getLogger(__name__)

Deliver = Callable[[str, TaskStatus], Awaitable[None]]


class StatusReporter:
    def __init__(
        self,
        deliver: Deliver,
        *,
        clock: Clock,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        on_pending: Callable[[int], None] | None = None,
    ) -> None:
        self._deliver = deliver
        self._on_pending = on_pending  # told the pending count after each delivery pass
        self._clock = clock
        self._backoff = backoff or Backoff(initial=0.5, cap=30.0)
        self._rng = rng or random.Random()
        self._pending: dict[str, TaskStatus] = {}
        self._delivered: dict[str, TaskStatus] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def update(self, task_id: str, status: TaskStatus) -> None:
        """Queue a status for delivery (a worker listener). Never blocks."""
        last = self._pending.get(task_id) or self._delivered.get(task_id)
        if last is not None and status.state < last.state:
            return  # stale: a later state is already pending or delivered
        if self._delivered.get(task_id) == status:
            return  # delivered already
        self._pending[task_id] = status
        self._wake.set()

    def retain(self, known: Collection[str]) -> None:
        """Forget tasks that are no longer known (deleted), so memory stays bounded."""
        for table in (self._pending, self._delivered):
            for task_id in [t for t in table if t not in known]:
                del table[task_id]

    def start(self) -> None:
        """Run the delivery loop in a task of its own (``close()`` stops it)."""
        if self._loop is None:
            self._loop = asyncio.create_task(self.run(), name="status-reporter")

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    async def run(self) -> None:
        """The delivery loop; runs until cancelled. May be started again after it failed."""
        retry = Retry(self._backoff, clock=self._clock, rng=self._rng)
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            failed = False
            for task_id, status in list(self._pending.items()):
                try:
                    await self._deliver(task_id, status)
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    self.failures += 1
                    failed = True
                    log.debug("status delivery failed task=%s err=%r", task_id, str(err))
                    continue
                self._delivered[task_id] = status
                if self._pending.get(task_id) is status:
                    del self._pending[task_id]
            if self._on_pending is not None:
                self._on_pending(len(self._pending))
            if failed:
                await retry.wait()
            else:
                retry.reset()

"""The task manager: drives ``lifecycle.do()`` for one task until there is nothing left to do.

One ``TaskManager`` per task, as in SwarmKit's ``agent/task.go``. It owns one asyncio task that
loops: run a step, record the status it returns, and either step again (progress), wait for an
update (``TaskNoop``) or back off and retry (``TaskRetry``). It never decides a state itself;
``reconciler.lifecycle`` does.

Updates:
* an update whose task is equal apart from its status is ignored, and so is one that lowers the
  desired state (states and desired states only move forward);
* otherwise the step in flight is cancelled (a pending ``wait`` included) and the next step runs
  with the new task; the manager's own status stays canonical, the incoming status is dropped;
* the controller's ``update`` is called once before the first step after an accepted update.

Retries back off exponentially with jitter, capped, on the injected clock (SwarmKit retries
every second, which hammers a runtime that is down). A step that makes progress resets it.

``close()`` stops the loop. It is idempotent and never stops or removes the container: whether
a container goes away is the worker's decision (``remove()``), not the manager's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from reconciler.clock import Clock
from reconciler.errors import TaskNoop, TaskRetry
from reconciler.executor import Controller
from reconciler.lifecycle import do
from reconciler.model import Task, TaskStatus

log = logging.getLogger(__name__)

StatusSink = Callable[[str, TaskStatus], None]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt n waits about initial * factor**n."""

    initial: float = 0.25
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.2  # +/- this fraction

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.cap, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 + self.jitter * (2.0 * rng.random() - 1.0))


class TaskManager:
    """Runs one task's steps; see the module docstring for the rules."""

    def __init__(
        self,
        task: Task,
        ctlr: Controller,
        *,
        report: StatusSink,
        clock: Clock,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._task = task
        self.ctlr = ctlr
        self._report = report
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._updated = False
        self._wake = asyncio.Event()
        self._op: asyncio.Task[TaskStatus] | None = None
        self._loop: asyncio.Task[None] | None = None
        self._closed = False
        self.attempts = 0  # consecutive retries, for observability and tests

    @property
    def task(self) -> Task:
        """The task as the manager currently sees it, status included."""
        return self._task

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        """Start the loop. Must be called from within the event loop."""
        if self._loop is None and not self._closed:
            self._loop = asyncio.create_task(self._run(), name=f"task-{self._task.id}")

    def update(self, task: Task) -> bool:
        """Offer an updated task. Returns whether it was accepted (see module docstring)."""
        if self._closed or task.id != self._task.id:
            return False
        if task.equal_stable(self._task):
            return False
        if task.desired_state < self._task.desired_state:
            log.debug(
                "ignoring update lowering desired state task=%s desired=%s",
                task.id,
                task.desired_state.label,
            )
            return False
        self._task = replace(task, status=self._task.status)
        self._updated = True
        if self._op is not None and not self._op.done():
            self._op.cancel()
        self._wake.set()
        return True

    async def close(self) -> None:
        """Stop driving the task. Idempotent; never touches the container."""
        self._closed = True
        for t in (self._op, self._loop):
            if t is not None and not t.done():
                t.cancel()
        for t in (self._op, self._loop):
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    def _set_status(self, status: TaskStatus) -> None:
        if status is self._task.status or status == self._task.status:
            return
        self._task = replace(self._task, status=status)
        self._report(self._task.id, status)

    async def _wait_for_update(self, delay: float | None) -> None:
        """Wait until an update arrives, or ``delay`` seconds of clock time pass."""
        if self._wake.is_set():
            return
        waiter = asyncio.ensure_future(self._wake.wait())
        if delay is None:
            await waiter
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(delay))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (waiter, sleeper):
                if not f.done():
                    f.cancel()
            await asyncio.gather(waiter, sleeper, return_exceptions=True)

    async def _run(self) -> None:
        while not self._closed:
            self._wake.clear()
            task = self._task
            if self._updated:
                self._updated = False
                try:
                    await self.ctlr.update(task)
                except Exception as err:
                    log.warning("updating controller failed task=%s err=%r", task.id, str(err))
                    self._set_status(
                        replace(
                            task.status,
                            message="update in place failed",
                            err=str(err),
                            timestamp=self._clock.time(),
                        )
                    )
            op = asyncio.create_task(do(task, self.ctlr, now=self._clock.time))
            self._op = op
            await asyncio.wait({op})
            self._op = None
            if op.cancelled():
                continue  # an update cancelled the step; run again with the new task
            exc = op.exception()
            if exc is None:
                self.attempts = 0
                self._set_status(op.result())
            elif isinstance(exc, TaskNoop):
                self.attempts = 0
                if not self._updated:
                    await self._wait_for_update(None)
            elif isinstance(exc, TaskRetry):
                assert isinstance(exc.status, TaskStatus)
                self._set_status(exc.status)
                delay = self._backoff.delay(self.attempts, self._rng)
                self.attempts += 1
                if not self._updated:
                    await self._wait_for_update(delay)
            else:
                # do() turns controller errors into statuses; anything else is a bug in a step.
                log.error("task step crashed task=%s err=%r", task.id, exc, exc_info=exc)
                delay = self._backoff.delay(self.attempts, self._rng)
                self.attempts += 1
                await self._wait_for_update(delay)

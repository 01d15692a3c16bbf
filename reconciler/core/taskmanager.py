"""The task manager: drives ``lifecycle.do()`` for one task until there is nothing left to do.

One ``TaskManager`` per task, as in SwarmKit's ``agent/task.go``. It owns one asyncio task that
loops: run a step, record the status it returns, and either step again (progress), wait for an
update (``TaskNoop``) or back off and retry (``TaskRetry``). It never decides a state itself;
``reconciler.core.lifecycle`` does.

Updates:
* an update whose task is equal apart from its status is ignored, and so is one that lowers the
  desired state (states and desired states only move forward);
* otherwise the step in flight is cancelled (a pending ``wait`` included) and the next step runs
  with the new task; the manager's own status stays canonical, the incoming status is dropped;
* the controller's ``update`` is called once before the first step after an accepted update.

Retries back off exponentially with jitter, capped, on the injected clock (SwarmKit retries
every second, which hammers a runtime that is down). A step that makes progress resets it, and so
does ``retry_now()``: when the runtime answers again after an outage, the wait a manager owes was
for the outage, so it retries at once from the shortest backoff.

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

from reconciler.core.backoff import Backoff
from reconciler.core.clock import Clock
from reconciler.core.errors import TaskNoop, TaskRetry
from reconciler.core.executor import Controller
from reconciler.core.lifecycle import do
from reconciler.core.model import Task, TaskStatus

log = logging.getLogger(__name__)

UPDATE_FAILED = "update in place failed"
"""The status message recorded, with ``TaskStatus.update_failed`` set, when the controller
could not apply an update in place (the local manager then replaces the instance)."""

StatusSink = Callable[[str, TaskStatus], None]

DEFAULT_BACKOFF = Backoff()
"""The retry schedule of a manager given none (one frozen value shared by all of them)."""


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
        self._backoff = backoff or DEFAULT_BACKOFF
        self._rng = rng or random.Random()
        self._updated = False
        # A wake-up is a flag plus, only while the loop waits, one future: no Event (and its
        # waiter deque) is held per task.
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self._stepping = False
        self._backing_off = False
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
        if self._stepping and self._loop is not None:
            self._loop.cancel()  # the loop un-cancels itself and steps with the new task
        self._wake()
        return True

    def retry_now(self) -> None:
        """Forget the failures so far and, if waiting to retry, retry at once.

        For when the runtime answers again after an outage. A manager that is stepping or
        waiting for an update is left alone, except that its next failure backs off from the
        start. Idempotent.
        """
        self.attempts = 0
        if self._backing_off:
            self._wake()

    async def close(self) -> None:
        """Stop driving the task. Idempotent; never touches the container."""
        self._closed = True
        loop = self._loop
        if loop is not None and not loop.done():
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    def _set_status(self, status: TaskStatus) -> None:
        if status is self._task.status or status == self._task.status:
            return
        self._task = self._task.with_status(status)
        self._report(self._task.id, status)

    def _wake(self) -> None:
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_for_update(self, delay: float | None) -> None:
        """Wait until an update arrives, or ``delay`` seconds of clock time pass (a backoff,
        which ``retry_now`` also ends)."""
        if self._woken:
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            if delay is None:
                await waiter
                return
            sleeper = asyncio.ensure_future(self._clock.sleep(delay))
            self._backing_off = True
            try:
                await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._backing_off = False
                sleeper.cancel()
                await asyncio.gather(sleeper, return_exceptions=True)
        finally:
            self._waiter = None
            waiter.cancel()

    async def _run(self) -> None:
        # The step runs inline in this task: an accepted update cancels this task while it is
        # stepping, and the loop un-cancels itself and goes round with the new task. Only
        # close() ends the loop; it then returns rather than re-raising, so no cancelled
        # task keeps its exception and every frame of its traceback alive until awaited.
        while not self._closed:
            try:
                self._woken = False
                self._stepping = True
                try:
                    pause = await self._step(self._task)
                finally:
                    self._stepping = False
                if pause is not None and not self._updated:
                    await self._wait_for_update(pause.delay)
            except asyncio.CancelledError:
                if self._closed:
                    return
                current = asyncio.current_task()
                assert current is not None
                while current.cancelling():
                    current.uncancel()

    async def _step(self, task: Task) -> _Pause | None:
        """Apply a pending update, then one ``do()`` step. Returns how long to pause after
        it, or None to step again at once."""
        if self._updated:
            self._updated = False
            await self._update_controller(task)
        try:
            status = await do(task, self.ctlr, now=self._clock.time)
        except TaskNoop:
            self.attempts = 0
            return _Pause(None)
        except TaskRetry as retry:
            self._set_status(retry.status)
            return _Pause(self._next_delay())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # do() turns controller errors into statuses; anything else is a bug in a step.
            log.error("task step crashed task=%s err=%r", task.id, exc, exc_info=exc)
            return _Pause(self._next_delay())
        self.attempts = 0
        self._set_status(status)
        return None

    async def _update_controller(self, task: Task) -> None:
        try:
            await self.ctlr.update(task)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("updating controller failed task=%s err=%r", task.id, str(err))
            self._set_status(
                replace(
                    task.status,
                    message=UPDATE_FAILED,
                    err=str(err),
                    timestamp=self._clock.time(),
                    update_failed=True,
                )
            )

    def _next_delay(self) -> float:
        delay = self._backoff.delay(self.attempts, self._rng)
        self.attempts += 1
        return delay


@dataclass(frozen=True, slots=True)
class _Pause:
    """How long the loop waits after a step: ``delay`` seconds, or for an update (None)."""

    delay: float | None

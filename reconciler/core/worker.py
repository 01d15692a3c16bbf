"""The worker: turns assignments into task managers, and statuses into store writes and events.

It follows SwarmKit's ``agent/worker.go``:

* ``init()`` walks the store, deletes tasks that are no longer assigned, and starts a task
  manager for every other task with its stored status, so a running container is re-adopted
  and waited on, never prepared or started again.
* ``assign()`` applies a full or incremental assignment. Every updated task is stored and marked
  assigned in one synced ``WriteBatch`` (which, for a full assignment, also deletes every task
  that is not listed). A task that already has a manager is updated; a new one takes its stored
  status if the store has one (the stored status beats the incoming one), otherwise the incoming
  status, and is started. Removed tasks lose their record, their manager is closed, and their
  container removed.
* Every status change is written to the store (batched per event-loop turn, see
  ``update_task_status``) and broadcast to every listener. A status for a task that is no
  longer stored is dropped, never broadcast. A new listener is first given
  every stored status, in id order.

Resolving a controller happens once, when a task's manager is created (``lifecycle.resolve``).
If it fails, the task is stored as rejected (or failed) and gets no manager.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from reconciler.core.backoff import Backoff
from reconciler.core.clock import Clock
from reconciler.core.errors import StoreError
from reconciler.core.executor import Executor
from reconciler.core.lifecycle import Admit, resolve
from reconciler.core.model import Assignment, AssignmentAction, Task, TaskStatus
from reconciler.core.store import Store
from reconciler.core.taskmanager import TaskManager

log = logging.getLogger(__name__)

StatusListener = Callable[[str, TaskStatus], None]


class Worker:
    """Owns the task managers of this node and the store's task records."""

    def __init__(
        self,
        store: Store,
        executor: Executor,
        *,
        clock: Clock,
        backoff: Backoff | None = None,
        admit: Admit | None = None,
    ) -> None:
        self.store = store
        self.admit = admit  # the node's policy for fleet tasks; None: nothing checked
        self.executor = executor
        self.clock = clock
        self.backoff = backoff
        self.managers: dict[str, TaskManager] = {}
        self._listeners: list[StatusListener] = []
        self._closers: set[asyncio.Task[None]] = set()
        self._rng = random.Random()  # one for all task managers' backoff jitter
        self._unflushed: dict[str, TaskStatus] = {}
        self._flush_scheduled = False
        self._report = self.update_task_status  # one bound method shared by every manager

    # ----------------------------------------------------------------------------- init

    async def init(self) -> None:
        """Delete unassigned tasks from the store and start every assigned one."""
        unassigned = [t for t in self.store.task_ids() if not self.store.is_assigned(t)]
        if unassigned:
            self.store.apply_assignment((), unassigned)
        for task in self.store.walk_tasks():
            self._start_task(task)

    # --------------------------------------------------------------------------- assign

    async def assign(self, assignment: Assignment) -> None:
        """Apply a full or incremental assignment (see the module docstring)."""
        updated: dict[str, Task] = {}
        removed: dict[str, None] = {}
        for change in assignment.changes:
            if change.action is AssignmentAction.UPDATE:
                updated[change.task.id] = change.task
                removed.pop(change.task.id, None)
            else:
                removed[change.task.id] = None
                updated.pop(change.task.id, None)
        if assignment.full:
            removed = dict.fromkeys(t for t in self.store.task_ids() if t not in updated)
        else:
            removed = {t: None for t in removed if t in self.store or t in self.managers}

        # Unknown tasks are stored with their incoming status; known ones keep the stored one.
        for task_id in removed:
            self._unflushed.pop(task_id, None)
        fresh = {t.id: t.status for t in updated.values() if t.id not in self.store}
        self.store.apply_assignment(updated.values(), removed, statuses=fresh.items())

        for task in updated.values():
            mgr = self.managers.get(task.id)
            if mgr is not None:
                mgr.update(task)
                continue
            if task.id in fresh:  # its stored status is the one just written: no read back
                self._start_task(task)
                continue
            stored = self._stored_status(task.id)
            self._start_task(task if stored is None else task.with_status(stored))

        for task_id in removed:
            mgr = self.managers.pop(task_id, None)
            if mgr is not None:
                closer = asyncio.create_task(self._close_manager(mgr))
                self._closers.add(closer)
                closer.add_done_callback(self._closers.discard)

    def _start_task(self, task: Task) -> None:
        if task.id in self.managers:
            return
        ctlr, status = resolve(task, self.executor, now=self.clock.time, admit=self.admit)
        if status != task.status:
            self.update_task_status(task.id, status)
        if ctlr is None:
            log.warning("controller resolution failed task=%s err=%r", task.id, status.err)
            return
        mgr = TaskManager(
            task.with_status(status),
            ctlr,
            report=self._report,
            clock=self.clock,
            backoff=self.backoff,
            rng=self._rng,
        )
        self.managers[task.id] = mgr
        mgr.start()

    async def _close_manager(self, mgr: TaskManager) -> None:
        """A task left the assignments: stop its manager, remove its container."""
        await mgr.close()
        try:
            await mgr.ctlr.remove()
        except Exception as err:  # best effort: the orphan sweep retries it
            log.warning("removing container failed task=%s err=%r", mgr.task.id, str(err))
        try:
            await mgr.ctlr.close()
        except Exception as err:
            log.warning("closing controller failed task=%s err=%r", mgr.task.id, str(err))

    # --------------------------------------------------------------------------- status

    def update_task_status(self, task_id: str, status: TaskStatus) -> None:
        """Store a status, then broadcast it. Dropped if the task is no longer stored.

        The write is queued and made, with every other status of this event-loop turn, in
        one batch before the loop runs anything else: a task whose steps make no runtime
        call (accepted, preparing, starting) changes status several times in one turn, and
        only its latest needs writing. Nothing a listener starts can reach the network
        before the batch is written, so no status leaves the agent before it is stored.
        """
        if task_id not in self.store:
            return
        self._unflushed[task_id] = status
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        for listener in tuple(self._listeners):
            listener(task_id, status)

    def flush(self) -> None:
        """Write the queued statuses now (one unsynced batch).

        If the write fails (a full disk), the statuses stay queued, newer ones winning, for
        the next flush; the store has already told its failure listeners. Never raises.
        """
        self._flush_scheduled = False
        if self._unflushed:
            pending, self._unflushed = self._unflushed, {}
            try:
                self.store.put_statuses(pending.items())
            except StoreError:
                pending.update(self._unflushed)
                self._unflushed = pending

    def _stored_status(self, task_id: str) -> TaskStatus | None:
        return self._unflushed.get(task_id) or self.store.get_status(task_id)

    def listen(self, listener: StatusListener) -> Callable[[], None]:
        """Subscribe to status changes, after a replay of every stored status in id order.

        Returns a function that unsubscribes.
        """
        self._listeners.append(listener)
        self.flush()
        for task_id, status in self.store.walk_statuses():
            listener(task_id, status)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def retry_now(self) -> None:
        """Every task manager waiting to retry retries at once, its backoff reset (the runtime
        answers again after an outage)."""
        for mgr in list(self.managers.values()):
            mgr.retry_now()

    # ------------------------------------------------------------------------- shutdown

    async def wait_closed(self) -> None:
        """Wait for removals in progress to finish."""
        while self._closers:
            await asyncio.gather(*tuple(self._closers), return_exceptions=True)

    async def close(self) -> None:
        """Stop every task manager. Containers keep running."""
        managers = list(self.managers.values())
        self.managers.clear()
        await asyncio.gather(*(m.close() for m in managers))
        await self.wait_closed()
        self.flush()
        for m in managers:
            try:
                await m.ctlr.close()
            except Exception as err:
                log.warning("closing controller failed task=%s err=%r", m.task.id, str(err))

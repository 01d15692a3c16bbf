"""The session pump: desired state in from the session, statuses out to it.

**In.** Each session message changes what the node should run:

* ``DesiredTasks``: a full set replaces the desired set; an increment removes and adds names on
  top of the last one. A task whose new value was rejected keeps its last valid spec, and its
  problems are logged and counted (once: not again when the session says it read the same
  value again). The set goes to the local manager, which stores it before
  anything runs. When the store cannot take it, the set is kept and applied by the store watch
  once writes work again (``apply_unstored``).
* ``DesiredInvalid``: the whole source was rejected. Nothing changes but the validity flag, the
  error count and the problem lines the status page shows: the last valid set keeps running.
* ``ManagerMessage``: the node's availability; ``pause`` holds the local manager's new starts.

**Out.** Every stored status goes to the ``StatusReporter`` (which delivers the latest per task,
with retry), and the start latency of each instance that reached running is observed. Only the
current instance of a name is reported upstream, under its name.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Mapping

from reconciler.agent.observer import AgentState
from reconciler.core.errors import StoreError
from reconciler.core.model import Availability, TaskState, TaskStatus
from reconciler.core.reporter import StatusReporter
from reconciler.core.session import (
    DesiredInvalid,
    DesiredTask,
    DesiredTasks,
    ManagerMessage,
    NamedStatus,
    RejectedTask,
    Session,
)
from reconciler.core.snapshot import bounded_errors
from reconciler.local.manager import LocalManager
from reconciler.observe.metrics import Metrics

__all__ = ["SessionPump"]

log = logging.getLogger(__name__)


class SessionPump:
    """Desired state into the local manager, statuses out to the session; see the module
    docstring."""

    def __init__(
        self,
        *,
        state: AgentState,
        manager: LocalManager,
        reporter: StatusReporter,
        metrics: Metrics,
    ) -> None:
        self._state = state
        self._manager = manager
        self._reporter = reporter
        self._metrics = metrics
        self.desired: dict[str, DesiredTask] = dict(manager.desired)
        self._unstored: dict[str, DesiredTask] | None = None
        self._rejected: set[str] = set()  # names whose last value was rejected
        self._started_at: dict[str, float] = {}
        self.applied = 0  # how many desired sets were applied

    # ------------------------------------------------------------------------------- in

    async def run(self, session: Session) -> None:
        """The supervised ``session`` loop: every message, in order, until the session ends."""
        async for message in session.messages():
            if isinstance(message, DesiredTasks):
                await self._apply_or_keep(self._next_set(message))
            elif isinstance(message, DesiredInvalid):
                self._invalid(message)
            elif isinstance(message, ManagerMessage):
                self._manager.pause(message.availability is Availability.PAUSE)
                log.info("node availability availability=%s", message.availability)
            self._state.changed()

    def _next_set(self, message: DesiredTasks) -> dict[str, DesiredTask]:
        if message.full:
            desired = {t.name: t for t in message.tasks}
            self._rejected.clear()
        else:
            desired = dict(self.desired)
            for name in message.removed:
                desired.pop(name, None)
            desired.update((t.name, t) for t in message.tasks)
            self._rejected.difference_update(message.removed)
            self._rejected.difference_update(t.name for t in message.tasks)
        self._keep_rejected(message.rejected, desired)
        return desired

    def _keep_rejected(
        self, rejected: tuple[RejectedTask, ...], desired: dict[str, DesiredTask]
    ) -> None:
        """A task whose new value was rejected keeps its last valid spec; log and count it."""
        for task in rejected:
            self._rejected.add(task.name)
            last = self.desired.get(task.name)
            if last is not None:
                desired[task.name] = last
            for line in () if task.reported else task.problems:
                log.error("desired state rejected: %s", line)
        if rejected:
            if not all(t.reported for t in rejected):
                self._metrics.desired_state_error()
            state = self._state
            state.desired_errors = bounded_errors(p for t in rejected for p in t.problems)
            state.desired_errors_at = state.clock.time()

    def _invalid(self, message: DesiredInvalid) -> None:
        state = self._state
        state.desired_read = True
        state.desired_valid = False
        self._metrics.desired_state_error()
        state.desired_errors = bounded_errors(message.errors)
        state.desired_errors_at = state.clock.time()
        for line in message.errors:
            log.error("desired state rejected: %s", line)
        log.warning("keeping the last valid desired state running")

    async def _apply_or_keep(self, desired: dict[str, DesiredTask]) -> None:
        """Apply a desired set; if the store cannot take it, keep it for the store watch."""
        try:
            await self._apply(desired)
        except StoreError:
            if self._state.store.failure is None:
                raise
            self.desired = dict(desired)
            self._unstored = dict(desired)
            log.warning("desired state not stored yet; will apply it once the store works")

    async def apply_unstored(self) -> None:
        """Apply the desired set the store could not take, now that it can (the store watch)."""
        if self._unstored is None:
            return
        desired, self._unstored = self._unstored, None
        # the store failed again: its watch starts over and calls this once more
        with contextlib.suppress(StoreError):
            await self._apply(desired)

    async def _apply(self, desired: Mapping[str, DesiredTask]) -> None:
        self.desired = dict(desired)
        await self._manager.set_desired(self.desired)
        state = self._state
        state.desired_read = True
        state.desired_valid = not self._rejected
        state.desired_applied_at = state.clock.time()
        self.applied += 1
        if not self._rejected:
            state.desired_errors, state.desired_errors_at = (), None
        log.info("desired state applied tasks=%d", len(desired))

    # ------------------------------------------------------------------------------ out

    def on_status(self, task_id: str, status: TaskStatus) -> None:
        """Every stored status change: start latency, the reporter and the snapshot."""
        state = status.state
        clock = self._state.clock
        if state < TaskState.RUNNING:
            self._started_at.setdefault(task_id, clock.monotonic())
        else:
            began = self._started_at.pop(task_id, None)
            if began is not None and state == TaskState.RUNNING:
                self._metrics.observe_task_start(clock.monotonic() - began)
        self._reporter.update(task_id, status)
        self._state.changed()

    def forget_unknown(self, known: Collection[str]) -> None:
        """Drop per-task bookkeeping of deleted tasks, so memory stays bounded."""
        self._reporter.retain(known)
        for task_id in [t for t in self._started_at if t not in known]:
            del self._started_at[task_id]

    async def deliver(self, task_id: str, status: TaskStatus) -> None:
        """The reporter's delivery: the current instance of a name, under its name."""
        session = self._state.session
        if session is None:
            return
        view = self._state.view(task_id)
        if view is None or not view.current:
            return  # only the current instance of a name is reported upstream
        named = NamedStatus(
            name=view.name,
            id=task_id,
            state=status.state,
            message=status.message,
            err=status.err,
            exit_code=status.exit_code,
            container_id=status.container_id,
            updated_at=status.timestamp,
            restarts=view.restarts,
        )
        await session.report({view.name: named})

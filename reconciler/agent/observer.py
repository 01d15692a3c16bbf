"""What the agent knows about itself, the one snapshot built from it, and the runtime's reports.

Every part of the agent (start-up, the session pump, the resync loop, the store watch) writes
what it learns into one ``AgentState``: whether the runtime answers and why not, whether
start-up is done, what became of the desired state. After any change, ``changed()`` schedules
one rebuild of the immutable ``Snapshot`` for the current event-loop turn, however many changes
the turn made; ``/metrics``, ``/readyz``, ``/v1/*``, the status page and the heartbeat read the
current snapshot without touching podman or the store. Readiness is the snapshot's own rule
(``Snapshot.readiness``).

``RuntimeEvents`` is the agent's ``RuntimeObserver``: what a runtime reports (failed calls,
corrected drift, pulls, OOM kills, whether it answers) goes to the metrics, the usage counters
and the state. A runtime that answers again after an outage wakes whatever waited for it
(``on_runtime_back``): the worker retries at once and the resync runs without waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from reconciler.core.clock import Clock
from reconciler.core.executor import DriftKind, PullResult, RuntimeOp
from reconciler.core.model import NodeDescription
from reconciler.core.policy import Policy
from reconciler.core.reporter import StatusReporter
from reconciler.core.session import Session
from reconciler.core.snapshot import Changes, Snapshot, TaskView
from reconciler.core.store import Store
from reconciler.core.supervisor import Supervisor
from reconciler.local.manager import LocalManager
from reconciler.observe.metrics import Metrics
from reconciler.observe.usage import UsageMonitor

__all__ = ["AgentState", "RuntimeEvents"]

log = logging.getLogger(__name__)

NOT_CONTACTED = "container runtime not contacted yet"
NO_ANSWER = "container runtime does not answer"
INIT_NOT_DONE = "worker init is not done"


class AgentState:
    """The agent's own facts and the snapshot made of them; see the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        labels: tuple[tuple[str, str], ...],
        store: Store,
        clock: Clock,
        usage: UsageMonitor | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.node_id = node_id
        self.policy = policy  # for fleet tasks, shown with the node (None: none applies)
        self.labels = labels
        self.store = store
        self.clock = clock
        self.usage = usage
        self.started_at = clock.time()
        self.changes = Changes()  # bumped after each new snapshot; /v1/events streams wait on it
        self.node: NodeDescription | None = None
        self.runtime_up = False
        self.runtime_reason = NOT_CONTACTED
        self.init_done = False
        self.starting_reason = INIT_NOT_DONE
        self.desired_read = False
        self.desired_valid = False
        self.desired_applied_at: float | None = None
        self.desired_errors: tuple[str, ...] = ()
        self.desired_errors_at: float | None = None
        # set by the agent as its parts come to exist
        self.supervisor: Supervisor | None = None
        self.manager: LocalManager | None = None
        self.reporter: StatusReporter | None = None
        self.session: Session | None = None
        self.on_runtime_back: list[Callable[[], None]] = []
        self._snapshot = Snapshot(
            node_id=node_id, labels=labels, store_open=True, started_at=self.started_at
        )
        self._views_by_id: dict[str, TaskView] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the loop the agent runs on: runtime threads report through it."""
        self._loop = loop

    # ------------------------------------------------------------------------- snapshot

    def snapshot(self) -> Snapshot:
        """The current immutable snapshot (what /metrics and the HTTP API read)."""
        return self._snapshot

    def view(self, task_id: str) -> TaskView | None:
        """The task's view in the newest state, rebuilding first if a change is pending."""
        view = self._views_by_id.get(task_id)
        if view is None:
            self.rebuild()
            view = self._views_by_id.get(task_id)
        return view

    def changed(self) -> None:
        """Schedule one snapshot rebuild for this event-loop turn."""
        if self._scheduled:
            return
        loop = self._loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # not running yet: the agent rebuilds when it starts
        self._scheduled = True
        loop.call_soon(self.rebuild)

    def rebuild(self) -> None:
        self._scheduled = False
        manager = self.manager
        views = tuple(manager.views()) if manager is not None else ()
        restarts = tuple(sorted(manager.restarts().items())) if manager is not None else ()
        rollbacks = tuple(sorted(manager.rollbacks().items())) if manager is not None else ()
        usage = self.usage
        self._snapshot = Snapshot(
            node_id=self.node_id,
            node=(
                self.node
                if self.node is None or self.policy is None
                else replace(self.node, policy=self.policy)
            ),
            labels=self.labels,
            store_open=not self.store.closed,
            store_failure=self.store.failure,
            init_done=self.init_done,
            starting_reason=self.starting_reason,
            runtime_up=self.runtime_up,
            runtime_reason=self.runtime_reason,
            loops_down=tuple(sorted(self.supervisor.down.items())) if self.supervisor else (),
            desired_read=self.desired_read,
            desired_valid=self.desired_valid,
            desired_applied_at=self.desired_applied_at,
            desired_errors=self.desired_errors,
            desired_errors_at=self.desired_errors_at,
            started_at=self.started_at,
            session_connected=self.session.connected if self.session else False,
            reports_pending=self.reporter.pending if self.reporter else 0,
            tasks=views,
            restarts=restarts,
            rollbacks=rollbacks,
            oom_kills=usage.oom_kills(name for name, _ in restarts) if usage else (),
            conditions=usage.conditions if usage else (),
        )
        self._views_by_id = {v.id: v for v in views}
        self.changes.bump()

    # -------------------------------------------------------------------------- runtime

    def set_runtime_up(self, up: bool, reason: str) -> None:
        """Record whether the runtime answers (on the loop). Coming back wakes its waiters."""
        if up == self.runtime_up and (up or reason == self.runtime_reason):
            return
        if up:
            log.info("runtime up")
        else:
            log.warning("runtime down reason=%r", reason)
        came_back = up and not self.runtime_up
        self.runtime_up = up
        self.runtime_reason = reason
        if came_back:
            for wake in self.on_runtime_back:
                wake()  # what was due during the outage goes now
        self.changed()

    def report_runtime_up(self, up: bool) -> None:
        """Whether the runtime answers, reported from any thread."""
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(self.set_runtime_up, up, "ready" if up else NO_ANSWER)


class RuntimeEvents:
    """The agent's ``RuntimeObserver``: reports into the metrics, the usage and the state."""

    def __init__(self, state: AgentState, metrics: Metrics, usage: UsageMonitor) -> None:
        self._state = state
        self._metrics = metrics
        self._usage = usage

    def runtime_error(self, op: RuntimeOp) -> None:
        self._metrics.runtime_error(op)

    def drift_corrected(self, kind: DriftKind) -> None:
        self._metrics.drift_corrected(kind)

    def image_pulled(self, result: PullResult) -> None:
        self._metrics.image_pulled(result)

    def oom_killed(self, name: str, task_id: str) -> None:
        """Called by the runtime on the event loop: counted and stored per task name."""
        self._usage.oom_killed(name, task_id)

    def runtime_up(self, up: bool) -> None:
        """Called by the runtime, possibly from one of its threads."""
        self._state.report_runtime_up(up)

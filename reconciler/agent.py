"""The agent: wires the session, local manager, worker, runtime, metrics and HTTP together.

This is the one place that knows how the parts fit; each part stays ignorant of the others.
Data flows one way round a loop:

    session ──DesiredTasks──▶ local manager ──Assignment──▶ worker ──▶ task managers ──▶ runtime
       ▲                                                      │
       └──── reporter ◀── statuses (store first, then listeners) ┘──▶ local manager, snapshot

Around that loop the agent runs:

* the resync loop: every ``resync_interval`` it asks the runtime to relist its containers (the
  level-triggered safety net under podman's event stream) and removes orphans; while the
  runtime is down it retries sooner, with backoff, and ``/readyz`` says why;
* the snapshot: after any change it rebuilds one immutable ``Snapshot`` (coalesced to once per
  event-loop turn), which ``/metrics``, ``/readyz`` and ``/v1/*`` read without touching podman
  or RocksDB;
* the host-reboot check: if the boot id changed since the last start, every instance that was
  running ended with the host; its stored status becomes ``failed``, "host rebooted", before the
  worker starts, and the restart policy brings it back.

Bad input never reaches the worker: an invalid desired set only flips
``reconciler_desired_state_valid`` to 0 and the last valid set keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler.backoff import Backoff
from reconciler.clock import Clock
from reconciler.desired.manager import LocalManager
from reconciler.executor import Executor
from reconciler.metrics import Metrics
from reconciler.model import NodeDescription, TaskState, TaskStatus
from reconciler.reporter import StatusReporter
from reconciler.session import (
    DesiredInvalid,
    DesiredTask,
    DesiredTasks,
    ManagerMessage,
    NamedStatus,
    Session,
)
from reconciler.snapshot import Changes, Snapshot, TaskView, bounded_errors
from reconciler.store import Store
from reconciler.worker import Worker

log = logging.getLogger(__name__)

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
HOST_REBOOTED = "host rebooted"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node_id: str
    resync_interval: float = 30.0
    labels: tuple[tuple[str, str], ...] = ()
    boot_id: str | None = None  # None: read it from the kernel


def read_boot_id() -> str:
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return ""


def mark_host_reboot(store: Store, boot_id: str, *, now: float) -> list[str]:
    """If the boot id changed since the last start, fail every instance that was running.

    Returns the ids marked failed. Runs before the worker starts, on the store alone.
    """
    previous = store.get_meta("boot_id")
    marked: list[str] = []
    if previous is not None and boot_id and previous != boot_id:
        for task_id, status in list(store.walk_statuses()):
            if TaskState.STARTING <= status.state <= TaskState.RUNNING:
                failed = replace(
                    status,
                    state=TaskState.FAILED,
                    message=HOST_REBOOTED,
                    err=HOST_REBOOTED,
                    pid=None,
                    timestamp=now,
                )
                store.put_status(task_id, failed)
                marked.append(task_id)
    if boot_id and previous != boot_id:
        store.put_meta("boot_id", boot_id)
    return marked


class Agent:
    """One node's agent. ``run()`` until the stop event is set; containers keep running."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        store: Store,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.metrics = metrics or Metrics(snapshot=self.snapshot)
        self._up_since = clock.time()
        self._snapshot = Snapshot(
            node_id=config.node_id,
            labels=config.labels,
            store_open=True,
            started_at=self._up_since,
        )
        self.changes = Changes()  # bumped after each new snapshot; /v1/events streams wait on it
        self._rebuild_scheduled = False
        self._node: NodeDescription | None = None
        self._runtime_up = False
        self._runtime_reason = "container runtime not contacted yet"
        self._init_done = False
        self._desired_read = False
        self._desired_valid = False
        self._desired_applied_at: float | None = None
        self._desired_errors: tuple[str, ...] = ()
        self._desired_errors_at: float | None = None
        self._loops_alive = True
        self._availability = "active"
        self._desired: dict[str, DesiredTask] = {}
        self._started_at: dict[str, float] = {}
        self._views_by_id: dict[str, TaskView] = {}
        self.worker: Worker | None = None
        self.manager: LocalManager | None = None
        self.reporter: StatusReporter | None = None
        self._session: Session | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------------- snapshot

    def snapshot(self) -> Snapshot:
        """The current immutable snapshot (what /metrics and the HTTP API read)."""
        return self._snapshot

    def _changed(self) -> None:
        """Schedule one snapshot rebuild for this event-loop turn."""
        if self._rebuild_scheduled:
            return
        self._rebuild_scheduled = True
        loop = self._loop or asyncio.get_running_loop()
        loop.call_soon(self._rebuild)

    def _rebuild(self) -> None:
        self._rebuild_scheduled = False
        views = tuple(self.manager.views()) if self.manager is not None else ()
        restarts = tuple(sorted(self.manager.restarts().items())) if self.manager else ()
        ready, reason = self._readiness()
        self._snapshot = Snapshot(
            node_id=self.config.node_id,
            node=self._node,
            labels=self.config.labels,
            ready=ready,
            ready_reason=reason,
            store_open=True,
            init_done=self._init_done,
            runtime_up=self._runtime_up,
            loops_alive=self._loops_alive,
            desired_read=self._desired_read,
            desired_valid=self._desired_valid,
            desired_applied_at=self._desired_applied_at,
            desired_errors=self._desired_errors,
            desired_errors_at=self._desired_errors_at,
            started_at=self._up_since,
            session_connected=self._session.connected if self._session else False,
            reports_pending=self.reporter.pending if self.reporter else 0,
            tasks=views,
            restarts=restarts,
        )
        self._views_by_id = {v.id: v for v in views}
        self.changes.bump()

    def _readiness(self) -> tuple[bool, str]:
        if not self._loops_alive:
            return False, "agent loops are not alive"
        if not self._init_done:
            return False, "worker init is not done"
        if not self._runtime_up:
            return False, self._runtime_reason
        if self._node is None:
            return False, "node description not read from the runtime yet"
        if not self._desired_read:
            return False, "desired state has not been read yet"
        return True, "ready"

    # ------------------------------------------------------------- runtime observations

    def runtime_error(self, op: str) -> None:
        self.metrics.runtime_error(op)

    def drift_corrected(self, kind: str) -> None:
        self.metrics.drift_corrected(kind)

    def runtime_up(self, up: bool) -> None:
        """Called by the runtime, possibly from one of its threads."""
        loop = self._loop
        if loop is None:
            return
        reason = "ready" if up else "container runtime does not answer"
        loop.call_soon_threadsafe(self._set_runtime_up, up, reason)

    def _set_runtime_up(self, up: bool, reason: str) -> None:
        if up != self._runtime_up or (not up and reason != self._runtime_reason):
            if up:
                log.info("runtime up")
            else:
                log.warning("runtime down reason=%r", reason)
            self._runtime_up = up
            self._runtime_reason = reason
            self._changed()

    # ----------------------------------------------------------------------------- run

    async def run(self, executor: Executor, session: Session, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set. Then stop cleanly, leaving containers running."""
        self._loop = asyncio.get_running_loop()
        self._session = session
        boot_id = self.config.boot_id if self.config.boot_id is not None else read_boot_id()
        marked = mark_host_reboot(self.store, boot_id, now=self.clock.time())
        if marked:
            log.warning("host rebooted since last start; instances marked failed n=%d", len(marked))

        worker = Worker(self.store, executor, clock=self.clock, backoff=Backoff(cap=30.0))
        self.worker = worker
        manager = LocalManager(
            self.store, node_id=self.config.node_id, clock=self.clock, assign=worker.assign
        )
        self.manager = manager
        reporter = StatusReporter(
            self._deliver, clock=self.clock, on_pending=lambda _: self._changed()
        )
        self.reporter = reporter

        await executor.start()
        await worker.init()
        worker.listen(self._on_status)
        worker.listen(manager.on_status)
        await manager.start()
        self._desired = dict(manager.desired)  # incremental messages apply on top of this
        self._init_done = True
        reporter.start()
        self._changed()

        loops = [
            asyncio.create_task(self._session_loop(session), name="session"),
            asyncio.create_task(self._resync_loop(executor, worker), name="resync"),
        ]
        for t in loops:
            t.add_done_callback(self._loop_ended)
        try:
            await stop.wait()
        finally:
            log.info("stopping; containers keep running")
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await manager.close()
            await worker.close()
            await reporter.close()
            await session.close()
            await executor.close()

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        log.error("agent loop ended loop=%s err=%r", task.get_name(), exc, exc_info=exc)
        self._loops_alive = False
        self._changed()

    # --------------------------------------------------------------------------- status

    def _on_status(self, task_id: str, status: TaskStatus) -> None:
        """Every stored status change: start latency, the reporter and the snapshot."""
        state = status.state
        if state < TaskState.RUNNING:
            self._started_at.setdefault(task_id, self.clock.monotonic())
        else:
            began = self._started_at.pop(task_id, None)
            if began is not None and state == TaskState.RUNNING:
                self.metrics.observe_task_start(self.clock.monotonic() - began)
        if self.reporter is not None:
            self.reporter.update(task_id, status)
        self._changed()

    def _forget_unknown(self, known: set[str]) -> None:
        """Drop per-task bookkeeping of deleted tasks, so memory stays bounded."""
        if self.reporter is not None:
            self.reporter.retain(known)
        for task_id in [t for t in self._started_at if t not in known]:
            del self._started_at[task_id]

    async def _deliver(self, task_id: str, status: TaskStatus) -> None:
        session = self._session
        if session is None:
            return
        view = self._views_by_id.get(task_id)
        if view is None:
            self._rebuild()
            view = self._views_by_id.get(task_id)
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

    # -------------------------------------------------------------------------- session

    async def _session_loop(self, session: Session) -> None:
        assert self.manager is not None
        async for message in session.messages():
            if isinstance(message, DesiredTasks):
                if message.full:
                    desired = {t.name: t for t in message.tasks}
                else:
                    desired = dict(self._desired)
                    for name in message.removed:
                        desired.pop(name, None)
                    desired.update((t.name, t) for t in message.tasks)
                await self._apply(desired)
            elif isinstance(message, DesiredInvalid):
                self._desired_read = True
                self._desired_valid = False
                self.metrics.desired_state_error()
                self._desired_errors = bounded_errors(message.errors)
                self._desired_errors_at = self.clock.time()
                for line in message.errors:
                    log.error("desired state rejected: %s", line)
                log.warning("keeping the last valid desired state running")
            elif isinstance(message, ManagerMessage):
                self._availability = message.availability
                log.info("node availability availability=%s", message.availability)
            self._changed()

    async def _apply(self, desired: Mapping[str, DesiredTask]) -> None:
        assert self.manager is not None
        self._desired = dict(desired)
        await self.manager.set_desired(self._desired)
        self._desired_read = True
        self._desired_valid = True
        self._desired_applied_at = self.clock.time()
        self._desired_errors, self._desired_errors_at = (), None
        log.info("desired state applied tasks=%d", len(desired))

    # --------------------------------------------------------------------------- resync

    async def _resync_loop(self, executor: Executor, worker: Worker) -> None:
        failures = 0
        while True:
            ok = await self._resync_once(executor, worker)
            if ok:
                failures = 0
                await self.clock.sleep(self.config.resync_interval)
            else:
                failures += 1
                await self.clock.sleep(
                    min(self.config.resync_interval, 0.5 * 2 ** min(failures, 6))
                )

    async def _resync_once(self, executor: Executor, worker: Worker) -> bool:
        began = time.perf_counter()
        try:
            if not await executor.ping():
                self._set_runtime_up(False, "container runtime does not answer")
                return False
            if self._node is None:
                self._node = await executor.describe()
                log.info(
                    "node described hostname=%s runtime=%s/%s",
                    self._node.hostname,
                    self._node.runtime_name,
                    self._node.runtime_version,
                )
            self._set_runtime_up(True, "ready")
            await executor.resync()
            known = self.store.task_ids()
            removed = await executor.remove_orphans(known)
            self._forget_unknown(known)
            if removed:
                log.info("orphans removed n=%d", len(removed))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("resync failed err=%r", str(err))
            self._set_runtime_up(False, f"container runtime error: {err}")
            return False
        finally:
            self._changed()
        self.metrics.observe_reconcile(time.perf_counter() - began)
        return True

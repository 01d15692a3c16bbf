"""The agent: wires the session, local manager, worker, runtime, metrics and HTTP together.

This is the one place that knows how the parts fit; each part stays ignorant of the others.
Data flows one way round a loop:

    session ──DesiredTasks──▶ local manager ──Assignment──▶ worker ──▶ task managers ──▶ runtime
       ▲                                                      │
       └──── reporter ◀── statuses (store first, then listeners) ┘──▶ local manager, snapshot

**Start-up**, in order: the host-reboot check (if the boot id changed since the last start,
every instance that was running ended with the host: its stored status becomes ``failed``,
"host rebooted", and the restart policy brings it back); adoption, when the store was just
created or rebuilt (the runtime's containers for this node are listed, retrying until the
runtime answers, and recorded by the local manager); the worker's Init; the local manager's
first full assignment. Only then do the loops start. A stop request ends start-up at once.

**Loops**, each run by one ``Supervisor`` (restarted with backoff after an unexpected error,
counted in ``reconciler_loop_restarts_total``, named by ``/healthz`` while down):

* ``session``: desired-state messages into the local manager;
* ``resync``: every ``resync_interval`` the runtime relists its containers (the level-triggered
  safety net under its event stream) and orphans are removed; while the runtime is down it
  retries sooner, with backoff, and ``/readyz`` says why. After a store was created or
  rebuilt, no orphan is removed until a valid desired set has been applied and a pass that
  began after it has adopted what exists. Each pass ends with the image GC
  (``reconciler.agent.imagegc``), which keeps every image a kept instance or a desired task names;
  its failure is logged and never fails the pass;
* ``reporter``: statuses to the session;
* the usage sampler (``reconciler.observe.usage``) runs beside ``resync`` and under its name, every
  ``stats_interval``; its samples go to the metrics, never into the snapshot;
* whatever the composition root adds (the HTTP server, the runtime's event stream).

**The store failing** (a full disk) makes the node not ready with the reason; what runs keeps
running, statuses stay queued in memory, and a watcher retries ``Store.recover()`` with
backoff. Once writes work again the queued statuses are written, the local manager's pending
round and any desired set that could not be stored are applied, without a restart.

**The snapshot**: after any change one immutable ``Snapshot`` is rebuilt (coalesced to once
per event-loop turn), which ``/metrics``, ``/readyz`` and ``/v1/*`` read without touching
podman or RocksDB. Readiness is the snapshot's own rule (``Snapshot.readiness``).

Bad input never reaches the worker: an invalid desired set only flips
``reconciler_desired_state_valid`` to 0 and the last valid set keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from reconciler.agent.imagegc import DEFAULT_THRESHOLD, ImageCollector
from reconciler.core.backoff import Backoff, Retry
from reconciler.core.clock import Clock
from reconciler.core.errors import StoreError, TemporaryError
from reconciler.core.executor import Executor
from reconciler.core.model import NodeDescription, TaskState, TaskStatus
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
from reconciler.core.snapshot import Changes, Snapshot, TaskView, bounded_errors
from reconciler.core.store import ADOPT_PENDING, Store, StoreOrigin
from reconciler.core.supervisor import Supervisor, describe_error
from reconciler.core.worker import Worker
from reconciler.local.manager import LocalManager
from reconciler.observe.metrics import Metrics
from reconciler.observe.usage import UsageMonitor

log = logging.getLogger(__name__)

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
HOST_REBOOTED = "host rebooted"

STORE_RETRY = Backoff(initial=0.5, cap=5.0)
"""How often a failed store is probed until writes work again."""

RUNTIME_RETRY = Backoff(initial=0.5, cap=5.0)
"""How often start-up asks a runtime that does not answer for its containers."""

Loop = Callable[[], Awaitable[None]]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node_id: str
    resync_interval: float = 30.0
    labels: tuple[tuple[str, str], ...] = ()
    boot_id: str | None = None  # None: read it from the kernel
    stats_interval: float = 10.0  # usage sampling; 0 turns it off
    state_dir: str | None = None  # for the node's disk-free figure
    image_gc_threshold: float = DEFAULT_THRESHOLD  # percent free of the image store; 0: off


def read_boot_id() -> str:
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return ""


def mark_host_reboot(store: Store, boot_id: str, *, now: float) -> list[str]:
    """If the boot id changed since the last start, fail every instance that was running.

    Returns the ids marked failed. Runs before the worker starts, on the store alone. Raises
    ``StoreError`` if the store cannot be written.
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
        store_origin: StoreOrigin = StoreOrigin.OPENED,
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
        self._starting_reason = "worker init is not done"
        self._desired_read = False
        self._desired_valid = False
        self._desired_applied_at: float | None = None
        self._desired_errors: tuple[str, ...] = ()
        self._desired_errors_at: float | None = None
        self._availability = "active"
        self._desired: dict[str, DesiredTask] = {}
        self._unstored_desired: dict[str, DesiredTask] | None = None
        self._rejected: set[str] = set()  # names whose last value was rejected
        self._started_at: dict[str, float] = {}
        self._views_by_id: dict[str, TaskView] = {}
        # Orphans are only removed once a valid desired set was applied and a resync pass
        # that began after it adopted what exists; until then, after a store was created or
        # rebuilt, an unknown container may be a task the store lost.
        self._orphans_allowed = not store.get_meta(ADOPT_PENDING)
        self._applied_count = 0
        self._store_watch: asyncio.Task[None] | None = None
        self.supervisor = Supervisor(
            clock=clock, on_restart=self.metrics.loop_restarted, on_change=self._changed
        )
        self.usage = UsageMonitor(
            store=store,
            clock=clock,
            interval=config.stats_interval,
            state_dir=config.state_dir,
            publish=self.metrics.set_usage,
            on_change=self._changed,
            on_failure=lambda: self.metrics.loop_restarted("resync"),
        )
        self.images = ImageCollector(
            store=store,
            clock=clock,
            threshold_percent=config.image_gc_threshold,
            on_removed=self.metrics.images_removed,
        )
        self.worker: Worker | None = None
        self.manager: LocalManager | None = None
        self.reporter: StatusReporter | None = None
        self._session: Session | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resync_now = asyncio.Event()  # the runtime came back: resync without waiting
        if store_origin is StoreOrigin.REBUILT:
            self.metrics.store_rebuilt()
        store.add_failure_listener(self._store_failed)

    # ------------------------------------------------------------------------- snapshot

    def snapshot(self) -> Snapshot:
        """The current immutable snapshot (what /metrics and the HTTP API read)."""
        return self._snapshot

    def _changed(self) -> None:
        """Schedule one snapshot rebuild for this event-loop turn."""
        if self._rebuild_scheduled:
            return
        loop = self._loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # not running yet: run() rebuilds when it starts
        self._rebuild_scheduled = True
        loop.call_soon(self._rebuild)

    def _rebuild(self) -> None:
        self._rebuild_scheduled = False
        views = tuple(self.manager.views()) if self.manager is not None else ()
        restarts = tuple(sorted(self.manager.restarts().items())) if self.manager else ()
        rollbacks = tuple(sorted(self.manager.rollbacks().items())) if self.manager else ()
        self._snapshot = Snapshot(
            node_id=self.config.node_id,
            node=self._node,
            labels=self.config.labels,
            store_open=not self.store.closed,
            store_failure=self.store.failure,
            init_done=self._init_done,
            starting_reason=self._starting_reason,
            runtime_up=self._runtime_up,
            runtime_reason=self._runtime_reason,
            loops_down=tuple(sorted(self.supervisor.down.items())),
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
            rollbacks=rollbacks,
            oom_kills=self.usage.oom_kills(name for name, _ in restarts),
            conditions=self.usage.conditions,
        )
        self._views_by_id = {v.id: v for v in views}
        self.changes.bump()

    # ------------------------------------------------------------- runtime observations

    def runtime_error(self, op: str) -> None:
        self.metrics.runtime_error(op)

    def drift_corrected(self, kind: str) -> None:
        self.metrics.drift_corrected(kind)

    def oom_killed(self, name: str, task_id: str) -> None:
        """Called by the runtime on the event loop: counted and stored per task name."""
        self.usage.oom_killed(name, task_id)

    def image_pulled(self, result: str) -> None:
        self.metrics.image_pulled(result)

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
            if up and not self._runtime_up and self.worker is not None:
                self.worker.retry_now()  # what was due during the outage goes now
                self._resync_now.set()
            self._runtime_up = up
            self._runtime_reason = reason
            self._changed()

    # ----------------------------------------------------------------------------- run

    async def run(
        self,
        executor: Executor,
        session: Session,
        stop: asyncio.Event,
        *,
        loops: Mapping[str, Loop] | None = None,
    ) -> None:
        """Run until ``stop`` is set. Then stop cleanly, leaving containers running.

        ``loops`` are further long-running coroutines to supervise by name (the HTTP server,
        say). Never raises because of the runtime, the store's writes or the session.
        """
        self._loop = asyncio.get_running_loop()
        self._session = session
        self._changed()
        try:
            started = await self._until_stopped(self._start(executor), stop)
            if started:
                self.supervisor.start("session", lambda: self._session_loop(session))
                self.supervisor.start("resync", lambda: self._resync_and_sample(executor))
                assert self.reporter is not None
                self.supervisor.start("reporter", self.reporter.run)
                for name, body in (loops or {}).items():
                    self.supervisor.start(name, body)
                await stop.wait()
        finally:
            log.info("stopping; containers keep running")
            await self._shutdown(executor, session)

    async def _until_stopped(self, work: Awaitable[None], stop: asyncio.Event) -> bool:
        """Await ``work`` unless ``stop`` is set first. Returns whether ``work`` finished."""
        job = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({job, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not job.done():
                job.cancel()
            await asyncio.gather(job, stopper, return_exceptions=True)
        if job.cancelled():
            return False
        job.result()  # a start-up failure that is not the store's or the runtime's is a bug
        return True

    async def _start(self, executor: Executor) -> None:
        boot_id = self.config.boot_id if self.config.boot_id is not None else read_boot_id()

        async def reboot_check() -> list[str]:
            return mark_host_reboot(self.store, boot_id, now=self.clock.time())

        marked = await self._stored(reboot_check)
        if marked:
            log.warning("host rebooted since last start; instances marked failed n=%d", len(marked))

        worker = Worker(self.store, executor, clock=self.clock, backoff=Backoff(cap=30.0))
        self.worker = worker
        manager = LocalManager(
            self.store, node_id=self.config.node_id, clock=self.clock, assign=worker.assign
        )
        self.manager = manager
        self.reporter = StatusReporter(
            self._deliver, clock=self.clock, on_pending=lambda _: self._changed()
        )
        await executor.start(supervise=self.supervisor.start)
        if self.store.get_meta(ADOPT_PENDING):
            await self._adopt(executor, manager)
        await self._stored(worker.init)
        worker.listen(self._on_status)
        worker.listen(manager.on_status)
        await self._stored(manager.start)
        self._desired = dict(manager.desired)  # incremental messages apply on top of this
        self._init_done = True
        self._changed()

    async def _adopt(self, executor: Executor, manager: LocalManager) -> None:
        """Record the runtime's containers in a new store, retrying until the runtime answers."""
        self._starting_reason = "adopting the runtime's containers into a new store"
        self._changed()
        retry = Retry(RUNTIME_RETRY, clock=self.clock)
        while True:
            try:
                containers = await executor.list_containers()
                break
            except asyncio.CancelledError:
                raise
            except TemporaryError:
                self._set_runtime_up(False, "container runtime does not answer")
                await retry.wait()
            except Exception as err:
                self._set_runtime_up(False, f"container runtime error: {describe_error(err)}")
                await retry.wait()
        self._set_runtime_up(True, "ready")
        why = self.store.get_meta(ADOPT_PENDING)
        n = await self._stored(lambda: manager.adopt(containers))
        if why == StoreOrigin.REBUILT.value:
            log.warning(
                "store rebuilt from the runtime's containers; history and restart counters "
                "were lost adopted=%d",
                n,
            )
        else:
            log.info("new store: adopted the runtime's containers for this node adopted=%d", n)
        self._starting_reason = "worker init is not done"

    async def _stored(self, write: Callable[[], Awaitable[T]]) -> T:
        """Run a start-up step that writes the store, retrying while the store fails."""
        while True:
            try:
                return await write()
            except StoreError as err:
                if self.store.failure is None:
                    raise
                log.warning("start-up waits for the store err=%s", describe_error(err))
                await self._recovered()

    async def _shutdown(self, executor: Executor, session: Session) -> None:
        await self.supervisor.stop()
        if self._store_watch is not None:
            self._store_watch.cancel()
            await asyncio.gather(self._store_watch, return_exceptions=True)
        for step in (
            self.manager.close if self.manager else None,
            self.worker.close if self.worker else None,
            self.reporter.close if self.reporter else None,
            session.close,
            executor.close,
        ):
            if step is None:
                continue
            try:
                await step()
            except Exception as err:  # stopping must never end in a traceback
                log.warning("error while stopping err=%s", describe_error(err))

    # ---------------------------------------------------------------------------- store

    def _store_failed(self, reason: str) -> None:
        """A store write failed: not ready until a probe writes again."""
        self._changed()
        if self._store_watch is None or self._store_watch.done():
            with contextlib.suppress(RuntimeError):  # no loop: start-up retries by itself
                self._store_watch = asyncio.get_running_loop().create_task(
                    self._watch_store(), name="store-recovery"
                )

    async def _recovered(self) -> None:
        """Wait until the store takes writes again."""
        retry = Retry(STORE_RETRY, clock=self.clock)
        while not self.store.recover():
            self._changed()
            await retry.wait()
        self._changed()

    async def _watch_store(self) -> None:
        await self._recovered()
        log.info("store recovered; writing what was queued")
        if self.worker is not None:
            self.worker.flush()
        if self.manager is not None:
            self.manager.retry_now()
        self.usage.flush()
        if self._unstored_desired is not None:
            desired, self._unstored_desired = self._unstored_desired, None
            with contextlib.suppress(StoreError):
                await self._apply(desired)

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
        async for message in session.messages():
            if isinstance(message, DesiredTasks):
                if message.full:
                    desired = {t.name: t for t in message.tasks}
                    self._rejected.clear()
                else:
                    desired = dict(self._desired)
                    for name in message.removed:
                        desired.pop(name, None)
                    desired.update((t.name, t) for t in message.tasks)
                    self._rejected.difference_update(message.removed)
                    self._rejected.difference_update(t.name for t in message.tasks)
                self._keep_rejected(message.rejected, desired)
                await self._apply_or_queue(desired)
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
                if self.manager is not None:
                    self.manager.pause(message.availability == "pause")
                log.info("node availability availability=%s", message.availability)
            self._changed()

    async def _apply_or_queue(self, desired: dict[str, DesiredTask]) -> None:
        """Apply a desired set; if the store cannot take it, keep it for the store watcher."""
        try:
            await self._apply(desired)
        except StoreError:
            if self.store.failure is None:
                raise
            self._desired = dict(desired)
            self._unstored_desired = dict(desired)
            log.warning("desired state not stored yet; will apply it once the store works")

    def _keep_rejected(
        self, rejected: tuple[RejectedTask, ...], desired: dict[str, DesiredTask]
    ) -> None:
        """A task whose new value was rejected keeps its last valid spec; log and count it."""
        for task in rejected:
            self._rejected.add(task.name)
            last = self._desired.get(task.name)
            if last is not None:
                desired[task.name] = last
            for line in task.problems:
                log.error("desired state rejected: %s", line)
        if rejected:
            self.metrics.desired_state_error()
            self._desired_errors = bounded_errors(p for t in rejected for p in t.problems)
            self._desired_errors_at = self.clock.time()

    async def _apply(self, desired: Mapping[str, DesiredTask]) -> None:
        assert self.manager is not None
        self._desired = dict(desired)
        await self.manager.set_desired(self._desired)
        self._desired_read = True
        self._desired_valid = not self._rejected
        self._desired_applied_at = self.clock.time()
        self._applied_count += 1
        if not self._rejected:
            self._desired_errors, self._desired_errors_at = (), None
        log.info("desired state applied tasks=%d", len(desired))

    # --------------------------------------------------------------------------- resync

    async def _resync_and_sample(self, executor: Executor) -> None:
        """The resync loop, with the usage sampler beside it on its own interval. The sampler
        shares this loop's life and name: a failed sampling pass is logged and counted as a
        restart of ``resync``, and never interrupts the relist or readiness."""
        sampler = None
        if self.usage.interval > 0:
            sampler = asyncio.create_task(self.usage.run(executor, self._current_ids), name="usage")
        try:
            await self._resync_loop(executor)
        finally:
            if sampler is not None:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)

    def _current_ids(self) -> set[str]:
        return {v.id for v in self._snapshot.tasks if v.current}

    async def _resync_loop(self, executor: Executor) -> None:
        retry = Retry(Backoff(initial=0.5, cap=self.config.resync_interval), clock=self.clock)
        while True:
            if await self._resync_once(executor):
                retry.reset()
                self._resync_now.clear()
                delay = self.config.resync_interval
            else:
                delay = retry.next_delay()
            sleep = asyncio.ensure_future(self.clock.sleep(delay))
            woken = asyncio.ensure_future(self._resync_now.wait())
            try:
                await asyncio.wait({sleep, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleep.cancel()
                woken.cancel()

    async def _resync_once(self, executor: Executor) -> bool:
        assert self.worker is not None
        began = time.perf_counter()
        applied_before = self._applied_count
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
            if self._orphans_allowed:
                removed = await executor.remove_orphans(known)
                if removed:
                    log.info("orphans removed n=%d", len(removed))
            elif applied_before > 0:
                self._orphans_allowed = True  # the next pass may remove what is left over
            self._forget_unknown(known)
            if self.manager is not None:
                self.usage.forget(self.manager.restarts().keys())
            await self._collect_images(executor)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("resync failed err=%s", describe_error(err))
            self._set_runtime_up(False, f"container runtime error: {describe_error(err)}")
            return False
        finally:
            self._changed()
        self.metrics.observe_reconcile(time.perf_counter() - began)
        return True

    async def _collect_images(self, executor: Executor) -> None:
        """The image GC's pass, keeping every image a kept instance or a desired task names."""
        if self.manager is None:
            return
        needed = {v.image for v in self.manager.views() if v.image}
        needed.update(t.spec.image for t in self._desired.values())
        try:
            await self.images.run(executor, needed)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("image GC failed err=%s", describe_error(err))

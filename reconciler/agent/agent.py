"""The agent: one node's parts, put together and run in order.

Data flows one way round a loop:

    session ──DesiredTasks──▶ local manager ──Assignment──▶ worker ──▶ task managers ──▶ runtime
       ▲                                                      │
       └──── reporter ◀── statuses (store first, then listeners) ┘──▶ local manager, snapshot

Each part has one job and a module of its own:

* ``observer``: what the agent knows, the snapshot built from it, the runtime's reports;
* ``startup``: the host-reboot check and adoption into a new store;
* ``pump``: the session's desired state in, statuses out;
* ``resync``: the relist, orphans and the image GC, with the usage sampler beside it;
* ``storewatch``: not ready while store writes fail, what was queued written once they work.

**Start-up**, in order: the host-reboot check; the runtime's start (its event stream and
probe, supervised); adoption, when the store was just created or rebuilt; the worker's Init;
the local manager's first full assignment. Only then do the loops start (``session``,
``resync``, ``reporter``; the process runner adds ``http`` from the start). A stop request ends
start-up at once.

**Loops** run under one ``Supervisor``: restarted with backoff after an unexpected error,
counted in ``reconciler_loop_restarts_total``, named by ``/healthz`` while down.

Bad input never reaches the worker: an invalid desired set only flips
``reconciler_desired_state_valid`` to 0 and the last valid set keeps running. Stopping leaves
every container running.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial

from reconciler.agent.imagegc import ImageCollector
from reconciler.agent.observer import AgentState, RuntimeEvents
from reconciler.agent.pump import SessionPump
from reconciler.agent.resync import Resync
from reconciler.agent.startup import adopt, mark_host_reboot, read_boot_id
from reconciler.agent.storewatch import STORE_RETRY, StoreWatch
from reconciler.core.backoff import Backoff, Retry
from reconciler.core.clock import Clock
from reconciler.core.executor import Executor
from reconciler.core.policy import Policy, check
from reconciler.core.reporter import StatusReporter
from reconciler.core.session import Session
from reconciler.core.snapshot import Changes, Snapshot
from reconciler.core.store import ADOPT_PENDING, Store, StoreOrigin
from reconciler.core.supervisor import Supervisor, describe_error
from reconciler.core.worker import Worker
from reconciler.local.manager import LocalManager
from reconciler.observe.metrics import Metrics
from reconciler.observe.usage import UsageMonitor

__all__ = ["Agent", "AgentConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """The agent's settings, as ``reconciler run``'s flags give them (their defaults are the
    option data's, ``reconciler.cli.options``; ``reconciler.assemble`` makes this)."""

    node_id: str
    resync_interval: float
    labels: tuple[tuple[str, str], ...]
    boot_id: str | None  # None: read it from the kernel
    stats_interval: float  # usage sampling; 0 turns it off
    state_dir: str | None  # for the node's disk-free figure
    image_gc_threshold: float  # percent free of the image store; 0: off
    policy: Policy | None = None  # for fleet tasks; None: tasks are trusted (desired directory)


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
        self.state = state = AgentState(
            node_id=config.node_id,
            labels=config.labels,
            store=store,
            clock=clock,
            policy=config.policy,
        )
        self.metrics = metrics or Metrics(snapshot=state.snapshot)
        self.supervisor = Supervisor(
            clock=clock, on_restart=self.metrics.loop_restarted, on_change=state.changed
        )
        state.supervisor = self.supervisor
        self.usage = state.usage = UsageMonitor(
            store=store,
            clock=clock,
            interval=config.stats_interval,
            state_dir=config.state_dir,
            publish=self.metrics.set_usage,
            on_change=state.changed,
            on_failure=lambda: self.metrics.loop_restarted("resync"),
        )
        self.images = ImageCollector(
            store=store,
            clock=clock,
            threshold_percent=config.image_gc_threshold,
            on_removed=self.metrics.images_removed,
        )
        self.events = RuntimeEvents(state, self.metrics, self.usage)
        self.store_watch = StoreWatch(
            store, retry=lambda: Retry(STORE_RETRY, clock=clock), changed=state.changed
        )
        self.worker: Worker | None = None
        self.manager: LocalManager | None = None
        self.reporter: StatusReporter | None = None
        self.pump: SessionPump | None = None
        if store_origin is StoreOrigin.REBUILT:
            self.metrics.store_rebuilt()

    # --------------------------------------------------------- what others read and call

    def snapshot(self) -> Snapshot:
        """The current immutable snapshot (what /metrics and the HTTP API read)."""
        return self.state.snapshot()

    @property
    def changes(self) -> Changes:
        """Bumped after each new snapshot; /v1/events streams wait on it."""
        return self.state.changes

    def readiness(self) -> tuple[bool, str]:
        return self.state.snapshot().readiness()

    def runtime_up(self, up: bool) -> None:
        """The runtime answers or not (``RuntimeObserver.runtime_up``, from any thread)."""
        self.events.runtime_up(up)

    # ----------------------------------------------------------------------------- run

    async def run(self, executor: Executor, session: Session, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set. Then stop cleanly, leaving containers running.

        Never raises because of the runtime, the store's writes or the session. Loops of the
        caller's (the HTTP server) go on this agent's ``supervisor``.
        """
        self.state.attach(asyncio.get_running_loop())
        self.state.session = session
        self.state.changed()
        try:
            resync = await _until_stopped(self._start(executor), stop)
            if resync is not None:
                assert self.pump is not None and self.reporter is not None
                pump = self.pump
                self.supervisor.start("session", lambda: pump.run(session))
                self.supervisor.start("resync", resync.run)
                self.supervisor.start("reporter", self.reporter.run)
                await stop.wait()
        finally:
            log.info("stopping; containers keep running")
            await self._shutdown(executor, session)

    async def _start(self, executor: Executor) -> Resync:
        state, store, watch = self.state, self.store, self.store_watch
        boot_id = self.config.boot_id if self.config.boot_id is not None else read_boot_id()

        async def reboot_check() -> list[str]:
            return mark_host_reboot(store, boot_id, now=self.clock.time())

        marked = await watch.stored(reboot_check)
        if marked:
            log.warning("host rebooted since last start; instances marked failed n=%d", len(marked))

        policy = self.config.policy
        admit = None if policy is None else partial(check, policy=policy, resolve=os.path.realpath)
        worker = self.worker = Worker(
            store, executor, clock=self.clock, backoff=Backoff(cap=30.0), admit=admit
        )
        manager = self.manager = state.manager = LocalManager(
            store,
            node_id=self.config.node_id,
            clock=self.clock,
            assign=worker.assign,
            refuses=None if admit is None else lambda spec: bool(admit(spec)),
        )
        reporter = self.reporter = state.reporter = StatusReporter(
            lambda task_id, status: pump.deliver(task_id, status),
            clock=self.clock,
            on_pending=lambda _: state.changed(),
        )
        pump = self.pump = SessionPump(
            state=state, manager=manager, reporter=reporter, metrics=self.metrics
        )
        resync = Resync(
            state=state,
            executor=executor,
            pump=pump,
            usage=self.usage,
            images=self.images,
            metrics=self.metrics,
            interval=self.config.resync_interval,
        )
        state.on_runtime_back += [worker.retry_now, resync.wake.set]
        watch.on_recovered += [worker.flush, manager.retry_now, self.usage.flush]
        watch.on_recovered.append(pump.apply_unstored)
        await executor.start(supervise=self.supervisor.start)
        if store.get_meta(ADOPT_PENDING):
            await adopt(state, executor, manager, watch)
        await watch.stored(worker.init)
        worker.listen(pump.on_status)
        worker.listen(manager.on_status)
        await watch.stored(manager.start)
        pump.desired = dict(manager.desired)  # incremental messages apply on top of this
        state.init_done = True
        state.changed()
        return resync

    async def _shutdown(self, executor: Executor, session: Session) -> None:
        await self.supervisor.stop()
        await self.store_watch.close()
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


async def _until_stopped(work: Awaitable[Resync], stop: asyncio.Event) -> Resync | None:
    """Await ``work`` unless ``stop`` is set first. Returns its result, or None if stopped."""
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
        return None
    return job.result()  # a start-up failure that is not the store's or the runtime's is a bug

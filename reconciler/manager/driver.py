"""The fleet manager (``reconciler manager run``): the small driver around the pure scheduler.

It owns what the scheduler must not: the NATS connection, time, leadership, and when to plan
and write. The decision itself is ``reconciler.manager.scheduler.schedule``; the picture it
reads is ``reconciler.manager.view``; the watches that feed that picture, and their restarts
with backoff, are ``reconciler.manager.watches``; how a plan's writes land is
``reconciler.manager.writes``.

**Connection epochs.** As the agent's session does, the manager holds one connection at a time
(nats-py's own reconnecting is off): each epoch connects to the first server that answers,
brings the buckets to their settings (``manager init``), starts a watch of every bucket it
reads (services, nodes, control, assignments, statuses) and loads their initial values as the
whole picture. It is then *ready*. A watch lost while running is started again after a backoff
of its own, and its initial values replace that bucket's picture. Whatever ends the epoch (the
connection lost, a watch that cannot be started again) ends leadership at once; the next epoch
starts after a backoff.

**Leadership** is ``manager.leader.Elector``'s. Every manager watches and plans (a standby's
metrics show the fleet too), but only the leader writes, and it checks that it still leads
before each write. On taking over, the leader reads the assignments afresh, so it plans from
what the previous leader wrote last, not from a watch that may lag behind it, and gives every
node a full grace period before it judges it down, so a failover never reschedules a healthy
fleet.

**Reconciling** is level-triggered: after any change that the scheduler reads (a service, a
node's health, labels, capacity or availability, an assignment the manager did not write),
after a node's health changes by time alone (the driver sleeps until the next such moment),
and after failed writes (retried after a second), it plans from the whole picture and writes
the plan. Bursts of changes are applied together, then planned once.

**Writes** are compare-and-set on each key's revision, up to ``write_window`` in flight
(``reconciler.manager.writes``). A write that finds the key changed means the picture lags:
the assignments are read afresh and planned again. Status keys that match no assignment are
deleted once they have stayed so, unchanged, for a grace period: the driver feeds every status
and assignment its watches see to ``PlanWriter.keys``, which also counts each node's status
keys (``reconciler_manager_node_keys``), and the leader sleeps until the oldest is due.

**The status page** reads ``snapshots`` (``reconciler.manager.snapshot``): the driver only
tells it when something the page shows changed (or only heartbeats did); the snapshot is built
by the page's first read after that, so a manager that no one watches does no work for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js.kv import KeyValue

from reconciler import __version__
from reconciler.core.backoff import Backoff, Retry
from reconciler.core.clock import Clock
from reconciler.core.model import TaskState
from reconciler.core.supervisor import describe_error
from reconciler.fleet.buckets import (
    ASSIGNMENTS,
    CONTROL,
    LEADER,
    NODES,
    SERVICES,
    STATUS,
)
from reconciler.fleet.connect import connect_first
from reconciler.fleet.options import NatsOptions, redact
from reconciler.fleet.provision import default_replicas, init_buckets
from reconciler.fleet.watch import KeyWatch, WatchLost
from reconciler.manager.health import node_state
from reconciler.manager.leader import Elector
from reconciler.manager.metrics import FleetCounts, ManagerMetrics
from reconciler.manager.scheduler import NodeView, Plan, schedule
from reconciler.manager.snapshot import (
    FleetSnapshot,
    ManagerState,
    Snapshots,
    build_snapshot,
)
from reconciler.manager.view import FleetView
from reconciler.manager.watches import WATCH_TIMEOUT, BucketWatches, WatchEvent
from reconciler.manager.writes import PlanWriter, kv

__all__ = ["FleetManager", "ManagerConfig"]

log = logging.getLogger(__name__)

RECONNECT_BACKOFF = Backoff(initial=0.1, cap=2.0)
WATCHED = (SERVICES, NODES, CONTROL, ASSIGNMENTS, STATUS)
RETRY_AFTER = 1.0
"""After a pass whose writes failed, plan again this many seconds later."""
WARM_UP = 1.5
"""After it (re)connects, a manager writes nothing for this many heartbeat periods (at most a
grace period): the nodes it starts with are not ready until it sees them beat, and placing
new tasks on the first few to beat would pile them there for good."""
_LOST = "lost"
_LEADERSHIP = "leadership"


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerConfig:
    """``manager_id`` names this manager in the leader key; ``grace`` (node health) and
    ``lease`` (leadership) in seconds, as ``--node-grace`` and ``--lease`` give them (their
    defaults are the option data's); ``max_bytes`` and ``max_value_size``: the buckets' quotas
    where they differ from the contract's (``--bucket-max-bytes``, ``--bucket-max-value``);
    ``write_window``: writes in flight at once."""

    manager_id: str
    grace: float
    lease: float
    max_bytes: Mapping[str, int] = field(default_factory=dict)
    max_value_size: Mapping[str, int] = field(default_factory=dict)
    idle_heartbeat: float = 5.0
    request_timeout: float = 5.0
    write_window: int = 256


class FleetManager:
    """One ``reconciler manager run``; see the module docstring."""

    def __init__(
        self,
        *,
        options: NatsOptions,
        config: ManagerConfig,
        clock: Clock,
        metrics: ManagerMetrics | None = None,
        backoff: Backoff = RECONNECT_BACKOFF,
    ) -> None:
        self.config = config
        self.options = options
        self._clock = clock
        self._backoff = backoff
        self.metrics = metrics
        self.view = FleetView(config.grace)
        self.elector = Elector(
            manager_id=config.manager_id,
            lease=config.lease,
            clock=clock,
            on_change=self._leadership_changed,
        )
        self.plan = Plan()
        self.nodes: dict[str, NodeView] = {}
        self._events: asyncio.Queue[WatchEvent] = asyncio.Queue()
        self._connected = False
        self._synced = False
        self._why = "not connected to NATS yet"
        self._leader_kv: KeyValue | None = None
        self._reread = False
        self._took_over = False
        self._retry_at: float | None = None
        self._due: float | None = None
        self._warm_until = 0.0
        self._unassigned: tuple[str, ...] = ()
        self.passes = 0  # plans made
        self.led_passes = 0  # plans made as the leader, to be written
        self.snapshots = Snapshots(self._snapshot, clock.monotonic)  # what the status page shows
        self.writer = PlanWriter(
            view=self.view,
            leading=lambda: self.leading,
            metrics=lambda: self.metrics,
            monotonic=clock.monotonic,
            window=config.write_window,
            grace=config.grace,
        )

    # ------------------------------------------------------------------------ reading

    @property
    def leading(self) -> bool:
        return self.elector.leading

    def readiness(self) -> tuple[bool, str]:
        """Ready once connected and every watch has read its bucket once; else why not."""
        if self._connected and self._synced:
            return True, "ready"
        return False, self._why

    def counts(self) -> FleetCounts:
        """The gauges' values now: leadership, nodes and named tasks per state, and each
        node's status keys (counted as the watch delivers them)."""
        nodes = Counter(node_state(v.health, v.availability) for v in self.nodes.values())
        tasks: Counter[TaskState] = Counter()
        statuses = self.view.statuses
        for node, task in self.plan.assigned:
            reported = statuses.get(f"{node}.{task}")
            tasks[reported.state if reported is not None else TaskState.ASSIGNED] += 1
        return FleetCounts(
            leader=self.leading,
            nodes=dict(nodes),
            tasks=dict(tasks),
            unassigned=len(self.plan.unassigned),
            node_keys=dict(self.writer.keys.per_node),
        )

    def _snapshot(self, keep: FleetSnapshot | None) -> FleetSnapshot:
        """The status page's picture now: nodes judged afresh, the latest plan's unassigned;
        with ``keep``, its services and tasks (only heartbeats changed since)."""
        ready, reason = self.readiness()
        state = ManagerState(self.config.manager_id, __version__, self.leading, ready, reason)
        nodes = self.view.node_views(self._clock.monotonic())
        return build_snapshot(self.view, nodes, self.plan, state, keep=keep)

    # ------------------------------------------------------------------------ running

    async def run(self) -> None:
        """Connect, watch, lead or stand by, reconnecting for ever; ends only when cancelled."""
        retry = Retry(self._backoff, clock=self._clock)
        while True:
            try:
                await self._epoch(retry)
                why = "the connection was lost"
            except asyncio.CancelledError:
                raise
            except Exception as err:
                why = describe_error(err)
            self._why = f"not connected to NATS: {why}"
            self.snapshots.changed()
            log.warning("fleet connection ended: %s", why)
            await retry.wait()

    async def resign(self) -> None:
        """Give up leadership (deleting the key, so a standby takes over at once). Never
        raises."""
        kv = self._leader_kv
        if kv is not None:
            await self.elector.resign(kv)

    # ------------------------------------------------------------------------ epochs

    async def _epoch(self, retry: Retry) -> None:
        self._events = asyncio.Queue()
        events = self._events

        async def lost() -> None:
            events.put_nowait(WatchEvent(_LOST))

        nc, url = await connect_first(
            self.options,
            self.options.servers,
            error_cb=_log_error,
            disconnected_cb=lost,
            closed_cb=lost,
        )
        log.info("connected to NATS url=%s", redact(url))
        self._connected = True
        watches = BucketWatches(open=self._opener(nc), events=events, clock=self._clock)
        elector: asyncio.Task[None] | None = None
        try:
            js = nc.jetstream(timeout=self.config.request_timeout)
            await init_buckets(
                js,
                lease=self.config.lease,
                replicas=default_replicas(nc),
                max_bytes=self.config.max_bytes,
                max_value_size=self.config.max_value_size,
            )
            now = self._clock.monotonic()
            for bucket in WATCHED:
                await self._load(watches, bucket, restart=False)
            self._synced = True
            period = self.view.settings.heartbeat_period
            self._warm_until = now + min(self.config.grace, WARM_UP * period)
            self._why = "ready"
            self.snapshots.changed()
            retry.reset()
            log.info(
                "fleet read services=%d nodes=%d assignments=%d",
                len(self.view.services),
                len(self.view.node_views(now)),
                len(self.view.assignments),
            )
            self._leader_kv = kv(js, LEADER)
            elector = asyncio.create_task(self.elector.run(self._leader_kv), name="elector")
            await self._loop(js, watches)
        finally:
            self._connected = self._synced = False
            if elector is not None:
                elector.cancel()
                await asyncio.gather(elector, return_exceptions=True)
            self._leader_kv = None
            await watches.stop()
            with contextlib.suppress(Exception):
                await nc.close()

    def _opener(self, nc: Client) -> Callable[[str], KeyWatch]:
        """Makes the watch of a whole bucket."""
        heartbeat = self.config.idle_heartbeat

        def open_watch(bucket: str) -> KeyWatch:
            return KeyWatch(nc, bucket, ">", idle_heartbeat=heartbeat, timeout=WATCH_TIMEOUT)

        return open_watch

    async def _load(self, watches: BucketWatches, bucket: str, *, restart: bool) -> None:
        """(Re)start the watch of ``bucket`` (``restart``: after it was lost, so after its
        backoff) and load its initial values as that bucket's whole picture."""
        initial = await (watches.restart(bucket) if restart else watches.start(bucket))
        now = self._clock.monotonic()
        self.view.load(bucket, initial, now)
        self.writer.keys.load(bucket, initial, self.view.assignments, now)
        self._log_problems()

    async def _loop(self, js: Any, watches: BucketWatches) -> None:
        dirty = True
        while True:
            if self._took_over:
                self._took_over = False
                # judged afresh: what a standby saw (or missed) counts against no node
                self.view.health.watching(self._clock.monotonic())
            if self._reread:
                self._reread = False
                await self._load(watches, ASSIGNMENTS, restart=False)
                dirty = True
            if dirty:
                dirty = not await self._reconcile(js)
                self.snapshots.changed()
            if self._writing(self._clock.monotonic()):
                await self.writer.collect_statuses(js, self._clock.monotonic())
            event = await self._next_event()
            batch = [] if event is None else [event]
            while not self._events.empty():
                batch.append(self._events.get_nowait())
            now = self._clock.monotonic()
            for ev in batch:
                if ev.tag == _LOST:
                    return
                if ev.error is not None:
                    if not isinstance(ev.error, WatchLost):
                        raise ev.error
                    if watches.current(ev):
                        log.info("watch of %s lost (%s): watching it afresh", ev.tag, ev.error)
                        await self._load(watches, ev.tag, restart=True)
                        dirty = True
                    continue
                if ev.tag == _LEADERSHIP:
                    dirty = True
                elif ev.entry is not None and watches.current(ev):
                    dirty = self.view.apply(ev.tag, ev.entry, now) or dirty
                    self.writer.keys.seen(ev.tag, ev.entry, self.view.assignments, now)
            if dirty or any(ev.tag != NODES for ev in batch):
                self.snapshots.changed()
            elif batch:
                self.snapshots.beat()  # heartbeats that changed nothing but their time
            self._log_problems()
            if self._due is not None and now > self._due:  # time alone may have changed things
                retry = self._retry_at is not None and now >= self._retry_at
                dirty = dirty or retry or self._verdicts_changed(now)

    async def _next_event(self) -> WatchEvent | None:
        """The next event, or None when a node's health may change, a retry or (leading) a
        status key's deletion is due first (``_due``: when; events arriving all the time do
        not put it off)."""
        now = self._clock.monotonic()
        due = [
            t
            for t in (self.view.health.next_change(now), self._retry_at, self._collect_at())
            if t is not None
        ]
        self._due = min(due) if due else None
        if self._due is None:
            return await self._events.get()
        try:
            # asyncio.timeout, not wait_for: under a flood of events, 3.11's wait_for can
            # swallow the cancellation that stops the manager
            async with asyncio.timeout(self._due - now + 0.001):
                return await self._events.get()
        except TimeoutError:
            return None

    def _writing(self, now: float) -> bool:
        """Whether the manager may write now: it leads, has read afresh since it took over,
        and every live node has had time to show itself."""
        return self.leading and not (self._took_over or self._reread) and now >= self._warm_until

    def _collect_at(self) -> float | None:
        """When the leader deletes the next status key without an assignment, if it leads."""
        due = self.writer.statuses_due() if self.leading else None
        return None if due is None else max(due, self._warm_until)

    def _verdicts_changed(self, now: float) -> bool:
        """Whether a node's health differs from what the last plan was made with."""
        judged = self.view.judged(now)
        return judged.keys() != self.nodes.keys() or any(
            self.nodes[node].health is not health for node, health in judged.items()
        )

    def _leadership_changed(self, leading: bool) -> None:
        if leading:
            self._took_over = self._reread = True
        self.snapshots.changed()
        self._events.put_nowait(WatchEvent(_LEADERSHIP))

    # ------------------------------------------------------------------------ reconciling

    async def _reconcile(self, js: Any) -> bool:
        """Plan from the whole picture and, when leading, write the plan. True when nothing is
        left to retry."""
        began = time.perf_counter()
        now = self._clock.monotonic()
        self.nodes = self.view.node_views(now)
        plan = schedule(
            self.view.services, self.nodes, self.view.placed(), frozen=self.view.invalid
        )
        self.plan = plan
        self.passes += 1
        self._retry_at = None
        if set(plan.unassigned) != set(self._unassigned):
            if plan.unassigned:
                shown = ", ".join(plan.unassigned[:10])
                more = f" and {len(plan.unassigned) - 10} more" if len(plan.unassigned) > 10 else ""
                log.warning(
                    "tasks unassigned count=%d (no eligible node with room): %s%s",
                    len(plan.unassigned),
                    shown,
                    more,
                )
            else:
                log.info("every task is assigned")
            self._unassigned = plan.unassigned
        if not self.leading or self._took_over or self._reread:
            return True  # a standby; or it just took over: judge and read afresh first
        if now < self._warm_until:
            self._retry_at = self._warm_until  # every live node has not shown itself yet
            return True
        self.led_passes += 1
        ok = True
        if not plan.empty:
            outcome = await self.writer.write(js, plan)
            ok = outcome.landed
            if outcome.conflicts:
                self._reread = True  # read the assignments afresh before the next plan
        if self.metrics is not None and not plan.empty:
            self.metrics.observe_schedule(time.perf_counter() - began)
        if not ok:
            self._retry_at = self._clock.monotonic() + RETRY_AFTER
        return ok

    def _log_problems(self) -> None:
        """Log the bad values the view found (once per key and revision) and count them."""
        for problem in self.view.problems:
            log.error("rejected: %s", problem)
        self.view.problems.clear()
        if self.metrics is not None:
            for bucket, count in self.view.bad.items():
                self.metrics.bad_values(bucket, count)
        self.view.bad.clear()


async def _log_error(err: Exception) -> None:
    log.debug("NATS error: %s", str(err) or type(err).__name__)

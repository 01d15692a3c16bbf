"""The fleet manager (``reconciler manager run``): the small driver around the pure scheduler.

It owns what the scheduler must not: the NATS connection, the watches, time and leadership.
The decision itself is ``fleet.scheduler.schedule``; the picture it reads is ``fleet.view``.

**Connection epochs.** As the agent's session does, the manager holds one connection at a time
(nats-py's own reconnecting is off): each epoch connects to the first server that answers,
brings the buckets to their settings (``manager init``), starts a watch of every bucket it
reads (services, nodes, control, assignments, statuses) and loads their initial values as the
whole picture. It is then *ready*. Whatever ends the epoch (the connection lost, a watch that
can no longer be trusted) ends leadership at once; the next epoch starts after a backoff.

**Leadership** is ``fleet.leader.Elector``'s. Every manager watches and plans (a standby's
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

**Writes** are compare-and-set on each key's revision, up to ``write_window`` in flight, each
acknowledged write applied to the picture at once (so the next plan counts it). A write that
finds the key changed means the picture lags: the assignments are read afresh and planned
again. Status keys whose assignment is gone are deleted once they have stayed so for a grace
period (an agent may still report a removed task's last state meanwhile).

**The status page** reads ``snapshots`` (``fleet.snapshot``): the driver only tells it when
something the page shows changed (or only heartbeats did); the snapshot is built by the page's
first read after that, so a manager that no one watches does no work for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.js.errors import APIError
from nats.js.kv import KeyValue

from reconciler import __version__
from reconciler.core.backoff import Backoff, Retry
from reconciler.core.clock import Clock
from reconciler.core.model import TaskState
from reconciler.core.supervisor import describe_error
from reconciler.fleet.buckets import (
    ASSIGNMENTS,
    CONTROL,
    DEFAULT_LEASE,
    LEADER,
    NODES,
    SERVICES,
    STATUS,
    default_replicas,
    init_buckets,
    key_subject,
    stream_name,
)
from reconciler.fleet.connect import NatsOptions, connect_first, redact
from reconciler.fleet.watch import BucketMissing, Entry, KeyWatch, WatchLost
from reconciler.manager.health import node_state
from reconciler.manager.leader import Elector
from reconciler.manager.metrics import FleetCounts, ManagerMetrics
from reconciler.manager.scheduler import Delete, NodeView, Plan, Put, Reason, schedule
from reconciler.manager.snapshot import (
    FleetSnapshot,
    ManagerState,
    Snapshots,
    build_snapshot,
)
from reconciler.manager.view import FleetView

__all__ = ["DEFAULT_GRACE", "FleetManager", "ManagerConfig"]

log = logging.getLogger(__name__)

DEFAULT_GRACE = 15.0
RECONNECT_BACKOFF = Backoff(initial=0.1, cap=2.0)
WATCHED = (SERVICES, NODES, CONTROL, ASSIGNMENTS, STATUS)
RETRY_AFTER = 1.0
"""After a pass whose writes failed, plan again this many seconds later."""
WATCH_ATTEMPTS = 5
WATCH_TIMEOUT = 2.0
"""A watch that JetStream does not answer within ``WATCH_TIMEOUT`` is tried again, up to
``WATCH_ATTEMPTS`` times, before the epoch ends: a cluster that lost a server may place a new
watch's consumer on that server (nats-server 2.9 picks among the stream's peers, the offline
one included), and the next try lands elsewhere."""
WARM_UP = 1.5
"""After it (re)connects, a manager writes nothing for this many heartbeat periods (at most a
grace period): the nodes it starts with are not ready until it sees them beat, and placing
new tasks on the first few to beat would pile them there for good."""
_WRONG_LAST_SEQUENCE = 10071
_HEADER_OP = "KV-Operation"
_HEADER_LAST = "Nats-Expected-Last-Subject-Sequence"
_LOST = "lost"
_LEADERSHIP = "leadership"


class Conflict(Exception):
    """A compare-and-set write found the key at another revision."""


@dataclass(frozen=True, slots=True)
class ManagerConfig:
    """``manager_id`` names this manager in the leader key; ``grace`` (node health) and
    ``lease`` (leadership) in seconds; ``write_window``: writes in flight at once."""

    manager_id: str
    grace: float = DEFAULT_GRACE
    lease: float = DEFAULT_LEASE
    idle_heartbeat: float = 5.0
    request_timeout: float = 5.0
    write_window: int = 256


@dataclass(frozen=True, slots=True)
class _Event:
    tag: str
    generation: int = 0
    entry: Entry | None = None
    error: BaseException | None = None


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
        self._events: asyncio.Queue[_Event] = asyncio.Queue()
        self._generation: dict[str, int] = dict.fromkeys(WATCHED, 0)
        self._connected = False
        self._synced = False
        self._why = "not connected to NATS yet"
        self._leader_kv: KeyValue | None = None
        self._reread = False
        self._took_over = False
        self._retry_at: float | None = None
        self._due: float | None = None
        self._warm_until = 0.0
        self._orphaned: dict[str, float] = {}
        self._unassigned: tuple[str, ...] = ()
        self.passes = 0  # plans made
        self.led_passes = 0  # plans made as the leader, to be written
        self.snapshots = Snapshots(self._snapshot, clock.monotonic)  # what the status page shows

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
        """The gauges' values now: leadership, nodes and named tasks per state."""
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
            events.put_nowait(_Event(_LOST))

        nc, url = await connect_first(
            self.options,
            self.options.servers,
            error_cb=_log_error,
            disconnected_cb=lost,
            closed_cb=lost,
        )
        log.info("connected to NATS url=%s", redact(url))
        self._connected = True
        pumps: dict[str, asyncio.Task[None]] = {}
        watches: dict[str, KeyWatch] = {}
        elector: asyncio.Task[None] | None = None
        try:
            js = nc.jetstream(timeout=self.config.request_timeout)
            await init_buckets(js, lease=self.config.lease, replicas=default_replicas(nc))
            now = self._clock.monotonic()
            for bucket in WATCHED:
                await self._watch(nc, bucket, watches, pumps, now)
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
            self._leader_kv = _kv(js, LEADER)
            elector = asyncio.create_task(self.elector.run(self._leader_kv), name="elector")
            await self._loop(nc, js, watches, pumps)
        finally:
            self._connected = self._synced = False
            if elector is not None:
                elector.cancel()
                await asyncio.gather(elector, return_exceptions=True)
            self._leader_kv = None
            for pump in pumps.values():
                pump.cancel()
            await asyncio.gather(*pumps.values(), return_exceptions=True)
            for watch in watches.values():
                await watch.stop()
            with contextlib.suppress(Exception):
                await nc.close()

    async def _watch(
        self,
        nc: Client,
        bucket: str,
        watches: dict[str, KeyWatch],
        pumps: dict[str, asyncio.Task[None]],
        now: float,
    ) -> None:
        """(Re)start the watch of ``bucket`` and load its initial values as the whole picture;
        deliveries of an earlier watch of it still queued are dropped."""
        old, pump = watches.pop(bucket, None), pumps.pop(bucket, None)
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        if old is not None:
            await old.stop()
        self._generation[bucket] += 1
        for attempt in range(1, WATCH_ATTEMPTS + 1):
            watch = KeyWatch(
                nc, bucket, ">", idle_heartbeat=self.config.idle_heartbeat, timeout=WATCH_TIMEOUT
            )
            try:
                initial = await watch.start()
                break
            except BucketMissing:
                await watch.stop()
                raise
            except WatchLost as err:
                await watch.stop()
                if attempt == WATCH_ATTEMPTS:
                    raise
                log.debug("watch of %s failed, trying again: %s", bucket, err)
        watches[bucket] = watch
        self.view.load(bucket, initial, now)
        self._log_problems()
        pumps[bucket] = asyncio.create_task(
            _pump(bucket, self._generation[bucket], watch, self._events), name=f"watch-{bucket}"
        )

    async def _loop(
        self,
        nc: Client,
        js: Any,
        watches: dict[str, KeyWatch],
        pumps: dict[str, asyncio.Task[None]],
    ) -> None:
        dirty = True
        while True:
            if self._took_over:
                self._took_over = False
                # judged afresh: what a standby saw (or missed) counts against no node
                self.view.health.watching(self._clock.monotonic())
            if self._reread:
                self._reread = False
                await self._watch(nc, ASSIGNMENTS, watches, pumps, self._clock.monotonic())
                dirty = True
            if dirty:
                dirty = not await self._reconcile(js)
                self.snapshots.changed()
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
                    if ev.generation == self._generation[ev.tag]:
                        log.info("watch of %s lost (%s): watching it afresh", ev.tag, ev.error)
                        await self._watch(nc, ev.tag, watches, pumps, self._clock.monotonic())
                        dirty = True
                    continue
                if ev.tag == _LEADERSHIP:
                    dirty = True
                elif ev.entry is not None and ev.generation == self._generation.get(ev.tag):
                    dirty = self.view.apply(ev.tag, ev.entry, now) or dirty
            if dirty or any(ev.tag != NODES for ev in batch):
                self.snapshots.changed()
            elif batch:
                self.snapshots.beat()  # heartbeats that changed nothing but their time
            self._log_problems()
            if self._due is not None and now > self._due:  # time alone may have changed things
                retry = self._retry_at is not None and now >= self._retry_at
                dirty = dirty or retry or self._verdicts_changed(now)

    async def _next_event(self) -> _Event | None:
        """The next event, or None when a node's health may change or a retry is due first
        (``_due``: when; events arriving all the time do not put it off)."""
        now = self._clock.monotonic()
        due = [t for t in (self.view.health.next_change(now), self._retry_at) if t is not None]
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
        self._events.put_nowait(_Event(_LEADERSHIP))

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
            ok = await self._write(js, plan)
        ok = await self._collect_statuses(js, now) and ok
        if self.metrics is not None and not plan.empty:
            self.metrics.observe_schedule(time.perf_counter() - began)
        if not ok:
            self._retry_at = self._clock.monotonic() + RETRY_AFTER
        return ok

    async def _write(self, js: Any, plan: Plan) -> bool:
        """Write the plan, ``write_window`` writes in flight at a time, while leading (checked
        before each write). True when every write landed."""
        ops: list[Put | Delete] = [*plan.puts, *plan.deletes]
        log.info(
            "scheduling puts=%d deletes=%d unassigned=%d",
            len(plan.puts),
            len(plan.deletes),
            len(plan.unassigned),
        )
        outcome = {"conflicts": 0, "failures": 0}
        slots = asyncio.Semaphore(self.config.write_window)

        async def write(op: Put | Delete) -> None:
            try:
                await self._apply(js, op)
            except Conflict:
                outcome["conflicts"] += 1
            except Exception as err:
                outcome["failures"] += 1
                if outcome["failures"] == 1:
                    log.warning(
                        "assignment write failed key=%s.%s err=%s",
                        op.node,
                        op.task,
                        describe_error(err),
                    )
            finally:
                slots.release()

        writes: list[asyncio.Task[None]] = []
        stopped = False
        try:
            for op in ops:
                await slots.acquire()
                if not self.leading:
                    slots.release()
                    stopped = True
                    log.warning("stopped writing: no longer leading")
                    break
                writes.append(asyncio.create_task(write(op)))
            await asyncio.gather(*writes)
        finally:
            for task in writes:
                task.cancel()
        if outcome["conflicts"]:
            log.info(
                "assignments changed under the manager (%d keys): reading them again",
                outcome["conflicts"],
            )
            self._reread = True  # read the assignments afresh before the next plan
        return not stopped and not outcome["conflicts"] and not outcome["failures"]

    async def _apply(self, js: Any, op: Put | Delete) -> None:
        key = f"{op.node}.{op.task}"
        value = op.value if isinstance(op, Put) else None
        if isinstance(op, Put):
            last = op.revision or self.view.revisions.get(key, 0)
        else:
            last = op.revision
        self.view.expect(key, value)
        try:
            revision = await _publish(js, ASSIGNMENTS, key, value, last=last)
        except BaseException:
            self.view.failed(key)
            raise
        self.view.wrote(key, value, revision)
        if isinstance(op, Put):
            if op.moved_from is not None:
                log.info(
                    "task moved task=%s from=%s to=%s reason=%s",
                    op.task,
                    op.moved_from,
                    op.node,
                    op.reason,
                )
            return
        if op.reason is not None:
            if self.metrics is not None:
                self.metrics.rescheduled(op.reason)
            if op.reason is not Reason.NODE_DOWN:
                log.info("task taken off task=%s node=%s reason=%s", op.task, op.node, op.reason)
        else:
            log.debug("assignment deleted key=%s why=%s", key, op.why)

    async def _collect_statuses(self, js: Any, now: float) -> bool:
        """Delete status keys whose assignment has been gone for a grace period."""
        orphans = {k for k in self.view.statuses if k not in self.view.assignments}
        self._orphaned = {k: self._orphaned.get(k, now) for k in orphans}
        due = [k for k, since in self._orphaned.items() if now - since > self.config.grace]
        if not due:
            if self._orphaned:
                first = min(self._orphaned.values()) + self.config.grace
                self._retry_at = first if self._retry_at is None else min(self._retry_at, first)
            return True
        for start in range(0, len(due), self.config.write_window):
            if not self.leading:
                return False
            chunk = due[start : start + self.config.write_window]
            await asyncio.gather(
                *(_publish(js, STATUS, k, None, last=self._status_revision(k)) for k in chunk),
                return_exceptions=True,
            )
            for k in chunk:
                self.view.statuses.pop(k, None)
                self._orphaned.pop(k, None)
        log.debug("status keys of removed tasks deleted count=%d", len(due))
        return True

    def _status_revision(self, key: str) -> int | None:
        reported = self.view.statuses.get(key)
        return reported.revision if reported is not None else None

    def _log_problems(self) -> None:
        for problem in self.view.problems:
            log.error("rejected: %s", problem)
        self.view.problems.clear()


def _kv(js: Any, bucket: str) -> KeyValue:
    return KeyValue(
        name=bucket, stream=stream_name(bucket), pre=key_subject(bucket, ""), js=js, direct=True
    )


async def _publish(js: Any, bucket: str, key: str, value: bytes | None, *, last: int | None) -> int:
    """Put ``value`` (None: a delete marker) into ``bucket/key``; with ``last``, only if the key
    is at that revision (0: absent). Returns the new revision. Raises ``Conflict``."""
    headers: dict[str, str] = {}
    if value is None:
        headers[_HEADER_OP] = "DEL"
    if last is not None:
        headers[_HEADER_LAST] = str(last)
    try:
        ack = await js.publish(key_subject(bucket, key), value or b"", headers=headers or None)
    except APIError as err:
        if err.err_code == _WRONG_LAST_SEQUENCE:
            raise Conflict(key) from None
        raise
    return int(ack.seq)


async def _pump(tag: str, generation: int, watch: KeyWatch, events: asyncio.Queue[_Event]) -> None:
    try:
        while True:
            events.put_nowait(_Event(tag, generation, await watch.next()))
    except asyncio.CancelledError:
        raise
    except Exception as err:
        events.put_nowait(_Event(tag, generation, error=err))


async def _log_error(err: Exception) -> None:
    log.debug("NATS error: %s", str(err) or type(err).__name__)

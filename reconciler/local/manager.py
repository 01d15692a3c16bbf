"""The local manager: named desired tasks in, task instances out.

A session (the desired directory, or the fleet on NATS) delivers *named* tasks. The worker runs
task *instances*: ``Task`` values with their own ids, each carried out by one container. The
local manager owns the mapping between the two, which is what SwarmKit's manager-side
orchestrator does for a node; here it runs inside the agent, so an edge host keeps the same
semantics online, offline or with a plain directory.

It is split the way controller-runtime splits a reconciler from its controller:

* ``decide`` (``reconciler.local.decide``) is the pure decision for one name: instances,
  history, and the order of its rules, each in a module of its own (``updates``,
  ``restart``, ``dependencies``, ``adoption``). Read it for *what* happens.
* ``records`` are the immutable values kept per name and how they are stored;
  ``views`` is how operators see them.
* This module is the small driver: *when* and *with what*. It holds the records and what the
  worker reported, a lock, the restart timers and the store flush, and it sends the worker one
  full assignment per round listing every instance kept (current and history; desired
  ``running`` or ``shutdown``). Whatever is left out, the worker deletes with its container:
  that is how pruned history and removed names go away.

Why everything is stored: an agent restart must change nothing and replace no container. The
last valid desired set and one record per name live in the store's metadata (``lm/``), written
in one synced batch before each assignment, so a crash between the two steps of a replacement
resumes it and never leaves two instances of a name running. Restart deadlines are wall-clock
times in the record; the in-process wait uses the clock's monotonic ``sleep``, bounded by the
policy's longest delay in case the wall clock jumped.

**Adoption** (after the store was created or rebuilt, ``adopt()``): the runtime's containers
are recorded for the names they belong to (``reconciler.local.adoption``), and nothing is
decided until a desired set has been read (the desired set is unknown until then).

Concurrency: ``on_status`` is a synchronous Worker listener. It only records the status and
marks the name dirty; one background round, under a lock shared with ``set_desired``, decides
for dirty names, writes the records that changed, and sends at most one full assignment.
Decisions are level-based on the latest status and the stored record, so replayed statuses
(``Worker.listen`` replays every stored one) change nothing. A failed round (a full disk, say)
is retried with backoff, or at once by ``retry_now()``.

This module imports no I/O library; persistence goes through the core's ``Store`` protocol
(``reconciler.core.store``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from reconciler.core.backoff import Backoff, Retry
from reconciler.core.clock import Clock
from reconciler.core.executor import RuntimeContainer
from reconciler.core.model import Assignment, Task, TaskSpec, TaskState, TaskStatus
from reconciler.core.session import DesiredTask
from reconciler.core.snapshot import TaskView
from reconciler.core.store import ADOPT_PENDING, Store
from reconciler.core.supervisor import describe_error
from reconciler.local.adoption import adopt
from reconciler.local.decide import HISTORY_LIMIT, Decision, decide
from reconciler.local.dependencies import dependents, peers
from reconciler.local.draft import Refuses
from reconciler.local.records import (
    DESIRED_KEY,
    Instance,
    NameRecord,
    Seen,
    check_records,
    desired_to_json,
    load_records,
    record_key,
)
from reconciler.local.updates import RESOURCES_REPLACED
from reconciler.local.views import views, views_from_store

__all__ = [
    "HISTORY_LIMIT",
    "RESOURCES_REPLACED",
    "LocalManager",
    "check_records",
    "views_from_store",
]

log = logging.getLogger(__name__)

ROUND_BACKOFF = Backoff(initial=0.5, cap=10.0)
"""How a failed round (the store or the worker refused) is retried."""

COALESCE = 0.05
"""Pending restarts due within this many seconds of a firing one are made in the same round."""

Assign = Callable[[Assignment], Awaitable[None]]


class LocalManager:
    """Turns named desired tasks into task instances; see the module docstring."""

    def __init__(
        self,
        store: Store,
        *,
        node_id: str,
        clock: Clock,
        assign: Assign,
        history_limit: int = HISTORY_LIMIT,
        refuses: Refuses | None = None,
    ) -> None:
        self._store = store
        self._refuses = refuses
        self._node_id = node_id
        self._clock = clock
        self._assign = assign
        self._history_limit = max(0, history_limit)
        self._desired: dict[str, DesiredTask] = {}
        self._desired_known = False  # a desired set was ever stored (see adoption)
        self._records: dict[str, NameRecord] = {}
        self._seen: dict[str, Seen] = {}  # by instance id
        self._index: dict[str, str] = {}  # instance id -> name
        self._tasks_cache: dict[str, tuple[Instance, Task]] = {}
        self._dirty: set[str] = set()  # names to decide for
        self._write: set[str] = set()  # names whose record must be written
        self._write_desired = False
        self._need_assign = False
        self._due: set[str] = set()  # names whose restart wait has been served
        self._dependents: dict[str, set[str]] = {}  # name -> the names that depend on it
        self._timers: dict[str, tuple[float, asyncio.Task[None]]] = {}
        self._runner: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._loaded = False
        self._closed = False
        self._retrying = False
        self._paused = False

    # --------------------------------------------------------------------------- API

    @property
    def desired(self) -> Mapping[str, DesiredTask]:
        """The last valid desired set (as stored); empty before ``start()``."""
        return dict(self._desired)

    async def start(self) -> None:
        """Load the stored state, resume what was in flight, and send one full assignment.

        Resumes an in-flight replacement and pending restarts (the wait is what remains of
        the stored wall-clock deadline). With nothing in flight, the assignment equals what
        the worker already holds, so no container is touched. Call it once, after
        ``Worker.init()``; ``Worker.listen(on_status)`` may come before or after. Raises
        ``StoreCorrupt`` if the stored state is unreadable, and whatever the ``assign``
        callable raises.
        """
        async with self._lock:
            self._load_state()
            if self._desired_known:
                self._dirty.update(self._records.keys() | self._desired.keys())
            self._need_assign = True
            await self._process()

    async def adopt(self, containers: list[RuntimeContainer]) -> int:
        """Record the runtime's containers after the store was created or rebuilt.

        The newest container of each task name is adopted for it (older ones are orphans);
        names that already have records are left alone. The records and the end of the
        store's adopt-pending mark are written in one synced batch. Returns how many names
        were adopted. Call it before ``start()``. Raises ``StoreError`` if the write fails.
        """
        async with self._lock:
            self._load_state()
            adopted = adopt(containers, self._records)
            meta: list[tuple[str, Any]] = [(record_key(n), r.to_json()) for n, r in adopted.items()]
            self._store.apply_assignment((), (), meta=[*meta, (ADOPT_PENDING, None)])
            self._records.update(adopted)
            for name, rec in adopted.items():
                assert rec.adopted is not None
                log.info(
                    "adopted container name=%s id=%s running=%s",
                    name,
                    rec.adopted.task_id,
                    rec.adopted.running,
                )
            return len(adopted)

    async def set_desired(self, tasks: Mapping[str, DesiredTask]) -> None:
        """Make ``tasks`` (a new, valid, full desired set keyed by name) the desired state.

        The set is stored (synced, in one batch with the name records it changes) before the
        resulting full assignment is sent; it returns once that assignment was handed to the
        worker. Names no longer present lose all their instances. Idempotent: an equal set
        changes nothing. Raises whatever the store or the ``assign`` callable raises (the
        state is kept, and the next round resends).
        """
        async with self._lock:
            if self._closed:
                return
            self._load_state()
            new = dict(tasks)
            if not self._desired_known:
                # The first desired set ever (or since a store rebuild): every name counts,
                # adopted ones included, and the set is stored even when empty.
                self._desired_known = True
                self._write_desired = True
                self._dirty.update(self._records.keys() | new.keys())
            for name in self._desired.keys() | new.keys():
                if self._desired.get(name) != new.get(name):
                    self._dirty.add(name)
                    self._write_desired = True
            self._desired = new
            self._index_dependents()
            await self._process()

    def on_status(self, task_id: str, status: TaskStatus) -> None:
        """A ``Worker`` listener: note a status change of any instance.

        Synchronous and cheap; decisions run in a background round on the running loop.
        Idempotent under replays; statuses of unknown ids, statuses that would move an
        instance backwards, and anything before ``start()`` or after ``close()`` are ignored
        (``start()`` reads the stored statuses itself).
        """
        if not self._loaded or self._closed:
            return
        name = self._index.get(task_id)
        if name is None:
            return
        old = self._seen.get(task_id, Seen())
        if old.status is not None and (status.state < old.status.state or status == old.status):
            return
        self._seen[task_id] = Seen(status, old.gone)
        rec = self._records[name]
        cur = rec.current
        first_run = (
            cur is not None
            and cur.id == task_id
            and cur.started_at is None
            and status.state == TaskState.RUNNING
        )
        replacement = rec.pending is not None and rec.pending.id == task_id
        if status.state.terminal or status.update_failed or first_run or replacement:
            self._dirty.add(name)
            if first_run or status.state.terminal:
                self._dirty.update(self._dependents.get(name, ()))
            self._kick()

    def pause(self, paused: bool) -> None:
        """Hold (``True``) or release the start of names that have no instance yet.

        A paused node starts no new tasks: a name added while paused gets its first instance
        once released. Names that have an instance keep running, restarting and being updated
        or replaced as usual. In memory only; idempotent.
        """
        if paused == self._paused:
            return
        self._paused = paused
        if not paused and self._loaded:
            records = self._records
            held = [n for n in self._desired if n not in records or records[n].current is None]
            self._dirty.update(held)
            self._kick()

    def views(self) -> list[TaskView]:
        """The current instance of every name and its history, as operators see them.

        Sorted by name; per name the current instance first, then history newest first.
        ``restarts`` is the name's restart counter. A pure read of memory.
        """
        return views(self._records, self._seen)

    def restarts(self) -> dict[str, int]:
        """Replacements made by the restart policy so far, per name (stored counters)."""
        return {name: rec.restarts for name, rec in self._records.items()}

    def retry_now(self) -> None:
        """Run a round now if one is waiting out its backoff (the store works again)."""
        if self._retrying and self._runner is not None:
            self._runner.cancel()
            self._runner = None
            self._retrying = False
        if self._dirty or self._write or self._need_assign or self._write_desired:
            self._kick()

    async def close(self) -> None:
        """Cancel the restart timers and the background round. Idempotent.

        Containers are not touched; stored state stays as it is, for the next ``start()``.
        """
        self._closed = True
        pending = [t for _, t in self._timers.values()]
        self._timers.clear()
        if self._runner is not None:
            pending.append(self._runner)
            self._runner = None
        for t in pending:
            t.cancel()
        for t in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # ------------------------------------------------------------------------ loading

    def _load_state(self) -> None:
        if self._loaded:
            return
        desired, records, seen = load_records(self._store)
        self._desired = desired or {}
        self._index_dependents()
        self._desired_known = desired is not None
        self._records = records
        self._seen = seen
        for name, rec in records.items():
            for inst in rec.instances():
                self._index[inst.id] = name
        self._loaded = True

    # -------------------------------------------------------------------- processing

    def _kick(self) -> None:
        if self._closed:
            return
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        retry = Retry(ROUND_BACKOFF, clock=self._clock)
        while not self._closed:
            try:
                async with self._lock:
                    await self._process()
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:
                # The store (a full disk) or the worker failed; decisions are level-based,
                # so a later round simply does the same work again.
                log.warning("local manager round failed; retrying err=%s", describe_error(err))
            self._retrying = True
            try:
                await retry.wait()
            finally:
                self._retrying = False

    async def _process(self) -> None:
        """Decide for dirty names, store what changed, then send one full assignment."""
        while not self._closed:
            dirty, self._dirty = self._dirty, set()
            if self._desired_known:
                for name in dirty:
                    self._decide(name)
            self._flush()
            if self._need_assign:
                self._need_assign = False
                try:
                    await self._assign(Assignment.complete(self._tasks()))
                except BaseException:
                    self._need_assign = True
                    raise
            if not self._dirty:
                return

    def _decide(self, name: str) -> None:
        old = self._records.get(name)
        due = name in self._due
        decision = decide(
            name,
            old,
            self._desired.get(name),
            self._seen,
            now=self._clock.time(),
            due=due,
            new_id=self._new_id,
            history_limit=self._history_limit,
            hold_new=self._paused,
            peers=peers(self._spec(name), self._records, self._seen),
            refuses=self._refuses,
        )
        self._due.discard(name)
        for event in decision.events:
            log.info(event)
        self._take(name, old, decision)

    def _spec(self, name: str) -> TaskSpec | None:
        d = self._desired.get(name)
        return d.spec if d is not None else None

    def _index_dependents(self) -> None:
        """Who depends on whom, so that a change of one name re-decides its dependents."""
        self._dependents = dependents(self._desired)

    def rollbacks(self) -> dict[str, int]:
        """Rollbacks made so far, per name (stored counters)."""
        return {name: rec.rollbacks for name, rec in self._records.items() if rec.rollbacks}

    def _take(self, name: str, old: NameRecord | None, decision: Decision) -> None:
        """Make a decision the driver's state: records, index, timers, what to write."""
        new = decision.record
        if decision.assign:
            self._need_assign = True
        if new != old:
            self._write.add(name)
        kept = {i.id for i in new.instances()} if new is not None else set()
        if old is not None:
            for inst in old.instances():
                if inst.id not in kept:
                    self._forget(inst.id)
        if new is None:
            self._records.pop(name, None)
            self._cancel_timer(name)
            return
        self._records[name] = new
        for inst in new.instances():
            self._index[inst.id] = name
            if inst.initial is not None and inst.id not in self._seen:
                self._seen[inst.id] = Seen(inst.initial)
        deadlines = [t for t in (new.restart_at, new.monitor_until) if t is not None]
        if not deadlines:
            self._cancel_timer(name)
        elif decision.requeue_after is not None:
            self._ensure_timer(name, min(deadlines), decision.requeue_after)

    def _forget(self, task_id: str) -> None:
        self._index.pop(task_id, None)
        self._seen.pop(task_id, None)
        self._tasks_cache.pop(task_id, None)

    def _flush(self) -> None:
        meta: list[tuple[str, Any]] = []
        if self._write_desired:
            meta.append((DESIRED_KEY, desired_to_json(self._desired)))
        for name in self._write:
            rec = self._records.get(name)
            meta.append((record_key(name), rec.to_json() if rec is not None else None))
        if meta:
            self._store.apply_assignment((), (), meta=meta)
        self._write_desired = False
        self._write.clear()

    def _tasks(self) -> list[Task]:
        """Every instance kept, as tasks; cached per instance value, so an assignment costs a
        list of references."""
        tasks: list[Task] = []
        for rec in self._records.values():
            for inst in rec.instances():
                if inst.held:
                    continue  # waiting for its dependencies: not the worker's yet
                hit = self._tasks_cache.get(inst.id)
                if hit is None or hit[0] is not inst:
                    hit = (inst, inst.task(self._node_id))
                    self._tasks_cache[inst.id] = hit
                tasks.append(hit[1])
        return tasks

    def _new_id(self) -> str:
        iid = secrets.token_hex(6)
        while iid in self._index or iid in self._store:
            iid = secrets.token_hex(6)
        return iid

    # ------------------------------------------------------------------------- timers

    def _ensure_timer(self, name: str, deadline: float, wait: float) -> None:
        have = self._timers.get(name)
        if (have is not None and have[0] == deadline) or self._closed:
            return
        self._cancel_timer(name)
        task = asyncio.get_running_loop().create_task(
            self._timer(name, deadline, wait), name=f"restart-{name}"
        )
        self._timers[name] = (deadline, task)

    def _cancel_timer(self, name: str) -> None:
        have = self._timers.pop(name, None)
        if have is not None:
            have[1].cancel()
        self._due.discard(name)

    async def _timer(self, name: str, deadline: float, wait: float) -> None:
        await self._clock.sleep(wait)
        self._timers.pop(name, None)
        rec = self._records.get(name)
        if rec is None:
            return
        if rec.restart_at != deadline:
            self._dirty.add(name)  # a monitor ended: judge the instance
            self._kick()
            return
        due = [name]
        # Restarts due within a moment join this round: after a burst of failures (podman
        # restarted, host rebooted) that is one full assignment instead of one per name.
        horizon = self._clock.time() + COALESCE
        for other, (other_deadline, timer) in list(self._timers.items()):
            other_rec = self._records.get(other)
            restarting = other_rec is not None and other_rec.restart_at == other_deadline
            if other_deadline <= horizon and restarting:
                del self._timers[other]
                timer.cancel()
                due.append(other)
        self._due.update(due)
        self._dirty.update(due)
        self._kick()

"""The local manager: named desired tasks in, task instances out.

A session (the desired directory, or the fleet on NATS) delivers *named* tasks. The worker runs
task *instances*: ``Task`` values with their own ids, each carried out by one container. This
module owns the mapping between the two, which is what SwarmKit's manager-side orchestrator
does for a node; here it runs inside the agent, so an edge host keeps the same semantics
online, offline or with a plain directory. It owns:

* **Instances.** One *current* instance per name, plus up to ``history_limit`` ended ones. Each
  instance has a 12-hex-digit id, stable for its life.
* **Full assignments.** Every change the worker must see is sent as one full assignment
  listing every instance kept, current and history, desired ``running`` or ``shutdown``
  (history is always ``shutdown``). Whatever is left out, the worker deletes with its
  container: that is how pruned history and removed names go away.
* **Changes.** ``resources`` alone updates the current instance in place; if the runtime
  reports that it could not (``taskmanager.UPDATE_FAILED``), the instance is replaced and its
  message says so. ``desiredState: shutdown`` stops the current instance and keeps it; back to
  ``running`` starts a new one. Any other change replaces the instance *stop-first*, in two
  stored steps: (1) the old instance goes to desired ``shutdown``; (2) once it has ended (any
  terminal state, or its record is gone) it moves to the history and the new instance is
  assigned. Step 1 is stored before it is assigned, so a crash between the steps resumes the
  replacement and never leaves two instances of a name running.
* **Restart policy.** An instance that ends (``complete``, ``failed``, ``rejected``; a removed
  container arrives as ``failed``) while desired ``running`` is replaced per ``restart``:
  ``any``, ``on-failure`` (not after ``complete``) or ``none``. After a ``complete`` the delay
  is exactly ``delay`` and the backoff resets; after a failure it doubles per consecutive
  failure, capped at ``maxDelay``; an instance that ran for 10 minutes resets the backoff.
  ``maxAttempts`` caps replacements within ``window`` (0: ever). A spec change starts a fresh
  policy (backoff and attempts reset), as SwarmKit does when a service's spec version changes.
  ``restarts`` counts replacements made by the restart policy, per name.

Why all of it is stored: an agent restart must change nothing and replace no container. The
last valid desired set, and one record per name (instances with their specs, restart counter,
backoff state, the deadline of a pending restart, an in-flight replacement) live in the store's
metadata under ``lm/``. The store is written (synced, one batch) before each assignment.
Backoff deadlines are stored as wall-clock times; the in-process wait uses the clock's
monotonic ``sleep`` (bounded by the policy's maximum delay, in case the wall clock jumped).

Concurrency: ``on_status`` is a synchronous Worker listener. It only records the status and
marks the name dirty; one background task, under a lock shared with ``set_desired``,
evaluates dirty names, writes their records, and sends at most one full assignment per round.
Evaluation is level-based on the latest status and the stored record, so replayed statuses
(``Worker.listen`` replays every stored one) change nothing.

This module imports no I/O library; persistence goes through ``reconciler.store.Store``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.clock import Clock
from reconciler.errors import StoreError
from reconciler.model import (
    Assignment,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    spec_from_dict,
    spec_to_dict,
)
from reconciler.session import DesiredTask
from reconciler.snapshot import TaskView
from reconciler.store import Store
from reconciler.taskmanager import UPDATE_FAILED

__all__ = [
    "HISTORY_LIMIT",
    "META_PREFIX",
    "RESET_AFTER",
    "RESOURCES_REPLACED",
    "LocalManager",
    "views_from_store",
]

log = logging.getLogger(__name__)

META_PREFIX = "lm/"
"""Every metadata key the local manager writes starts with this."""
_DESIRED_KEY = META_PREFIX + "desired"
_NAME_PREFIX = META_PREFIX + "n/"

HISTORY_LIMIT = 5
"""Ended instances kept per name, by default."""

RESET_AFTER = 600.0
"""An instance that ran this long (seconds) resets its name's failure backoff."""

RESOURCES_REPLACED = "resources could not be updated in place; instance replaced"
"""The message shown on both instances when a resources change fell back to a replacement."""

_COALESCE = 0.05
"""Pending restarts due within this many seconds of a firing one are made in the same round."""

_RUNNING = TaskState.RUNNING
_SHUTDOWN = TaskState.SHUTDOWN

Assign = Callable[[Assignment], Awaitable[None]]


# ------------------------------------------------------------------------------- state


@dataclass(eq=False, slots=True)
class _Instance:
    """One task instance as the manager keeps it. ``status`` is observed, never stored here."""

    id: str
    spec: TaskSpec
    desired: TaskState
    created: float
    note: str = ""
    started_at: float | None = None  # timestamp of its running status
    end_handled: bool = False  # the restart policy has judged its end
    status: TaskStatus | None = None
    gone: bool = False  # its record vanished from the store (counts as ended)
    update_failed: bool = False  # an in-place update was reported as failed
    _task: Task | None = None
    _spec_json: dict[str, Any] | None = None

    def set_spec(self, spec: TaskSpec) -> None:
        self.spec = spec
        self._task = None
        self._spec_json = None

    def set_desired(self, desired: TaskState) -> None:
        self.desired = desired
        self._task = None

    def task(self, node_id: str) -> Task:
        """The task to assign; cached, so a full assignment costs a list of references."""
        if self._task is None:
            status = TaskStatus(TaskState.NEW, self.created, self.note)
            self._task = Task(self.id, self.spec, self.desired, status, node_id)
        return self._task

    def ended(self) -> bool:
        return self.gone or (self.status is not None and self.status.state.terminal)

    def to_json(self) -> dict[str, Any]:
        if self._spec_json is None:
            self._spec_json = spec_to_dict(self.spec)
        d: dict[str, Any] = {
            "id": self.id,
            "spec": self._spec_json,
            "desired": int(self.desired),
            "created": self.created,
        }
        if self.note:
            d["note"] = self.note
        if self.started_at is not None:
            d["startedAt"] = self.started_at
        if self.end_handled:
            d["endHandled"] = True
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Instance:
        return cls(
            id=d["id"],
            spec=spec_from_dict(d["spec"]),
            desired=TaskState(d["desired"]),
            created=float(d["created"]),
            note=d.get("note", ""),
            started_at=d.get("startedAt"),
            end_handled=bool(d.get("endHandled", False)),
        )


@dataclass(eq=False, slots=True)
class _Name:
    """Everything kept for one named task."""

    name: str
    current: _Instance | None = None
    history: list[_Instance] = field(default_factory=list)  # newest first
    restarts: int = 0  # replacements made by the restart policy
    failures: int = 0  # consecutive failures, for the backoff
    restart_at: float | None = None  # wall-clock deadline of a pending restart
    attempts: list[float] = field(default_factory=list)  # wall-clock times, for maxAttempts
    replacing: bool = False  # step 1 of a stop-first replacement is done
    replace_note: str = ""  # the note the new instance gets

    def instances(self) -> Iterator[_Instance]:
        if self.current is not None:
            yield self.current
        yield from self.history

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "current": self.current.to_json() if self.current is not None else None,
            "history": [i.to_json() for i in self.history],
            "restarts": self.restarts,
            "failures": self.failures,
            "restartAt": self.restart_at,
            "attempts": self.attempts,
            "replacing": None,
        }
        if self.replacing:
            old = self.current.id if self.current is not None else None
            d["replacing"] = {"old": old, "note": self.replace_note}
        return d

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> _Name:
        cur = d.get("current")
        rep = d.get("replacing")
        return cls(
            name=name,
            current=_Instance.from_json(cur) if cur is not None else None,
            history=[_Instance.from_json(i) for i in d.get("history", ())],
            restarts=int(d.get("restarts", 0)),
            failures=int(d.get("failures", 0)),
            restart_at=d.get("restartAt"),
            attempts=[float(t) for t in d.get("attempts", ())],
            replacing=rep is not None,
            replace_note=rep.get("note", "") if rep is not None else "",
        )


def _desired_to_json(desired: Mapping[str, DesiredTask]) -> dict[str, Any]:
    return {
        name: {"spec": spec_to_dict(t.spec), "desiredState": int(t.desired_state)}
        for name, t in desired.items()
    }


def _load(store: Store) -> tuple[dict[str, DesiredTask], dict[str, _Name]]:
    """The stored desired set and name records, each instance with its stored status."""
    try:
        raw = store.get_meta(_DESIRED_KEY) or {}
        desired = {
            name: DesiredTask(spec_from_dict(v["spec"]), TaskState(v["desiredState"]))
            for name, v in raw.items()
        }
        names = {key: _Name.from_json(key, rec) for key, rec in store.walk_meta(_NAME_PREFIX)}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise StoreError(f"the local manager's state in {store.path} is unreadable: {err}") from err
    for st in names.values():
        for inst in st.instances():
            inst.status = store.get_status(inst.id)
    return desired, names


def _view(inst: _Instance, restarts: int, current: bool) -> TaskView:
    status = inst.status or TaskStatus(TaskState.NEW, inst.created)
    message: str | None = status.message or None
    if inst.note and (not current or (status.state < TaskState.COMPLETE and status.err is None)):
        message = inst.note
    return TaskView(
        name=inst.spec.name,
        id=inst.id,
        desired_state=inst.desired,
        state=status.state,
        message=message,
        err=status.err,
        container_id=status.container_id,
        exit_code=status.exit_code,
        updated_at=status.timestamp,
        restarts=restarts,
        current=current,
        image=inst.spec.image,
    )


def _views(names: Mapping[str, _Name]) -> list[TaskView]:
    out: list[TaskView] = []
    for name in sorted(names):
        st = names[name]
        if st.current is not None:
            out.append(_view(st.current, st.restarts, True))
        out.extend(_view(i, st.restarts, False) for i in st.history)
    return out


def views_from_store(store: Store) -> list[TaskView]:
    """The views ``LocalManager.views()`` gives, read from a store (read-only is fine).

    For ``reconciler ps`` while the agent is not running. Reads only; raises ``StoreError``
    if the local manager's records are unreadable.
    """
    _, names = _load(store)
    return _views(names)


# ----------------------------------------------------------------------------- manager


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
    ) -> None:
        self._store = store
        self._node_id = node_id
        self._clock = clock
        self._assign = assign
        self._history_limit = max(0, history_limit)
        self._desired: dict[str, DesiredTask] = {}
        self._names: dict[str, _Name] = {}
        self._index: dict[str, tuple[_Name, _Instance]] = {}
        self._dirty: set[str] = set()  # names to evaluate
        self._write: set[str] = set()  # names whose record must be written
        self._write_desired = False
        self._need_assign = False
        self._due: set[str] = set()  # names whose restart delay has passed
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._runner: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._loaded = False
        self._closed = False

    # --------------------------------------------------------------------------- API

    @property
    def desired(self) -> Mapping[str, DesiredTask]:
        """The last valid desired set (as stored); empty before ``start()``."""
        return dict(self._desired)

    async def start(self) -> None:
        """Load the stored state, resume what was in flight, and send one full assignment.

        Resumes an in-flight replacement (its old instance is shut down if it is not yet,
        and the new one assigned once the old one has ended) and pending restarts (the wait
        is what remains of the stored wall-clock deadline). With nothing in flight, the
        assignment equals what the worker already holds, so no container is touched.
        Call it once, after ``Worker.init()``; ``Worker.listen(on_status)`` may come before
        or after. Raises ``StoreError`` if the stored state is unreadable, and whatever the
        ``assign`` callable raises.
        """
        async with self._lock:
            self._load_state()
            self._dirty.update(self._names.keys() | self._desired.keys())
            self._need_assign = True
            await self._process()

    async def set_desired(self, tasks: Mapping[str, DesiredTask]) -> None:
        """Make ``tasks`` (a new, valid, full desired set keyed by name) the desired state.

        The set is stored (synced, in one batch with the name records it changes) before the
        resulting full assignment is sent; it returns once that assignment was handed to the
        worker. Names no longer present lose all their instances. Idempotent: an equal set
        changes nothing. Raises whatever the ``assign`` callable raises (the state is stored,
        and the next round resends).
        """
        async with self._lock:
            if self._closed:
                return
            self._load_state()
            new = dict(tasks)
            for name in self._desired.keys() | new.keys():
                if self._desired.get(name) != new.get(name):
                    self._dirty.add(name)
                    self._write_desired = True
            self._desired = new
            await self._process()

    def on_status(self, task_id: str, status: TaskStatus) -> None:
        """A ``Worker`` listener: note a status change of any instance.

        Synchronous and cheap; decisions run in a background task on the running loop.
        Idempotent under replays; statuses of unknown ids, statuses that would move an
        instance backwards, and anything before ``start()`` or after ``close()`` are ignored
        (``start()`` reads the stored statuses itself).
        """
        if not self._loaded or self._closed:
            return
        hit = self._index.get(task_id)
        if hit is None:
            return
        st, inst = hit
        old = inst.status
        if old is not None and (status.state < old.state or status == old):
            return
        inst.status = status
        dirty = False
        if status.state == _RUNNING and inst.started_at is None:
            inst.started_at = status.timestamp
            self._write.add(st.name)
            dirty = True
        if status.message == UPDATE_FAILED:
            inst.update_failed = True
            dirty = True
        if status.state.terminal:
            dirty = True
        if dirty:
            self._dirty.add(st.name)
            self._kick()

    def views(self) -> list[TaskView]:
        """The current instance of every name and its history, as operators see them.

        Sorted by name; per name the current instance first, then history newest first.
        ``restarts`` is the name's restart counter. A pure read of memory.
        """
        return _views(self._names)

    def restarts(self) -> dict[str, int]:
        """Replacements made by the restart policy so far, per name (stored counters)."""
        return {name: st.restarts for name, st in self._names.items()}

    async def close(self) -> None:
        """Cancel the restart timers and the background round. Idempotent.

        Containers are not touched; stored state stays as it is, for the next ``start()``.
        """
        self._closed = True
        pending = [*self._timers.values()]
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
        desired, names = _load(self._store)
        self._desired = desired
        self._names = names
        for st in names.values():
            for inst in st.instances():
                self._index[inst.id] = (st, inst)
                status = inst.status
                if status is None:
                    continue
                if status.state == _RUNNING and inst.started_at is None:
                    inst.started_at = status.timestamp
                if status.message == UPDATE_FAILED:
                    inst.update_failed = True
            cur = st.current
            if st.replacing and cur is not None and cur.id not in self._store:
                cur.gone = True
        self._loaded = True

    # -------------------------------------------------------------------- processing

    def _kick(self) -> None:
        if self._closed:
            return
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        retry = 1.0
        while not self._closed:
            try:
                async with self._lock:
                    await self._process()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # The store or the worker failed; the state is level-based, so a later
                # round simply does the same work again.
                log.exception("local manager round failed; retrying in %.0fs", retry)
            await self._clock.sleep(retry)
            retry = min(retry * 2.0, 30.0)

    async def _process(self) -> None:
        """Evaluate dirty names, store what changed, then send one full assignment."""
        while not self._closed:
            dirty, self._dirty = self._dirty, set()
            for name in dirty:
                self._evaluate(name)
            self._flush()
            if self._need_assign:
                self._need_assign = False
                tasks = self._tasks()
                try:
                    await self._assign(Assignment.complete(tasks))
                except BaseException:
                    self._need_assign = True
                    raise
            if not self._dirty:
                return

    def _flush(self) -> None:
        meta: list[tuple[str, Any]] = []
        if self._write_desired:
            meta.append((_DESIRED_KEY, _desired_to_json(self._desired)))
        for name in self._write:
            st = self._names.get(name)
            meta.append((_NAME_PREFIX + name, st.to_json() if st is not None else None))
        if meta:
            self._store.apply_assignment((), (), meta=meta)
        self._write_desired = False
        self._write.clear()

    def _tasks(self) -> list[Task]:
        node = self._node_id
        tasks: list[Task] = []
        for st in self._names.values():
            if st.current is not None:
                tasks.append(st.current.task(node))
            tasks.extend(i.task(node) for i in st.history)
        return tasks

    # -------------------------------------------------------------------- evaluation

    def _changed(self, st: _Name, *, assign: bool = False) -> None:
        self._write.add(st.name)
        if assign:
            self._need_assign = True

    def _evaluate(self, name: str) -> None:
        d = self._desired.get(name)
        st = self._names.get(name)
        if d is None:
            if st is not None:
                self._drop(st)
            return
        if st is None:
            st = self._names[name] = _Name(name)
            self._changed(st)
        if len(st.history) > self._history_limit:  # the limit was lowered since last time
            for dropped in st.history[self._history_limit :]:
                self._index.pop(dropped.id, None)
            del st.history[self._history_limit :]
            self._changed(st, assign=True)
        for _ in range(8):  # a step may enable the next one (e.g. the old one already ended)
            if not self._step(st, d):
                return

    def _step(self, st: _Name, d: DesiredTask) -> bool:
        """One decision for one name. Returns whether another step may follow."""
        cur = st.current
        if cur is None:
            self._new_instance(st, d, "")
            return False

        if d.desired_state >= _SHUTDOWN:
            # Stop the current instance and keep it; nothing restarts it. Spec changes wait
            # for the instance that ``running`` starts.
            if st.replacing:
                st.replacing, st.replace_note = False, ""
                self._changed(st)
            self._cancel_restart(st)
            if cur.desired != _SHUTDOWN:
                cur.set_desired(_SHUTDOWN)
                self._changed(st, assign=True)
                log.info("stopping instance name=%s id=%s", st.name, cur.id)
            return False

        if not st.replacing and cur.desired == _SHUTDOWN:
            # Back to running after a shutdown: a new instance, once the old one has stopped.
            st.replacing, st.replace_note = True, ""
            self._changed(st)

        if st.replacing:
            if cur.desired != _SHUTDOWN:
                cur.set_desired(_SHUTDOWN)
                self._changed(st, assign=True)
            if not cur.ended():
                return False
            note = st.replace_note
            st.replacing, st.replace_note = False, ""
            self._retire(st, cur)
            new = self._new_instance(st, d, note)
            log.info("replaced instance name=%s old=%s new=%s", st.name, cur.id, new.id)
            return False

        if cur.spec != d.spec:
            if cur.spec.fields_differing(d.spec) == ["resources"]:
                cur.set_spec(d.spec)
                cur.update_failed = False
                self._changed(st, assign=True)
                log.info("updating instance in place name=%s id=%s", st.name, cur.id)
                return False
            self._begin_replacement(st, "")
            return True

        if cur.update_failed and not cur.ended():
            cur.note = RESOURCES_REPLACED
            self._begin_replacement(st, RESOURCES_REPLACED)
            return True

        if cur.ended():
            return self._restart_policy(st, d, cur)
        return False

    def _begin_replacement(self, st: _Name, note: str) -> None:
        """Step 1 of a stop-first replacement; stored before it is assigned."""
        cur = st.current
        assert cur is not None
        self._cancel_restart(st)
        st.failures = 0
        st.attempts = []
        st.replacing, st.replace_note = True, note
        if cur.desired != _SHUTDOWN:
            cur.set_desired(_SHUTDOWN)
            self._need_assign = True
        self._changed(st)
        log.info("replacing instance name=%s old=%s (stopping it first)", st.name, cur.id)

    def _restart_policy(self, st: _Name, d: DesiredTask, cur: _Instance) -> bool:
        if st.restart_at is not None:
            if st.name in self._due:
                self._due.discard(st.name)
                self._restart(st, d, cur)
            else:
                self._ensure_timer(st, d)
            return False
        if cur.end_handled:
            return False
        status = cur.status or TaskStatus(TaskState.FAILED)
        policy = d.spec.restart
        complete = status.state == TaskState.COMPLETE and not cur.gone
        restart = policy.condition == "any" or (policy.condition == "on-failure" and not complete)
        now = self._clock.time()
        if restart and policy.max_attempts > 0:
            recent = [t for t in st.attempts if policy.window <= 0 or t > now - policy.window]
            if len(recent) >= policy.max_attempts:
                restart = False
                log.info(
                    "restart limit reached name=%s attempts=%d window=%s",
                    st.name,
                    len(recent),
                    policy.window,
                )
        cur.end_handled = True
        self._changed(st)
        if not restart:
            return False
        if complete:
            st.failures = 0
            delay = policy.delay
        else:
            ran = (
                status.timestamp - cur.started_at
                if cur.started_at is not None and not cur.gone
                else 0.0
            )
            if ran >= RESET_AFTER:
                st.failures = 0
            st.failures += 1
            cap = max(policy.max_delay, policy.delay)
            delay = min(cap, policy.delay * 2.0 ** min(st.failures - 1, 64))
        st.restart_at = now + delay
        log.info(
            "instance ended name=%s id=%s state=%s restart_in=%.3fs",
            st.name,
            cur.id,
            status.state.label,
            delay,
        )
        self._ensure_timer(st, d)
        return False

    def _restart(self, st: _Name, d: DesiredTask, cur: _Instance) -> None:
        st.restart_at = None
        st.restarts += 1
        policy = d.spec.restart
        if policy.max_attempts > 0:
            st.attempts = [*st.attempts, self._clock.time()][-policy.max_attempts :]
        self._retire(st, cur)
        new = self._new_instance(st, d, "")
        log.info(
            "restarted name=%s old=%s new=%s restarts=%d", st.name, cur.id, new.id, st.restarts
        )

    def _ensure_timer(self, st: _Name, d: DesiredTask) -> None:
        name = st.name
        if st.restart_at is None or name in self._timers or self._closed:
            return
        policy = d.spec.restart
        limit = max(policy.delay, policy.max_delay)
        wait = min(max(0.0, st.restart_at - self._clock.time()), limit)
        deadline = st.restart_at
        self._timers[name] = asyncio.get_running_loop().create_task(
            self._timer(name, deadline, wait), name=f"restart-{name}"
        )

    async def _timer(self, name: str, deadline: float, wait: float) -> None:
        await self._clock.sleep(wait)
        self._timers.pop(name, None)
        st = self._names.get(name)
        if st is None or st.restart_at != deadline:
            return
        due = [name]
        # Restarts due within a moment join this round: after a burst of failures (podman
        # restarted, host rebooted) that is one full assignment instead of one per name.
        horizon = self._clock.time() + _COALESCE
        for other, timer in list(self._timers.items()):
            ost = self._names.get(other)
            if ost is not None and ost.restart_at is not None and ost.restart_at <= horizon:
                del self._timers[other]
                timer.cancel()
                due.append(other)
        self._due.update(due)
        self._dirty.update(due)
        self._kick()

    def _cancel_restart(self, st: _Name) -> None:
        timer = self._timers.pop(st.name, None)
        if timer is not None:
            timer.cancel()
        self._due.discard(st.name)
        if st.restart_at is not None:
            st.restart_at = None
            self._changed(st)

    def _new_instance(self, st: _Name, d: DesiredTask, note: str) -> _Instance:
        iid = secrets.token_hex(6)
        while iid in self._index or iid in self._store:
            iid = secrets.token_hex(6)
        desired = _SHUTDOWN if d.desired_state >= _SHUTDOWN else _RUNNING
        inst = _Instance(iid, d.spec, desired, self._clock.time(), note)
        st.current = inst
        self._index[iid] = (st, inst)
        self._changed(st, assign=True)
        return inst

    def _retire(self, st: _Name, inst: _Instance) -> None:
        """Move the current instance to the history; prune what exceeds the limit."""
        inst.set_desired(_SHUTDOWN)
        st.current = None
        st.history.insert(0, inst)
        while len(st.history) > self._history_limit:
            dropped = st.history.pop()
            self._index.pop(dropped.id, None)
        self._changed(st, assign=True)

    def _drop(self, st: _Name) -> None:
        """A name left the desired set: forget it; the next assignment deletes its instances."""
        self._cancel_restart(st)
        for inst in st.instances():
            self._index.pop(inst.id, None)
        del self._names[st.name]
        self._write.add(st.name)
        self._need_assign = True
        log.info("removed name=%s", st.name)

"""The local manager's decision for one task name: a pure function, as controller-runtime's
``Reconcile`` is beside its controller.

``decide(name, record, desired, seen, now=..., new_id=...)`` looks at what is kept for a name
(its ``NameRecord``), what is wanted (its ``DesiredTask``, or None when the name left the
desired set), what the worker reported (``Seen`` per instance) and how the other names stand
(``Peer``, for ``dependsOn``), and returns a ``Decision``: the new record (None: forget the
name), whether the worker's assignment must change, and when to decide again (a restart's wait,
the end of a monitor). It reads no clock, store or event loop: the driver
(``reconciler.local.manager``) owns time, storage and the worker.

The rules, one step at a time (a step may enable the next; at most ``MAX_STEPS``):

* **No instance**: an adopted container (after a store rebuild) becomes the current instance
  with the desired spec and keeps its id; it is replaced at once if its spec hash differs.
  Otherwise a new instance is made, unless new instances are held (a paused node).
* **Dependencies** (``dependsOn``): a *new* instance, first or replacement, is held, not
  assigned, until every named task's current instance has started (``started``), is running
  and so healthy (``healthy``: a task with a health check only reaches ``running`` once it is
  healthy), or has completed once (``completed``). An instance that has started is never held,
  and a replacement waits for its dependencies *before* it stops the old instance.
* **Desired shutdown**: the current instance is stopped and kept; a pending restart or
  replacement is dropped. Back to running makes a new instance once the old one has stopped.
* **Spec changed**: only ``update`` or ``dependsOn``: nothing is replaced. ``resources``: the
  instance is updated in place (a failed in-place update replaces it, and both instances say
  why). Anything else replaces it, **preparing before it stops**, each step stored:
  (1) the new instance is assigned with desired ``ready`` (pulled and created) while the old
  one runs; (2) once it is ready, the old one's desired state becomes ``shutdown``; (3) once
  that has ended, it moves to the history and the new one is set to ``running``. A prepare
  that fails leaves the old instance running, says why, and is retried after
  ``restart_delay``. With ``update.order: start-first`` the new instance starts while the old
  one runs, and becomes current once it is running; then the old one is stopped.
* **Monitor**: after a replacement, the new instance is watched for ``update.monitor`` (with a
  health check, at least ``startPeriod + interval x retries``). If it ends ``failed`` or
  ``rejected`` meanwhile (exit 0 is no failure), ``update.failureAction`` decides: ``rollback``
  replaces it with an instance of the spec it replaced (pinned to that container's image),
  and the failed spec is not tried again until the desired spec changes; ``pause`` leaves it
  failed; ``continue`` applies the restart policy.
* **Instance ended** (``complete``, ``failed``, ``rejected``, or its record gone) while
  desired running: the restart policy (``any``, ``on-failure``, ``none``; ``maxAttempts``
  within ``window``) decides, and the replacement waits out ``restart_delay``.
* History keeps ``history_limit`` ended instances, newest first.

``restart_delay`` is the contract's own formula, not a retry backoff: exactly ``delay`` after
a ``complete`` (the backoff resets, so a periodic job keeps its period), ``delay`` doubled per
consecutive failure up to ``maxDelay`` otherwise; an instance that ran for ``RESET_AFTER``
seconds resets the count. No jitter: an operator must be able to predict it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from reconciler.core.codec import spec_hash
from reconciler.core.model import (
    IN_PLACE_FIELDS,
    MANAGER_FIELDS,
    DependencyCondition,
    FailureAction,
    RestartCondition,
    RestartPolicy,
    Rollback,
    TaskSpec,
    TaskState,
    TaskStatus,
    UpdateOrder,
)
from reconciler.core.session import DesiredTask
from reconciler.local.records import ADOPTED, Adopted, Instance, NameRecord, Seen

__all__ = [
    "HISTORY_LIMIT",
    "MAX_STEPS",
    "RESET_AFTER",
    "RESOURCES_REPLACED",
    "Decision",
    "Peer",
    "decide",
    "monitor_seconds",
    "restart_delay",
]

HISTORY_LIMIT = 5
"""Ended instances kept per name, by default."""

RESET_AFTER = 600.0
"""An instance that ran this long (seconds) resets its name's failure count."""

RESOURCES_REPLACED = "resources could not be updated in place; instance replaced"
"""The message shown on both instances when a resources change fell back to a replacement."""

MAX_STEPS = 8
"""Steps one decision may take: one step can enable the next (the old instance had already
ended, say), and the bound keeps a bug from looping."""

_RUNNING = TaskState.RUNNING
_SHUTDOWN = TaskState.SHUTDOWN
_FAILED = (TaskState.FAILED, TaskState.REJECTED)


@dataclass(frozen=True, slots=True)
class Peer:
    """How another name stands, for the ``dependsOn`` of this one."""

    running: bool  # its current instance is running (healthy, when it has a health check)
    completed_once: bool  # an instance of it has completed


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do for one name."""

    record: NameRecord | None  # None: forget the name (its instances go with it)
    assign: bool = False  # the worker's full assignment changes
    requeue_after: float | None = None  # decide again after this many seconds
    events: tuple[str, ...] = ()  # what happened, for the log


def restart_delay(policy: RestartPolicy, *, complete: bool, failures: int) -> float:
    """The wait before a restart; see the module docstring. ``failures`` counts this one."""
    if complete:
        return policy.delay
    cap = max(policy.max_delay, policy.delay)
    return min(cap, policy.delay * 2.0 ** min(max(failures - 1, 0), 64))


def monitor_seconds(spec: TaskSpec) -> float:
    """How long a new instance of ``spec`` is watched after a replacement."""
    hc = spec.healthcheck
    if hc is None or not hc.test or hc.test[0] == "NONE":
        return spec.update.monitor
    return max(spec.update.monitor, hc.start_period + hc.interval * hc.retries)


def decide(
    name: str,
    record: NameRecord | None,
    desired: DesiredTask | None,
    seen: Mapping[str, Seen],
    *,
    now: float,
    due: bool = False,
    new_id: Callable[[], str],
    history_limit: int = HISTORY_LIMIT,
    hold_new: bool = False,
    peers: Mapping[str, Peer] | None = None,
) -> Decision:
    """Decide for one name; see the module docstring. ``due`` says that a pending restart's
    wait has been served (the driver's timer fired). ``new_id`` makes instance ids.
    ``hold_new`` (the node is paused) holds the first instance of a name that has none.
    ``peers`` says how the names this one depends on stand."""
    if desired is None:
        if record is None:
            return Decision(None)
        return Decision(None, assign=True, events=(f"removed name={name}",))
    d = _Decider(
        record or NameRecord(name),
        desired,
        seen,
        now,
        due,
        new_id,
        history_limit,
        hold_new,
        peers or {},
    )
    d.run()
    return Decision(d.rec, d.assign, d.requeue_after(), tuple(d.events))


@dataclass
class _Decider:
    rec: NameRecord
    want: DesiredTask
    seen: Mapping[str, Seen]
    now: float
    due: bool
    new_id: Callable[[], str]
    history_limit: int
    hold_new: bool
    peers: Mapping[str, Peer]
    assign: bool = False
    events: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------------------- helpers

    def set(self, **changes: object) -> None:
        self.rec = replace(self.rec, **changes)  # type: ignore[arg-type]

    def set_current(self, **changes: object) -> None:
        assert self.rec.current is not None
        self.set(current=replace(self.rec.current, **changes))  # type: ignore[arg-type]

    def set_pending(self, **changes: object) -> None:
        assert self.rec.pending is not None
        self.set(pending=replace(self.rec.pending, **changes))  # type: ignore[arg-type]

    def ended(self, inst: Instance) -> bool:
        s = self.seen.get(inst.id)
        return s is not None and s.ended

    def status(self, inst: Instance) -> TaskStatus | None:
        s = self.seen.get(inst.id)
        return s.status if s is not None else None

    def state(self, inst: Instance) -> TaskState:
        status = self.status(inst)
        return status.state if status is not None else TaskState.NEW

    def gone(self, inst: Instance) -> bool:
        s = self.seen.get(inst.id)
        return s is not None and s.gone

    def rolled_back(self) -> bool:
        """The desired spec failed its monitor and the name runs the rollback spec instead."""
        rec = self.rec
        return rec.failed_hash is not None and not rec.paused and rec.rollback_spec is not None

    def target(self) -> TaskSpec:
        """The spec the name should run: the desired one, or the rollback after it failed."""
        if self.rolled_back() and self.rec.failed_hash == spec_hash(self.want.spec):
            assert self.rec.rollback_spec is not None
            return self.rec.rollback_spec
        return self.want.spec

    def target_rollback(self) -> Rollback | None:
        if self.target() is self.want.spec or not self.rec.rollback_from:
            return None
        assert self.rec.failed_hash is not None
        return Rollback(self.rec.rollback_from, self.rec.failed_hash)

    def waiting_for(self) -> str:
        """What the target spec's dependencies still wait for ("" when nothing)."""
        missing = []
        for dep in self.target().depends_on:
            peer = self.peers.get(dep.task)
            met = peer is not None and (
                peer.completed_once
                if dep.condition == DependencyCondition.COMPLETED
                else peer.running
            )
            if not met:
                missing.append(f"{dep.task} ({dep.condition})")
        return "waiting for " + ", ".join(missing) if missing else ""

    def requeue_after(self) -> float | None:
        waits = []
        at = self.rec.restart_at
        if at is not None:
            policy = self.want.spec.restart
            # Bounded by the policy's longest delay, in case the wall clock jumped.
            waits.append(min(max(0.0, at - self.now), max(policy.delay, policy.max_delay)))
        if self.rec.monitor_until is not None:
            waits.append(max(0.0, self.rec.monitor_until - self.now))
        return min(waits) if waits else None

    # ------------------------------------------------------------------------------ steps

    def run(self) -> None:
        cur = self.rec.current
        if cur is not None:
            status = self.status(cur)
            absorbed = cur.absorb(status)
            if absorbed is not cur:
                self.set(current=absorbed)
            if status is not None and status.state == TaskState.COMPLETE:
                self.set(completed_once=True)
        if self.rec.failed_hash is not None and self.rec.failed_hash != spec_hash(self.want.spec):
            # The desired spec changed since an update failed: try the new one.
            self.set(failed_hash=None, paused=False)
        if len(self.rec.history) > self.history_limit:  # the limit was lowered
            self.set(history=self.rec.history[: self.history_limit])
            self.assign = True
        for _ in range(MAX_STEPS):
            if not self.step():
                return

    def step(self) -> bool:
        """One decision. Returns whether another step may follow."""
        rec, want = self.rec, self.want
        cur = rec.current
        if cur is None and rec.adopted is not None:
            return self.take_adopted(rec.adopted)
        if cur is None:
            if not self.hold_new:
                self.new_instance("")
            return False
        if cur.held:
            return self.release_held(cur)

        if want.desired_state >= _SHUTDOWN:
            # Stop the current instance and keep it; nothing restarts it. Spec changes wait
            # for the instance that ``running`` starts.
            self.drop_pending()
            self.set(replacing=False, replace_note="", restart_at=None, blocked="")
            self.set(monitor_until=None)
            if cur.desired != _SHUTDOWN:
                self.set_current(desired=_SHUTDOWN)
                self.assign = True
                self.events.append(f"stopping instance name={rec.name} id={cur.id}")
            return False

        if self.rec.pending is not None:
            return self.advance_pending(self.rec.pending)

        if not rec.replacing and cur.desired == _SHUTDOWN:
            # Back to running after a shutdown: a new instance, once the old one has stopped.
            self.set(replacing=True, replace_note="")

        if self.rec.replacing:
            if cur.desired != _SHUTDOWN:
                self.set_current(desired=_SHUTDOWN)
                self.assign = True
            if not self.ended(cur):
                return False
            note = self.rec.replace_note
            self.set(replacing=False, replace_note="")
            self.retire()
            new = self.new_instance(note)
            self.events.append(f"replaced instance name={rec.name} old={cur.id} new={new.id}")
            return False

        if self.rec.restart_at is not None and self.rec.blocked and not self.ended(cur):
            return self.retry_prepare()

        target = self.target()
        if cur.spec != target:
            differing = set(cur.spec.fields_differing(target))
            if differing <= MANAGER_FIELDS:
                self.set_current(spec=target)  # nothing the container sees changed
                return False
            if differing <= IN_PLACE_FIELDS | MANAGER_FIELDS:
                self.set_current(spec=target, update_failed=False)
                self.assign = True
                self.events.append(f"updating instance in place name={rec.name} id={cur.id}")
                return False
            return self.begin_replacement("")

        if cur.update_failed and not self.ended(cur):
            self.set_current(note=RESOURCES_REPLACED)
            return self.begin_replacement(RESOURCES_REPLACED)

        if self.rec.monitor_until is not None:
            return self.monitor(cur)
        if self.ended(cur):
            return self.restart_policy(cur)
        return False

    # ---------------------------------------------------------------------- new instances

    def new_instance(self, note: str, *, desired: TaskState | None = None) -> Instance:
        """A new current instance of the target spec; held while its dependencies wait."""
        if desired is None:
            desired = _SHUTDOWN if self.want.desired_state >= _SHUTDOWN else _RUNNING
        waiting = self.waiting_for() if desired == _RUNNING else ""
        inst = Instance(
            self.new_id(),
            self.target(),
            desired,
            self.now,
            note,
            held=bool(waiting),
            rollback=self.target_rollback(),
        )
        self.set(current=inst, blocked=waiting)
        self.assign = True
        return inst

    def release_held(self, cur: Instance) -> bool:
        """A new instance waiting for its dependencies: assign it once they are met."""
        if self.want.desired_state >= _SHUTDOWN:
            self.set_current(held=False, desired=_SHUTDOWN)
            self.set(blocked="")
            self.assign = True
            return False
        if cur.spec != self.target():
            self.set_current(spec=self.target(), rollback=self.target_rollback())
        waiting = self.waiting_for()
        if waiting:
            self.set(blocked=waiting)
            return False
        self.set_current(held=False)
        self.set(blocked="")
        self.assign = True
        self.events.append(f"dependencies met name={self.rec.name} id={cur.id}")
        return False

    def take_adopted(self, a: Adopted) -> bool:
        """An adopted container becomes the current instance, with the desired spec."""
        desired = _SHUTDOWN if self.want.desired_state >= _SHUTDOWN else _RUNNING
        inst = Instance(
            a.task_id,
            self.want.spec,
            desired,
            a.created or self.now,
            ADOPTED,
            started_at=self.now if a.running else None,
            initial=a.status(self.now),
        )
        self.set(current=inst, adopted=None)
        if a.rolled_back_from is not None and a.rolled_back_from == spec_hash(self.want.spec):
            self.set(failed_hash=a.rolled_back_from)
        self.assign = True
        self.events.append(f"adopted instance name={self.rec.name} id={inst.id}")
        if desired == _RUNNING and not a.matches(self.want.spec):
            return self.begin_replacement("")
        return False

    # ----------------------------------------------------------------------- replacement

    def begin_replacement(self, note: str) -> bool:
        """Replace the current instance: prepare the new one while the old one runs; or, when
        nothing runs, stop-then-start. Waits for the new spec's dependencies first."""
        cur = self.rec.current
        assert cur is not None
        self.set(restart_at=None, failures=0, attempts=(), monitor_until=None)
        if self.ended(cur) or self.state(cur) < TaskState.STARTING:
            # Nothing runs to keep running: stop (if needed), then start the new one.
            self.set(replacing=True, replace_note=note, blocked="")
            if cur.desired != _SHUTDOWN:
                self.set_current(desired=_SHUTDOWN)
                self.assign = True
            self.events.append(
                f"replacing instance name={self.rec.name} old={cur.id} (stopping it first)"
            )
            return True
        waiting = self.waiting_for()
        if waiting:
            self.set(blocked=f"replacement {waiting}")
            return False
        target = self.target()
        ready = _RUNNING if target.update.order == UpdateOrder.START_FIRST else TaskState.READY
        pending = Instance(
            self.new_id(), target, ready, self.now, note, rollback=self.target_rollback()
        )
        self.set(pending=pending, blocked="", replace_note=note)
        self.assign = True
        self.events.append(
            f"replacing instance name={self.rec.name} old={cur.id} new={pending.id} "
            f"({target.update.order}: preparing the new one first)"
        )
        return False

    def advance_pending(self, p: Instance) -> bool:
        cur = self.rec.current
        assert cur is not None
        if p.spec != self.target():
            self.drop_pending()  # the desired spec changed again: start over
            return True
        if self.ended(p):
            status = self.status(p) or TaskStatus(TaskState.FAILED)
            why = status.err or status.message or status.state.label
            self.drop_pending()
            failures = self.rec.failures + 1
            delay = restart_delay(self.want.spec.restart, complete=False, failures=failures)
            self.set(
                failures=failures,
                restart_at=self.now + delay,
                blocked=f"the new instance failed to start ({why}); retrying in {delay:g}s",
            )
            self.events.append(
                f"replacement failed name={self.rec.name} new={p.id} err={why!r} "
                f"retry_in={delay:.3f}s"
            )
            return False
        if p.spec.update.order == UpdateOrder.START_FIRST:
            if self.state(p) < _RUNNING:
                return False
            self.swap(p)  # running (and healthy): it becomes current, the old one stops
            return False
        if self.state(p) < TaskState.READY:
            return False
        if cur.desired != _SHUTDOWN:
            self.set_current(desired=_SHUTDOWN)
            self.assign = True
            self.events.append(f"new instance prepared name={self.rec.name}; stopping the old")
        if not self.ended(cur):
            return False
        self.swap(replace(p, desired=_RUNNING))
        return False

    def swap(self, new: Instance) -> None:
        """The replacement becomes current; the old instance goes to the history."""
        old = self.rec.current
        assert old is not None
        was_running = self.state(old) == _RUNNING or (
            self.status(old) is not None and self.ended(old) and old.started_at is not None
        )
        self.retire()
        self.set(current=new, pending=None, blocked="", replace_note="")
        self.assign = True
        if new.rollback is None:
            self.set(
                monitor_until=self.now + monitor_seconds(new.spec),
                rollback_spec=old.spec if was_running else self.rec.good_spec,
                rollback_from=f"{old.spec.name}.{old.id}" if was_running else "",
            )
        self.events.append(f"replaced instance name={self.rec.name} old={old.id} new={new.id}")

    def drop_pending(self) -> None:
        p = self.rec.pending
        if p is None:
            return
        history = (replace(p, desired=_SHUTDOWN), *self.rec.history)[: self.history_limit]
        self.set(pending=None, history=history)
        self.assign = True

    def retry_prepare(self) -> bool:
        """A failed prepare waits out its delay, then the replacement is tried again."""
        if not self.due:
            return False
        self.due = False
        self.set(restart_at=None)
        failures = self.rec.failures
        stepped = self.begin_replacement(self.rec.replace_note)
        self.set(failures=failures)
        return stepped

    # --------------------------------------------------------------------------- monitor

    def monitor(self, cur: Instance) -> bool:
        """Judge a new instance during its monitor; see the module docstring."""
        until = self.rec.monitor_until
        assert until is not None
        status = self.status(cur)
        if self.ended(cur):
            failed = self.gone(cur) or (status is not None and status.state in _FAILED)
            in_time = status is None or status.timestamp <= until
            if failed and in_time:
                return self.update_failed(cur, status)
            self.set(monitor_until=None)
            return True
        if self.now >= until and self.state(cur) == _RUNNING:
            self.set(monitor_until=None, good_spec=cur.spec)
            self.events.append(f"update passed its monitor name={self.rec.name} id={cur.id}")
        return False

    def update_failed(self, cur: Instance, status: TaskStatus | None) -> bool:
        action = cur.spec.update.failure_action
        failed = spec_hash(self.want.spec)
        why = (status.err or status.message) if status is not None else "container removed"
        self.set(monitor_until=None)
        if action == FailureAction.ROLLBACK and self.rec.rollback_spec is not None:
            self.set(failed_hash=failed, rollbacks=self.rec.rollbacks + 1)
            self.set_current(end_handled=True)
            self.retire()
            new = self.new_instance(f"rolled back: the update failed ({why})")
            self.events.append(
                f"update failed, rolling back name={self.rec.name} failed={cur.id} "
                f"new={new.id} err={why!r}"
            )
            return False
        if action == FailureAction.PAUSE:
            self.set(failed_hash=failed, paused=True)
            self.set_current(end_handled=True)
            self.events.append(f"update failed, left failed name={self.rec.name} id={cur.id}")
            return False
        return True  # continue: the restart policy applies

    # ---------------------------------------------------------------------- restart policy

    def restart_policy(self, cur: Instance) -> bool:
        rec = self.rec
        policy = self.want.spec.restart
        if rec.paused:
            return False
        if rec.restart_at is not None:
            if self.due:
                self.due = False
                self.restart(cur)
            return False
        if cur.end_handled:
            return False
        status = self.status(cur) or TaskStatus(TaskState.FAILED)
        gone = self.gone(cur)
        complete = status.state == TaskState.COMPLETE and not gone
        restart = policy.condition == RestartCondition.ANY or (
            policy.condition == RestartCondition.ON_FAILURE and not complete
        )
        if restart and policy.max_attempts > 0:
            recent = [t for t in rec.attempts if policy.window <= 0 or t > self.now - policy.window]
            if len(recent) >= policy.max_attempts:
                restart = False
                self.events.append(
                    f"restart limit reached name={rec.name} attempts={len(recent)} "
                    f"window={policy.window}"
                )
        self.set_current(end_handled=True)
        if not restart:
            return False
        failures = rec.failures
        if complete:
            failures = 0
        else:
            ran = (
                status.timestamp - cur.started_at
                if cur.started_at is not None and not gone
                else 0.0
            )
            failures = (0 if ran >= RESET_AFTER else failures) + 1
        delay = restart_delay(policy, complete=complete, failures=failures)
        self.set(failures=failures, restart_at=self.now + delay)
        self.events.append(
            f"instance ended name={rec.name} id={cur.id} state={status.state.label} "
            f"restart_in={delay:.3f}s"
        )
        return False

    def restart(self, cur: Instance) -> None:
        policy = self.want.spec.restart
        attempts = self.rec.attempts
        if policy.max_attempts > 0:
            attempts = (*attempts, self.now)[-policy.max_attempts :]
        self.set(restart_at=None, restarts=self.rec.restarts + 1, attempts=attempts)
        self.retire()
        new = self.new_instance("")
        self.events.append(
            f"restarted name={self.rec.name} old={cur.id} new={new.id} restarts={self.rec.restarts}"
        )

    def retire(self) -> None:
        """Move the current instance to the history; drop what exceeds the limit."""
        cur = self.rec.current
        assert cur is not None
        if cur.desired != _SHUTDOWN:
            cur = replace(cur, desired=_SHUTDOWN)
        history = (cur, *self.rec.history)[: self.history_limit]
        self.set(current=None, history=history)
        self.assign = True

"""The local manager's decision for one task name: a pure function, as controller-runtime's
``Reconcile`` is beside its controller.

``decide(name, record, desired, seen, now=..., due=..., new_id=...)`` looks at what is kept for
a name (its ``NameRecord``), what is wanted (its ``DesiredTask``, or None when the name left
the desired set) and what the worker reported (``Seen`` per instance), and returns a
``Decision``: the new record (None: forget the name), whether the worker's assignment must
change, and when to decide again (a pending restart's wait). It reads no clock, store or event
loop: the driver (``reconciler.desired.manager``) owns time, storage and the worker.

The rules, one step at a time (a step may enable the next; at most ``MAX_STEPS``):

* **No instance**: an adopted container (after a store rebuild) becomes the current instance
  with the desired spec and keeps its id; replaced at once if its spec hash differs. Otherwise
  a new instance is made, unless new instances are held (a paused node).
* **Desired shutdown**: the current instance is stopped and kept; a pending restart or
  replacement is dropped. Back to running makes a new instance once the old one has stopped.
* **Spec changed**: ``resources`` alone updates the instance in place. Anything else replaces
  it stop-first, in two stored steps: (1) the old instance's desired state becomes
  ``shutdown``; (2) once it has ended it moves to the history and a new instance is made. A
  failed in-place update also replaces it, and both instances say why.
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

from reconciler.desired.records import ADOPTED, Adopted, Instance, NameRecord, Seen
from reconciler.model import IN_PLACE_FIELDS, RestartCondition, RestartPolicy, TaskState, TaskStatus
from reconciler.session import DesiredTask

__all__ = [
    "HISTORY_LIMIT",
    "MAX_STEPS",
    "RESET_AFTER",
    "RESOURCES_REPLACED",
    "Decision",
    "decide",
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


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do for one name."""

    record: NameRecord | None  # None: forget the name (its instances go with it)
    assign: bool = False  # the worker's full assignment changes
    requeue_after: float | None = None  # decide again after this many seconds (a restart)
    events: tuple[str, ...] = ()  # what happened, for the log


def restart_delay(policy: RestartPolicy, *, complete: bool, failures: int) -> float:
    """The wait before a restart; see the module docstring. ``failures`` counts this one."""
    if complete:
        return policy.delay
    cap = max(policy.max_delay, policy.delay)
    return min(cap, policy.delay * 2.0 ** min(max(failures - 1, 0), 64))


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
) -> Decision:
    """Decide for one name; see the module docstring. ``due`` says that a pending restart's
    wait has been served (the driver's timer fired). ``new_id`` makes instance ids.
    ``hold_new`` (the node is paused) holds the first instance of a name that has none."""
    if desired is None:
        if record is None:
            return Decision(None)
        return Decision(None, assign=True, events=(f"removed name={name}",))
    d = _Decider(
        record or NameRecord(name), desired, seen, now, due, new_id, history_limit, hold_new
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
    assign: bool = False
    events: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------------------- helpers

    def set(self, **changes: object) -> None:
        self.rec = replace(self.rec, **changes)  # type: ignore[arg-type]

    def set_current(self, **changes: object) -> None:
        assert self.rec.current is not None
        self.set(current=replace(self.rec.current, **changes))  # type: ignore[arg-type]

    def ended(self, inst: Instance) -> bool:
        s = self.seen.get(inst.id)
        return s is not None and s.ended

    def status(self, inst: Instance) -> TaskStatus | None:
        s = self.seen.get(inst.id)
        return s.status if s is not None else None

    def gone(self, inst: Instance) -> bool:
        s = self.seen.get(inst.id)
        return s is not None and s.gone

    def requeue_after(self) -> float | None:
        at = self.rec.restart_at
        if at is None:
            return None
        policy = self.want.spec.restart
        # Bounded by the policy's longest delay, in case the wall clock jumped.
        return min(max(0.0, at - self.now), max(policy.delay, policy.max_delay))

    # ------------------------------------------------------------------------------ steps

    def run(self) -> None:
        cur = self.rec.current
        if cur is not None:
            absorbed = cur.absorb(self.status(cur))
            if absorbed is not cur:
                self.set(current=absorbed)
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

        if want.desired_state >= _SHUTDOWN:
            # Stop the current instance and keep it; nothing restarts it. Spec changes wait
            # for the instance that ``running`` starts.
            self.set(replacing=False, replace_note="", restart_at=None)
            if cur.desired != _SHUTDOWN:
                self.set_current(desired=_SHUTDOWN)
                self.assign = True
                self.events.append(f"stopping instance name={rec.name} id={cur.id}")
            return False

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

        if cur.spec != want.spec:
            if set(cur.spec.fields_differing(want.spec)) <= IN_PLACE_FIELDS:
                self.set_current(spec=want.spec, update_failed=False)
                self.assign = True
                self.events.append(f"updating instance in place name={rec.name} id={cur.id}")
                return False
            self.begin_replacement("")
            return True

        if cur.update_failed and not self.ended(cur):
            self.set_current(note=RESOURCES_REPLACED)
            self.begin_replacement(RESOURCES_REPLACED)
            return True

        if self.ended(cur):
            return self.restart_policy(cur)
        return False

    def take_adopted(self, a: Adopted) -> bool:
        """An adopted container becomes the current instance, with the desired spec."""
        desired = _SHUTDOWN if self.want.desired_state >= _SHUTDOWN else _RUNNING
        status = a.status(self.now)
        inst = Instance(
            a.task_id,
            self.want.spec,
            desired,
            a.created or self.now,
            ADOPTED,
            started_at=self.now if a.running else None,
            initial=status,
        )
        self.set(current=inst, adopted=None)
        self.assign = True
        self.events.append(f"adopted instance name={self.rec.name} id={inst.id}")
        if desired == _RUNNING and not a.matches(self.want.spec):
            self.begin_replacement("")
            return True
        return False

    def begin_replacement(self, note: str) -> None:
        """Step 1 of a stop-first replacement; stored before it is assigned."""
        cur = self.rec.current
        assert cur is not None
        self.set(restart_at=None, failures=0, attempts=(), replacing=True, replace_note=note)
        if cur.desired != _SHUTDOWN:
            self.set_current(desired=_SHUTDOWN)
            self.assign = True
        self.events.append(
            f"replacing instance name={self.rec.name} old={cur.id} (stopping it first)"
        )

    def restart_policy(self, cur: Instance) -> bool:
        rec = self.rec
        policy = self.want.spec.restart
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

    def new_instance(self, note: str) -> Instance:
        desired = _SHUTDOWN if self.want.desired_state >= _SHUTDOWN else _RUNNING
        inst = Instance(self.new_id(), self.want.spec, desired, self.now, note)
        self.set(current=inst)
        self.assign = True
        return inst

    def retire(self) -> None:
        """Move the current instance to the history; drop what exceeds the limit."""
        cur = self.rec.current
        assert cur is not None
        if cur.desired != _SHUTDOWN:
            cur = replace(cur, desired=_SHUTDOWN)
        history = (cur, *self.rec.history)[: self.history_limit]
        self.set(current=None, history=history)
        self.assign = True

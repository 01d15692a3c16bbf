"""The working state of one decision: the record drafted for a name, and the moves every rule
makes on it.

``decide()`` (``reconciler.local.decide``) builds a name's new ``NameRecord`` one step at a
time, and each rule it applies (adoption, replacement and monitor, restart policy) reads the
same inputs: what is wanted, what the worker reported, how the names it depends on stand, the
time. A ``Draft`` holds those inputs and the record as it stands so far, and is the one place
that changes the record, so that the rule modules read as rules:

* readings: whether an instance ended or is gone, its state, the spec the name should run
  (the desired one, or the rollback after an update failed), what its dependencies wait for;
* the moves shared by several rules: a new current instance (held while its dependencies
  wait), retiring the current instance to the history, dropping a replacement in preparation;
* when to decide again (``requeue_after``): a restart's wait or the end of a monitor.

Like the rules, it reads no clock, store or event loop: ``now`` and ``new_id`` come in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from reconciler.core.codec import spec_hash
from reconciler.core.model import Rollback, TaskSpec, TaskState, TaskStatus
from reconciler.core.session import DesiredTask
from reconciler.local.dependencies import Peer, waiting_for
from reconciler.local.records import Instance, NameRecord, Seen

__all__ = ["RUNNING", "SHUTDOWN", "Draft", "Refuses"]

Refuses = Callable[[TaskSpec], bool]
"""Whether the node's policy refuses a spec (``reconciler.core.policy``)."""

RUNNING = TaskState.RUNNING
SHUTDOWN = TaskState.SHUTDOWN


@dataclass
class Draft:
    """One name's record as a decision changes it; see the module docstring."""

    rec: NameRecord
    want: DesiredTask
    seen: Mapping[str, Seen]
    now: float
    due: bool  # a pending restart's (or retry's) wait has been served; taken by one step
    new_id: Callable[[], str]
    history_limit: int
    hold_new: bool
    peers: Mapping[str, Peer]
    assign: bool = False
    events: list[str] = field(default_factory=list)
    refuses: Refuses | None = None  # the node's policy for fleet tasks; None: nothing checked

    # ---------------------------------------------------------------------------- changes

    def set(self, **changes: object) -> None:
        self.rec = replace(self.rec, **changes)  # type: ignore[arg-type]

    def set_current(self, **changes: object) -> None:
        assert self.rec.current is not None
        self.set(current=replace(self.rec.current, **changes))  # type: ignore[arg-type]

    # --------------------------------------------------------------------------- readings

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
        return waiting_for(self.target(), self.peers)

    def requeue_after(self) -> float | None:
        """When to decide again: a pending restart's wait or a monitor's end, if any."""
        waits = []
        at = self.rec.restart_at
        if at is not None:
            policy = self.want.spec.restart
            # Bounded by the policy's longest delay, in case the wall clock jumped.
            waits.append(min(max(0.0, at - self.now), max(policy.delay, policy.max_delay)))
        if self.rec.monitor_until is not None:
            waits.append(max(0.0, self.rec.monitor_until - self.now))
        return min(waits) if waits else None

    # ------------------------------------------------------------------------ shared moves

    def new_instance(self, note: str, *, desired: TaskState | None = None) -> Instance:
        """A new current instance of the target spec; held while its dependencies wait."""
        if desired is None:
            desired = SHUTDOWN if self.want.desired_state >= SHUTDOWN else RUNNING
        waiting = self.waiting_for() if desired == RUNNING else ""
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

    def retire(self) -> None:
        """Move the current instance to the history; drop what exceeds the limit."""
        cur = self.rec.current
        assert cur is not None
        if cur.desired != SHUTDOWN:
            cur = replace(cur, desired=SHUTDOWN)
        history = (cur, *self.rec.history)[: self.history_limit]
        self.set(current=None, history=history)
        self.assign = True

    def drop_pending(self) -> None:
        """A replacement in preparation goes to the history, to be stopped and removed."""
        p = self.rec.pending
        if p is None:
            return
        history = (replace(p, desired=SHUTDOWN), *self.rec.history)[: self.history_limit]
        self.set(pending=None, history=history)
        self.assign = True

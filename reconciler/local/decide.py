"""The local manager's decision for one task name: a pure function, as controller-runtime's
``Reconcile`` is beside its controller.

``decide(name, record, desired, seen, now=..., new_id=...)`` looks at what is kept for a name
(its ``NameRecord``), what is wanted (its ``DesiredTask``, or None when the name left the
desired set), what the worker reported (``Seen`` per instance) and how the other names stand
(``Peer``, for ``dependsOn``), and returns a ``Decision``: the new record (None: forget the
name), whether the worker's assignment must change, and when to decide again (a restart's wait,
the end of a monitor). It reads no clock, store or event loop: the driver
(``reconciler.local.manager``) owns time, storage and the worker.

This module is the order of the rules; each rule lives in its own module, and all of them
change one ``Draft`` (``reconciler.local.draft``) of the record. One step at a time (a step may
enable the next; at most ``MAX_STEPS``):

* **No instance**: an adopted container (after a store rebuild) becomes the current instance
  (``reconciler.local.adoption``). Otherwise a new instance is made, unless new instances are
  held (a paused node).
* **Dependencies** (``dependsOn``, ``reconciler.local.dependencies``): a *new* instance, first
  or replacement, is held, not assigned, until what it depends on has started, is running and
  healthy, or has completed once; a held instance is assigned once they have.
* **Desired shutdown**: the current instance is stopped and kept; a pending restart or
  replacement is dropped. Back to running makes a new instance once the old one has stopped.
* **Spec changed**, **replacement** and **monitor** (``reconciler.local.updates``): nothing
  is replaced for a change the container does not see, ``resources`` are updated in place,
  anything else is replaced, preparing the new instance before the old one stops; the new
  one is then watched, and a failure rolls back, pauses or falls to the restart policy.
* **Instance ended** while desired running: the restart policy decides
  (``reconciler.local.restart``); an instance the node's policy rejected waits for its spec
  or the policy to change.
* History keeps ``history_limit`` ended instances, newest first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from reconciler.core.codec import spec_hash
from reconciler.core.model import TaskState
from reconciler.core.session import DesiredTask
from reconciler.local import restart, updates
from reconciler.local.adoption import take_adopted
from reconciler.local.dependencies import Peer
from reconciler.local.draft import SHUTDOWN, Draft, Refuses
from reconciler.local.records import Instance, NameRecord, Seen

__all__ = ["HISTORY_LIMIT", "MAX_STEPS", "Decision", "decide"]

HISTORY_LIMIT = 5
"""Ended instances kept per name, by default."""

MAX_STEPS = 8
"""Steps one decision may take: one step can enable the next (the old instance had already
ended, say), and the bound keeps a bug from looping."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do for one name."""

    record: NameRecord | None  # None: forget the name (its instances go with it)
    assign: bool = False  # the worker's full assignment changes
    requeue_after: float | None = None  # decide again after this many seconds
    events: tuple[str, ...] = ()  # what happened, for the log


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
    refuses: Refuses | None = None,
) -> Decision:
    """Decide for one name; see the module docstring. ``due`` says that a pending restart's
    wait has been served (the driver's timer fired). ``new_id`` makes instance ids.
    ``hold_new`` (the node is paused) holds the first instance of a name that has none.
    ``peers`` says how the names this one depends on stand. ``refuses`` is the node's policy
    for fleet tasks: an instance it rejected is not restarted until the spec or the policy
    changes (None: nothing is checked)."""
    if desired is None:
        if record is None:
            return Decision(None)
        return Decision(None, assign=True, events=(f"removed name={name}",))
    d = Draft(
        record or NameRecord(name),
        desired,
        seen,
        now,
        due,
        new_id,
        history_limit,
        hold_new,
        peers or {},
        refuses=refuses,
    )
    _run(d)
    return Decision(d.rec, d.assign, d.requeue_after(), tuple(d.events))


def _run(d: Draft) -> None:
    """Take in what the latest status says, then step until nothing follows."""
    cur = d.rec.current
    if cur is not None:
        status = d.status(cur)
        absorbed = cur.absorb(status)
        if absorbed is not cur:
            d.set(current=absorbed)
        if status is not None and status.state == TaskState.COMPLETE:
            d.set(completed_once=True)
    if d.rec.failed_hash is not None and d.rec.failed_hash != spec_hash(d.want.spec):
        # The desired spec changed since an update failed: try the new one.
        d.set(failed_hash=None, paused=False)
    if len(d.rec.history) > d.history_limit:  # the limit was lowered
        d.set(history=d.rec.history[: d.history_limit])
        d.assign = True
    for _ in range(MAX_STEPS):
        if not _step(d):
            return


def _step(d: Draft) -> bool:
    """One decision, the first rule that applies. Returns whether another step may follow."""
    rec = d.rec
    cur = rec.current
    if cur is None and rec.adopted is not None:
        return take_adopted(d, rec.adopted)
    if cur is None:
        if not d.hold_new:
            d.new_instance("")
        return False
    if cur.held:
        return _release_held(d, cur)
    if d.want.desired_state >= SHUTDOWN:
        _shut_down(d, cur)
        return False
    if rec.pending is not None:
        return updates.advance(d, rec.pending)
    if not rec.replacing and cur.desired == SHUTDOWN:
        # Back to running after a shutdown: a new instance, once the old one has stopped.
        d.set(replacing=True, replace_note="")
    if d.rec.replacing:
        return updates.stop_then_start(d, cur)
    if d.rec.restart_at is not None and d.rec.blocked and not d.ended(cur):
        return updates.retry_prepare(d)
    target = d.target()
    if cur.spec != target:
        return updates.spec_changed(d, cur, target)
    if cur.update_failed and not d.ended(cur):
        return updates.in_place_failed(d, cur)
    if d.rec.monitor_until is not None:
        return updates.monitor(d, cur)
    if d.ended(cur):
        return restart.on_end(d, cur)
    return False


def _shut_down(d: Draft, cur: Instance) -> None:
    """Stop the current instance and keep it; nothing restarts it. Spec changes wait for the
    instance that ``running`` starts."""
    d.drop_pending()
    d.set(replacing=False, replace_note="", restart_at=None, blocked="")
    d.set(monitor_until=None)
    if cur.desired != SHUTDOWN:
        d.set_current(desired=SHUTDOWN)
        d.assign = True
        d.events.append(f"stopping instance name={d.rec.name} id={cur.id}")


def _release_held(d: Draft, cur: Instance) -> bool:
    """A new instance waiting for its dependencies: assign it once they are met."""
    if d.want.desired_state >= SHUTDOWN:
        d.set_current(held=False, desired=SHUTDOWN)
        d.set(blocked="")
        d.assign = True
        return False
    if cur.spec != d.target():
        d.set_current(spec=d.target(), rollback=d.target_rollback())
    waiting = d.waiting_for()
    if waiting:
        d.set(blocked=waiting)
        return False
    d.set_current(held=False)
    d.set(blocked="")
    d.assign = True
    d.events.append(f"dependencies met name={d.rec.name} id={cur.id}")
    return False

"""Updates: a changed spec reaches a name's running instance, in place or by a replacement
that prepares before it stops, watched by a monitor that can roll it back.

* **What changed**: only ``update`` or ``dependsOn``: nothing is replaced. ``resources``: the
  instance is updated in place (a failed in-place update replaces it, and both instances say
  why, ``RESOURCES_REPLACED``). Anything else replaces it.
* **Replacement, preparing before it stops**, each step stored: (1) the new instance is
  assigned with desired ``ready`` (pulled and created) while the old one runs; (2) once it is
  ready, the old one's desired state becomes ``shutdown``; (3) once that has ended, it moves to
  the history and the new one is set to ``running``. A prepare that fails leaves the old
  instance running, says why, and is retried after the restart policy's delay
  (``reconciler.local.restart``). With ``update.order: start-first`` the new instance starts
  while the old one runs, and becomes current once it is running; then the old one is
  stopped. A replacement waits for the new spec's dependencies *before* it stops a running
  instance. When nothing runs to keep running (the old instance ended, or never started), or
  after a desired shutdown, it is stop-then-start: the old one is stopped, then a new one made.
  A new spec that the node's policy for fleet tasks refuses is stop-then-start too: the task
  now asks for what the node does not allow, so it ends ``rejected`` rather than preparing.
* **Monitor**: after a replacement, the new instance is watched for ``update.monitor`` (with a
  health check, at least ``startPeriod + interval x retries``, ``monitor_seconds``). If it
  ends ``failed`` or ``rejected`` meanwhile (exit 0 is no failure), ``update.failureAction``
  decides: ``rollback`` replaces it with an instance of the spec it replaced (pinned to that
  container's image), and the failed spec is not tried again until the desired spec changes;
  ``pause`` leaves it failed; ``continue`` applies the restart policy.

These are steps of ``decide()`` (``reconciler.local.decide``) on its ``Draft``: pure. Each
returns whether another step may follow.
"""

from __future__ import annotations

from dataclasses import replace

from reconciler.core.codec import spec_hash
from reconciler.core.model import (
    IN_PLACE_FIELDS,
    MANAGER_FIELDS,
    FailureAction,
    TaskSpec,
    TaskState,
    TaskStatus,
    UpdateOrder,
)
from reconciler.local.draft import RUNNING, SHUTDOWN, Draft
from reconciler.local.records import Instance
from reconciler.local.restart import restart_delay

__all__ = [
    "RESOURCES_REPLACED",
    "advance",
    "begin",
    "in_place_failed",
    "monitor",
    "monitor_seconds",
    "retry_prepare",
    "spec_changed",
    "stop_then_start",
]

RESOURCES_REPLACED = "resources could not be updated in place; instance replaced"
"""The message shown on both instances when a resources change fell back to a replacement."""

_FAILED = (TaskState.FAILED, TaskState.REJECTED)


def monitor_seconds(spec: TaskSpec) -> float:
    """How long a new instance of ``spec`` is watched after a replacement."""
    hc = spec.healthcheck
    if hc is None or not hc.test or hc.test[0] == "NONE":
        return spec.update.monitor
    return max(spec.update.monitor, hc.start_period + hc.interval * hc.retries)


# ------------------------------------------------------------------------------ what changed


def spec_changed(d: Draft, cur: Instance, target: TaskSpec) -> bool:
    """The current instance runs another spec than ``target``: what changed decides how."""
    differing = set(cur.spec.fields_differing(target))
    if differing <= MANAGER_FIELDS:
        d.set_current(spec=target)  # nothing the container sees changed
        return False
    if differing <= IN_PLACE_FIELDS | MANAGER_FIELDS:
        d.set_current(spec=target, update_failed=False)
        d.assign = True
        d.events.append(f"updating instance in place name={d.rec.name} id={cur.id}")
        return False
    return begin(d, "")


def in_place_failed(d: Draft, cur: Instance) -> bool:
    """An in-place update failed: replace the instance, and say why on both."""
    d.set_current(note=RESOURCES_REPLACED)
    return begin(d, RESOURCES_REPLACED)


# ------------------------------------------------------------------------------ replacement


def begin(d: Draft, note: str) -> bool:
    """Replace the current instance: prepare the new one while the old one runs; or, when
    nothing runs, stop-then-start. Waits for the new spec's dependencies first."""
    cur = d.rec.current
    assert cur is not None
    d.set(restart_at=None, failures=0, attempts=(), monitor_until=None)
    refused = d.refuses is not None and d.refuses(d.target())
    if d.ended(cur) or d.state(cur) < TaskState.STARTING or refused:
        # Nothing runs to keep running, or the new spec would be rejected by the node's
        # policy whatever waits: stop (if needed), then start the new one.
        d.set(replacing=True, replace_note=note, blocked="")
        if cur.desired != SHUTDOWN:
            d.set_current(desired=SHUTDOWN)
            d.assign = True
        d.events.append(f"replacing instance name={d.rec.name} old={cur.id} (stopping it first)")
        return True
    waiting = d.waiting_for()
    if waiting:
        d.set(blocked=f"replacement {waiting}")
        return False
    target = d.target()
    ready = RUNNING if target.update.order == UpdateOrder.START_FIRST else TaskState.READY
    pending = Instance(d.new_id(), target, ready, d.now, note, rollback=d.target_rollback())
    d.set(pending=pending, blocked="", replace_note=note)
    d.assign = True
    d.events.append(
        f"replacing instance name={d.rec.name} old={cur.id} new={pending.id} "
        f"({target.update.order}: preparing the new one first)"
    )
    return False


def stop_then_start(d: Draft, cur: Instance) -> bool:
    """Stop the current instance; once it has ended, a new one takes its place."""
    if cur.desired != SHUTDOWN:
        d.set_current(desired=SHUTDOWN)
        d.assign = True
    if not d.ended(cur):
        return False
    note = d.rec.replace_note
    d.set(replacing=False, replace_note="")
    d.retire()
    new = d.new_instance(note)
    d.events.append(f"replaced instance name={d.rec.name} old={cur.id} new={new.id}")
    return False


def advance(d: Draft, p: Instance) -> bool:
    """Move a replacement in preparation (``p``) on: see the module docstring."""
    cur = d.rec.current
    assert cur is not None
    if p.spec != d.target():
        d.drop_pending()  # the desired spec changed again: start over
        return True
    if d.ended(p):
        status = d.status(p) or TaskStatus(TaskState.FAILED)
        why = status.err or status.message or status.state.label
        d.drop_pending()
        failures = d.rec.failures + 1
        delay = restart_delay(d.want.spec.restart, complete=False, failures=failures)
        d.set(
            failures=failures,
            restart_at=d.now + delay,
            blocked=f"the new instance failed to start ({why}); retrying in {delay:g}s",
        )
        d.events.append(
            f"replacement failed name={d.rec.name} new={p.id} err={why!r} retry_in={delay:.3f}s"
        )
        return False
    if p.spec.update.order == UpdateOrder.START_FIRST:
        if d.state(p) < RUNNING:
            return False
        _swap(d, p)  # running (and healthy): it becomes current, the old one stops
        return False
    if d.state(p) < TaskState.READY:
        return False
    if cur.desired != SHUTDOWN:
        d.set_current(desired=SHUTDOWN)
        d.assign = True
        d.events.append(f"new instance prepared name={d.rec.name}; stopping the old")
    if not d.ended(cur):
        return False
    _swap(d, replace(p, desired=RUNNING))
    return False


def _swap(d: Draft, new: Instance) -> None:
    """The replacement becomes current; the old instance goes to the history."""
    old = d.rec.current
    assert old is not None
    was_running = d.state(old) == RUNNING or (
        d.status(old) is not None and d.ended(old) and old.started_at is not None
    )
    d.retire()
    d.set(current=new, pending=None, blocked="", replace_note="")
    d.assign = True
    if new.rollback is None:
        d.set(
            monitor_until=d.now + monitor_seconds(new.spec),
            rollback_spec=old.spec if was_running else d.rec.good_spec,
            rollback_from=f"{old.spec.name}.{old.id}" if was_running else "",
        )
    d.events.append(f"replaced instance name={d.rec.name} old={old.id} new={new.id}")


def retry_prepare(d: Draft) -> bool:
    """A failed prepare waits out its delay, then the replacement is tried again."""
    if not d.due:
        return False
    d.due = False
    d.set(restart_at=None)
    failures = d.rec.failures
    stepped = begin(d, d.rec.replace_note)
    d.set(failures=failures)
    return stepped


# ---------------------------------------------------------------------------------- monitor


def monitor(d: Draft, cur: Instance) -> bool:
    """Judge a new instance during its monitor; see the module docstring."""
    until = d.rec.monitor_until
    assert until is not None
    status = d.status(cur)
    if d.ended(cur):
        failed = d.gone(cur) or (status is not None and status.state in _FAILED)
        in_time = status is None or status.timestamp <= until
        if failed and in_time:
            return _update_failed(d, cur, status)
        d.set(monitor_until=None)
        return True
    if d.now >= until and d.state(cur) == RUNNING:
        d.set(monitor_until=None, good_spec=cur.spec)
        d.events.append(f"update passed its monitor name={d.rec.name} id={cur.id}")
    return False


def _update_failed(d: Draft, cur: Instance, status: TaskStatus | None) -> bool:
    """The new instance failed during its monitor: ``update.failureAction`` decides."""
    action = cur.spec.update.failure_action
    failed = spec_hash(d.want.spec)
    why = (status.err or status.message) if status is not None else "container removed"
    d.set(monitor_until=None)
    if action == FailureAction.ROLLBACK and d.rec.rollback_spec is not None:
        d.set(failed_hash=failed, rollbacks=d.rec.rollbacks + 1)
        d.set_current(end_handled=True)
        d.retire()
        new = d.new_instance(f"rolled back: the update failed ({why})")
        d.events.append(
            f"update failed, rolling back name={d.rec.name} failed={cur.id} "
            f"new={new.id} err={why!r}"
        )
        return False
    if action == FailureAction.PAUSE:
        d.set(failed_hash=failed, paused=True)
        d.set_current(end_handled=True)
        d.events.append(f"update failed, left failed name={d.rec.name} id={cur.id}")
        return False
    return True  # continue: the restart policy applies

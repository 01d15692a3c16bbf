"""How operators see the local manager's names: ``ps``, ``/v1/tasks`` and the per-task metrics.

One ``TaskView`` per instance: the current instance of every name first, then a replacement
being prepared (if any), then its history, newest first, names in order. A new instance held
for its dependencies shows as ``pending``, with what it waits for. The view's message is the
instance's note (why it exists: a replacement that fell back from an in-place update, an
adoption, a rollback) while it is starting and has no error of its own, else the latest
status's message; a name whose next step waits (a dependency, a failed prepare) says so on its
current instance. A name whose adopted container still
waits for the desired set shows that container.

Pure functions of records and observed statuses; ``views_from_store`` reads them from a store
(read-only is fine), for ``reconciler ps`` while the agent is not running.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.core.model import TaskState, TaskStatus
from reconciler.core.snapshot import TaskView
from reconciler.core.store import Store
from reconciler.local.records import ADOPTED, Adopted, Instance, NameRecord, Seen, load_records

__all__ = ["views", "views_from_store"]


def _view(
    inst: Instance, seen: Seen | None, restarts: int, current: bool, blocked: str = ""
) -> TaskView:
    status = (seen.status if seen else None) or TaskStatus(TaskState.NEW, inst.created)
    if inst.held:
        status = TaskStatus(TaskState.PENDING, inst.created, blocked)
    message: str | None = status.message or None
    if inst.note and (not current or (status.state < TaskState.COMPLETE and status.err is None)):
        message = inst.note
    if current and blocked and not inst.held:
        message = blocked
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


def _adopted_view(name: str, a: Adopted) -> TaskView:
    if a.running:
        state = TaskState.RUNNING
    elif not a.started:
        state = TaskState.READY
    else:
        state = TaskState.COMPLETE if a.exit_code == 0 else TaskState.FAILED
    return TaskView(
        name=name,
        id=a.task_id,
        desired_state=TaskState.RUNNING,
        state=state,
        message=f"{ADOPTED}; waiting for the desired state",
        err=None,
        container_id=a.container_id or None,
        exit_code=a.exit_code if not a.running else None,
        updated_at=a.created,
        restarts=0,
        current=True,
    )


def _waiting(rec: NameRecord, seen: Mapping[str, Seen]) -> str:
    """What the name's next step waits for, said on its current instance: the record's own
    reason, or the error of a replacement that is being prepared and keeps failing (a pull
    retried with backoff, say)."""
    if rec.blocked:
        return rec.blocked
    if rec.pending is not None:
        status = seen[rec.pending.id].status if rec.pending.id in seen else None
        if status is not None and status.err:
            return f"the new instance is not ready yet ({status.err}); the old one keeps running"
    return ""


def views(records: Mapping[str, NameRecord], seen: Mapping[str, Seen]) -> list[TaskView]:
    """Every instance of every name, as operators see them (see the module docstring)."""
    out: list[TaskView] = []
    for name in sorted(records):
        rec = records[name]
        if rec.current is not None:
            cur = rec.current
            out.append(_view(cur, seen.get(cur.id), rec.restarts, True, _waiting(rec, seen)))
        elif rec.adopted is not None:
            out.append(_adopted_view(name, rec.adopted))
        if rec.pending is not None:
            out.append(_view(rec.pending, seen.get(rec.pending.id), rec.restarts, False))
        out.extend(_view(i, seen.get(i.id), rec.restarts, False) for i in rec.history)
    return out


def views_from_store(store: Store) -> list[TaskView]:
    """The views the running agent would show, read from a store (read-only is fine).

    Reads only; raises ``StoreCorrupt`` if the local manager's records are unreadable.
    """
    _, records, seen = load_records(store)
    return views(records, seen)

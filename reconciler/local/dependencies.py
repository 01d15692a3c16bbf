"""``dependsOn`` as the local manager lives it: how the names a task depends on stand, and
what a new instance of it still waits for.

The task language checks a whole desired set once (``reconciler.spec.deps``): every dependency
names a task of the same set, and none forms a cycle. What is left for the local manager is
time: a *new* instance of a task, first or replacement, is held until every named task's
current instance has started (``started``), is running and so healthy (``healthy``: a task
with a health check only reaches ``running`` once it is healthy), or has completed once
(``completed``). An instance that has started is never held.

The driver (``reconciler.local.manager``) works out a ``Peer`` for each name a task depends on
(``peers``) and re-decides the dependents of a name whose instance started or ended
(``dependents``); the decision (``reconciler.local.decide``) asks ``waiting_for``. Pure
functions of records and observed statuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.core.model import DependencyCondition, TaskSpec, TaskState
from reconciler.core.session import DesiredTask
from reconciler.local.records import NameRecord, Seen

__all__ = ["Peer", "dependents", "peers", "waiting_for"]


@dataclass(frozen=True, slots=True)
class Peer:
    """How another name stands, for the ``dependsOn`` of this one."""

    running: bool  # its current instance is running (healthy, when it has a health check)
    completed_once: bool  # an instance of it has completed


def peers(
    spec: TaskSpec | None, records: Mapping[str, NameRecord], seen: Mapping[str, Seen]
) -> dict[str, Peer]:
    """How the names that ``spec`` depends on stand (a name without a record is left out)."""
    if spec is None or not spec.depends_on:
        return {}
    out: dict[str, Peer] = {}
    for dep in spec.depends_on:
        rec = records.get(dep.task)
        if rec is None:
            continue
        cur = rec.current
        s = seen.get(cur.id) if cur is not None else None
        state = s.status.state if s is not None and s.status is not None else None
        running = cur is not None and not cur.held and state == TaskState.RUNNING
        completed = rec.completed_once or state == TaskState.COMPLETE
        out[dep.task] = Peer(running=running, completed_once=completed)
    return out


def dependents(desired: Mapping[str, DesiredTask]) -> dict[str, set[str]]:
    """Who depends on whom: name -> the names that depend on it."""
    out: dict[str, set[str]] = {}
    for name, d in desired.items():
        for dep in d.spec.depends_on:
            out.setdefault(dep.task, set()).add(name)
    return out


def waiting_for(spec: TaskSpec, peers: Mapping[str, Peer]) -> str:
    """What ``spec``'s dependencies still wait for ("" when nothing)."""
    missing = []
    for dep in spec.depends_on:
        peer = peers.get(dep.task)
        met = peer is not None and (
            peer.completed_once if dep.condition == DependencyCondition.COMPLETED else peer.running
        )
        if not met:
            missing.append(f"{dep.task} ({dep.condition})")
    return "waiting for " + ", ".join(missing) if missing else ""

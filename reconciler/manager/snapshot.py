"""The fleet as the manager's status page shows it: an immutable snapshot, rebuilt after changes.

``FleetSnapshot`` is one picture of what the manager sees: the manager itself (id, leadership,
readiness), the nodes as it judges them, the services with their desired and running tasks,
every assigned task with its reported status, and the tasks no node could take, each with the
reason. Nodes and tasks are the very rows ``reconciler manager nodes`` and ``manager ps`` print
(``manager.admin``), plus the manager's verdict on each node: the page never shows more than
those commands (no spec, no env), only the manager's judgement of it.

``build_snapshot`` makes one from the manager's view, its latest plan and its node verdicts.
Pure: no clock, no I/O.

``Snapshots`` holds the current snapshot for the page's routes and event streams, which wait
on its ``changes``. The manager calls ``changed()`` after anything the page shows changed, and
``beat()`` after heartbeats that changed nothing but what the nodes last said (their time):

* **No work while no one watches.** A change only marks the snapshot stale and bumps
  ``changes`` (an increment, and a wake-up for a waiting stream); the snapshot is rebuilt by
  its first reader after that. While no page is open nothing is ever rebuilt, and while the
  snapshot is stale further changes cost a flag check.
* **Coalesced.** Any number of changes between two reads cost one rebuild, shared by every
  open page (the streams also wait a moment between events, ``reconciler.web.sse``).
* **Heartbeats are not news.** Every node beats every few seconds, which would keep an open
  page busy for nothing; heartbeats alone wake the page at most once per ``BEAT_REFRESH``
  seconds (the first heartbeat after that does), so a node's last heartbeat is shown at most
  that plus a heartbeat period late. No timer: the manager's clock decides. Such a refresh
  reads the nodes afresh and keeps the services and tasks of the last snapshot as they are
  (a node's verdict changed by time alone comes with a full change: the manager plans again).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from reconciler.core.model import TaskState
from reconciler.core.snapshot import Changes
from reconciler.manager.admin import NodeRow, TaskRow, node_rows, ps_rows
from reconciler.manager.health import Health, NodeState, node_state
from reconciler.manager.scheduler import NodeView, Plan, unassigned_reason
from reconciler.manager.services import Mode, owner
from reconciler.manager.view import FleetView

__all__ = [
    "BEAT_REFRESH",
    "FleetSnapshot",
    "ManagerState",
    "NodeStatus",
    "ServiceStatus",
    "Snapshots",
    "UnassignedTask",
    "build_snapshot",
    "unassigned_reason",
]

#: Heartbeats alone make a new snapshot at most this often (seconds).
BEAT_REFRESH: Final = 5.0


@dataclass(frozen=True, slots=True)
class ManagerState:
    """The manager itself: its id, version, whether it leads, and its readiness."""

    manager_id: str
    version: str
    leader: bool
    ready: bool
    reason: str


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node: the ``manager nodes`` row, the manager's verdict, and its tasks running."""

    row: NodeRow
    state: NodeState  # the manager's verdict with the node's availability
    running: int


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One service. ``mode`` is ``replicated``, ``global``, or ``invalid`` (its stored value
    is not a valid service: its tasks are left where they are); ``desired`` is the replicas, a
    global service's copies, and None for an invalid one."""

    name: str
    mode: str
    desired: int | None
    running: int
    unassigned: int


@dataclass(frozen=True, slots=True)
class UnassignedTask:
    """A task without a live node: why, and the down node that still holds it (if one does)."""

    service: str
    task: str
    reason: str
    node: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class FleetSnapshot:
    """One picture of the fleet; see the module docstring. The mappings are never changed."""

    manager: ManagerState
    nodes: Mapping[str, NodeStatus]  # by node id, in id order
    services: Mapping[str, ServiceStatus]  # by name, in name order
    tasks: Mapping[str, TaskRow]  # by "<node>.<task>", in ``manager ps`` order
    unassigned: Mapping[str, UnassignedTask]  # by task, in ``manager ps`` order


def build_snapshot(
    view: FleetView,
    nodes: Mapping[str, NodeView],
    plan: Plan,
    manager: ManagerState,
    *,
    keep: FleetSnapshot | None = None,
) -> FleetSnapshot:
    """The snapshot of ``view`` with the nodes judged as ``nodes`` and ``plan``'s unassigned
    tasks. A task that no assignment holds and the plan does place is shown as not placed
    yet (a standby's plan, or a leader's before its writes).

    With ``keep`` (the last snapshot, when only heartbeats changed since), its services and
    tasks are kept as they are (the very mappings, so no page compares them again) and only
    the nodes and the manager are read afresh."""
    if keep is not None:
        return _nodes_only(view, nodes, manager, keep)
    rows = ps_rows(view)
    tasks = {f"{r.node}.{r.task}": r for r in rows if r.node is not None}
    running_on: Counter[str] = Counter()
    running_of: Counter[str] = Counter()
    for r in tasks.values():
        if r.task_state is TaskState.RUNNING:
            running_on[r.node or ""] += 1
            running_of[r.service] += 1

    holders = {p.task: p.node for p in view.placed() if _down(nodes.get(p.node))}
    waiting = set(plan.unassigned)
    unassigned: dict[str, UnassignedTask] = {}
    for r in rows:
        if r.node is None and r.task not in waiting:
            unassigned[r.task] = UnassignedTask(r.service, r.task, "not placed yet")
    for task in plan.unassigned:
        name = owner(task)[0]
        reason = unassigned_reason(view.services.get(name), nodes)
        unassigned[task] = UnassignedTask(name, task, reason, holders.get(task))
    unassigned = dict(sorted(unassigned.items(), key=lambda kv: _order(kv[0])))
    per_service = Counter(u.service for u in unassigned.values())

    copies = Counter(owner(task)[0] for _, task in plan.assigned)
    services: dict[str, ServiceStatus] = {}
    for name in sorted({*view.services, *view.invalid}):
        service = view.services.get(name)
        if service is None:
            mode, desired = "invalid", None
        elif service.mode is Mode.GLOBAL:
            mode, desired = service.mode.value, copies[name]
        else:
            mode, desired = service.mode.value, service.replicas
        services[name] = ServiceStatus(name, mode, desired, running_of[name], per_service[name])

    return FleetSnapshot(
        manager=manager,
        nodes=_node_statuses(view, nodes, running_on),
        services=services,
        tasks=tasks,
        unassigned=unassigned,
    )


def _nodes_only(
    view: FleetView, nodes: Mapping[str, NodeView], manager: ManagerState, keep: FleetSnapshot
) -> FleetSnapshot:
    running_on = Counter(
        r.node or "" for r in keep.tasks.values() if r.task_state is TaskState.RUNNING
    )
    return FleetSnapshot(
        manager=manager,
        nodes=_node_statuses(view, nodes, running_on),
        services=keep.services,
        tasks=keep.tasks,
        unassigned=keep.unassigned,
    )


def _node_statuses(
    view: FleetView, nodes: Mapping[str, NodeView], running_on: Mapping[str, int]
) -> dict[str, NodeStatus]:
    statuses: dict[str, NodeStatus] = {}
    for row in node_rows(view):
        judged = nodes.get(row.node)
        state = (
            node_state(judged.health, judged.availability)
            if judged is not None
            else NodeState.NOT_READY
        )
        statuses[row.node] = NodeStatus(row, state, running_on.get(row.node, 0))
    return statuses


def _down(node: NodeView | None) -> bool:
    return node is None or node.health is Health.DOWN


def _order(task: str) -> tuple[str, int]:
    name, slot = owner(task)
    return name, slot or 0


class Snapshots:
    """The current ``FleetSnapshot``, rebuilt by its first reader after a change; see the
    module docstring. ``build(keep)`` makes one from the manager's state now, keeping the
    services and tasks of ``keep`` when it is given (only heartbeats changed since it was
    built); ``monotonic`` is the manager's clock (``Clock.monotonic``). Use it from the event
    loop's thread only."""

    def __init__(
        self,
        build: Callable[[FleetSnapshot | None], FleetSnapshot],
        monotonic: Callable[[], float],
        *,
        beat_refresh: float = BEAT_REFRESH,
    ) -> None:
        self.changes = Changes()
        self._build = build
        self._monotonic = monotonic
        self._beat_refresh = beat_refresh
        self._current: FleetSnapshot | None = None
        self._stale = True
        self._nodes_only = False  # stale only by heartbeats: the tasks still hold
        self._bumped_at = -math.inf

    def current(self) -> FleetSnapshot:
        """The snapshot of the manager's state as of the last change (built now if stale)."""
        if self._stale or self._current is None:
            self._current = self._build(self._current if self._nodes_only else None)
            self._stale = self._nodes_only = False
        return self._current

    def changed(self) -> None:
        """Something the page shows changed. Cheap; never raises."""
        self._nodes_only = False
        self._bump()

    def beat(self) -> None:
        """Heartbeats changed only what nodes last said: a change if the last one is
        ``beat_refresh`` seconds old, else nothing (a later heartbeat will be). Cheap; never
        raises."""
        if not self._stale and self._monotonic() - self._bumped_at >= self._beat_refresh:
            self._nodes_only = True
            self._bump()

    def _bump(self) -> None:
        if not self._stale:
            self._stale = True
            self._bumped_at = self._monotonic()
            self.changes.bump()

"""The manager's scheduling decision: a pure function, beside its driver (``fleet.manager``).

``schedule(services, nodes, placed)`` looks at the services, the nodes as the manager judges
them (health, availability, labels, capacity, pressure) and the assignments in
``reconciler_assignments`` (``Placed``: one per key, ``<node>.<task>``), and returns a ``Plan``:
the assignment puts and deletes that bring the fleet to the services, the tasks it could not
place, and why tasks moved. It reads no clock, bucket or event loop, so the same inputs always
give the same plan, and a standby, ``manager apply --dry-run`` and the tests can all run it.

The rules, level by level:

* **Expansion.** A replicated service is tasks ``<service>-1`` … ``<service>-<replicas>``; a
  global one is one task, named after the service, on every eligible node. A key whose task
  belongs to no service (removed, scaled down: the highest slots go first, or another mode) is
  deleted. The tasks of a service whose stored value is invalid (``frozen``) are left alone.
* **Where a task may run.** A copy of a task is *live* on a node that is not down, not
  draining, and matches the service's constraints. A copy on a draining node is deleted
  (``drain``), and so is a copy on a node that no longer matches (``constraint``); a copy on a
  down node stays until the task runs elsewhere (``node_down``), so a task with nowhere to go
  resumes where it was when its node comes back. Two live copies of one task (two leaders
  raced, or a node came back) keep the one on a ready node with the newest revision.
* **Stability.** A live copy is never moved; only its value is brought up to date when the
  service changed (the agent then updates or replaces the instance by its own rules).
* **Placement.** A task without a live copy goes to a node that is ready, ``active``, under no
  pressure, matches the constraints, and has room for the task's declared ``cpus`` and
  ``memory`` beside what the node already holds (a node that has not described its capacity
  takes only tasks that declare none). Among those, the node with the fewest tasks of this
  service, then the fewest tasks overall, then the smallest id: replicas spread. With no such
  node the task is *unassigned* (and a copy on a down node stays).
* **Global services** get a task on every eligible node that lacks one, before replicated
  services are placed; a node without room simply does not get one. Their copies on down
  nodes stay: they belong to that node.
* **Availability.** ``pause`` keeps what a node holds and gives it nothing new; ``drain``
  takes everything off it.
"""

from __future__ import annotations

import enum
import heapq
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.fleet.services import Mode, Service, owner
from reconciler.fleet.values import Availability

__all__ = [
    "Delete",
    "Health",
    "NodeView",
    "Placed",
    "Plan",
    "Put",
    "Reason",
    "schedule",
]

_EPSILON = 1e-9


class Health(enum.StrEnum):
    """How the manager judges a node from the heartbeats it saw (``fleet.health``)."""

    READY = "ready"
    NOT_READY = "not-ready"  # heard from within the grace period, but not ready (yet)
    DOWN = "down"


class Reason(enum.StrEnum):
    """Why a task was taken off a node (``reconciler_manager_reschedules_total{reason}``)."""

    NODE_DOWN = "node_down"
    DRAIN = "drain"
    CONSTRAINT = "constraint"


@dataclass(frozen=True, slots=True, eq=False)
class NodeView:
    """One node as the scheduler sees it. ``cpus``/``memory`` None: capacity not described."""

    id: str
    health: Health
    availability: Availability = Availability.ACTIVE
    labels: Mapping[str, str] = field(default_factory=dict)
    cpus: float | None = None
    memory: int | None = None
    pressure: bool = False

    @property
    def takes_new(self) -> bool:
        """Whether new tasks may go here (constraints and room aside)."""
        return (
            self.health is Health.READY
            and self.availability is Availability.ACTIVE
            and not self.pressure
        )


@dataclass(frozen=True, slots=True)
class Placed:
    """One key of ``reconciler_assignments``: task ``task`` on ``node``, at ``revision``, with
    the resources its value declares."""

    node: str
    task: str
    value: bytes
    revision: int
    cpus: float | None = None
    memory: int | None = None


@dataclass(frozen=True, slots=True)
class Put:
    """Write ``value`` to ``<node>.<task>``. ``revision`` is the key's current revision (0: a
    new key). ``moved_from`` and ``reason`` say why a task went to a new node."""

    node: str
    task: str
    value: bytes
    revision: int = 0
    moved_from: str | None = None
    reason: Reason | None = None

    @property
    def update(self) -> bool:
        return self.revision != 0


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete ``<node>.<task>`` at ``revision``; ``why`` in words, ``reason`` when it counts
    as a reschedule."""

    node: str
    task: str
    revision: int
    why: str
    reason: Reason | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """What to write, and the fleet as it stands once written.

    ``assigned`` holds every (node, task) with a live copy afterwards (global tasks on down
    nodes included: they belong there); ``unassigned`` the replicated tasks without one.
    """

    puts: tuple[Put, ...] = ()
    deletes: tuple[Delete, ...] = ()
    assigned: tuple[tuple[str, str], ...] = ()
    unassigned: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.puts and not self.deletes

    def reschedules(self) -> dict[Reason, int]:
        """Tasks taken off a node in this plan, by reason."""
        counts: dict[Reason, int] = defaultdict(int)
        for d in self.deletes:
            if d.reason is not None:
                counts[d.reason] += 1
        return dict(counts)


class _Usage:
    """What each node holds: cpus, memory, tasks in all and per service."""

    def __init__(self) -> None:
        self.cpus: dict[str, float] = defaultdict(float)
        self.memory: dict[str, int] = defaultdict(int)
        self.total: dict[str, int] = defaultdict(int)
        self.per_service: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, node: str, service: str, cpus: float | None, memory: int | None) -> None:
        self.cpus[node] += cpus or 0.0
        self.memory[node] += memory or 0
        self.total[node] += 1
        self.per_service[(node, service)] += 1

    def has_room(self, node: NodeView, cpus: float | None, memory: int | None) -> bool:
        if cpus and (node.cpus is None or self.cpus[node.id] + cpus > node.cpus + _EPSILON):
            return False
        return not (memory and (node.memory is None or self.memory[node.id] + memory > node.memory))


_DOWN = NodeView(id="", health=Health.DOWN)


def schedule(
    services: Mapping[str, Service],
    nodes: Mapping[str, NodeView],
    placed: Iterable[Placed],
    *,
    frozen: Collection[str] = (),
) -> Plan:
    """The plan that brings ``placed`` to ``services`` on ``nodes``; see the module docstring.

    A node that ``placed`` names but ``nodes`` lacks counts as down. Pure; never raises.
    """
    puts: list[Put] = []
    deletes: list[Delete] = []
    assigned: list[tuple[str, str]] = []
    usage = _Usage()
    copies: dict[str, list[Placed]] = defaultdict(list)
    for p in placed:
        copies[p.task].append(p)

    def node_of(node_id: str) -> NodeView:
        return nodes.get(node_id) or _DOWN

    def keep(p: Placed, service: Service, *, live: bool) -> None:
        if p.value != service.assignment:
            puts.append(Put(p.node, p.task, service.assignment, revision=p.revision))
        usage.add(p.node, service.name, p.cpus, p.memory)
        if live:
            assigned.append((p.node, p.task))

    # tasks waiting for a node: (service, task, the copy on a down node it leaves, if any)
    waiting: dict[str, list[tuple[str, Placed | None]]] = defaultdict(list)
    for task in sorted(copies):
        found = sorted(copies[task], key=lambda p: p.node)
        name, slot = owner(task)
        if name in frozen:
            for p in found:
                usage.add(p.node, name, p.cpus, p.memory)
                assigned.append((p.node, p.task))
            continue
        service = services.get(name)
        why = _not_a_task(service, slot)
        if service is None or why:
            deletes.extend(
                Delete(p.node, p.task, p.revision, why or "no such service") for p in found
            )
            continue
        live: list[Placed] = []
        down: list[Placed] = []
        for p in found:
            node = node_of(p.node)
            if node.availability is Availability.DRAIN:
                deletes.append(Delete(p.node, p.task, p.revision, "node drains", Reason.DRAIN))
            elif not service.matches(node.id or p.node, node.labels):
                deletes.append(Delete(p.node, p.task, p.revision, "constraints", Reason.CONSTRAINT))
            elif node.health is Health.DOWN:
                down.append(p)
            else:
                live.append(p)
        if service.mode is Mode.GLOBAL:
            for p in (*live, *down):  # one key per node: never duplicates
                keep(p, service, live=True)
            continue
        if live:
            best = max(live, key=lambda p: (node_of(p.node).health is Health.READY, p.revision))
            keep(best, service, live=True)
            for p in live:
                if p is not best:
                    deletes.append(Delete(p.node, p.task, p.revision, "duplicate"))
            for p in down:
                deletes.append(Delete(p.node, p.task, p.revision, "runs elsewhere"))
            continue
        stays: Placed | None = None
        if down:
            stays = max(down, key=lambda p: p.revision)
            keep(stays, service, live=False)
            for p in down:
                if p is not stays:
                    deletes.append(Delete(p.node, p.task, p.revision, "duplicate"))
        waiting[name].append((task, stays))

    for name in sorted(services):
        service = services[name]
        if name in frozen or service.mode is Mode.GLOBAL:
            continue
        missing = [t for t in service.task_names() if t not in copies]
        waiting[name].extend((t, None) for t in missing)

    eligible = sorted((n for n in nodes.values() if n.takes_new), key=lambda n: n.id)
    for name in sorted(services):
        service = services[name]
        if name in frozen or service.mode is not Mode.GLOBAL:
            continue
        have = {p.node for p in copies.get(name, ())}
        for node in eligible:
            if node.id in have or not service.matches(node.id, node.labels):
                continue
            if usage.has_room(node, service.cpus, service.memory):
                puts.append(Put(node.id, name, service.assignment))
                usage.add(node.id, name, service.cpus, service.memory)
                assigned.append((node.id, name))

    unassigned: list[str] = []
    for name in sorted(waiting):
        service = services[name]
        tasks = sorted(waiting[name], key=lambda item: owner(item[0])[1] or 0)
        heap = [
            (usage.per_service[(n.id, name)], usage.total[n.id], n.id)
            for n in eligible
            if service.matches(n.id, n.labels)
        ]
        heapq.heapify(heap)
        for task, stays in tasks:
            target = None
            while heap:
                _, _, node_id = heapq.heappop(heap)
                if usage.has_room(nodes[node_id], service.cpus, service.memory):
                    target = node_id
                    break
                # every task of a service asks for the same room: this node is full for it
            if target is None:
                unassigned.append(task)
                continue
            if stays is not None:
                deletes.append(
                    Delete(stays.node, task, stays.revision, "node down", Reason.NODE_DOWN)
                )
                puts.append(
                    Put(
                        target,
                        task,
                        service.assignment,
                        moved_from=stays.node,
                        reason=Reason.NODE_DOWN,
                    )
                )
            else:
                puts.append(Put(target, task, service.assignment))
            usage.add(target, name, service.cpus, service.memory)
            assigned.append((target, task))
            heapq.heappush(heap, (usage.per_service[(target, name)], usage.total[target], target))
    return Plan(
        puts=tuple(puts),
        deletes=tuple(deletes),
        assigned=tuple(assigned),
        unassigned=tuple(unassigned),
    )


def _not_a_task(service: Service | None, slot: int | None) -> str:
    """Why a task name with this slot is no task of ``service`` ("" when it is one)."""
    if service is None:
        return "no such service"
    if service.mode is Mode.GLOBAL:
        return "" if slot is None else "the service is global"
    if slot is None:
        return "the service is replicated"
    if slot > service.replicas:
        return "scaled down"
    return ""

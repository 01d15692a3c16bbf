"""The manager's scheduling decision: a pure function, beside its driver (``manager.driver``).

``schedule(services, nodes, placed)`` looks at the services, the nodes as the manager judges
them (health, availability, the labels operators set and those the node claims, capacity,
pressure) and the assignments in
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
* **The node's policy for fleet tasks** (``reconciler.core.policy``, in its heartbeat): a new
  task goes only to a node whose policy allows every field of it (binds, devices,
  capabilities, the host's network, the image's registry). A copy already placed stays: the
  agent keeps a running instance whatever its policy, and rejects a spec it refuses.
"""

from __future__ import annotations

import enum
import heapq
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from reconciler.core.model import Availability
from reconciler.core.policy import Policy, Refusal, check
from reconciler.manager.health import Health
from reconciler.manager.services import Mode, Service, Subject, owner

__all__ = [
    "UNASSIGNED",
    "Delete",
    "NodeView",
    "Placed",
    "Plan",
    "Put",
    "Reason",
    "policy_refusals",
    "schedule",
    "unassigned_reason",
]

_EPSILON = 1e-9

UNASSIGNED: Final = "unassigned"
"""The word for a task that no node holds (``Plan.unassigned``), where a task state would be."""


class Reason(enum.StrEnum):
    """Why a task was taken off a node (``reconciler_manager_reschedules_total{reason}``)."""

    NODE_DOWN = "node_down"
    DRAIN = "drain"
    CONSTRAINT = "constraint"


@dataclass(frozen=True, slots=True, eq=False)
class NodeView:
    """One node as the scheduler sees it. ``operator_labels`` are the labels operators set
    (``reconciler_control``; ``node.labels`` in a constraint), ``engine_labels`` those the
    node's agent claims in its own value (``engine.labels``). ``cpus``/``memory`` None:
    capacity not described."""

    id: str
    health: Health
    availability: Availability = Availability.ACTIVE
    operator_labels: Mapping[str, str] = field(default_factory=dict)
    engine_labels: Mapping[str, str] = field(default_factory=dict)
    cpus: float | None = None
    memory: int | None = None
    pressure: bool = False
    policy: Policy | None = None  # its policy for fleet tasks; None: it reports none

    def fits(self, service: Service, node_id: str | None = None) -> bool:
        """Whether the node passes ``service``'s constraints (``node_id``: the id a key gave
        a node the scheduler does not know)."""
        return service.matches(node_id or self.id, self.operator_labels, self.engine_labels)

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
    planner = _Planner(services, nodes, placed, frozen)
    for task in sorted(planner.copies):
        planner.sort_copies(task)
    planner.add_missing()
    planner.place_global()
    planner.place_waiting()
    return planner.plan()


class _Planner:
    """One ``schedule`` call's working state; each method is one level of the module
    docstring's rules, in the order ``schedule`` runs them."""

    def __init__(
        self,
        services: Mapping[str, Service],
        nodes: Mapping[str, NodeView],
        placed: Iterable[Placed],
        frozen: Collection[str],
    ) -> None:
        self.services = services
        self.nodes = nodes
        self.frozen = frozen
        self.puts: list[Put] = []
        self.deletes: list[Delete] = []
        self.assigned: list[tuple[str, str]] = []
        self.unassigned: list[str] = []
        self.usage = _Usage()
        self.copies: dict[str, list[Placed]] = defaultdict(list)
        for p in placed:
            self.copies[p.task].append(p)
        # tasks waiting for a node, per service: (task, the copy on a down node it leaves)
        self.waiting: dict[str, list[tuple[str, Placed | None]]] = defaultdict(list)
        self.eligible = sorted((n for n in nodes.values() if n.takes_new), key=lambda n: n.id)

    def node_of(self, node_id: str) -> NodeView:
        return self.nodes.get(node_id) or _DOWN

    def keep(self, p: Placed, service: Service, *, live: bool) -> None:
        """Keep copy ``p``, bringing its value up to date."""
        if p.value != service.assignment:
            self.puts.append(Put(p.node, p.task, service.assignment, revision=p.revision))
        self.usage.add(p.node, service.name, p.cpus, p.memory)
        if live:
            self.assigned.append((p.node, p.task))

    def delete(self, p: Placed, why: str, reason: Reason | None = None) -> None:
        self.deletes.append(Delete(p.node, p.task, p.revision, why, reason))

    def sort_copies(self, task: str) -> None:
        """Expansion, where a task may run and stability, for the copies of one task."""
        found = sorted(self.copies[task], key=lambda p: p.node)
        name, slot = owner(task)
        if name in self.frozen:
            for p in found:
                self.usage.add(p.node, name, p.cpus, p.memory)
                self.assigned.append((p.node, p.task))
            return
        service = self.services.get(name)
        why = _not_a_task(service, slot)
        if service is None or why:
            for p in found:
                self.delete(p, why or "no such service")
            return
        live: list[Placed] = []
        down: list[Placed] = []
        for p in found:
            node = self.node_of(p.node)
            if node.availability is Availability.DRAIN:
                self.delete(p, "node drains", Reason.DRAIN)
            elif not node.fits(service, node.id or p.node):
                self.delete(p, "constraints", Reason.CONSTRAINT)
            elif node.health is Health.DOWN:
                down.append(p)
            else:
                live.append(p)
        if service.mode is Mode.GLOBAL:
            for p in (*live, *down):  # one key per node: never duplicates
                self.keep(p, service, live=True)
        elif live:
            best = max(
                live, key=lambda p: (self.node_of(p.node).health is Health.READY, p.revision)
            )
            self.keep(best, service, live=True)
            for p in live:
                if p is not best:
                    self.delete(p, "duplicate")
            for p in down:
                self.delete(p, "runs elsewhere")
        else:
            stays = max(down, key=lambda p: p.revision) if down else None
            if stays is not None:
                self.keep(stays, service, live=False)
            for p in down:
                if p is not stays:
                    self.delete(p, "duplicate")
            self.waiting[name].append((task, stays))

    def add_missing(self) -> None:
        """Replicated tasks with no copy at all wait for a node too."""
        for name in sorted(self.services):
            service = self.services[name]
            if name in self.frozen or service.mode is Mode.GLOBAL:
                continue
            missing = [t for t in service.task_names() if t not in self.copies]
            self.waiting[name].extend((t, None) for t in missing)

    def place_global(self) -> None:
        """A global service's task on every eligible node that lacks one and has room."""
        for name in sorted(self.services):
            service = self.services[name]
            if name in self.frozen or service.mode is not Mode.GLOBAL:
                continue
            have = {p.node for p in self.copies.get(name, ())}
            for node in self.eligible:
                if node.id in have or not node.fits(service):
                    continue
                if policy_refusals(service, node):
                    continue
                if self.usage.has_room(node, service.cpus, service.memory):
                    self.put(node.id, name, service)

    def place_waiting(self) -> None:
        """Each waiting task, by service and slot, to the eligible node with the fewest tasks of
        its service, then the fewest overall, then the smallest id, that has room."""
        usage = self.usage
        for name in sorted(self.waiting):
            service = self.services[name]
            tasks = sorted(self.waiting[name], key=lambda item: owner(item[0])[1] or 0)
            heap = [
                (usage.per_service[(n.id, name)], usage.total[n.id], n.id)
                for n in self.eligible
                if n.fits(service) and not policy_refusals(service, n)
            ]
            heapq.heapify(heap)
            for task, stays in tasks:
                target = None
                while heap:
                    _, _, node_id = heapq.heappop(heap)
                    if usage.has_room(self.nodes[node_id], service.cpus, service.memory):
                        target = node_id
                        break
                    # every task of a service asks for the same room: this node is full for it
                if target is None:
                    self.unassigned.append(task)
                    continue
                self.put(target, task, service, leaves=stays)
                heapq.heappush(
                    heap, (usage.per_service[(target, name)], usage.total[target], target)
                )

    def put(self, node: str, task: str, service: Service, *, leaves: Placed | None = None) -> None:
        """Assign ``task`` to ``node``; ``leaves``: its copy on a down node, deleted."""
        if leaves is None:
            self.puts.append(Put(node, task, service.assignment))
        else:
            self.delete(leaves, "node down", Reason.NODE_DOWN)
            self.puts.append(
                Put(node, task, service.assignment, moved_from=leaves.node, reason=Reason.NODE_DOWN)
            )
        self.usage.add(node, service.name, service.cpus, service.memory)
        self.assigned.append((node, task))

    def plan(self) -> Plan:
        return Plan(
            puts=tuple(self.puts),
            deletes=tuple(self.deletes),
            assigned=tuple(self.assigned),
            unassigned=tuple(self.unassigned),
        )


def policy_refusals(service: Service, node: NodeView) -> list[Refusal]:
    """What ``node``'s policy for fleet tasks refuses of ``service``'s task (empty: it may
    run there). A node that reports no policy (an older agent) checks nothing. The agent checks
    again, following symbolic links on its host, before it pulls anything."""
    return [] if node.policy is None else check(service.task.spec, node.policy)


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


# ------------------------------------------------------------------------------ reasons


def unassigned_reason(service: Service | None, nodes: Mapping[str, NodeView]) -> str:
    """Why ``schedule`` found no node for a task of ``service``: the first placement rule that
    left no node (constraints, readiness, availability, pressure, the nodes' policies, room).
    A policy names the first field it refuses and the flag that would allow it."""
    if service is None:
        return "its service is gone"
    if not nodes:
        return "no node has joined the fleet"
    fits = [n for n in nodes.values() if n.fits(service)]
    if not fits:
        return _constraint_reason(service, nodes)
    fits = [n for n in fits if n.health is Health.READY]
    if not fits:
        return "no node it may run on is ready"
    fits = [n for n in fits if n.availability is Availability.ACTIVE]
    if not fits:
        return "every node it may run on is paused or draining"
    fits = [n for n in fits if not n.pressure]
    if not fits:
        return "every node it may run on is under disk or memory pressure"
    refusals = [policy_refusals(service, n) for n in fits]
    if all(refusals):
        return f"no node's policy allows it: {refusals[0][0]}"
    return "no node it may run on has room for it" + _needs(service)


def _constraint_reason(service: Service, nodes: Mapping[str, NodeView]) -> str:
    """No node passes the constraints: a ``node.labels`` one that no node passes, but that a
    node's own (engine) label would, is named with that node: only operators set it."""
    for c in service.constraints:
        if c.subject is not Subject.NODE_LABEL or not c.equal:
            continue
        if any(c.matches(n.id, n.operator_labels, n.engine_labels) for n in nodes.values()):
            continue
        claim = sorted(n.id for n in nodes.values() if c.matches(n.id, n.engine_labels, {}))
        if claim:
            shown = ", ".join(claim[:3]) + (f" and {len(claim) - 3} more" if len(claim) > 3 else "")
            has = "has" if len(claim) == 1 else "have"
            return (
                f"{c}: no node has this operator label ({shown} {has} it as an engine label: "
                "set it with reconciler manager label)"
            )
    return "no node matches its placement constraints"


def _needs(service: Service) -> str:
    needs = []
    if service.cpus:
        needs.append(f"{service.cpus:g} CPUs")
    if service.memory:
        needs.append(f"{service.memory / (1 << 20):g} MiB")
    return f" ({' and '.join(needs)})" if needs else ""

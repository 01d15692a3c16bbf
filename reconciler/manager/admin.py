"""What the ``reconciler manager`` commands do over NATS, apart from ``run``: read the fleet,
write services and node availability. Each call opens one connection and closes it.

- ``read_fleet``: one read of every bucket the commands show (services, nodes, control,
  assignments, statuses) into a ``FleetView``, through the same filtered watch the manager
  uses (its initial values are the whole bucket).
- ``apply_services``: upsert the services of a ServiceSet file into ``reconciler_services``
  (``prune``: and delete the services the file does not name); it says per service what
  changes, and with ``dry_run`` writes nothing and says where the scheduler would put tasks.
- ``remove_services``: delete services by name.
- ``ps_rows``, ``node_rows``: the rows ``manager ps`` and ``manager nodes`` print; a node's
  row shows the labels operators set (``labels``) and those its agent claims
  (``engineLabels``), an unassigned task's row why (``unassigned_reasons``).

What operators set on a node (availability, labels) is ``reconciler.manager.control``'s.

The commands run apart from the manager, so they cannot know what it judged from the
heartbeats it saw: a dry run takes every node that says ``ready`` as ready, and ``manager
nodes`` shows what each node last said and when (by its own clock); the manager's verdicts are
in its metrics and log.

Each command reads only the keys an operator's or a viewer's credentials may watch
(``reconciler.fleet.identity.READS``: of the control bucket, only the nodes' availability,
never the users list), so that ``ps``, ``nodes`` and ``apply --dry-run`` run with an operator's
or a viewer's credentials.

Errors: ``FleetError`` (no server answers, the buckets do not exist yet, NATS refused a read or
a write), with a message an operator can act on. NATS answers a request that a user's
permissions forbid with nothing but an asynchronous error, so each command's connection
(``Link``) watches for those and fails the call at once, naming the subject refused, instead
of waiting out the request's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.client import Client

from reconciler.core.model import Availability, Condition, TaskState
from reconciler.fleet.buckets import (
    ASSIGNMENTS,
    CONTROL,
    NODES,
    SERVICES,
    STATUS,
)
from reconciler.fleet.connect import connect_first
from reconciler.fleet.identity import READS
from reconciler.fleet.options import NatsOptions
from reconciler.fleet.watch import BucketMissing, Entry, KeyWatch
from reconciler.manager.health import Health
from reconciler.manager.scheduler import UNASSIGNED, NodeView, Plan, schedule, unassigned_reason
from reconciler.manager.services import Mode, Service, owner
from reconciler.manager.view import FleetView
from reconciler.manager.writes import Conflict, publish
from reconciler.spec.plan import changed_fields

__all__ = [
    "FleetError",
    "Link",
    "NodeRow",
    "TaskRow",
    "apply_services",
    "connected",
    "node_rows",
    "placement_lines",
    "ps_rows",
    "read_fleet",
    "read_keys",
    "remove_services",
    "service_lines",
    "unassigned_reasons",
]

_READ = (SERVICES, NODES, CONTROL, ASSIGNMENTS, STATUS)


class FleetError(Exception):
    """The command could not reach the fleet or write to it; the message says why."""


T = TypeVar("T")
_REFUSED = "permissions violation"


class Link:
    """One command's connection, and the refusals NATS reported on it (see the module
    docstring)."""

    def __init__(self) -> None:
        self._nc: Client | None = None
        self._refused = asyncio.Event()
        self.refusal = ""

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "not connected"
        return self._nc

    def jetstream(self) -> Any:
        return self.nc.jetstream(timeout=10)

    async def on_error(self, err: Exception) -> None:
        text = str(err)
        if _REFUSED in text.lower() and not self._refused.is_set():
            self.refusal = text.removeprefix("nats: ")
            self._refused.set()

    async def guarded(self, call: Awaitable[T], what: str) -> T:
        """``call``'s result, or ``FleetError`` saying ``what`` failed: at once when NATS
        reports a refusal meanwhile. ``Conflict`` (a compare-and-set write that found the key
        changed) passes through."""
        task = asyncio.ensure_future(call)
        refused = asyncio.ensure_future(self._refused.wait())
        try:
            await asyncio.wait({task, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            refused.cancel()
            if not task.done():
                task.cancel()
                task.add_done_callback(_retrieve)
        if self._refused.is_set():
            raise FleetError(
                f"{what}: NATS refused it: {self.refusal} (do these credentials have a role "
                "that may?)"
            )
        try:
            return task.result()
        except (FleetError, Conflict):
            raise
        except BucketMissing as err:
            raise FleetError(f"{err}: run `reconciler manager init` first") from err
        except Exception as err:
            raise FleetError(f"{what}: {_describe(err)}") from err


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


@contextlib.asynccontextmanager
async def connected(options: NatsOptions) -> AsyncIterator[Link]:
    """One command's connection, closed on exit. Raises ``FleetError``."""
    link = Link()
    try:
        link._nc, _ = await connect_first(options, options.servers, error_cb=link.on_error)
    except ConnectionError as err:
        raise FleetError(str(err)) from err
    try:
        yield link
    finally:
        with contextlib.suppress(Exception):
            await link.nc.close()


async def read_keys(link: Link, bucket: str, keys: str) -> dict[str, Entry]:
    """The present values of ``keys`` (a key or a pattern) in ``bucket``, read through one
    filtered watch. Raises ``FleetError``."""
    watch = KeyWatch(link.nc, bucket, keys)
    try:
        return await link.guarded(watch.start(), f"reading {bucket}/{keys}")
    finally:
        await watch.stop()


async def _read(link: Link, buckets: Sequence[str] = _READ) -> FleetView:
    view = FleetView(grace=1.0)
    for bucket in buckets:
        entries: dict[str, Entry] = {}
        for keys in READS[bucket]:
            entries.update(await read_keys(link, bucket, keys))
        view.load(bucket, entries, 0.0)
    return view


async def read_fleet(options: NatsOptions) -> FleetView:
    """Every bucket the commands show, read once. Raises ``FleetError``."""
    async with connected(options) as link:
        return await _read(link)


def judged_nodes(view: FleetView) -> dict[str, NodeView]:
    """The nodes as a command can judge them: ready when their value says so."""
    nodes = view.node_views(0.0)
    out: dict[str, NodeView] = {}
    for node_id, node in nodes.items():
        beat = view.health.beat(node_id)
        health = Health.READY if beat is not None and beat.ready else Health.NOT_READY
        out[node_id] = dataclasses.replace(node, health=health)  # its labels, policy, ...
    return out


# ---------------------------------------------------------------------------- apply


def service_lines(old: dict[str, Service], new: Sequence[Service], *, prune: bool) -> list[str]:
    """One line per service: ``create``, ``update (fields)``, ``unchanged``, ``remove``."""
    lines: list[str] = []
    names = {s.name for s in new}
    for service in new:
        before = old.get(service.name)
        if before is None:
            size = "global" if service.mode is Mode.GLOBAL else f"{service.replicas} replicas"
            lines.append(f"create service {service.name} ({size})")
            continue
        fields = _changed(before, service)
        if fields:
            lines.append(f"update service {service.name} ({', '.join(fields)})")
        else:
            lines.append(f"unchanged service {service.name}")
    if prune:
        lines.extend(f"remove service {name}" for name in sorted(set(old) - names))
    return lines


def _changed(old: Service, new: Service) -> list[str]:
    fields = changed_fields(old.task, new.task)
    if old.mode != new.mode:
        fields.append("mode")
    if old.replicas != new.replicas:
        fields.append("replicas")
    if old.constraints != new.constraints:
        fields.append("placement")
    if not fields and old.value != new.value:
        fields.append("value")
    return fields


def placement_lines(plan: Plan, reasons: Mapping[str, str] | None = None) -> list[str]:
    """The scheduler's plan in words: ``place``, ``move``, ``update``, ``remove``,
    ``unassigned`` (with its reason from ``reasons``)."""
    reasons = reasons or {}
    lines: list[str] = []
    moved = {(p.moved_from, p.task) for p in plan.puts if p.moved_from}
    for put in sorted(plan.puts, key=lambda p: _order(p.task, p.node)):
        if put.moved_from:
            lines.append(f"move {put.task} from {put.moved_from} to {put.node} ({put.reason})")
        elif put.update:
            lines.append(f"update {put.task} on {put.node}")
        else:
            lines.append(f"place {put.task} on {put.node}")
    for d in sorted(plan.deletes, key=lambda d: _order(d.task, d.node)):
        if (d.node, d.task) not in moved:
            lines.append(f"remove {d.task} from {d.node} ({d.reason or d.why})")
    lines.extend(
        f"unassigned {task} ({reasons.get(task, 'no eligible node with room')})"
        for task in sorted(plan.unassigned, key=lambda t: _order(t, ""))
    )
    return lines


def _order(task: str, node: str) -> tuple[str, int, str]:
    name, slot = owner(task)
    return name, slot or 0, node


async def apply_services(
    options: NatsOptions, services: Sequence[Service], *, prune: bool, dry_run: bool
) -> tuple[list[str], list[str]]:
    """Upsert ``services`` (and with ``prune`` delete the others). Returns the service lines
    and, with ``dry_run``, the placement lines (nothing is written then). Raises
    ``FleetError``."""
    async with connected(options) as link:
        view = await _read(link, _READ if dry_run else (SERVICES,))
        old = dict(view.services)
        lines = service_lines(old, services, prune=prune)
        if dry_run:
            wanted = {} if prune else dict(old)
            wanted.update({s.name: s for s in services})
            frozen = {k for k in view.invalid if k not in wanted}
            nodes = judged_nodes(view)
            plan = schedule(wanted, nodes, view.placed(), frozen=frozen)
            why = {t: unassigned_reason(wanted.get(owner(t)[0]), nodes) for t in plan.unassigned}
            return lines, placement_lines(plan, why)
        names = {s.name for s in services}
        for service in services:
            if old.get(service.name) is None or old[service.name].value != service.value:
                await _write(link, SERVICES, service.name, service.value)
        if prune:
            for name in sorted((set(old) | set(view.invalid)) - names):
                await _write(link, SERVICES, name, None)
        return lines, []


async def remove_services(options: NatsOptions, names: Sequence[str]) -> list[str]:
    """Delete the named services. Raises ``FleetError`` naming those that do not exist (and
    then removes none)."""
    async with connected(options) as link:
        view = await _read(link, (SERVICES,))
        known = set(view.services) | set(view.invalid)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise FleetError(f"no such service: {', '.join(unknown)}")
        for name in dict.fromkeys(names):
            await _write(link, SERVICES, name, None)
    return [f"remove service {n}" for n in dict.fromkeys(names)]


async def _write(link: Link, bucket: str, key: str, value: bytes | None) -> None:
    """Put ``value`` into ``bucket/key`` (None: delete it). Raises ``FleetError``."""
    what = f"writing {bucket}/{key}"
    await link.guarded(publish(link.jetstream(), bucket, key, value, last=None), what)


def _describe(err: BaseException) -> str:
    return str(err) or type(err).__name__


# ---------------------------------------------------------------------------- ps, nodes


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One row of ``manager ps``: a task on a node (node None: unassigned). ``task_state`` is
    the state its agent reported, ``ASSIGNED`` until it reported one, None without a node;
    ``state`` is the word ``manager ps`` prints for it."""

    service: str
    task: str
    node: str | None
    task_state: TaskState | None
    restarts: int = 0
    id: str | None = None
    message: str | None = None
    error: str | None = None
    updated_at: str | None = None
    reason: str | None = None

    @property
    def state(self) -> str:
        """The task state's label, or ``unassigned``."""
        return self.task_state.label if self.task_state is not None else UNASSIGNED

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "task": self.task,
            "node": self.node,
            "state": self.state,
            "restarts": self.restarts,
            "id": self.id,
            "message": self.message,
            "error": self.error,
            "updatedAt": self.updated_at,
            "reason": self.reason,
        }


def unassigned_reasons(view: FleetView) -> dict[str, str]:
    """Why each task without an assignment has none, as a command judges the nodes
    (``judged_nodes``): the scheduler's reason, or ``not placed yet`` for one it would place."""
    nodes = judged_nodes(view)
    plan = schedule(view.services, nodes, view.placed(), frozen=set(view.invalid))
    waiting = set(plan.unassigned)
    reasons = {task: "not placed yet" for _, task in plan.assigned}
    for task in waiting:
        reasons[task] = unassigned_reason(view.services.get(owner(task)[0]), nodes)
    return reasons


def ps_rows(view: FleetView, reasons: Mapping[str, str] | None = None) -> list[TaskRow]:
    """Every assignment with its reported status, then every task of a service that has no
    assignment (``unassigned``, with its reason from ``reasons``, ``unassigned_reasons``);
    sorted by service, slot and node."""
    reasons = reasons or {}
    rows: list[TaskRow] = []
    assigned: set[str] = set()
    for placed in view.placed():
        assigned.add(placed.task)
        name = owner(placed.task)[0]
        reported = view.statuses.get(f"{placed.node}.{placed.task}")
        if reported is None:
            rows.append(TaskRow(name, placed.task, placed.node, TaskState.ASSIGNED))
            continue
        rows.append(
            TaskRow(
                service=name,
                task=placed.task,
                node=placed.node,
                task_state=reported.state,
                restarts=reported.restarts,
                id=reported.id,
                message=reported.message,
                error=reported.error,
                updated_at=reported.updated_at,
            )
        )
    for service in view.services.values():
        if service.mode is Mode.GLOBAL:
            continue  # one task per eligible node: none is missing by name
        for task in service.task_names():
            if task not in assigned:
                rows.append(TaskRow(service.name, task, None, None, reason=reasons.get(task)))
    rows.sort(key=lambda r: _order(r.task, r.node or ""))
    return rows


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One row of ``manager nodes``: what the node last said (``engine_labels``: the labels
    its agent claims), and what operators set: its availability and ``labels``."""

    node: str
    ready: bool | None
    availability: Availability
    tasks: int
    heartbeat_at: str | None = None
    hostname: str | None = None
    cpus: float | None = None
    memory: int | None = None
    labels: tuple[tuple[str, str], ...] = ()
    engine_labels: tuple[tuple[str, str], ...] = ()
    version: str | None = None
    pressure: tuple[Condition, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "ready": self.ready,
            "availability": self.availability.value,
            "tasks": self.tasks,
            "heartbeatAt": self.heartbeat_at,
            "hostname": self.hostname,
            "cpus": self.cpus,
            "memoryBytes": self.memory,
            "labels": dict(self.labels),
            "engineLabels": dict(self.engine_labels),
            "version": self.version,
            "conditions": [c.key for c in self.pressure],
        }


def node_rows(view: FleetView) -> list[NodeRow]:
    """Every node with a heartbeat or an assignment, sorted by id."""
    tasks: dict[str, int] = {}
    for placed in view.placed():
        tasks[placed.node] = tasks.get(placed.node, 0) + 1
    rows = []
    for node in sorted(view.health.nodes()):
        beat = view.health.beat(node)
        rows.append(
            NodeRow(
                node=node,
                ready=beat.ready if beat is not None else None,
                availability=view.availability.get(node, Availability.ACTIVE),
                tasks=tasks.get(node, 0),
                heartbeat_at=beat.heartbeat_at if beat else None,
                hostname=beat.hostname if beat else None,
                cpus=beat.cpus if beat else None,
                memory=beat.memory if beat else None,
                labels=tuple(sorted(view.operator_labels.get(node, {}).items())),
                engine_labels=tuple(sorted(beat.labels.items())) if beat else (),
                version=beat.version if beat else None,
                pressure=beat.pressure if beat else (),
            )
        )
    return rows

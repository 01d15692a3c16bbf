"""The manager's picture of the fleet, kept from its bucket watches. Pure: no I/O, no clock.

The driver (``manager.driver``) feeds it what its watches read: ``load`` with the values a watch
starts with (that bucket's whole picture), ``apply`` with each later put or delete, ``wrote``
with the manager's own acknowledged writes (so that the next plan already counts them, before
the watch echoes them back). ``now`` is always the manager's monotonic clock.

What it keeps, per bucket:

- ``reconciler_services``: the valid services; a key whose value is invalid is *frozen* (its
  problems kept for the log): the scheduler leaves that service's tasks alone rather than read
  a broken value as "no tasks".
- ``reconciler_nodes``: heartbeats, judged by ``reconciler.manager.health.NodeHealth``. A node
  whose key is deleted (``reconciler manager node rm``) is judged, while it still holds
  assignments, as one that stopped beating (so that they move), and forgotten with its last
  assignment, rather than shown down until the manager restarts.
- ``reconciler_control``: each node's availability and the labels operators set on it
  (``operator_labels``; a node's own labels are in its heartbeat), and the fleet settings.
- ``reconciler_assignments``: one ``Placed`` per key, with the resources its value declares,
  and the last revision of every key, deleted ones too, so that every write can be
  compare-and-set. A delivery older than what is known for its key (the echo of an earlier
  write arriving after a later one) is ignored.
- ``reconciler_status``: each task's reported state (a ``TaskState``; a value whose state is
  not one is not read), for ``reconciler_manager_tasks`` and ``manager ps``.

``apply`` says whether what the scheduler reads changed; a heartbeat that changes nothing but
its time does not.

**Bad values.** Every value is parsed as hostile input (``reconciler.fleet.values.load_json``)
and never raises here. One that breaks the contract is reported in ``problems`` and counted in
``bad`` once per key and revision (the driver logs, counts and clears them), and it touches no
other key. Per bucket, what a bad value means is the safe reading:

- a service: *frozen*, as above (unchanged: its tasks stay where they are);
- a node value: no heartbeat, so not ready (absent): nothing new is placed on the node, and
  after the grace period its tasks move, as for a node that stopped beating; only that node's
  own key is hurt;
- control: unchanged (the availability or settings in force are kept), as an operator's typo
  must not undrain a node;
- an assignment: kept, with no resources, so its revision still guards the leader's
  compare-and-set and the leader overwrites it with what its service says;
- a status: absent (the task shows as assigned, not reported), never an older state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from reconciler.core.model import Availability, TaskState
from reconciler.fleet.buckets import ASSIGNMENTS, CONTROL, FLEET_KEY, NODES, SERVICES, STATUS
from reconciler.fleet.values import (
    BadValue,
    BadValues,
    FleetSettings,
    load_json,
    parse_fleet,
    parse_node_controls,
    parse_state,
)
from reconciler.fleet.watch import Entry
from reconciler.manager.health import Health, Heartbeat, NodeHealth, parse_heartbeat
from reconciler.manager.scheduler import NodeView, Placed
from reconciler.manager.services import Service, read_service
from reconciler.spec.problems import DesiredStateError
from reconciler.spec.units import UnitError, parse_size

__all__ = ["FleetView", "Reported", "split_key"]

_CONTROL_NODE = "node."


@dataclass(frozen=True, slots=True)
class Reported:
    """A task's reported status, as far as the manager shows it."""

    state: TaskState
    revision: int = 0
    restarts: int = 0
    id: str | None = None
    message: str | None = None
    error: str | None = None
    updated_at: str | None = None


def split_key(key: str) -> tuple[str, str] | None:
    """``<node>.<task>`` as (node, task); None for a key of another shape."""
    node, dot, task = key.partition(".")
    if not dot or not node or not task or "." in task:
        return None
    return node, task


_Resources = tuple[float | None, int | None, str | None]


def _resources(value: bytes) -> _Resources:
    """The cpus and memory an assignment value declares; nothing for a value it cannot read,
    and then why (the third item)."""
    try:
        doc = load_json(value)
    except BadValue as err:
        return None, None, str(err)
    if not isinstance(doc, dict):
        return None, None, "expected a JSON object"
    res = doc.get("resources")
    if not isinstance(res, dict):
        return None, None, None
    cpus = res.get("cpus")
    memory = res.get("memory")
    try:
        size = parse_size(memory) if isinstance(memory, int | str) else None
    except (UnitError, ValueError):
        size = None
    return (
        float(cpus) if isinstance(cpus, int | float) and not isinstance(cpus, bool) else None,
        size,
        None,
    )


def _reported(value: bytes, revision: int) -> Reported:
    """A status value. Raises ``BadValue``."""
    doc = load_json(value)
    if not isinstance(doc, dict):
        raise BadValue("expected a JSON object")
    state = parse_state(doc.get("state"))
    restarts = doc.get("restarts")

    def text(key: str) -> str | None:
        v = doc.get(key)
        return v if isinstance(v, str) else None

    return Reported(
        state=state,
        revision=revision,
        restarts=restarts if isinstance(restarts, int) and not isinstance(restarts, bool) else 0,
        id=text("id"),
        message=text("message"),
        error=text("error"),
        updated_at=text("updatedAt"),
    )


def _shape(beat: Heartbeat | None) -> object:
    """What the scheduler reads of a heartbeat."""
    if beat is None:
        return None
    return (beat.ready, dict(beat.labels), beat.cpus, beat.memory, beat.pressure)


class FleetView:
    """The fleet as the manager's watches show it; see the module docstring."""

    def __init__(self, grace: float) -> None:
        self.services: dict[str, Service] = {}
        self.invalid: dict[str, tuple[str, ...]] = {}
        self.health = NodeHealth(grace)
        self.availability: dict[str, Availability] = {}
        self.operator_labels: dict[str, Mapping[str, str]] = {}
        self.settings = FleetSettings()
        self.assignments: dict[str, Placed] = {}
        self.revisions: dict[str, int] = {}
        self.statuses: dict[str, Reported] = {}
        self.problems: list[str] = []
        self.bad: Counter[str] = Counter()  # bad values per bucket, not yet counted in metrics
        self._reported = BadValues()
        self._gone: set[str] = set()  # nodes whose key was deleted, kept for their assignments
        self._placed_on: Counter[str] = Counter()  # assignments per node
        self._expected: dict[str, bytes | None] = {}  # the manager's writes in flight
        self._resources: dict[bytes, _Resources] = {}

    # ------------------------------------------------------------------------ reading

    def node_views(self, now: float) -> dict[str, NodeView]:
        """Every node the manager knows of (a heartbeat, or an assignment), as judged now."""
        views: dict[str, NodeView] = {}
        for node in self.health.nodes():
            beat = self.health.beat(node)
            views[node] = NodeView(
                id=node,
                health=self.health.health(node, now),
                availability=self.availability.get(node, Availability.ACTIVE),
                operator_labels=self.operator_labels.get(node, {}),
                engine_labels=beat.labels if beat else {},
                cpus=beat.cpus if beat else None,
                memory=beat.memory if beat else None,
                pressure=bool(beat.pressure) if beat else False,
                policy=beat.node.policy if beat and beat.node else None,
            )
        return views

    def placed(self) -> Iterable[Placed]:
        return self.assignments.values()

    def judged(self, now: float) -> dict[str, Health]:
        return {node: self.health.health(node, now) for node in self.health.nodes()}

    # ------------------------------------------------------------------------ feeding

    def load(self, bucket: str, entries: Mapping[str, Entry], now: float) -> None:
        """Replace the picture of ``bucket`` with the values its watch started with."""
        if bucket == SERVICES:
            self.services.clear()
            self.invalid.clear()
        elif bucket == NODES:
            self.health.watching(now)
            self._gone.clear()
            for node in list(self.health.nodes()):
                if node not in entries:
                    self.health.forget(node)
            for key, entry in entries.items():
                self.health.initial(key, self._beat(entry))
            for node in self._placed_on:
                self.health.known(node)
            return
        elif bucket == CONTROL:
            self.availability.clear()
            self.operator_labels.clear()
            self.settings = FleetSettings()
        elif bucket == ASSIGNMENTS:
            self.assignments.clear()
            self.revisions.clear()
            self._placed_on.clear()
        elif bucket == STATUS:
            self.statuses.clear()
        for entry in entries.values():
            self.apply(bucket, entry, now)
        if bucket == ASSIGNMENTS:
            for node in list(self._gone):
                self._forget_if_gone(node)

    def apply(self, bucket: str, entry: Entry, now: float) -> bool:
        """One put or delete (``entry.value`` None). True when the scheduler's inputs changed."""
        if bucket == ASSIGNMENTS:
            return self._assignment(entry)
        if bucket == STATUS:
            self.statuses.pop(entry.key, None)  # a bad value: as if absent
            if entry.value is None:
                self._accepted(STATUS, entry.key)
                return False
            try:
                self.statuses[entry.key] = _reported(entry.value, entry.revision)
                self._accepted(STATUS, entry.key)
            except BadValue as err:
                self._reject(entry, STATUS, str(err))
            return False
        if bucket == NODES:
            return self._node(entry, now)
        if bucket == SERVICES:
            return self._service(entry)
        if bucket == CONTROL:
            return self._control(entry)
        return False

    def expect(self, key: str, value: bytes | None) -> None:
        """The manager is writing ``value`` to ``key``: its echo may come before the
        acknowledgement, and then changes nothing the manager does not know of."""
        self._expected[key] = value

    def wrote(self, key: str, value: bytes | None, revision: int) -> None:
        """The manager's own write of ``key`` was acknowledged at ``revision``."""
        self._expected.pop(key, None)
        self._assignment(Entry(key=key, value=value, revision=revision))

    def failed(self, key: str) -> None:
        """The manager's own write of ``key`` failed: nothing is expected of it any more."""
        self._expected.pop(key, None)

    # ---------------------------------------------------------------------- per bucket

    def _assignment(self, entry: Entry) -> bool:
        key = entry.key
        if entry.revision < self.revisions.get(key, 0):
            return False  # older than what this key is known to hold
        if key in self._expected:
            echo = self._expected[key] == entry.value
            self._store_assignment(entry)
            return not echo
        return self._store_assignment(entry)

    def _store_assignment(self, entry: Entry) -> bool:
        key = entry.key
        self.revisions[key] = entry.revision
        parts = split_key(key)
        if parts is None:
            return False  # agents never read such a key; nothing to schedule
        node, task = parts
        if entry.value is None:
            self._accepted(ASSIGNMENTS, key)
            if self.assignments.pop(key, None) is None:
                return False
            self._placed_on[node] -= 1
            if self._placed_on[node] <= 0:
                del self._placed_on[node]
                self._forget_if_gone(node)
            return True
        old = self.assignments.get(key)
        if old is None:
            self._placed_on[node] += 1
        if old is not None and old.value == entry.value and old.revision == entry.revision:
            return False
        resources = self._resources.get(entry.value)
        if resources is None:
            if len(self._resources) > 10_000:
                self._resources.clear()
            resources = self._resources[entry.value] = _resources(entry.value)
        if resources[2] is None:
            self._accepted(ASSIGNMENTS, key)
        else:  # kept, so the leader replaces it (compare-and-set) with what the service says
            self._reject(entry, ASSIGNMENTS, resources[2])
        self.assignments[key] = Placed(
            node=node,
            task=task,
            value=entry.value,
            revision=entry.revision,
            cpus=resources[0],
            memory=resources[1],
        )
        self.health.known(node)
        return True

    def _beat(self, entry: Entry) -> Heartbeat | None:
        """A node value; None (no heartbeat: not ready) when absent or bad."""
        if entry.value is None:
            return None
        try:
            beat = parse_heartbeat(entry.value)
        except BadValue as err:
            self._reject(entry, NODES, str(err))
            return None
        self._accepted(NODES, entry.key)
        return beat

    def _reject(
        self, entry: Entry, bucket: str, why: str = "", *, lines: Iterable[str] = ()
    ) -> None:
        """A bad value: logged (``problems``: ``why``, or ``lines`` that name the key
        themselves) and counted (``bad``) once per key and revision, however often a watch
        reads it again."""
        if not self._reported.first(bucket, entry.key, entry.revision):
            return
        self.bad[bucket] += 1
        if why:
            self.problems.append(f"{bucket}/{entry.key}: {why} (revision {entry.revision})")
        self.problems.extend(lines)

    def _accepted(self, bucket: str, key: str) -> None:
        """``key`` holds a good value now, or none."""
        self._reported.good(bucket, key)

    def _forget_if_gone(self, node: str) -> None:
        """Forget ``node`` if its key was deleted and it holds no assignment any more."""
        if node in self._gone and node not in self._placed_on:
            self._gone.discard(node)
            self.health.forget(node)

    def _node(self, entry: Entry, now: float) -> bool:
        node = entry.key
        before = (self.health.health(node, now), _shape(self.health.beat(node)))
        if entry.value is None:
            self.health.forget(node)
            if node in self._placed_on:
                self._gone.add(node)
                self.health.known(node)
            return True  # forgotten, or judged from now on as one that stopped beating
        self._gone.discard(node)
        self.health.seen(node, self._beat(entry), now)
        after = (self.health.health(node, now), _shape(self.health.beat(node)))
        return before != after

    def _service(self, entry: Entry) -> bool:
        name = entry.key
        old = self.services.get(name)
        was_invalid = self.invalid.pop(name, None)
        if entry.value is None:
            self._accepted(SERVICES, name)
            self.services.pop(name, None)
            return old is not None or was_invalid is not None
        try:
            service = read_service(SERVICES, name, entry.value)
        except DesiredStateError as err:
            self.services.pop(name, None)
            self.invalid[name] = err.lines()
            self._reject(entry, SERVICES, lines=err.lines())
            return True
        self._accepted(SERVICES, name)
        self.services[name] = service
        return old is None or old.value != service.value or was_invalid is not None

    def _control(self, entry: Entry) -> bool:
        key = entry.key
        if key == FLEET_KEY:
            try:
                self.settings = parse_fleet(entry.value) if entry.value else FleetSettings()
                self._accepted(CONTROL, key)
            except BadValue as err:
                self._reject(entry, CONTROL, f"{err}; keeping the settings in force")
            return False
        if not key.startswith(_CONTROL_NODE):
            return False
        node = key[len(_CONTROL_NODE) :]
        old = (self.availability.get(node, Availability.ACTIVE), self.operator_labels.get(node, {}))
        if entry.value is None:
            self.availability.pop(node, None)
            self.operator_labels.pop(node, None)
        else:
            try:
                control = parse_node_controls(entry.value)
            except BadValue as err:
                self._reject(entry, CONTROL, f"{err}; keeping what it said before")
                return False
            self.availability[node] = control.availability
            self.operator_labels[node] = control.labels
        self._accepted(CONTROL, key)
        new = (self.availability.get(node, Availability.ACTIVE), self.operator_labels.get(node, {}))
        return new != old

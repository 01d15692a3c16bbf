"""The task model: states, specs, statuses, node descriptions and assignments.

This module owns the vocabulary every other part of reconciler speaks. It follows the SwarmKit
API objects closely (``api.Task``, ``api.TaskStatus``, ``api.AssignmentChange``) so that the
semantics ported from SwarmKit's agent keep their meaning, but it is plain Python: frozen
dataclasses with tuples instead of lists, so values are hashable, comparable and safe to share
between the worker, the task managers and the metrics snapshot without copying.

Serialisation lives here too (``*_to_dict`` / ``*_from_dict``): the store, the HTTP API and the
fleet session all exchange the same JSON-ready dicts. Durations are float seconds and sizes are
integer bytes in that form; parsing human units ("10s", "64Mi") is the job of
``reconciler.spec``.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any


class TaskState(enum.IntEnum):
    """A task's lifecycle state, with SwarmKit's numeric values; it only ever moves forward."""

    NEW = 0
    PENDING = 64
    ASSIGNED = 192
    ACCEPTED = 256
    PREPARING = 320
    READY = 384
    STARTING = 448
    RUNNING = 512
    COMPLETE = 576
    SHUTDOWN = 640
    FAILED = 704
    REJECTED = 768
    REMOVE = 800
    ORPHANED = 832

    @property
    def label(self) -> str:
        """The lowercase name used in the CLI, the JSON API and metric labels."""
        return self.name.lower()

    @property
    def terminal(self) -> bool:
        return self >= TaskState.COMPLETE

    @classmethod
    def parse(cls, text: str) -> TaskState:
        return cls[text.upper()]


# --------------------------------------------------------------------------------------- spec


class MountType(enum.StrEnum):
    BIND = "bind"
    VOLUME = "volume"
    TMPFS = "tmpfs"


class RestartCondition(enum.StrEnum):
    ANY = "any"
    ON_FAILURE = "on-failure"
    NONE = "none"


class PullPolicy(enum.StrEnum):
    MISSING = "missing"
    ALWAYS = "always"
    NEVER = "never"


class NetworkMode(enum.StrEnum):
    BRIDGE = "bridge"
    HOST = "host"
    NONE = "none"


class Protocol(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True, slots=True)
class Resources:
    cpus: float | None = None
    memory: int | None = None  # bytes


@dataclass(frozen=True, slots=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: Protocol = Protocol.TCP
    host_ip: str = ""


@dataclass(frozen=True, slots=True)
class Mount:
    type: MountType
    target: str
    source: str = ""
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class Device:
    host: str
    container: str


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    condition: RestartCondition = RestartCondition.ANY
    delay: float = 5.0
    max_delay: float = 300.0
    max_attempts: int = 0
    window: float = 0.0


@dataclass(frozen=True, slots=True)
class HealthCheck:
    test: tuple[str, ...]
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0


class UpdateOrder(enum.StrEnum):
    STOP_FIRST = "stop-first"
    START_FIRST = "start-first"


class FailureAction(enum.StrEnum):
    ROLLBACK = "rollback"
    PAUSE = "pause"
    CONTINUE = "continue"


@dataclass(frozen=True, slots=True)
class UpdatePolicy:
    """How a spec change replaces the instance, and what happens if the new one fails."""

    order: UpdateOrder = UpdateOrder.STOP_FIRST
    monitor: float = 30.0  # seconds the new instance must keep from failing
    failure_action: FailureAction = FailureAction.ROLLBACK


class DependencyCondition(enum.StrEnum):
    STARTED = "started"
    HEALTHY = "healthy"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class Dependency:
    """Hold a new instance until the named task's current instance meets ``condition``."""

    task: str
    condition: DependencyCondition = DependencyCondition.STARTED


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What to run for one named task: every field of a desired-state task.

    Lists are tuples and maps are tuples of (key, value) pairs, so two specs compare equal
    exactly when they describe the same container.
    """

    name: str
    image: str
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    resources: Resources = field(default_factory=Resources)
    ports: tuple[PortMapping, ...] = ()
    mounts: tuple[Mount, ...] = ()
    network: NetworkMode = NetworkMode.BRIDGE
    user: str | None = None
    workdir: str | None = None
    devices: tuple[Device, ...] = ()
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    stop_signal: str | None = None
    stop_grace_period: float = 10.0
    pull: PullPolicy = PullPolicy.MISSING
    log_max_size: int = 10 * 1024 * 1024
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    healthcheck: HealthCheck | None = None
    update: UpdatePolicy = field(default_factory=UpdatePolicy)
    depends_on: tuple[Dependency, ...] = ()

    def fields_differing(self, other: TaskSpec) -> list[str]:
        """The names of the fields whose values differ between two specs, in schema order."""
        return [
            name
            for name in self.__dataclass_fields__
            if getattr(self, name) != getattr(other, name)
        ]

    def for_runtime(self) -> TaskSpec:
        """The spec without what only the local manager reads (``update``, ``depends_on``):
        what the worker and the runtime are given, so changing those replaces nothing."""
        if self.update == _DEFAULT_UPDATE and not self.depends_on:
            return self
        return replace(self, update=_DEFAULT_UPDATE, depends_on=())


_DEFAULT_UPDATE = UpdatePolicy()


# ------------------------------------------------------------------------------------ status


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """The observed status of a task. ``timestamp`` is wall-clock seconds since the epoch."""

    state: TaskState = TaskState.NEW
    timestamp: float = 0.0
    message: str = ""
    err: str | None = None
    container_id: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    update_failed: bool = False  # the runtime could not apply the last update in place

    def with_timestamp(self, timestamp: float) -> TaskStatus:
        """A copy with another timestamp (hot path: cheaper than ``dataclasses.replace``)."""
        return TaskStatus(
            self.state,
            timestamp,
            self.message,
            self.err,
            self.container_id,
            self.pid,
            self.exit_code,
            self.update_failed,
        )

    def same_as(self, other: TaskStatus) -> bool:
        """Equal apart from the timestamp (SwarmKit's TaskStatusesEqualStable)."""
        return (
            self.state == other.state
            and self.message == other.message
            and self.err == other.err
            and self.container_id == other.container_id
            and self.pid == other.pid
            and self.exit_code == other.exit_code
            and self.update_failed == other.update_failed
        )


@dataclass(frozen=True, slots=True)
class Rollback:
    """What makes an instance a rollback: the image it runs is pinned to the one the container
    ``image_from`` ran (by image ID, so a retagged image cannot bring a bad build back), and
    it says which spec (by hash) failed, so the runtime can label it."""

    image_from: str  # the container name whose image to use
    failed_hash: str  # the spec hash of the update that failed


@dataclass(frozen=True, slots=True)
class Task:
    """One instance of a named task, assigned to this node."""

    id: str
    spec: TaskSpec
    desired_state: TaskState = TaskState.RUNNING
    status: TaskStatus = field(default_factory=TaskStatus)
    node_id: str = ""
    rollback: Rollback | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def with_status(self, status: TaskStatus) -> Task:
        """A copy with another status (hot path: cheaper than ``dataclasses.replace``)."""
        return Task(self.id, self.spec, self.desired_state, status, self.node_id, self.rollback)

    def equal_stable(self, other: Task) -> bool:
        """Equal apart from the status (SwarmKit's TasksEqualStable)."""
        return replace(self, status=other.status) == other


@dataclass(frozen=True, slots=True)
class NodeDescription:
    hostname: str
    os: str
    arch: str
    cpus: int
    memory_bytes: int
    runtime_name: str
    runtime_version: str
    agent_version: str


# ------------------------------------------------------------------------------- assignments


class AssignmentAction(enum.Enum):
    UPDATE = "update"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class AssignmentChange:
    action: AssignmentAction
    task: Task


@dataclass(frozen=True, slots=True)
class Assignment:
    """A set of changes from the manager. A full one lists every task the node should hold."""

    changes: tuple[AssignmentChange, ...]
    full: bool

    @classmethod
    def complete(cls, tasks: list[Task] | tuple[Task, ...]) -> Assignment:
        return cls(tuple(AssignmentChange(AssignmentAction.UPDATE, t) for t in tasks), True)

    @classmethod
    def incremental(
        cls,
        updated: list[Task] | tuple[Task, ...] = (),
        removed: list[Task] | tuple[Task, ...] = (),
    ) -> Assignment:
        changes = [AssignmentChange(AssignmentAction.UPDATE, t) for t in updated]
        changes += [AssignmentChange(AssignmentAction.REMOVE, t) for t in removed]
        return cls(tuple(changes), False)


# ---------------------------------------------------------------------------- serialisation


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def spec_to_dict(spec: TaskSpec) -> dict[str, Any]:
    """A JSON-ready dict of the spec, in canonical units (seconds, bytes)."""
    r = spec.restart
    hc = spec.healthcheck
    u = spec.update
    return _drop_none(
        {
            "name": spec.name,
            "image": spec.image,
            "command": list(spec.command) if spec.command is not None else None,
            "entrypoint": list(spec.entrypoint) if spec.entrypoint is not None else None,
            "env": [list(kv) for kv in spec.env],
            "labels": [list(kv) for kv in spec.labels],
            "resources": _drop_none({"cpus": spec.resources.cpus, "memory": spec.resources.memory}),
            "ports": [[p.host_port, p.container_port, p.protocol, p.host_ip] for p in spec.ports],
            "mounts": [[m.type, m.target, m.source, m.read_only] for m in spec.mounts],
            "network": spec.network,
            "user": spec.user,
            "workdir": spec.workdir,
            "devices": [[d.host, d.container] for d in spec.devices],
            "capAdd": list(spec.cap_add),
            "capDrop": list(spec.cap_drop),
            "stopSignal": spec.stop_signal,
            "stopGracePeriod": spec.stop_grace_period,
            "pull": spec.pull,
            "logMaxSize": spec.log_max_size,
            "restart": [r.condition, r.delay, r.max_delay, r.max_attempts, r.window],
            "healthcheck": (
                [list(hc.test), hc.interval, hc.timeout, hc.retries, hc.start_period]
                if hc is not None
                else None
            ),
            "update": ([u.order, u.monitor, u.failure_action] if u != _DEFAULT_UPDATE else None),
            "dependsOn": [[d.task, d.condition] for d in spec.depends_on] or None,
        }
    )


IN_PLACE_FIELDS = frozenset({"resources"})
"""Spec fields a change of which updates the running instance instead of replacing it."""

MANAGER_FIELDS = frozenset({"update", "depends_on"})
"""Spec fields only the local manager reads: a change of them alone replaces nothing."""


def spec_hash(spec: TaskSpec) -> str:
    """A short, stable hash of the fields whose change forces a replacement.

    It is put on every container as a label, so that a container can be matched to its desired
    spec without the store (after a store rebuild). Fields updated in place, and those only the
    local manager reads (``update``, ``dependsOn``), are left out.
    """
    d = {
        k: v
        for k, v in spec_to_dict(spec).items()
        if k not in IN_PLACE_FIELDS and k not in ("update", "dependsOn")
    }
    text = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def spec_from_dict(d: dict[str, Any]) -> TaskSpec:
    res = d.get("resources", {})
    hc = d.get("healthcheck")
    cmd = d.get("command")
    ep = d.get("entrypoint")
    r = d.get("restart")
    u = d.get("update")
    return TaskSpec(
        name=d["name"],
        image=d["image"],
        command=tuple(cmd) if cmd is not None else None,
        entrypoint=tuple(ep) if ep is not None else None,
        env=tuple((k, v) for k, v in d.get("env", ())),
        labels=tuple((k, v) for k, v in d.get("labels", ())),
        resources=Resources(cpus=res.get("cpus"), memory=res.get("memory")),
        ports=tuple(PortMapping(h, c, Protocol(p), ip) for h, c, p, ip in d.get("ports", ())),
        mounts=tuple(Mount(MountType(t), tg, s, ro) for t, tg, s, ro in d.get("mounts", ())),
        network=NetworkMode(d.get("network", "bridge")),
        user=d.get("user"),
        workdir=d.get("workdir"),
        devices=tuple(Device(h, c) for h, c in d.get("devices", ())),
        cap_add=tuple(d.get("capAdd", ())),
        cap_drop=tuple(d.get("capDrop", ())),
        stop_signal=d.get("stopSignal"),
        stop_grace_period=d.get("stopGracePeriod", 10.0),
        pull=PullPolicy(d.get("pull", "missing")),
        log_max_size=d.get("logMaxSize", 10 * 1024 * 1024),
        restart=(
            RestartPolicy(RestartCondition(r[0]), *r[1:]) if r is not None else RestartPolicy()
        ),
        healthcheck=(
            HealthCheck(tuple(hc[0]), hc[1], hc[2], hc[3], hc[4]) if hc is not None else None
        ),
        update=(
            UpdatePolicy(UpdateOrder(u[0]), float(u[1]), FailureAction(u[2]))
            if u is not None
            else _DEFAULT_UPDATE
        ),
        depends_on=tuple(Dependency(t, DependencyCondition(c)) for t, c in d.get("dependsOn", ())),
    )


def status_to_dict(status: TaskStatus) -> dict[str, Any]:
    return _drop_none(
        {
            "state": int(status.state),
            "timestamp": status.timestamp,
            "message": status.message,
            "err": status.err,
            "containerId": status.container_id,
            "pid": status.pid,
            "exitCode": status.exit_code,
            "updateFailed": True if status.update_failed else None,
        }
    )


def status_from_dict(d: dict[str, Any]) -> TaskStatus:
    return TaskStatus(
        state=TaskState(d["state"]),
        timestamp=d.get("timestamp", 0.0),
        message=d.get("message", ""),
        err=d.get("err"),
        container_id=d.get("containerId"),
        pid=d.get("pid"),
        exit_code=d.get("exitCode"),
        update_failed=bool(d.get("updateFailed", False)),
    )


def task_to_dict(task: Task, *, with_status: bool = True) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": task.id,
        "spec": spec_to_dict(task.spec),
        "desiredState": int(task.desired_state),
        "nodeId": task.node_id,
    }
    if task.rollback is not None:
        d["rollback"] = [task.rollback.image_from, task.rollback.failed_hash]
    if with_status:
        d["status"] = status_to_dict(task.status)
    return d


def task_from_dict(d: dict[str, Any], status: TaskStatus | None = None) -> Task:
    if status is None:
        status = status_from_dict(d["status"]) if "status" in d else TaskStatus()
    return Task(
        id=d["id"],
        spec=spec_from_dict(d["spec"]),
        desired_state=TaskState(d["desiredState"]),
        status=status,
        node_id=d.get("nodeId", ""),
        rollback=Rollback(*d["rollback"]) if d.get("rollback") else None,
    )


def node_to_dict(node: NodeDescription) -> dict[str, Any]:
    return {
        "hostname": node.hostname,
        "os": node.os,
        "arch": node.arch,
        "cpus": node.cpus,
        "memoryBytes": node.memory_bytes,
        "runtime": node.runtime_name,
        "runtimeVersion": node.runtime_version,
        "version": node.agent_version,
    }

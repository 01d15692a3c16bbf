"""The task model: states, specs, statuses, node descriptions and assignments.

This module owns the vocabulary every other part of reconciler speaks. It follows the SwarmKit
API objects closely (``api.Task``, ``api.TaskStatus``, ``api.AssignmentChange``) so that the
semantics ported from SwarmKit's agent keep their meaning, but it is plain Python: frozen
dataclasses with tuples instead of lists, so values are hashable, comparable and safe to share
between the worker, the task managers and the metrics snapshot without copying.

Their JSON forms are ``reconciler.core.codec``'s; parsing human units ("10s", "64Mi") is the
job of ``reconciler.spec``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the policy's module reads this one's TaskSpec
    from reconciler.core.policy import Policy


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
    policy: Policy | None = None  # for fleet tasks (reconciler.core.policy); None: unchecked


class Condition(enum.Enum):
    """A node condition. Its value is the metric's label value (``disk_pressure``); ``key`` is
    its name in the node's description (``diskPressure``), camel-cased like every other key
    there."""

    DISK_PRESSURE = "disk_pressure"
    MEMORY_PRESSURE = "memory_pressure"

    @property
    def key(self) -> str:
        head, *rest = self.value.split("_")
        return head + "".join(word.capitalize() for word in rest)


class Availability(enum.StrEnum):
    """A node's availability, set by the manager: ``pause`` holds new tasks, ``drain`` moves
    them away (the manager does that; the agent just follows its assignments). The values are
    the words in ``reconciler_control/node.<node>`` and in ``manager nodes``."""

    ACTIVE = "active"
    PAUSE = "pause"
    DRAIN = "drain"


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


IN_PLACE_FIELDS = frozenset({"resources"})
"""Spec fields a change of which updates the running instance instead of replacing it."""

MANAGER_FIELDS = frozenset({"update", "depends_on"})
"""Spec fields only the local manager reads: a change of them alone replaces nothing."""

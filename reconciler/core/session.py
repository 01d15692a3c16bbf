"""The session protocol: how a manager talks to this agent.

A session is the agent's only view of its manager. It delivers this node's desired state as an
async stream of messages and takes status reports and the node description back. Two sessions
implement it: ``sessions/files.py`` (a directory of desired-state YAML, via the local manager)
and ``sessions/nats.py`` (the fleet, over NATS JetStream).

The first ``DesiredTasks`` message after every (re)connect is full: it lists every named task the
node should run, so the receiver can drop what is no longer listed. Later ones may be
incremental. Both kinds carry named task specs; turning names into task instances (ids, restart
policy, history) is the local manager's job, the same for every session.

A session that judges each task on its own (the fleet's, one key per task) rejects a bad task
alone: it is listed in ``DesiredTasks.rejected``, and the receiver keeps the last valid spec it
has for that name. ``ConnectionChanged`` tells the receiver when the manager is reached or lost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from reconciler.core.model import Availability, NodeDescription, TaskSpec, TaskState


@dataclass(frozen=True, slots=True)
class DesiredTask:
    """One named task as the manager wants it: its spec and ``running`` or ``shutdown``."""

    spec: TaskSpec
    desired_state: TaskState = TaskState.RUNNING

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class RejectedTask:
    """A named task whose new value is invalid; the receiver keeps its last valid spec.
    ``reported``: the same value (key and revision) was rejected before, and read again (after
    a reconnect): its problems were logged and counted then, and are not again."""

    name: str
    problems: tuple[str, ...]
    reported: bool = False


@dataclass(frozen=True, slots=True)
class DesiredTasks:
    """A change to the node's desired tasks.

    ``full``: ``tasks`` is the whole desired set. Otherwise ``tasks`` are upserts and
    ``removed`` names are deleted. ``rejected`` names had an invalid value: in a full message
    they are every name currently invalid, otherwise the names this change made invalid.
    """

    tasks: tuple[DesiredTask, ...]
    full: bool
    removed: tuple[str, ...] = ()
    rejected: tuple[RejectedTask, ...] = ()


@dataclass(frozen=True, slots=True)
class DesiredInvalid:
    """The manager's desired state could not be read; keep running the last valid one."""

    errors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ManagerMessage:
    """Node-level instructions: the node's availability."""

    availability: Availability = Availability.ACTIVE


@dataclass(frozen=True, slots=True)
class ConnectionChanged:
    """The session reached its manager (``connected``) or lost it; ``Session.connected`` too."""

    connected: bool


SessionMessage = DesiredTasks | DesiredInvalid | ManagerMessage | ConnectionChanged


@dataclass(frozen=True, slots=True)
class NamedStatus:
    """The status of a named task's current instance, as reported to the manager."""

    name: str
    id: str
    state: TaskState
    message: str
    err: str | None
    exit_code: int | None
    container_id: str | None
    updated_at: float
    restarts: int


class Session(Protocol):
    def messages(self) -> AsyncIterator[SessionMessage]:
        """The stream of messages. Ends only when the session is closed."""
        ...

    async def report(self, statuses: Mapping[str, NamedStatus]) -> None:
        """Deliver statuses keyed by task name. Raises on failure; the caller retries."""
        ...

    async def heartbeat(self, node: NodeDescription, *, ready: bool) -> None:
        """Tell the manager the node is alive and how it looks."""
        ...

    @property
    def connected(self) -> bool:
        """Whether the session currently reaches its manager."""
        ...

    async def close(self) -> None:
        """Stop the session. Idempotent."""
        ...

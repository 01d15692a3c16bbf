"""The immutable picture of the agent that metrics, the HTTP API and the status page read.

The agent builds a new ``Snapshot`` after each change (a status, an assignment, a readiness
change) and swaps it in with one assignment. Readers (a ``/metrics`` scrape, ``/v1/tasks``,
``/readyz``, the status page) take the current reference and never call podman or walk RocksDB,
so a scrape costs the same whether podman is fast, slow or hung.

``Changes`` is how a reader that wants to *follow* the snapshot (an open ``/v1/events`` stream)
learns that a new one was swapped in, without polling: the agent bumps a version counter after
each swap, and a waiting reader wakes. Bumping costs an increment and a ``None`` check while
nobody waits, so the agent does no work per change for a page that no one has open.

The desired source's last errors are kept here, bounded (``bounded_errors``), because a hostile
or broken directory can produce any number of arbitrarily long problem lines.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from reconciler.core.model import Condition, NodeDescription, TaskState
from reconciler.core.supervisor import health_of

#: At most this many desired-source error lines are kept (the rest are summarised in one line) ...
MAX_ERROR_LINES: Final = 50
#: ... and each is cut to this many characters.
MAX_ERROR_CHARS: Final = 400


@dataclass(frozen=True, slots=True)
class TaskView:
    """One task instance as operators see it (``ps``, ``/v1/tasks``, per-task metrics)."""

    name: str
    id: str
    desired_state: TaskState
    state: TaskState
    message: str | None
    err: str | None
    container_id: str | None
    exit_code: int | None
    updated_at: float
    restarts: int
    current: bool  # False for history instances
    image: str = ""  # the image the instance's spec names

    def to_json(self) -> dict[str, Any]:
        """The ``ps -o json`` object: null for absent values, RFC 3339 UTC times."""
        ts = dt.datetime.fromtimestamp(self.updated_at, tz=dt.UTC)
        return {
            "name": self.name,
            "id": self.id,
            "desiredState": self.desired_state.label,
            "state": self.state.label,
            "message": self.message or None,
            "error": self.err,
            "containerId": self.container_id,
            "exitCode": self.exit_code,
            "updatedAt": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "restarts": self.restarts,
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    node_id: str = ""
    node: NodeDescription | None = None
    labels: tuple[tuple[str, str], ...] = ()
    # readiness comes from these components, by ``readiness()`` alone
    store_open: bool = False
    init_done: bool = False
    starting_reason: str = "worker init is not done"  # what init waits for, until it is done
    runtime_up: bool = False
    runtime_reason: str = "container runtime does not answer"  # why it is down, while it is
    loops_down: tuple[tuple[str, str], ...] = ()  # (loop, why) for each loop being restarted
    store_failure: str | None = None  # why the last store write failed, until it works again
    desired_read: bool = False
    desired_valid: bool = False
    desired_applied_at: float | None = None
    # the last rejected read of the desired source (``PATH:LINE: FIELD: problem`` lines, bounded
    # by ``bounded_errors``) and when it happened; empty once a valid read was applied
    desired_errors: tuple[str, ...] = ()
    desired_errors_at: float | None = None
    started_at: float | None = None  # when the agent started (wall clock), for its uptime
    session_connected: bool = False
    reports_pending: int = 0
    # tasks: current instances and history, sorted by name, current first, then newest first
    tasks: tuple[TaskView, ...] = ()
    # restarts per name from stored counters, including names with no current instance
    restarts: tuple[tuple[str, int], ...] = field(default=())
    # rollbacks per name from stored counters (names that never rolled back are left out)
    rollbacks: tuple[tuple[str, int], ...] = field(default=())
    # OOM kills per name from stored counters, for the same names as ``restarts``
    oom_kills: tuple[tuple[str, int], ...] = ()
    # (condition, holds) from the last node usage sample; empty before one (never readiness)
    conditions: tuple[tuple[Condition, bool], ...] = ()

    def current(self) -> tuple[TaskView, ...]:
        return tuple(t for t in self.tasks if t.current)

    @property
    def loops_alive(self) -> bool:
        return not self.loops_down

    def health(self) -> tuple[bool, str]:
        """Whether every loop is alive (``/healthz``), and if not which one is down and why."""
        return health_of(dict(self.loops_down), "agent")

    def readiness(self) -> tuple[bool, str]:
        """Whether the node is ready, and if not why: the one rule behind
        ``reconciler_node_ready``, ``/readyz`` and the node's heartbeat."""
        alive, why = self.health()
        if not alive:
            return False, why
        if not self.store_open:
            return False, "store is not open"
        if self.store_failure is not None:
            return False, f"store write failed, retrying: {self.store_failure}"
        if not self.runtime_up:
            return False, self.runtime_reason
        if not self.init_done:
            return False, self.starting_reason
        if self.node is None:
            return False, "node description not read from the runtime yet"
        if not self.desired_read:
            return False, "desired state has not been read yet"
        return True, "ready"

    @property
    def ready(self) -> bool:
        return self.readiness()[0]

    @property
    def ready_reason(self) -> str:
        return self.readiness()[1]


def bounded_errors(lines: Iterable[str]) -> tuple[str, ...]:
    """At most ``MAX_ERROR_LINES`` lines of at most ``MAX_ERROR_CHARS`` characters each.

    When lines are dropped, the last kept line says how many. Control characters other than tab
    become spaces, so one line stays one line wherever it is shown.
    """
    items = [str(line) for line in lines]
    if len(items) > MAX_ERROR_LINES:
        more = len(items) - MAX_ERROR_LINES + 1
        items[MAX_ERROR_LINES - 1 :] = [f"... and {more} more problems"]
    return tuple(_one_line(line) for line in items)


def _one_line(line: str) -> str:
    cut = len(line) > MAX_ERROR_CHARS
    if cut:
        line = line[: MAX_ERROR_CHARS - 3]
    text = "".join(c if c.isprintable() or c == "\t" else " " for c in line)
    return text + "..." if cut else text


class Changes:
    """A version counter bumped after every new snapshot, and a wake-up for whoever waits.

    ``bump()`` is called on the event loop by the owner of the snapshot, after it swapped a new
    one in. While no reader waits, it is an increment and one ``None`` check. Readers call
    ``wait(version)`` with the version they last saw. Not thread-safe: use it from the
    event loop's thread only.
    """

    __slots__ = ("_event", "version")

    def __init__(self) -> None:
        self.version = 0
        self._event: asyncio.Event | None = None

    def bump(self) -> None:
        """Note one more snapshot and wake every waiting reader. Never raises."""
        self.version += 1
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def wait(self, version: int) -> None:
        """Return once the version is no longer ``version`` (at once if it already is).

        Cancellable; bound it with ``asyncio.timeout``.
        """
        while self.version == version:
            if self._event is None:
                self._event = asyncio.Event()
            await self._event.wait()

"""The immutable picture of the agent that metrics and the HTTP API read.

The agent builds a new ``Snapshot`` after each change (a status, an assignment, a readiness
change) and swaps it in with one assignment. Readers (a ``/metrics`` scrape, ``/v1/tasks``,
``/readyz``) take the current reference and never call podman or walk RocksDB, so a scrape costs
the same whether podman is fast, slow or hung.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reconciler.model import NodeDescription, TaskState


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

    def to_json(self) -> dict[str, Any]:
        """PRODUCT.md's ``ps -o json`` object: null for absent values, RFC 3339 UTC times."""
        import datetime as _dt

        ts = _dt.datetime.fromtimestamp(self.updated_at, tz=_dt.UTC)
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
    # readiness: ready is True only when every component is healthy; reason says what is not
    ready: bool = False
    ready_reason: str = "starting"
    store_open: bool = False
    init_done: bool = False
    runtime_up: bool = False
    loops_alive: bool = True
    desired_read: bool = False
    desired_valid: bool = False
    desired_applied_at: float | None = None
    session_connected: bool = False
    reports_pending: int = 0
    # tasks: current instances and history, sorted by name, current first, then newest first
    tasks: tuple[TaskView, ...] = ()
    # restarts per name from stored counters, including names with no current instance
    restarts: tuple[tuple[str, int], ...] = field(default=())

    def current(self) -> tuple[TaskView, ...]:
        return tuple(t for t in self.tasks if t.current)

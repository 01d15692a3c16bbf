"""Snapshots for the status-page tests: a ready node with a few tasks, one with history."""

from __future__ import annotations

from dataclasses import replace

from reconciler import __version__
from reconciler.core.model import NodeDescription, TaskState
from reconciler.core.snapshot import Snapshot, TaskView

NOW = 1_700_000_000.0

NODE = NodeDescription(
    hostname="edge-1",
    os="linux",
    arch="arm64",
    cpus=4,
    memory_bytes=4 * 1024**3,
    runtime_name="podman",
    runtime_version="4.3.1",
    agent_version=__version__,
)


def view(
    name: str,
    id: str,
    state: TaskState = TaskState.RUNNING,
    *,
    current: bool = True,
    at: float = NOW - 90,
    message: str | None = "started",
    err: str | None = None,
    exit_code: int | None = None,
    image: str = "localhost/busybox:latest",
) -> TaskView:
    return TaskView(
        name=name,
        id=id,
        desired_state=TaskState.RUNNING if current else TaskState.SHUTDOWN,
        state=state,
        message=message,
        err=err,
        container_id=f"{id:0>64}",
        exit_code=exit_code,
        updated_at=at,
        restarts=1,
        current=current,
        image=image,
    )


def snapshot(*tasks: TaskView, **kw: object) -> Snapshot:
    if not tasks:
        tasks = (
            view("api", "a2"),
            view("api", "a1", TaskState.FAILED, current=False, err="exit 1", exit_code=1),
            view("web", "w1", TaskState.STARTING),
        )
    base = Snapshot(
        node_id="node-a",
        node=NODE,
        labels=(("site", "north"),),
        store_open=True,
        init_done=True,
        runtime_up=True,
        desired_read=True,
        desired_valid=True,
        desired_applied_at=NOW - 60,
        started_at=NOW - 3600,
        session_connected=True,
        tasks=tasks,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def with_state(snap: Snapshot, name: str, state: TaskState, **kw: object) -> Snapshot:
    """``snap`` with the current instance of ``name`` in ``state`` (a new view object)."""
    tasks = tuple(
        replace(t, state=state, **kw) if t.name == name and t.current else t  # type: ignore[arg-type]
        for t in snap.tasks
    )
    return replace(snap, tasks=tasks)

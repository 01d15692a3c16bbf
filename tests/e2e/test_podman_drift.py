"""End to end: what is done to containers behind the agent's back, against real podman.

A ``podman kill`` fails the task by its exit code, a ``podman rm`` as removed, each counted as
drift; ``remove_orphans`` removes only this node's containers of unknown tasks; and the event
stream that reports all this survives podman's events log rotating under it. Each test runs
under its own node id; there are no timing assertions, only waits for real podman state.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from reconciler.core.errors import ContainerGone
from reconciler.core.model import TaskState
from reconciler.testing.podman import PodmanService
from runtime.podman import PodmanExecutor
from tests.e2e.conftest import CONTAINERS_CONF, start_service
from tests.e2e.podman_support import (
    RecordingObserver,
    drive,
    inspect,
    make_task,
    new_executor,
    new_id,
    resolved,
    running_task,
    until,
)

pytestmark = pytest.mark.e2e


# ---------------------------------------------------------------- behind the agent's back


async def test_podman_kill_behind_the_agents_back_fails_the_task_by_exit_code(
    podman_executor: PodmanExecutor,
    podman_service: PodmanService,
    node_id: str,
    observer: RecordingObserver,
) -> None:
    ctlr, driven = await running_task(podman_executor, node_id)
    name = f"{driven.task.spec.name}.{driven.task.id}"
    waiting = asyncio.create_task(drive(driven.task, ctlr, until=TaskState.COMPLETE))  # type: ignore[arg-type]
    await until(lambda: name in podman_executor.events.watched_names(), what="wait() attached")

    await asyncio.to_thread(podman_service.run, "kill", name)

    result = await asyncio.wait_for(waiting, 60)
    st = result.task.status
    assert st.state == TaskState.FAILED
    assert st.exit_code == 137
    assert "killed outside the agent" in st.message
    assert observer.drift["container_exited"] == 1
    await ctlr.remove()  # type: ignore[attr-defined]


async def test_podman_rm_behind_the_agents_back_fails_the_task_as_removed(
    podman_executor: PodmanExecutor,
    podman_service: PodmanService,
    node_id: str,
    observer: RecordingObserver,
) -> None:
    ctlr, driven = await running_task(podman_executor, node_id)
    name = f"{driven.task.spec.name}.{driven.task.id}"
    waiting = asyncio.create_task(drive(driven.task, ctlr, until=TaskState.COMPLETE))  # type: ignore[arg-type]
    await until(lambda: name in podman_executor.events.watched_names(), what="wait() attached")

    await asyncio.to_thread(podman_service.run, "rm", "--force", "--time", "0", name)

    result = await asyncio.wait_for(waiting, 60)
    st = result.task.status
    assert st.state == TaskState.FAILED
    assert st.message == "container removed"
    assert observer.drift["container_missing"] == 1
    # wait() on the removed container says so at once, too.
    with pytest.raises(ContainerGone):
        await ctlr.wait()  # type: ignore[attr-defined]


async def test_remove_orphans_removes_only_this_nodes_unknown_tasks(
    podman_executor: PodmanExecutor,
    podman_service: PodmanService,
    node_id: str,
    observer: RecordingObserver,
) -> None:
    known = make_task(name="known", node_id=node_id)
    ctlr, known = resolved(known, podman_executor)
    await ctlr.prepare()
    orphan_id, foreign_id = new_id(), new_id()
    unlabelled = f"plain-{new_id()}"
    node_only = f"nodeonly-{new_id()}"
    run = podman_service.run
    await asyncio.to_thread(
        run,
        "create",
        "--name",
        f"orphan.{orphan_id}",
        "--label",
        f"reconciler.node={node_id}",
        "--label",
        f"reconciler.task.id={orphan_id}",
        "localhost/busybox:latest",
        "true",
    )
    await asyncio.to_thread(
        run,
        "create",
        "--name",
        f"foreign.{foreign_id}",
        "--label",
        "reconciler.node=elsewhere",
        "--label",
        f"reconciler.task.id={foreign_id}",
        "localhost/busybox:latest",
        "true",
    )
    await asyncio.to_thread(run, "create", "--name", unlabelled, "localhost/busybox:latest", "true")
    await asyncio.to_thread(
        run,
        "create",
        "--name",
        node_only,
        "--label",
        f"reconciler.node={node_id}",
        "localhost/busybox:latest",
        "true",
    )

    removed = await podman_executor.remove_orphans({known.id})

    assert removed == [orphan_id]
    assert observer.drift["orphan_removed"] == 1
    assert inspect(podman_service, f"orphan.{orphan_id}") is None
    assert inspect(podman_service, f"known.{known.id}") is not None
    assert inspect(podman_service, f"foreign.{foreign_id}") is not None
    assert inspect(podman_service, unlabelled) is not None
    assert inspect(podman_service, node_only) is not None
    assert await podman_executor.remove_orphans({known.id}) == []
    for n in (f"foreign.{foreign_id}", unlabelled, node_only, f"known.{known.id}"):
        await asyncio.to_thread(run, "rm", "--force", n)


# --------------------------------------------------------------------------------- events


async def test_event_stream_survives_events_log_rotation(
    node_id: str, observer: RecordingObserver, tmp_path: Path
) -> None:
    conf = tmp_path / "containers.conf"
    conf.write_text(
        CONTAINERS_CONF.read_text().replace(
            'events_logger = "file"', 'events_logger = "file"\nevents_logfile_max_size = "8000"'
        )
    )
    svc = start_service(conf)
    ex = new_executor(svc.url, node_id, observer)
    await ex.start()
    try:
        ctlr, driven = await running_task(ex, node_id)
        name = f"{driven.task.spec.name}.{driven.task.id}"
        waiting = asyncio.create_task(drive(driven.task, ctlr, until=TaskState.COMPLETE))  # type: ignore[arg-type]
        await until(lambda: name in ex.events.watched_names(), what="wait() attached")
        connections = ex.events.connections
        events_log = svc.base_dir / "tmp" / "events" / "events.log"

        def churn() -> None:
            for _ in range(15):
                n = f"churn-{new_id()}"
                svc.run("create", "--name", n, "localhost/busybox:latest", "true")
                svc.run("rm", n)

        await asyncio.to_thread(churn)
        rotated = "log-rotation" in await asyncio.to_thread(
            svc.run, "events", "--stream=false", "--filter", "type=system"
        )
        assert rotated or events_log.stat().st_size < 8000
        assert not waiting.done()  # replayed old events were not taken for an exit

        await asyncio.to_thread(svc.run, "kill", name)
        result = await asyncio.wait_for(waiting, 60)
        assert result.task.status.exit_code == 137
        assert ex.events.connections == connections  # delivered by the same stream
        await ctlr.remove()  # type: ignore[attr-defined]
    finally:
        await ex.close()
        svc.destroy()

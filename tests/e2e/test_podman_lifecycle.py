"""End to end: a task's way through the podman runtime, against a real, private podman service.

Every test drives real containers through ``reconciler.core.lifecycle.do`` (or the controller's
methods directly) and checks podman's own view with the podman CLI: a task run to completion
or failure, idempotent prepare and start, a graceful stop, images that cannot be had, a live
resource update, and the node podman describes. Each test runs under its own node id, so tests
sharing the session's service never see each other's containers. There are no timing
assertions; the only waits are for real podman state, with generous limits.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from reconciler.core.errors import PermanentError, TaskPrepared, TaskRetry, TaskStarted
from reconciler.core.lifecycle import do
from reconciler.core.model import Resources, TaskState
from reconciler.testing.podman import PodmanService
from runtime.podman import PodmanExecutor, cgroups
from tests.e2e.podman_support import (
    RecordingObserver,
    drive,
    inspect,
    make_task,
    resolved,
    running_task,
    state_of,
)

pytestmark = pytest.mark.e2e


# ------------------------------------------------------------------------------ lifecycle


async def test_full_lifecycle_runs_a_task_to_complete_and_removes_it(
    podman_executor: PodmanExecutor, podman_service: PodmanService, node_id: str
) -> None:
    task = make_task(command=("sh", "-c", "echo hello; exit 0"), node_id=node_id)
    ctlr, task = resolved(task, podman_executor)
    assert task.status.state == TaskState.ACCEPTED

    driven = await drive(task, ctlr, until=TaskState.COMPLETE)

    st = driven.task.status
    assert st.state == TaskState.COMPLETE
    assert st.exit_code == 0
    assert st.container_id is not None
    name = f"{task.spec.name}.{task.id}"
    info = inspect(podman_service, name)
    assert info is not None and info["Id"] == st.container_id
    labels = info["Config"]["Labels"]  # type: ignore[index]
    assert labels["reconciler.task.id"] == task.id
    assert labels["reconciler.task.name"] == task.spec.name
    assert labels["reconciler.node"] == node_id

    await ctlr.remove()
    assert inspect(podman_service, name) is None
    await ctlr.remove()  # idempotent
    await ctlr.terminate()  # on a missing container: fine
    await ctlr.shutdown()


async def test_nonzero_exit_fails_the_task_with_its_exit_code(
    podman_executor: PodmanExecutor, node_id: str
) -> None:
    ctlr, task = resolved(
        make_task(command=("sh", "-c", "exit 3"), node_id=node_id), podman_executor
    )
    driven = await drive(task, ctlr, until=TaskState.COMPLETE)
    assert driven.task.status.state == TaskState.FAILED
    assert driven.task.status.exit_code == 3
    assert ctlr.container_status().exit_code == 3
    await ctlr.remove()


async def test_prepare_and_start_are_idempotent(
    podman_executor: PodmanExecutor, podman_service: PodmanService, node_id: str
) -> None:
    ctlr, task = resolved(make_task(node_id=node_id), podman_executor)
    await ctlr.prepare()
    with pytest.raises(TaskPrepared):
        await ctlr.prepare()
    # A second controller for the same task (as after an agent restart) agrees.
    other = podman_executor.controller(task)
    with pytest.raises(TaskPrepared):
        await other.prepare()
    await ctlr.start()
    with pytest.raises(TaskStarted):
        await ctlr.start()
    with pytest.raises(TaskStarted):
        await other.start()
    await ctlr.shutdown()
    await ctlr.shutdown()  # idempotent on a stopped container
    await ctlr.terminate()
    await ctlr.remove()


async def test_shutdown_stops_a_running_task_with_its_stop_signal(
    podman_executor: PodmanExecutor, podman_service: PodmanService, node_id: str
) -> None:
    task = make_task(node_id=node_id, grace=30)
    ctlr, task = resolved(task, podman_executor)
    driven = await drive(task, ctlr, until=TaskState.RUNNING)
    assert driven.task.status.state == TaskState.RUNNING
    name = f"{task.spec.name}.{task.id}"
    assert state_of(podman_service, name)["Running"] is True

    stopping = replace(driven.task, desired_state=TaskState.SHUTDOWN)
    done = await drive(stopping, ctlr, until=TaskState.SHUTDOWN)
    assert done.task.status.state == TaskState.SHUTDOWN
    st = state_of(podman_service, name)
    assert st["Running"] is False
    assert st["ExitCode"] == 0  # the trap ran: SIGTERM was delivered, not a kill after 30 s
    await ctlr.remove()


# --------------------------------------------------------------------------------- images


async def test_missing_image_under_pull_never_is_rejected_naming_the_image(
    podman_executor: PodmanExecutor, node_id: str
) -> None:
    task = make_task(image="localhost/not-here:1", pull="never", node_id=node_id)
    ctlr, task = resolved(task, podman_executor)
    driven = await drive(task, ctlr, until=TaskState.RUNNING)
    st = driven.task.status
    assert st.state == TaskState.REJECTED
    assert st.err is not None and "localhost/not-here:1" in st.err


async def test_failed_pull_is_temporary_and_says_why(
    podman_executor: PodmanExecutor, node_id: str, observer: RecordingObserver
) -> None:
    task = make_task(image="localhost:1/unreachable:latest", pull="missing", node_id=node_id)
    ctlr, task = resolved(task, podman_executor)
    preparing = await drive(task, ctlr, until=TaskState.PREPARING)
    with pytest.raises(TaskRetry) as info:
        await do(preparing.task, ctlr, now=time.time)
    status = info.value.status
    assert status.state == TaskState.PREPARING  # type: ignore[attr-defined]
    assert "pulling image localhost:1/unreachable:latest failed" in status.err  # type: ignore[attr-defined]
    assert observer.errors["pull"] >= 1


# --------------------------------------------------------------------------------- update


async def test_memory_update_is_applied_live_and_verified_or_refused(
    podman_executor: PodmanExecutor, podman_service: PodmanService, node_id: str
) -> None:
    mib = 1024 * 1024
    ctlr, driven = await running_task(podman_executor, node_id, memory=64 * mib)
    name = f"{driven.task.spec.name}.{driven.task.id}"
    bigger = replace(
        driven.task, spec=replace(driven.task.spec, resources=Resources(memory=256 * mib))
    )
    try:
        await ctlr.update(bigger)  # type: ignore[attr-defined]
    except PermanentError as err:
        # The host could not change it in place: the caller replaces the instance.
        assert "resources" in str(err)
        return
    finally:
        cgroup_path = str(state_of(podman_service, name)["CgroupPath"])
    limits = cgroups.read_limits(cgroup_path)
    assert limits is not None
    assert cgroups.memory_matches(limits.memory, 256 * mib)
    # A change of anything but resources cannot be made in place.
    renamed = replace(bigger, spec=replace(bigger.spec, command=("true",)))
    with pytest.raises(PermanentError):
        await ctlr.update(renamed)  # type: ignore[attr-defined]
    await ctlr.remove()  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------- node


async def test_describe_reports_the_node_from_podman_info(
    podman_executor: PodmanExecutor, node_id: str
) -> None:
    node = await podman_executor.describe()
    assert node.runtime_name == "podman"
    assert node.runtime_version
    assert node.cpus > 0 and node.memory_bytes > 0
    assert node.hostname and node.arch
    assert await podman_executor.ping() is True
    assert podman_executor.runtime_up

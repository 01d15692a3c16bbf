"""End to end: the podman runtime against a real, private podman service.

Every test drives real containers through ``reconciler.core.lifecycle.do`` (or the controller's
methods directly) and checks podman's own view with the podman CLI. Each test runs under its
own node id, so tests sharing the session's service never see each other's containers. There
are no timing assertions; the only waits are for real podman state, with generous limits.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.core.codec import task_from_dict
from reconciler.core.errors import (
    ContainerGone,
    ExitError,
    PermanentError,
    TaskPrepared,
    TaskRetry,
    TaskStarted,
)
from reconciler.core.lifecycle import do
from reconciler.core.model import Resources, TaskState
from reconciler.testing.podman import PodmanService
from runtime.podman import PodmanExecutor, cgroups
from tests.e2e.podman_support import (
    Driven,
    RecordingObserver,
    drive,
    make_task,
    new_executor,
    new_id,
    resolved,
    until,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def inspect(svc: PodmanService, name: str) -> dict[str, object] | None:
    out = svc.run("inspect", "--type", "container", name, check=False)
    if not out.strip():
        return None
    data = json.loads(out)
    return dict(data[0]) if data else None


def state_of(svc: PodmanService, name: str) -> dict[str, object]:
    info = inspect(svc, name)
    assert info is not None, f"container {name} is missing"
    state = info["State"]
    assert isinstance(state, dict)
    return state


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


# ---------------------------------------------------------------------------------- drift


async def _running(ex: PodmanExecutor, node_id: str, **kw: object) -> tuple[object, Driven]:
    ctlr, task = resolved(make_task(node_id=node_id, **kw), ex)  # type: ignore[arg-type]
    driven = await drive(task, ctlr, until=TaskState.RUNNING)
    assert driven.task.status.state == TaskState.RUNNING
    return ctlr, driven


async def test_podman_kill_behind_the_agents_back_fails_the_task_by_exit_code(
    podman_executor: PodmanExecutor,
    podman_service: PodmanService,
    node_id: str,
    observer: RecordingObserver,
) -> None:
    ctlr, driven = await _running(podman_executor, node_id)
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
    ctlr, driven = await _running(podman_executor, node_id)
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


# ----------------------------------------------------------------------- runtime loss


async def test_podman_restart_under_a_pending_wait_resumes_without_restarting(
    private_podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    svc = private_podman_service
    ex = new_executor(svc.url, node_id, observer)
    await ex.start()
    try:
        ctlr, driven = await _running(ex, node_id)
        name = f"{driven.task.spec.name}.{driven.task.id}"
        before = state_of(svc, name)
        out = Driven(driven.task)
        waiting = asyncio.create_task(
            drive(driven.task, ctlr, until=TaskState.COMPLETE, out=out)  # type: ignore[arg-type]
        )
        await until(lambda: name in ex.events.watched_names(), what="wait() attached")

        await asyncio.to_thread(svc.stop)
        await until(lambda: not ex.runtime_up, what="runtime marked down")
        assert await ex.ping() is False
        assert observer.up[-1] is False
        await until(lambda: len(out.retries) >= 1, what="wait() reporting the loss")
        assert not waiting.done()

        await asyncio.to_thread(svc.start)
        await until(lambda: ex.runtime_up and ex.events.connected, what="reconnection")
        await until(lambda: name in ex.events.watched_names(), what="wait() re-attached")
        after = state_of(svc, name)
        assert after["StartedAt"] == before["StartedAt"]
        assert after["Pid"] == before["Pid"]
        assert not waiting.done()

        # The re-attached wait still ends by the container's exit.
        await asyncio.to_thread(svc.run, "kill", name)
        result = await asyncio.wait_for(waiting, 60)
        assert result.task.status.state == TaskState.FAILED
        assert result.task.status.exit_code == 137
        assert observer.up[-1] is True
        assert result.task.status.container_id == driven.task.status.container_id
    finally:
        await ex.close()


# --------------------------------------------------------------------------------- update


async def test_memory_update_is_applied_live_and_verified_or_refused(
    podman_executor: PodmanExecutor, podman_service: PodmanService, node_id: str
) -> None:
    mib = 1024 * 1024
    ctlr, driven = await _running(podman_executor, node_id, memory=64 * mib)
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


# ------------------------------------------------------------------------------- adoption


async def test_a_new_executor_adopts_a_running_container_without_restarting_it(
    podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    first = new_executor(podman_service.url, node_id, observer)
    await first.start()
    try:
        _, driven = await _running(first, node_id)
    finally:
        await first.close()  # the agent goes away; the container keeps running
    name = f"{driven.task.spec.name}.{driven.task.id}"
    before = state_of(podman_service, name)

    second = new_executor(podman_service.url, node_id, observer)
    await second.start()
    try:
        ctlr, task = resolved(driven.task, second)
        assert task.status.state == TaskState.RUNNING
        with pytest.raises(TaskStarted):
            await ctlr.start()
        waiting = asyncio.create_task(drive(task, ctlr, until=TaskState.COMPLETE))
        await until(lambda: name in second.events.watched_names(), what="wait() attached")
        after = state_of(podman_service, name)
        assert after["StartedAt"] == before["StartedAt"]
        assert inspect(podman_service, name)["Id"] == driven.task.status.container_id  # type: ignore[index]
        await second.resync()  # agrees with events: nothing to correct
        assert ctlr.container_status().pid == before["Pid"]
        assert not waiting.done()
        await asyncio.to_thread(podman_service.run, "stop", "--time", "5", name)
        result = await asyncio.wait_for(waiting, 60)
        assert result.task.status.state == TaskState.COMPLETE  # the trap exits 0 on SIGTERM
        await ctlr.remove()
    finally:
        await second.close()


async def test_a_container_that_exited_while_the_agent_was_away_is_judged_by_exit_code(
    podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    first = new_executor(podman_service.url, node_id, observer)
    await first.start()
    try:
        _, driven = await _running(first, node_id)
    finally:
        await first.close()
    name = f"{driven.task.spec.name}.{driven.task.id}"
    await asyncio.to_thread(podman_service.run, "kill", "--signal", "KILL", name)
    await until(lambda: state_of(podman_service, name)["Running"] is False, what="exit")

    second = new_executor(podman_service.url, node_id, observer)
    await second.start()
    try:
        ctlr, _ = resolved(driven.task, second)
        with pytest.raises(ExitError) as info:
            await ctlr.wait()
        assert info.value.exit_code == 137
        assert state_of(podman_service, name)["Running"] is False  # not restarted
        await ctlr.remove()
    finally:
        await second.close()


# --------------------------------------------------------------------------- node, events


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


async def test_event_stream_survives_events_log_rotation(
    node_id: str, observer: RecordingObserver, tmp_path: Path
) -> None:
    from tests.e2e.conftest import CONTAINERS_CONF, start_service

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
        ctlr, driven = await _running(ex, node_id)
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


AGENT_SCRIPT = """
import asyncio, json, sys, time
from dataclasses import replace
from reconciler.core.clock import SystemClock
from reconciler.core.executor import NullObserver
from reconciler.core.codec import task_to_dict
from runtime.podman import PodmanExecutor
from tests.e2e.podman_support import drive, make_task, resolved

async def main(url, node):
    ex = PodmanExecutor(url=url, node_id=node, clock=SystemClock(), observer=NullObserver(),
                        agent_version="t")
    await ex.start()
    tasks = [make_task(name=f"k{i}", node_id=node) for i in range(10)]
    pairs = [resolved(t, ex) for t in tasks]
    done = await asyncio.gather(*(drive(t, c, until=TaskState.RUNNING) for c, t in pairs))
    print(json.dumps([task_to_dict(d.task) for d in done]), flush=True)
    waits = [asyncio.create_task(drive(d.task, c, until=TaskState.COMPLETE))
             for d, (c, _) in zip(done, pairs)]
    await asyncio.sleep(3600)

from reconciler.core.model import TaskState
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_kill_9_of_the_agent_then_a_new_one_adopts_all_ten_running_containers(
    podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        AGENT_SCRIPT,
        podman_service.url,
        node_id,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
    finally:
        proc.kill()  # kill -9: no cleanup of any kind
        await proc.wait()
    tasks = [task_from_dict(d) for d in json.loads(line)]
    assert len(tasks) == 10
    assert all(t.status.state == TaskState.RUNNING for t in tasks)
    before = {t.id: state_of(podman_service, f"{t.spec.name}.{t.id}") for t in tasks}

    ex = new_executor(podman_service.url, node_id, observer)
    await ex.start()
    try:
        pairs = [resolved(t, ex) for t in tasks]
        waits = [asyncio.create_task(drive(t, c, until=TaskState.COMPLETE)) for c, t in pairs]
        names = {f"{t.spec.name}.{t.id}" for t in tasks}
        await until(lambda: names <= set(ex.events.watched_names()), what="all re-attached")
        assert await ex.remove_orphans({t.id for t in tasks}) == []
        for t in tasks:
            info = inspect(podman_service, f"{t.spec.name}.{t.id}")
            assert info is not None
            assert info["Id"] == t.status.container_id
            assert info["State"]["StartedAt"] == before[t.id]["StartedAt"]  # type: ignore[index]
            assert info["State"]["Running"] is True  # type: ignore[index]
        assert not any(w.done() for w in waits)
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        stops = [
            drive(replace(t, desired_state=TaskState.SHUTDOWN), c, until=TaskState.SHUTDOWN)
            for c, t in pairs
        ]
        for d in await asyncio.gather(*stops):
            assert d.task.status.state == TaskState.SHUTDOWN
        for c, _ in pairs:
            await c.remove()
    finally:
        await ex.close()


async def test_waits_reattaching_after_a_restart_share_one_list_and_judge_each_container(
    podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    first = new_executor(podman_service.url, node_id, observer)
    await first.start()
    try:
        runs = [await _running(first, node_id, name=f"up{i}") for i in range(3)]
        _, exits3 = await _running(first, node_id, name="three", command=("sh", "-c", "exit 3"))
        _, killed = await _running(first, node_id, name="killed")
        _, removed = await _running(first, node_id, name="removed")
    finally:
        await first.close()  # the agent goes away; its store says all six run

    def cname(d: Driven) -> str:
        return f"{d.task.spec.name}.{d.task.id}"

    await asyncio.to_thread(podman_service.run, "kill", "--signal", "KILL", cname(killed))
    await asyncio.to_thread(podman_service.run, "rm", "--force", "--time", "0", cname(removed))
    await until(lambda: state_of(podman_service, cname(exits3))["Running"] is False, what="exit")
    await until(lambda: state_of(podman_service, cname(killed))["Running"] is False, what="kill")
    before = {cname(d): state_of(podman_service, cname(d))["StartedAt"] for _, d in runs}

    second = new_executor(podman_service.url, node_id, observer)
    await second.start()
    try:
        await asyncio.wait_for(second.events.wait_connected(), 60)
        ctlrs = {
            cname(d): resolved(d.task, second)[0] for d in [*(d for _, d in runs), exits3, killed]
        }
        ctlrs[cname(removed)] = resolved(removed.task, second)[0]
        waits = {n: asyncio.create_task(c.wait()) for n, c in ctlrs.items()}
        await until(
            lambda: sum(w.done() for w in waits.values()) == 3, what="the three ended judged"
        )
        assert second.listing.calls == 1  # six waits, one list call, no inspect each
        with pytest.raises(ExitError) as three:
            await waits[cname(exits3)]
        assert three.value.exit_code == 3
        with pytest.raises(ExitError) as kill:
            await waits[cname(killed)]
        assert kill.value.exit_code == 137
        with pytest.raises(ContainerGone):
            await waits[cname(removed)]
        for _, d in runs:
            assert not waits[cname(d)].done()  # re-attached to a running container
            assert state_of(podman_service, cname(d))["StartedAt"] == before[cname(d)]
            assert ctlrs[cname(d)].container_status().container_id == d.task.status.container_id
            assert ctlrs[cname(d)].container_status().pid
        await asyncio.to_thread(podman_service.run, "stop", "--time", "5", cname(runs[0][1]))
        await asyncio.wait_for(waits[cname(runs[0][1])], 60)  # the trap exits 0: returns
        # Adopted from the list, a running container is still watched through conmon's exit
        # file (its conmon found as the parent of its process): a kill is judged from it.
        await until(lambda: bool(second.exits.directories), what="the exit directory watched")
        assert second.exits.degraded is None
        await asyncio.to_thread(podman_service.run, "kill", "--signal", "KILL", cname(runs[1][1]))
        with pytest.raises(ExitError) as killed_adopted:
            await asyncio.wait_for(waits[cname(runs[1][1])], 60)
        assert killed_adopted.value.exit_code == 137
        assert second.exits.files_seen >= 1
        for n in (cname(d) for _, d in runs[2:]):
            waits[n].cancel()
        await asyncio.gather(*waits.values(), return_exceptions=True)
        for c in ctlrs.values():
            await c.remove()
    finally:
        await second.close()

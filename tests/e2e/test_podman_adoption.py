"""End to end: containers outliving the agent, or podman, against real podman.

A new executor adopts a running container without restarting it and judges one that exited
while it was away by its exit code; after ``kill -9`` of an agent, a new one adopts all its
running containers, and the waits re-attaching share one list call; a podman restart under a
pending wait resumes it without restarting the container. Each test runs under its own node
id; there are no timing assertions, only waits for real podman state.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.core.codec import task_from_dict
from reconciler.core.errors import ContainerGone, ExitError, TaskStarted
from reconciler.core.model import TaskState
from reconciler.testing.podman import PodmanService
from tests.e2e.podman_support import (
    Driven,
    RecordingObserver,
    drive,
    inspect,
    new_executor,
    resolved,
    running_task,
    state_of,
    until,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------- adoption


async def test_a_new_executor_adopts_a_running_container_without_restarting_it(
    podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    first = new_executor(podman_service.url, node_id, observer)
    await first.start()
    try:
        _, driven = await running_task(first, node_id)
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
        _, driven = await running_task(first, node_id)
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


# --------------------------------------------------------------------------- runtime loss


async def test_podman_restart_under_a_pending_wait_resumes_without_restarting(
    private_podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    svc = private_podman_service
    ex = new_executor(svc.url, node_id, observer)
    await ex.start()
    try:
        ctlr, driven = await running_task(ex, node_id)
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


# -------------------------------------------------------------------------- agent restart


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
                        agent_version="t", image_gc_threshold=15.0)
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
        runs = [await running_task(first, node_id, name=f"up{i}") for i in range(3)]
        _, exits3 = await running_task(first, node_id, name="three", command=("sh", "-c", "exit 3"))
        _, killed = await running_task(first, node_id, name="killed")
        _, removed = await running_task(first, node_id, name="removed")
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

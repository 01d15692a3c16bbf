"""The whole agent on the fake runtime and an in-memory session, on the fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from reconciler.agent import HOST_REBOOTED, Agent, AgentConfig
from reconciler.clock import FakeClock, settle
from reconciler.model import RestartPolicy, TaskSpec, TaskState
from reconciler.session import DesiredInvalid, DesiredTask, DesiredTasks
from reconciler.sessions.memory import MemorySession
from reconciler.store import Store
from runtime.fake import FakeExecutor

S = TaskState


def desired(*names: str, image: str = "localhost/busybox:latest") -> DesiredTasks:
    return DesiredTasks(
        tasks=tuple(
            DesiredTask(
                TaskSpec(name=n, image=image, restart=RestartPolicy(delay=1.0, max_delay=4.0))
            )
            for n in names
        ),
        full=True,
    )


@dataclass
class Running:
    agent: Agent
    session: MemorySession
    executor: FakeExecutor
    store: Store


@asynccontextmanager
async def running_agent(
    state: Path, clock: FakeClock, executor: FakeExecutor, *, boot_id: str = "boot-1"
) -> AsyncIterator[Running]:
    store = Store.open(state)
    agent = Agent(
        config=AgentConfig(node_id="node-a", resync_interval=30.0, boot_id=boot_id),
        store=store,
        clock=clock,
    )
    session = MemorySession()
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(executor, session, stop))
    await settle()
    try:
        yield Running(agent, session, executor, store)
    finally:
        stop.set()
        await task
        store.close()


def states(agent: Agent) -> dict[str, TaskState]:
    return {v.name: v.state for v in agent.snapshot().tasks if v.current}


def metric(agent: Agent, metric_name: str, **labels: str) -> float | None:
    return agent.metrics.registry.get_sample_value(metric_name, labels)


async def test_agent_runs_desired_tasks_and_becomes_ready(tmp_path: Path, clock: FakeClock):
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        assert not r.agent.snapshot().ready
        assert r.agent.snapshot().ready_reason == "desired state has not been read yet"
        r.session.send(desired("web", "job"))
        await settle()
        assert states(r.agent) == {"web": S.RUNNING, "job": S.RUNNING}
        snap = r.agent.snapshot()
        assert snap.ready, snap.ready_reason
        assert snap.desired_valid
        assert metric(r.agent, "reconciler_node_ready") == 1
        assert metric(r.agent, "reconciler_tasks", state="running") == 2
        assert metric(r.agent, "reconciler_task_start_seconds_count") == 2
        assert {s.name for s in r.session.reports} == {"web", "job"}
        assert r.session.latest["web"].state == S.RUNNING


async def test_invalid_desired_state_keeps_last_valid_running(tmp_path: Path, clock: FakeClock):
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired("web"))
        await settle()
        ids = {c.id for c in executor.running()}
        r.session.send(DesiredInvalid(errors=("d/x.yaml:3: tasks[0].image: required",)))
        await settle()
        assert states(r.agent) == {"web": S.RUNNING}
        assert {c.id for c in executor.running()} == ids
        assert not r.agent.snapshot().desired_valid
        assert metric(r.agent, "reconciler_desired_state_valid") == 0
        assert metric(r.agent, "reconciler_desired_state_errors_total") == 1
        r.session.send(desired("web", "db"))
        await settle()
        assert metric(r.agent, "reconciler_desired_state_valid") == 1
        assert states(r.agent) == {"web": S.RUNNING, "db": S.RUNNING}


async def test_agent_restart_adopts_without_restarting(tmp_path: Path, clock: FakeClock):
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired("web", "db"))
        await settle()
        before = {v.name: v.id for v in r.agent.snapshot().tasks}
    assert len(executor.running()) == 2  # stopping the agent leaves containers running
    prepares = sum(n for (tid, op), n in executor.calls.items() if op == "prepare")
    async with running_agent(tmp_path, clock, executor) as r:
        await settle()
        assert {v.name: v.id for v in r.agent.snapshot().tasks} == before
        assert states(r.agent) == {"web": S.RUNNING, "db": S.RUNNING}
        assert sum(n for (tid, op), n in executor.calls.items() if op == "prepare") == prepares
        # with no desired message yet, the stored desired set keeps running
        assert not r.agent.snapshot().desired_read


async def test_host_reboot_fails_running_instances_and_restarts_them(
    tmp_path: Path, clock: FakeClock
):
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor, boot_id="boot-1") as r:
        r.session.send(desired("web"))
        await settle()
        old = r.agent.snapshot().tasks[0].id
    executor.containers.clear()  # a reboot: podman lost every running container
    async with running_agent(tmp_path, clock, executor, boot_id="boot-2") as r:
        await settle()
        history = [v for v in r.agent.snapshot().tasks if v.id == old]
        assert history and history[0].state == S.FAILED
        assert history[0].message == HOST_REBOOTED
        await clock.advance(1.0)
        current = next(v for v in r.agent.snapshot().tasks if v.current)
        assert current.id != old
        assert current.state == S.RUNNING
        assert metric(r.agent, "reconciler_task_restarts_total", name="web") == 1


async def test_runtime_down_makes_node_unready_until_it_answers(tmp_path: Path, clock: FakeClock):
    executor = FakeExecutor(clock=clock)
    executor.up = False
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired())
        await settle()
        snap = r.agent.snapshot()
        assert not snap.ready
        assert snap.ready_reason == "container runtime does not answer"
        assert metric(r.agent, "reconciler_runtime_up") == 0
        executor.up = True
        await clock.advance(2.0)
        assert r.agent.snapshot().ready
        assert metric(r.agent, "reconciler_runtime_up") == 1


async def test_resync_removes_orphans(tmp_path: Path, clock: FakeClock):
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired("web"))
        await settle()
        from runtime.fake import FakeContainer

        executor.containers["stray"] = FakeContainer(id="cx", task_id="stray", name="x.stray")
        await clock.advance(30.0)
        assert "stray" not in executor.containers
        assert executor.removed_orphans == ["stray"]
        assert states(r.agent) == {"web": S.RUNNING}


async def test_incremental_message_applies_on_top_of_the_stored_desired_set(
    tmp_path: Path, clock: FakeClock
):
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired("web", "db"))
        await settle()
    async with running_agent(tmp_path, clock, executor) as r:
        extra = desired("cache")
        r.session.send(DesiredTasks(tasks=extra.tasks, full=False, removed=("db",)))
        await settle()
        await r.agent.worker.wait_closed()  # type: ignore[union-attr]
        assert states(r.agent) == {"web": S.RUNNING, "cache": S.RUNNING}


async def test_pending_reports_follow_a_manager_that_is_away_then_back(
    tmp_path: Path, clock: FakeClock
):
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.fail_reports = 1000
        r.session.send(desired("web", "db"))
        await settle()
        assert metric(r.agent, "reconciler_status_reports_pending") == 2
        r.session.fail_reports = 0
        await clock.advance(60)
        assert metric(r.agent, "reconciler_status_reports_pending") == 0
        assert r.session.latest["web"].state == S.RUNNING

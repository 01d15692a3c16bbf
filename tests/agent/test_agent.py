"""The whole agent on the fake runtime and an in-memory session, on the fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from reconciler.agent.agent import Agent
from reconciler.agent.startup import HOST_REBOOTED
from reconciler.assemble.agent import assemble_agent
from reconciler.core.clock import FakeClock, settle
from reconciler.core.executor import Supervise
from reconciler.core.model import RestartPolicy, TaskSpec, TaskState
from reconciler.core.session import DesiredInvalid, DesiredTask, DesiredTasks
from reconciler.local.manager import check_records
from reconciler.sessions.memory import MemorySession
from reconciler.store.opening import db_path
from reconciler.store.recovery import open_store
from reconciler.store.rocks import RocksStore
from reconciler.testing.agents import agent_options
from reconciler.testing.fake import FakeExecutor
from reconciler.testing.fakehost import FakeContainer
from reconciler.testing.tasks import ended

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
    store: RocksStore


@asynccontextmanager
async def running_agent(
    state: Path, clock: FakeClock, executor: FakeExecutor, *, boot_id: str = "boot-1"
) -> AsyncIterator[Running]:
    opened = open_store(state, verify=check_records)
    store = opened.store
    session = MemorySession()
    assembled = assemble_agent(
        agent_options(state, "--node-id", "node-a"),
        store=store,
        origin=opened.origin,
        node_id="node-a",
        clock=clock,
        runtime=lambda _: executor,
        session=session,
        boot_id=boot_id,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(assembled.run(stop))
    await settle()
    try:
        yield Running(assembled.agent, session, executor, store)
    finally:
        stop.set()
        await ended(task, "the agent")
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

        executor.containers["stray"] = FakeContainer(id="cx", task_id="stray", name="x.stray")
        # A new store: the pass after the first desired set only adopts; the next one sweeps.
        await clock.advance(30.0)
        assert "stray" in executor.containers
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


# ------------------------------------------------------------------------- store recovery


def spec(name: str, image: str = "localhost/busybox:latest") -> TaskSpec:
    return TaskSpec(name=name, image=image, restart=RestartPolicy(delay=1.0, max_delay=4.0))


async def test_a_corrupt_store_is_rebuilt_from_the_runtime_without_touching_a_container(
    tmp_path: Path, clock: FakeClock
):
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired("web", "db"))
        await settle()
        before = {v.name: v.id for v in r.agent.snapshot().current()}
    containers = {tid: c.id for tid, c in executor.containers.items()}
    (db_path(tmp_path) / "CURRENT").unlink()
    executor.calls.clear()
    async with running_agent(tmp_path, clock, executor) as r:
        assert metric(r.agent, "reconciler_store_rebuilds_total") == 1
        # adopted, waiting for the desired set: nothing decided, nothing removed
        adopted = {v.name: v for v in r.agent.snapshot().current()}
        assert {n: v.id for n, v in adopted.items()} == before
        await clock.advance(60.0)
        assert executor.removed_orphans == []
        r.session.send(desired("web", "db"))
        await settle()
        assert {v.name: v.id for v in r.agent.snapshot().current()} == before
        assert states(r.agent) == {"web": S.RUNNING, "db": S.RUNNING}
        assert {tid: c.id for tid, c in executor.containers.items()} == containers
        assert not [k for k in executor.calls if k[1] in ("prepare", "start", "shutdown")]


async def test_after_a_rebuild_a_changed_spec_is_replaced_and_a_dropped_name_swept(
    tmp_path: Path, clock: FakeClock
):
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired("web", "db"))
        await settle()
        before = {v.name: v.id for v in r.agent.snapshot().current()}
    (db_path(tmp_path) / "CURRENT").write_text("garbage\n")
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(
            DesiredTasks(tasks=(DesiredTask(spec("web", image="localhost/other:2")),), full=True)
        )
        await settle()
        web = next(v for v in r.agent.snapshot().current() if v.name == "web")
        assert web.id != before["web"]
        assert web.state == S.RUNNING
        assert before["web"] not in executor.containers or (
            executor.containers[before["web"]].state == "exited"
        )
        # db is no longer desired: an orphan, swept once a pass after the desired set ran
        assert before["db"] in executor.containers
        await clock.advance(30.0)
        await clock.advance(30.0)
        assert before["db"] not in executor.containers


async def test_a_store_that_stops_taking_writes_makes_the_node_unready_until_it_recovers(
    tmp_path: Path, clock: FakeClock
):
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired("web"))
        await settle()
        assert r.agent.snapshot().ready
        r.store._handle().close()  # every write now fails, as on a full disk ...
        r.store.recover = lambda: False  # type: ignore[method-assign] # ... until space returns
        r.session.send(desired("web", "db"))
        await settle()
        snap = r.agent.snapshot()
        assert not snap.ready
        assert snap.ready_reason.startswith("store write failed, retrying")
        assert states(r.agent)["web"] == S.RUNNING  # what runs keeps running
        assert [c.name.split(".")[0] for c in executor.running()] == ["web"]
        await clock.advance(20.0)
        assert not r.agent.snapshot().ready
        del r.store.recover  # space is back: the watcher reopens the store, applies what waited
        await clock.advance(10.0)  # the watcher's longest wait, with jitter
        await settle()
        assert r.agent.snapshot().ready, r.agent.snapshot().ready_reason
        assert states(r.agent) == {"web": S.RUNNING, "db": S.RUNNING}
    store = RocksStore.open(tmp_path)
    try:
        assert {t.name for t in store.walk_tasks()} == {"web", "db"}
    finally:
        store.close()


class FlakySession(MemorySession):
    """A session whose first iteration fails the way a hostile input once did."""

    def __init__(self) -> None:
        super().__init__()
        self.iterations = 0

    async def messages(self) -> AsyncIterator[DesiredTasks | DesiredInvalid]:  # type: ignore[override]
        self.iterations += 1
        if self.iterations == 1:
            raise RecursionError("maximum recursion depth exceeded")
        async for m in super().messages():
            yield m  # type: ignore[misc]


async def test_a_session_loop_that_fails_is_restarted_counted_and_named_by_health(
    tmp_path: Path, clock: FakeClock
):
    executor = FakeExecutor(clock=clock)
    opened = open_store(tmp_path, verify=check_records)
    session = FlakySession()
    assembled = assemble_agent(
        agent_options(tmp_path),
        store=opened.store,
        origin=opened.origin,
        node_id="node-a",
        clock=clock,
        runtime=lambda _: executor,
        session=session,
        boot_id="b",
    )
    agent = assembled.agent
    stop = asyncio.Event()
    task = asyncio.create_task(assembled.run(stop))
    try:
        await settle()
        alive, why = agent.snapshot().health()
        assert not alive
        assert why == "agent loop session is down: RecursionError: maximum recursion depth exceeded"
        assert metric(agent, "reconciler_loop_restarts_total", loop="session") == 1
        await clock.advance(5.0)
        assert agent.snapshot().health() == (True, "ok")
        session.send(desired("web"))
        await settle()
        assert states(agent) == {"web": S.RUNNING}
    finally:
        stop.set()
        await ended(task, "the agent")
        opened.store.close()


class EventsFailOnce(FakeExecutor):
    """A runtime whose event loop, handed to the agent's supervisor, fails once."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.event_runs = 0

    async def start(self, *, supervise: Supervise | None = None) -> None:
        assert supervise is not None

        async def events() -> None:
            self.event_runs += 1
            if self.event_runs == 1:
                raise ConnectionResetError("event stream broke in an unexpected way")
            await asyncio.Event().wait()

        supervise("events", events)


async def test_the_runtimes_event_loop_runs_under_the_agents_supervisor(
    tmp_path: Path, clock: FakeClock
):
    executor = EventsFailOnce(clock)
    async with running_agent(tmp_path, clock, executor) as r:
        assert metric(r.agent, "reconciler_loop_restarts_total", loop="events") == 1
        assert r.agent.snapshot().health()[0] is False
        await clock.advance(5.0)
        assert executor.event_runs == 2
        assert r.agent.snapshot().health() == (True, "ok")

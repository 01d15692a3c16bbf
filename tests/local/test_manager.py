"""The local manager on the real Worker, a real store and the fake runtime, on a fake clock.

Every test drives names through ``LocalManager.set_desired`` and the fake runtime's exits, and
checks what an operator would see: instance ids, containers, history and restart counts. After
every settle the invariant "at most one running container per name" is checked.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.core.clock import FakeClock, settle
from reconciler.core.model import (
    Assignment,
    Resources,
    RestartPolicy,
    TaskSpec,
    TaskState,
    TaskStatus,
)
from reconciler.core.session import DesiredTask
from reconciler.core.snapshot import TaskView
from reconciler.core.worker import Worker
from reconciler.local.manager import RESOURCES_REPLACED, LocalManager, views_from_store
from reconciler.store.rocks import RocksStore
from reconciler.testing.fake import FakeExecutor

S = TaskState
NODE = "node-1"
IMAGE = "localhost/busybox:latest"


def spec(
    name: str,
    *,
    image: str = IMAGE,
    memory: int | None = None,
    condition: str = "any",
    delay: float = 5.0,
    max_delay: float = 300.0,
    max_attempts: int = 0,
    window: float = 0.0,
) -> TaskSpec:
    return TaskSpec(
        name=name,
        image=image,
        resources=Resources(memory=memory),
        restart=RestartPolicy(condition, delay, max_delay, max_attempts, window),
    )


def desired(*specs: TaskSpec, shutdown: tuple[str, ...] = ()) -> dict[str, DesiredTask]:
    return {s.name: DesiredTask(s, S.SHUTDOWN if s.name in shutdown else S.RUNNING) for s in specs}


class Crash(Exception):
    """Raised by the assign hook to stop the agent between storing a step and assigning it."""


class Agent:
    """A store, a Worker and a LocalManager wired as ``reconciler.agent.agent`` wires them."""

    def __init__(self, state_dir: Path, executor: FakeExecutor, clock: FakeClock) -> None:
        self.state_dir = state_dir
        self.executor = executor
        self.clock = clock
        self.assignments = 0
        self.crash_next_assign = False

    async def start(self, *, history_limit: int = 5) -> Agent:
        self.store = RocksStore.open(self.state_dir)
        self.worker = Worker(self.store, self.executor, clock=self.clock)
        await self.worker.init()
        self.manager = LocalManager(
            self.store,
            node_id=NODE,
            clock=self.clock,
            assign=self._assign,
            history_limit=history_limit,
        )
        self.worker.listen(self.manager.on_status)
        await self.manager.start()
        await self.settle()
        return self

    async def _assign(self, assignment: Assignment) -> None:
        if self.crash_next_assign:
            self.crash_next_assign = False
            raise Crash()
        self.assignments += 1
        await self.worker.assign(assignment)

    async def stop(self) -> None:
        await self.manager.close()
        await self.worker.close()
        self.store.close()

    async def apply(self, *specs: TaskSpec, shutdown: tuple[str, ...] = ()) -> None:
        await self.manager.set_desired(desired(*specs, shutdown=shutdown))
        await self.settle()

    async def settle(self) -> None:
        await settle()
        await self.worker.wait_closed()
        await settle()
        check_one_running_per_name(self.executor)

    async def advance(self, seconds: float, *, step: float = 0.5) -> None:
        """Advance the clock in small steps, checking the invariant after each."""
        left = seconds
        while left > 1e-9:
            dt = min(step, left)
            await self.clock.advance(dt)
            left -= dt
            await self.settle()

    def current(self, name: str) -> TaskView:
        (view,) = [v for v in self.manager.views() if v.name == name and v.current]
        return view

    def history(self, name: str) -> list[TaskView]:
        return [v for v in self.manager.views() if v.name == name and not v.current]

    def container(self, task_id: str) -> str | None:
        c = self.executor.containers.get(task_id)
        return c.state if c is not None else None


def check_one_running_per_name(executor: FakeExecutor) -> None:
    running = Counter(c.name.split(".")[0] for c in executor.running())
    assert all(n == 1 for n in running.values()), f"two instances running: {running}"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def agent(state_dir: Path, executor: FakeExecutor, clock: FakeClock) -> AsyncIterator[Agent]:
    a = await Agent(state_dir, executor, clock).start()
    yield a
    await a.stop()


# ------------------------------------------------------------------------------ create


async def test_new_name_creates_one_running_instance(agent: Agent) -> None:
    await agent.apply(spec("web"))
    view = agent.current("web")
    assert re.fullmatch(r"[0-9a-f]{12}", view.id)
    assert view.state == S.RUNNING and view.desired_state == S.RUNNING
    assert view.restarts == 0
    task = agent.store.get_task(view.id)
    assert task.node_id == NODE and task.spec.name == "web"
    assert agent.container(view.id) == "running"
    assert agent.history("web") == []


async def test_name_created_as_shutdown_runs_nothing(agent: Agent) -> None:
    await agent.apply(spec("web"), shutdown=("web",))
    view = agent.current("web")
    assert view.desired_state == S.SHUTDOWN and view.state == S.SHUTDOWN
    assert agent.executor.calls[(view.id, "prepare")] == 0


async def test_equal_desired_set_changes_nothing(agent: Agent) -> None:
    await agent.apply(spec("web"))
    before, n = agent.manager.views(), agent.assignments
    await agent.apply(spec("web"))
    assert agent.manager.views() == before
    assert agent.assignments == n


# ---------------------------------------------------------------------- in-place update


async def test_resources_change_updates_instance_in_place(agent: Agent) -> None:
    await agent.apply(spec("web", memory=64 << 20))
    old = agent.current("web").id
    await agent.apply(spec("web", memory=128 << 20))
    view = agent.current("web")
    assert view.id == old
    assert agent.executor.calls[(old, "update")] == 1
    assert agent.executor.containers[old].memory == 128 << 20
    assert agent.executor.calls[(old, "prepare")] == 1
    assert agent.store.get_task(old).spec.resources.memory == 128 << 20
    assert view.state == S.RUNNING and agent.history("web") == []


async def test_unsupported_resources_update_replaces_instance_and_says_so(agent: Agent) -> None:
    agent.executor.update_unsupported = True
    await agent.apply(spec("web", memory=64 << 20))
    old = agent.current("web").id
    await agent.apply(spec("web", memory=128 << 20))
    new = agent.current("web")
    assert new.id != old
    assert new.state == S.RUNNING
    assert new.message == RESOURCES_REPLACED
    assert agent.executor.containers[new.id].memory == 128 << 20
    (hist,) = agent.history("web")
    assert hist.id == old and hist.state == S.SHUTDOWN and hist.message == RESOURCES_REPLACED
    assert agent.container(old) == "exited"  # kept, stopped, for logs
    assert new.restarts == 0


# ------------------------------------------------------------------------- replacement


async def test_other_change_prepares_the_new_instance_before_it_stops_the_old(
    agent: Agent,
) -> None:
    await agent.apply(spec("web"))
    old = agent.current("web").id
    agent.executor.delay("shutdown", 3.0, name="web")  # the old container takes 3 s to stop
    await agent.apply(spec("web", image="localhost/busybox:v2"))
    view = agent.current("web")
    assert view.id == old and view.desired_state == S.SHUTDOWN  # stopping, once prepared
    assert agent.container(old) == "running"
    (new_id,) = [t for t in agent.executor.containers if t != old]
    assert agent.container(new_id) == "created"  # prepared while the old one ran
    assert [v.id for v in agent.manager.views() if not v.current] == [new_id]
    await agent.advance(3.0)
    new = agent.current("web")
    assert new.id == new_id and new.state == S.RUNNING
    assert agent.store.get_task(new.id).spec.image == "localhost/busybox:v2"
    (hist,) = agent.history("web")
    assert hist.id == old and hist.state == S.SHUTDOWN and hist.desired_state == S.SHUTDOWN
    assert agent.container(old) == "exited"


async def test_change_of_an_ended_instance_replaces_at_once_and_is_no_restart(
    agent: Agent,
) -> None:
    await agent.apply(spec("job", condition="none"))
    old = agent.current("job").id
    agent.executor.exit(old, 0)
    await agent.settle()
    assert agent.current("job").state == S.COMPLETE
    await agent.apply(spec("job", condition="none", image="localhost/busybox:v2"))
    new = agent.current("job")
    assert new.id != old and new.state == S.RUNNING and new.restarts == 0


async def test_removed_name_loses_every_instance_and_container(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0), spec("db"))
    first = agent.current("web").id
    agent.executor.exit(first, 1)
    await agent.advance(1.0)
    second = agent.current("web").id
    assert {first, second} <= set(agent.executor.containers)
    await agent.apply(spec("db"))
    assert [v.name for v in agent.manager.views()] == ["db"]
    assert first not in agent.executor.containers and second not in agent.executor.containers
    assert first not in agent.store and second not in agent.store
    assert agent.manager.restarts() == {"db": 0}


# ---------------------------------------------------------------------------- shutdown


async def test_shutdown_keeps_instance_and_running_again_starts_a_new_one(agent: Agent) -> None:
    await agent.apply(spec("web"))
    old = agent.current("web").id
    await agent.apply(spec("web"), shutdown=("web",))
    view = agent.current("web")
    assert view.id == old and view.state == S.SHUTDOWN and view.desired_state == S.SHUTDOWN
    assert agent.container(old) == "exited"  # record and container kept
    await agent.advance(60.0)  # no restart policy for an instance we stopped
    assert agent.current("web").id == old

    # A spec change while shut down waits for the next instance.
    await agent.apply(spec("web", image="localhost/busybox:v2"), shutdown=("web",))
    assert agent.current("web").id == old
    assert agent.store.get_task(old).spec.image == IMAGE

    await agent.apply(spec("web", image="localhost/busybox:v2"))
    new = agent.current("web")
    assert new.id != old and new.state == S.RUNNING
    assert agent.store.get_task(new.id).spec.image == "localhost/busybox:v2"
    assert [h.id for h in agent.history("web")] == [old]
    assert new.restarts == 0


# ----------------------------------------------------------------------- restart policy


async def test_restart_any_replaces_a_completed_instance_after_delay(agent: Agent) -> None:
    await agent.apply(spec("job", delay=5.0))
    first = agent.current("job").id
    agent.executor.exit(first, 0)
    await agent.settle()
    assert agent.current("job").state == S.COMPLETE
    await agent.advance(4.5)
    assert agent.current("job").id == first
    await agent.advance(0.5)
    view = agent.current("job")
    assert view.id != first and view.state == S.RUNNING and view.restarts == 1
    assert agent.manager.restarts() == {"job": 1}
    assert [h.id for h in agent.history("job")] == [first]


async def test_restart_on_failure_skips_complete_and_replaces_failed(agent: Agent) -> None:
    await agent.apply(
        spec("a", condition="on-failure", delay=1.0),
        spec("b", condition="on-failure", delay=1.0),
    )
    a, b = agent.current("a").id, agent.current("b").id
    agent.executor.exit(a, 0)
    agent.executor.exit(b, 3)
    await agent.settle()
    await agent.advance(10.0)
    assert agent.current("a").id == a and agent.current("a").state == S.COMPLETE
    assert agent.current("b").id != b and agent.current("b").state == S.RUNNING
    assert agent.manager.restarts() == {"a": 0, "b": 1}


async def test_restart_none_never_replaces(agent: Agent) -> None:
    await agent.apply(spec("web", condition="none", delay=1.0))
    first = agent.current("web").id
    agent.executor.exit(first, 1)
    await agent.advance(100.0, step=10.0)
    view = agent.current("web")
    assert view.id == first and view.state == S.FAILED and view.exit_code == 1
    assert view.restarts == 0


async def test_vanished_container_counts_as_a_failure(agent: Agent) -> None:
    await agent.apply(spec("web", condition="on-failure", delay=1.0))
    first = agent.current("web").id
    agent.executor.vanish(first)
    await agent.settle()
    assert agent.current("web").state == S.FAILED
    assert agent.current("web").message == "container removed"
    await agent.advance(1.0)
    assert agent.current("web").id != first


async def _time_to_next_instance(agent: Agent, name: str, limit: float, step: float) -> float:
    """Advance in ``step``s until ``name`` has a new current instance; return the time taken."""
    first = agent.current(name).id
    waited = 0.0
    while agent.current(name).id == first:
        assert waited < limit, f"no replacement within {limit}s"
        await agent.advance(step, step=step)
        waited += step
    return round(waited, 6)


async def test_failures_double_the_delay_up_to_max_delay(agent: Agent) -> None:
    agent.executor.exit_after_start("web", 1)
    await agent.apply(spec("web", delay=1.0, max_delay=6.0))
    assert agent.current("web").state == S.FAILED
    delays = [await _time_to_next_instance(agent, "web", 20.0, 0.25) for _ in range(5)]
    assert delays == [1.0, 2.0, 4.0, 6.0, 6.0]
    assert agent.current("web").restarts == 5


async def test_complete_resets_backoff_to_exactly_delay(agent: Agent) -> None:
    await agent.apply(spec("job", delay=1.0, max_delay=100.0))
    for expected, code in [(1.0, 1), (2.0, 1), (4.0, 1), (1.0, 0), (1.0, 1), (2.0, 1)]:
        agent.executor.exit(agent.current("job").id, code)
        await agent.settle()
        assert await _time_to_next_instance(agent, "job", 20.0, 0.25) == expected


async def test_ten_minutes_of_running_resets_backoff(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0, max_delay=100.0))
    for expected in (1.0, 2.0, 4.0):
        agent.executor.exit(agent.current("web").id, 1)
        await agent.settle()
        assert await _time_to_next_instance(agent, "web", 20.0, 0.25) == expected
    await agent.advance(599.0, step=60.0)
    agent.executor.exit(agent.current("web").id, 1)  # ran 9m59s: no reset
    await agent.settle()
    assert await _time_to_next_instance(agent, "web", 20.0, 0.25) == 8.0
    await agent.advance(600.0, step=60.0)
    agent.executor.exit(agent.current("web").id, 1)  # ran 10 minutes: reset
    await agent.settle()
    assert await _time_to_next_instance(agent, "web", 20.0, 0.25) == 1.0


async def test_max_attempts_caps_restarts_within_window(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0, max_delay=1.0, max_attempts=2, window=60.0))
    for _ in range(2):
        agent.executor.exit(agent.current("web").id, 1)
        await agent.settle()
        await _time_to_next_instance(agent, "web", 5.0, 0.5)
    last = agent.current("web").id
    agent.executor.exit(last, 1)  # a third failure within 60 s: no more attempts
    await agent.advance(120.0, step=10.0)
    view = agent.current("web")
    assert view.id == last and view.state == S.FAILED and view.restarts == 2


async def test_max_attempts_forgets_attempts_outside_window(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0, max_delay=1.0, max_attempts=1, window=30.0))
    for _ in range(3):  # each failure comes 40 s after the last attempt: always allowed
        await agent.advance(40.0, step=10.0)
        agent.executor.exit(agent.current("web").id, 1)
        await agent.settle()
        await _time_to_next_instance(agent, "web", 5.0, 0.5)
    assert agent.current("web").restarts == 3
    agent.executor.exit(agent.current("web").id, 1)  # 1 s after the last attempt
    await agent.advance(60.0, step=10.0)
    assert agent.current("web").state == S.FAILED and agent.current("web").restarts == 3


async def test_max_attempts_with_zero_window_counts_the_whole_life(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0, max_attempts=1, window=0.0))
    agent.executor.exit(agent.current("web").id, 1)
    await agent.settle()
    await _time_to_next_instance(agent, "web", 5.0, 0.5)
    await agent.advance(3600.0, step=600.0)
    last = agent.current("web").id
    agent.executor.exit(last, 1)
    await agent.advance(60.0, step=10.0)
    assert agent.current("web").id == last and agent.current("web").restarts == 1


async def test_spec_change_starts_a_fresh_restart_policy(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0, max_attempts=1))
    agent.executor.exit(agent.current("web").id, 1)
    await agent.settle()
    await _time_to_next_instance(agent, "web", 5.0, 0.5)
    agent.executor.exit(agent.current("web").id, 1)
    await agent.advance(10.0)
    assert agent.current("web").state == S.FAILED  # limit reached
    await agent.apply(spec("web", image="localhost/busybox:v2", delay=1.0, max_attempts=1))
    assert agent.current("web").state == S.RUNNING
    agent.executor.exit(agent.current("web").id, 1)
    await agent.settle()
    assert await _time_to_next_instance(agent, "web", 5.0, 0.5) == 1.0


async def test_shutdown_cancels_a_pending_restart(agent: Agent) -> None:
    await agent.apply(spec("web", delay=5.0))
    first = agent.current("web").id
    agent.executor.exit(first, 1)
    await agent.advance(2.0)
    await agent.apply(spec("web", delay=5.0), shutdown=("web",))
    await agent.advance(20.0)
    view = agent.current("web")
    assert view.id == first and view.desired_state == S.SHUTDOWN and view.restarts == 0


# ----------------------------------------------------------------------------- history


async def test_history_keeps_the_last_five_and_deletes_older_ones(agent: Agent) -> None:
    agent.executor.exit_after_start("job", 0)
    await agent.apply(spec("job", delay=1.0))
    ids = [agent.current("job").id]
    for _ in range(8):
        await agent.advance(1.0)
        ids.append(agent.current("job").id)
    assert len(set(ids)) == 9
    history = agent.history("job")
    assert [h.id for h in history] == ids[-2:-7:-1]  # newest first
    assert all(h.desired_state == S.SHUTDOWN and h.state == S.COMPLETE for h in history)
    kept = set(ids[-6:])
    assert set(agent.executor.containers) == kept
    assert agent.store.task_ids() == kept
    for dropped in ids[:3]:
        assert agent.executor.calls[(dropped, "remove")] == 1
    assert agent.current("job").restarts == 8


# ------------------------------------------------------------------------------- views


async def test_views_are_sorted_with_current_first_and_history_newest_first(
    agent: Agent,
) -> None:
    await agent.apply(spec("b"), spec("a", delay=1.0))
    a1 = agent.current("a").id
    agent.executor.exit(a1, 1)
    await agent.advance(1.0)
    a2 = agent.current("a").id
    agent.executor.exit(a2, 1)
    await agent.advance(2.0)
    a3 = agent.current("a").id
    views = agent.manager.views()
    assert [(v.name, v.id, v.current) for v in views] == [
        ("a", a3, True),
        ("a", a2, False),
        ("a", a1, False),
        ("b", agent.current("b").id, True),
    ]
    assert [v.restarts for v in views] == [2, 2, 2, 0]
    assert agent.manager.restarts() == {"a": 2, "b": 0}
    assert views[1].state == S.FAILED and views[1].exit_code == 1
    assert views[0].to_json()["state"] == "running"


async def test_views_from_read_only_store_equal_views(agent: Agent) -> None:
    await agent.apply(spec("b"), spec("a", delay=1.0), spec("c"), shutdown=("c",))
    agent.executor.exit(agent.current("a").id, 1)
    await agent.advance(1.0)
    expected = agent.manager.views()
    ro = RocksStore.open(agent.state_dir, read_only=True)
    try:
        assert views_from_store(ro) == expected
    finally:
        ro.close()
    await agent.stop()
    ro = RocksStore.open(agent.state_dir, read_only=True)
    try:
        assert views_from_store(ro) == expected
    finally:
        ro.close()
    await agent.start()  # for the fixture's teardown


# ---------------------------------------------------------------------- agent restarts


async def test_agent_restart_changes_nothing(agent: Agent) -> None:
    await agent.apply(spec("web", memory=64 << 20), spec("job", delay=1.0), spec("off"))
    agent.executor.exit(agent.current("job").id, 0)
    await agent.advance(1.0)
    await agent.apply(
        spec("web", memory=96 << 20), spec("job", delay=1.0), spec("off"), shutdown=("off",)
    )
    before = agent.manager.views()
    calls = Counter(agent.executor.calls)
    containers = {tid: c.id for tid, c in agent.executor.containers.items()}
    await agent.stop()

    await agent.start()
    await agent.advance(30.0, step=5.0)
    assert agent.manager.views() == before
    assert {tid: c.id for tid, c in agent.executor.containers.items()} == containers
    for op in ("prepare", "start", "update", "shutdown", "remove"):
        assert {k: n for k, n in agent.executor.calls.items() if k[1] == op} == {
            k: n for k, n in calls.items() if k[1] == op
        }, op
    assert agent.manager.restarts() == {"job": 1, "off": 0, "web": 0}


async def test_pending_restart_survives_agent_restart_on_its_wall_clock_deadline(
    agent: Agent,
) -> None:
    await agent.apply(spec("web", delay=10.0))
    first = agent.current("web").id
    agent.executor.exit(first, 1)
    await agent.advance(4.0)
    await agent.stop()
    await agent.start()
    await agent.advance(5.5)
    assert agent.current("web").id == first
    await agent.advance(0.5)
    assert agent.current("web").id != first
    assert agent.current("web").restarts == 1


async def test_host_reboot_failures_get_the_restart_policy(agent: Agent) -> None:
    await agent.apply(spec("web", condition="on-failure", delay=2.0), spec("job", condition="none"))
    web, job = agent.current("web").id, agent.current("job").id
    await agent.stop()
    # What the agent does at boot, before the worker starts: the containers died with the host.
    for tid in (web, job):
        agent.executor.containers.pop(tid)
        agent.store = RocksStore.open(agent.state_dir)
        status = agent.store.get_status(tid)
        assert status is not None
        agent.store.put_status(
            tid,
            TaskStatus(
                S.FAILED, agent.clock.time(), "host rebooted", container_id=status.container_id
            ),
        )
        agent.store.close()
    await agent.start()
    assert agent.current("web").message == "host rebooted"
    await agent.advance(2.0)
    assert agent.current("web").id != web and agent.current("web").state == S.RUNNING
    assert agent.current("job").id == job and agent.current("job").state == S.FAILED


async def test_status_replays_change_nothing(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0), spec("job", condition="none"))
    agent.executor.exit(agent.current("job").id, 1)
    await agent.settle()
    before, n = agent.manager.views(), agent.assignments
    for _ in range(3):
        agent.worker.listen(agent.manager.on_status)
        await agent.settle()
    assert agent.manager.views() == before
    assert agent.assignments == n


async def test_crash_while_old_instance_stops_resumes_the_replacement(agent: Agent) -> None:
    await agent.apply(spec("web"))
    old = agent.current("web").id
    agent.executor.delay("shutdown", 100.0, name="web")  # step 1 hangs
    await agent.apply(spec("web", image="localhost/busybox:v2"))
    assert agent.current("web").desired_state == S.SHUTDOWN
    await agent.stop()  # "kill -9" between the steps: the old container still runs
    assert agent.container(old) == "running"

    agent.executor.delay("shutdown", 0.0, name="web")
    await agent.start()
    await agent.advance(1.0)
    new = agent.current("web")
    assert new.id != old and new.state == S.RUNNING
    assert agent.store.get_task(new.id).spec.image == "localhost/busybox:v2"
    assert [h.id for h in agent.history("web")] == [old]
    assert agent.container(old) == "exited"
    assert len(agent.executor.running()) == 1


async def test_crash_before_step_one_was_assigned_resumes_the_replacement(agent: Agent) -> None:
    await agent.apply(spec("web"))
    old = agent.current("web").id
    agent.crash_next_assign = True
    with pytest.raises(Crash):
        await agent.manager.set_desired(desired(spec("web", image="localhost/busybox:v2")))
    await agent.settle()
    assert agent.container(old) == "running"  # the worker never heard of step 1
    await agent.stop()

    await agent.start()
    new = agent.current("web")
    assert new.id != old and new.state == S.RUNNING
    assert agent.store.get_task(new.id).spec.image == "localhost/busybox:v2"
    assert agent.container(old) == "exited"
    assert len(agent.executor.running()) == 1


async def test_crash_after_step_two_was_stored_assigns_the_new_instance(agent: Agent) -> None:
    await agent.apply(spec("web"))
    old = agent.current("web").id
    agent.executor.delay("shutdown", 2.0, name="web")
    await agent.apply(spec("web", image="localhost/busybox:v2"))
    agent.crash_next_assign = True  # the swap is stored, then its assignment "crashes"
    await agent.advance(2.0)
    assert old in agent.store and len(agent.store.task_ids()) == 2  # old, and the prepared one
    assert agent.executor.containers[old].state == "exited"
    await agent.stop()

    await agent.start()
    new = agent.current("web")
    assert new.id != old and new.state == S.RUNNING
    assert [h.id for h in agent.history("web")] == [old]


async def test_a_failed_round_is_retried(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0))
    first = agent.current("web").id
    agent.executor.exit(first, 1)
    await agent.settle()
    agent.crash_next_assign = True  # the restart's assignment fails once
    await agent.advance(1.0)
    assert agent.current("web").id != first  # decided and stored...
    assert first in agent.store and len(agent.store.task_ids()) == 1  # ...not yet assigned
    await agent.advance(1.0)
    assert agent.current("web").state == S.RUNNING
    assert len(agent.store.task_ids()) == 2


async def test_simultaneous_restarts_share_one_assignment(agent: Agent) -> None:
    names = [f"t{i}" for i in range(10)]
    await agent.apply(*(spec(n, delay=2.0) for n in names))
    old = {n: agent.current(n).id for n in names}
    n = agent.assignments
    for name in names:
        agent.executor.exit(old[name], 1)
    await agent.settle()
    assert agent.assignments == n  # an end alone assigns nothing
    await agent.advance(2.0)
    assert all(agent.current(name).id != old[name] for name in names)
    assert agent.assignments == n + 1

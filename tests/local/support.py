"""The local manager's test world: a store, the real Worker and a ``LocalManager`` on the fake
runtime and a fake clock, wired as the agent wires them (``Agent``), and the builders the local
manager's tests share (``spec``, ``desired``). ``Agent.settle`` checks the invariant "at most one
running container per name" every time; the ``agent`` fixture is in ``tests/local/conftest.py``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from reconciler.core.clock import FakeClock, settle
from reconciler.core.model import Assignment, Resources, RestartPolicy, TaskSpec, TaskState
from reconciler.core.session import DesiredTask
from reconciler.core.snapshot import TaskView
from reconciler.core.worker import Worker
from reconciler.local.manager import LocalManager
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

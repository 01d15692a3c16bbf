"""An in-memory executor: real code for tests and benchmarks, no container runtime needed.

``FakeExecutor`` keeps a dict of fake containers and hands out ``FakeController``s that behave
like the podman controller at the level the core can see: "already prepared" and "already
started" errors, waits that end when the container exits, idempotent stop and remove. Outcomes
are scriptable per task name and operation:

* ``fail(op, error, name=..., times=n)``: the next ``n`` calls of ``op`` raise ``error``;
* ``delay(op, seconds, name=...)``: calls of ``op`` first sleep on the injected clock;
* ``exit_after_start(name, code)``: the container exits with ``code`` as soon as it starts;
* ``exit(task_id, code)``: a running container exits now (as if killed behind our back);
* ``vanish(task_id)``: the container disappears (removed behind our back);
* ``set_usage(task_id, ...)``: what ``usage()`` reports for a running container;
* ``oom_kill(task_id, main=...)``: the kernel kills a process of the container for memory; the
  ``observer`` hears of it, and with ``main`` the container exits with 137.

It counts every call in ``calls[(task_id, op)]`` so tests can assert that a path made exactly
the calls it should, e.g. that a resumed running task was never prepared or started again.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from reconciler.clock import Clock, SystemClock
from reconciler.errors import (
    ContainerGone,
    ExitError,
    PermanentError,
    TaskPrepared,
    TaskStarted,
    TemporaryError,
)
from reconciler.executor import (
    ContainerStatus,
    NullObserver,
    RuntimeContainer,
    RuntimeObserver,
    RuntimeUsage,
    Supervise,
    TaskUsage,
)
from reconciler.model import NodeDescription, Task, spec_hash

OPS = ("prepare", "start", "wait", "update", "shutdown", "terminate", "remove", "resolve")


@dataclass
class FakeContainer:
    id: str
    task_id: str
    name: str
    state: str = "created"  # created | running | exited
    exit_code: int | None = None
    pid: int | None = None
    memory: int | None = None
    spec_hash: str | None = None
    created: float = 0.0
    started: bool = False
    oom_killed: bool = False
    exited: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Script:
    error: BaseException
    times: int


class FakeExecutor:
    """An executor whose containers live in a dict."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        node: NodeDescription | None = None,
        node_id: str = "fake-node",
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.node_id = node_id
        self.node = node or NodeDescription(
            hostname="fake",
            os="linux",
            arch="amd64",
            cpus=2,
            memory_bytes=2 * 1024**3,
            runtime_name="fake",
            runtime_version="0",
            agent_version="0",
        )
        self.containers: dict[str, FakeContainer] = {}  # by task id
        self.calls: Counter[tuple[str, str]] = Counter()
        self.removed_orphans: list[str] = []
        self.update_unsupported = False
        self.up = True
        self.observer: RuntimeObserver = NullObserver()
        self.image_store: str | None = None
        self._usage: dict[str, dict[str, float | int | None]] = {}
        self._failures: dict[tuple[str | None, str], _Script] = {}
        self._delays: dict[tuple[str | None, str], float] = {}
        self._exit_on_start: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._pids = itertools.count(1000)

    # ------------------------------------------------------------------------- scripting

    def fail(
        self, op: str, error: BaseException, *, name: str | None = None, times: int = 1
    ) -> None:
        """Make the next ``times`` calls of ``op`` (for task ``name``, or any) raise ``error``."""
        assert op in OPS, op
        self._failures[(name, op)] = _Script(error, times)

    def delay(self, op: str, seconds: float, *, name: str | None = None) -> None:
        """Make calls of ``op`` (for task ``name``, or any) sleep first on the clock."""
        assert op in OPS, op
        self._delays[(name, op)] = seconds

    def exit_after_start(self, name: str, code: int) -> None:
        """Containers of task ``name`` exit with ``code`` as soon as they start."""
        self._exit_on_start[name] = code

    def exit(self, task_id: str, code: int) -> None:
        """A running container exits now, as if killed outside the agent."""
        c = self.containers[task_id]
        c.state, c.exit_code, c.pid = "exited", code, None
        c.exited.set()

    def vanish(self, task_id: str) -> None:
        """The container disappears, as if removed outside the agent."""
        c = self.containers.pop(task_id)
        c.exited.set()

    def set_usage(self, task_id: str, **figures: float | int | None) -> None:
        """What ``usage()`` reports for task ``task_id`` while its container runs
        (``TaskUsage`` field names: ``cpu_seconds=1.5``, ``pids=3``, ...)."""
        self._usage[task_id] = figures

    def oom_kill(self, task_id: str, *, main: bool = True) -> None:
        """The kernel kills a process of the container for memory; with ``main`` it was the
        main process, and the container exits with 137."""
        c = self.containers[task_id]
        self.observer.oom_killed(c.name.rsplit(".", 1)[0], task_id)
        if main:
            c.oom_killed = True
            self.exit(task_id, 137)

    def running(self) -> list[FakeContainer]:
        return [c for c in self.containers.values() if c.state == "running"]

    async def _call(self, task: Task, op: str) -> None:
        self.calls[(task.id, op)] += 1
        delay = self._delays.get((task.name, op), self._delays.get((None, op)))
        if delay:
            await self.clock.sleep(delay)
        for key in ((task.name, op), (None, op)):
            script = self._failures.get(key)
            if script is not None and script.times > 0:
                script.times -= 1
                raise script.error

    # --------------------------------------------------------------------------- Executor

    async def describe(self) -> NodeDescription:
        return self.node

    def controller(self, task: Task) -> FakeController:
        self.calls[(task.id, "resolve")] += 1
        for key in ((task.name, "resolve"), (None, "resolve")):
            script = self._failures.get(key)
            if script is not None and script.times > 0:
                script.times -= 1
                raise script.error
        if not task.spec.image:
            raise PermanentError("no image given")
        return FakeController(self, task)

    async def start(self, *, supervise: Supervise | None = None) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> bool:
        return self.up

    async def resync(self) -> None:
        self.calls[("*", "resync")] += 1

    async def list_containers(self) -> list[RuntimeContainer]:
        self.calls[("*", "list")] += 1
        if not self.up:
            raise TemporaryError("the fake runtime is down")
        return [
            RuntimeContainer(
                task_id=c.task_id,
                name=c.name.rsplit(".", 1)[0],
                container_id=c.id,
                spec_hash=c.spec_hash,
                running=c.state == "running",
                started=c.started,
                exit_code=c.exit_code,
                created=c.created,
            )
            for c in self.containers.values()
        ]

    async def usage(self) -> RuntimeUsage:
        self.calls[("*", "usage")] += 1
        tasks = tuple(
            TaskUsage(c.task_id, c.name.rsplit(".", 1)[0], **self._usage.get(c.task_id, {}))  # type: ignore[arg-type]
            for c in self.running()
        )
        return RuntimeUsage(tasks=tasks, image_store=self.image_store)

    async def remove_orphans(self, known_task_ids: Collection[str]) -> list[str]:
        orphans = [tid for tid in self.containers if tid not in known_task_ids]
        for tid in orphans:
            self.containers.pop(tid).exited.set()
        self.removed_orphans.extend(orphans)
        return orphans


class FakeController:
    """Drives one fake container. Mirrors the podman controller's idempotence rules."""

    def __init__(self, executor: FakeExecutor, task: Task) -> None:
        self._x = executor
        self._task = task
        self.closed = False

    def _container(self) -> FakeContainer | None:
        return self._x.containers.get(self._task.id)

    async def prepare(self) -> None:
        await self._x._call(self._task, "prepare")
        if self._container() is not None:
            raise TaskPrepared()
        cid = f"c{next(self._x._ids):08x}"
        self._x.containers[self._task.id] = FakeContainer(
            id=cid,
            task_id=self._task.id,
            name=f"{self._task.name}.{self._task.id}",
            memory=self._task.spec.resources.memory,
            spec_hash=spec_hash(self._task.spec),
            created=self._x.clock.time(),
        )

    async def start(self) -> None:
        await self._x._call(self._task, "start")
        c = self._container()
        if c is None:
            raise ContainerGone("container removed")
        if c.state == "running":
            raise TaskStarted()
        if c.state == "exited":
            c.exited = asyncio.Event()
        c.state, c.pid, c.exit_code = "running", next(self._x._pids), None
        c.started = True
        code = self._x._exit_on_start.get(self._task.name)
        if code is not None:
            self._x.exit(self._task.id, code)

    async def wait(self) -> None:
        await self._x._call(self._task, "wait")
        c = self._container()
        if c is None:
            raise ContainerGone("container removed")
        if c.state == "created":
            raise PermanentError("container is not started")
        await c.exited.wait()
        if self._container() is None:
            raise ContainerGone("container removed")
        if c.exit_code:
            if c.oom_killed:
                raise ExitError(
                    c.exit_code,
                    f"out of memory: the kernel killed the main process (exit code {c.exit_code})",
                )
            raise ExitError(c.exit_code)

    async def update(self, task: Task) -> None:
        await self._x._call(task, "update")
        c = self._container()
        if task.spec.resources != self._task.spec.resources and c is not None:
            if self._x.update_unsupported:
                raise PermanentError("resources cannot be updated in place")
            c.memory = task.spec.resources.memory
        self._task = task

    async def shutdown(self) -> None:
        await self._x._call(self._task, "shutdown")
        c = self._container()
        if c is not None and c.state == "running":
            c.state, c.exit_code, c.pid = "exited", 0, None
            c.exited.set()

    async def terminate(self) -> None:
        await self._x._call(self._task, "terminate")
        c = self._container()
        if c is not None and c.state == "running":
            c.state, c.exit_code, c.pid = "exited", 137, None
            c.exited.set()

    async def remove(self) -> None:
        await self._x._call(self._task, "remove")
        c = self._x.containers.pop(self._task.id, None)
        if c is not None:
            c.exited.set()

    async def close(self) -> None:
        self.closed = True

    def container_status(self) -> ContainerStatus:
        c = self._container()
        if c is None:
            return ContainerStatus()
        return ContainerStatus(container_id=c.id, pid=c.pid, exit_code=c.exit_code)

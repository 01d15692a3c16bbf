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
  ``observer`` hears of it, and with ``main`` the container exits with 137;
* ``health(name, healthy_after=...)``: containers of a task with a health check become healthy
  that many seconds (on the clock) after they start, or never (None): then ``start`` fails
  with a health message after ``startPeriod + interval x retries``, as podman's verdict would.
  Without a script, a checked container is healthy at once;
* images: every image counts as present and pullable until ``add_image`` is first called;
  from then on only added images exist, locally and/or in the fake registry
  (``registry_up`` turns it off), and ``set_disk`` gives the image store a size, so that
  pulls are refused under ``image_gc_threshold`` and images take space until removed.

Prepares go through the same pull policy as podman's (``reconciler.core.pulls``), counted through
``observer``; a rollback is created from the image of the container it names.

It counts every call in ``calls[(task_id, op)]`` so tests can assert that a path made exactly
the calls it should, e.g. that a resumed running task was never prepared or started again.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from reconciler.core.clock import Clock, SystemClock
from reconciler.core.codec import spec_hash
from reconciler.core.errors import (
    ContainerGone,
    ExitError,
    PermanentError,
    TaskPrepared,
    TaskStarted,
    TemporaryError,
)
from reconciler.core.executor import (
    ContainerStatus,
    DiskSpace,
    NullObserver,
    RuntimeContainer,
    RuntimeImage,
    RuntimeObserver,
    RuntimeUsage,
    Supervise,
    TaskUsage,
)
from reconciler.core.model import NodeDescription, Task, TaskSpec
from reconciler.core.pulls import ImageAbsent, PullResult, prepare_image, pull_refusal

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
    spec: TaskSpec | None = None  # its hash, podman's label, is worked out when listed
    created: float = 0.0
    started: bool = False
    oom_killed: bool = False
    image_id: str = ""
    image_ref: str = ""
    rolled_back_from: str | None = None
    healthy_at: float | None = None  # clock time it is healthy from; None: never
    unhealthy_at: float | None = None  # clock time podman's verdict would say unhealthy
    # Whether its process ended (or it is gone), and who waits for that: a flag and, only
    # while someone waits, their futures, so an idle fake container holds no Event.
    ended: bool = False
    _waiters: list[asyncio.Future[None]] | None = field(default=None, repr=False)

    def end(self) -> None:
        """Its process ended or it is gone: wake every ``wait_ended`` now and from now on."""
        self.ended = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def wait_ended(self) -> asyncio.Future[None]:
        """A future done once ``end()`` was called (already done if it was). Each caller gets
        its own, so cancelling one wait leaves the others alone."""
        waiter = asyncio.get_running_loop().create_future()
        if self.ended:
            waiter.set_result(None)
            return waiter
        # Drop the futures of waits cancelled since (an update cancels the step waiting).
        self._waiters = [w for w in self._waiters or () if not w.done()]
        self._waiters.append(waiter)
        return waiter


@dataclass
class FakeImage:
    id: str
    names: list[str]
    size: int


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
        self.image_gc_threshold = 15.0
        self.registry_up = True
        self.strict_images = False  # set by add_image: only added images exist
        self.images: dict[str, FakeImage] = {}  # the local store, by id
        self.registry: dict[str, FakeImage] = {}  # what a pull of a reference brings
        self.disk: tuple[int, int] | None = None  # (size, bytes used by other things)
        self.pulled: dict[str, str] = {}  # image id -> reference, since the last resync
        self._health: dict[str, float | None] = {}
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
        c.end()

    def vanish(self, task_id: str) -> None:
        """The container disappears, as if removed outside the agent."""
        c = self.containers.pop(task_id)
        c.end()

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

    def health(self, name: str, *, healthy_after: float | None) -> None:
        """Containers of task ``name`` turn healthy ``healthy_after`` seconds after they start
        (None: never healthy)."""
        self._health[name] = healthy_after

    def add_image(
        self, ref: str, *, size: int = 1_000_000, local: bool = True, registry: bool = True
    ) -> str:
        """An image named ``ref``: in the local store and/or the registry. Returns its id."""
        self.strict_images = True
        image = FakeImage(f"{next(self._ids):064x}", [ref], size)
        if local:
            for other in self.images.values():  # the name moves to the new image
                if ref in other.names:
                    other.names.remove(ref)
            self.images[image.id] = image
        if registry:
            self.registry[ref] = FakeImage(image.id, [ref], size)
        return image.id

    def set_disk(self, size: int, *, other: int = 0) -> None:
        """The image store's filesystem: ``size`` bytes, ``other`` of them used by files that
        are not images."""
        self.disk = (size, other)

    def image_named(self, ref: str) -> FakeImage | None:
        for image in self.images.values():
            if ref in image.names or image.id == ref:
                return image
        return None

    def running(self) -> list[FakeContainer]:
        return [c for c in self.containers.values() if c.state == "running"]

    async def _call(self, task: Task, op: str) -> None:
        self.calls[(task.id, op)] += 1
        if self._delays:
            delay = self._delays.get((task.name, op), self._delays.get((None, op)))
            if delay:
                await self.clock.sleep(delay)
        if not self._failures:
            return  # nothing scripted: the common case, kept cheap for bench core
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
        self.pulled = {}

    async def list_containers(self) -> list[RuntimeContainer]:
        self.calls[("*", "list")] += 1
        if not self.up:
            raise TemporaryError("the fake runtime is down")
        return [
            RuntimeContainer(
                task_id=c.task_id,
                name=c.name.rsplit(".", 1)[0],
                container_id=c.id,
                spec_hash=spec_hash(c.spec) if c.spec is not None else None,
                running=c.state == "running",
                started=c.started,
                exit_code=c.exit_code,
                created=c.created,
                rolled_back_from=c.rolled_back_from,
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
            self.containers.pop(tid).end()
        self.removed_orphans.extend(orphans)
        return orphans

    # ---------------------------------------------------------------------------- images

    def used_images(self) -> dict[str, str]:
        used = {c.image_id: c.image_ref for c in self.containers.values() if c.image_id}
        return {**used, **self.pulled}

    async def list_images(self) -> list[RuntimeImage]:
        self.calls[("*", "list_images")] += 1
        if not self.up:
            raise TemporaryError("the fake runtime is down")
        users = Counter(c.image_id for c in self.containers.values())
        return [
            RuntimeImage(i.id, tuple(i.names), i.size, users[i.id]) for i in self.images.values()
        ]

    async def remove_image(self, ref: str) -> bool:
        self.calls[("*", "remove_image")] += 1
        image = self.image_named(ref)
        if image is None:
            return False
        if ref in image.names and len(image.names) > 1:
            image.names.remove(ref)
            return False
        if any(c.image_id == image.id for c in self.containers.values()):
            return False
        del self.images[image.id]
        return True

    async def image_store_space(self) -> DiskSpace | None:
        if self.disk is None:
            return None
        size, other = self.disk
        used = other + sum(i.size for i in self.images.values())
        return DiskSpace(max(0, size - used), size)

    async def _refusal(self) -> str | None:
        if self.image_gc_threshold <= 0:
            return None
        return pull_refusal(await self.image_store_space(), self.image_gc_threshold)

    async def _pull(self, ref: str) -> None:
        if not self.registry_up:
            raise TemporaryError(f"pulling image {ref} failed: the registry cannot be reached")
        found = self.registry.get(ref)
        if found is None:
            if self.strict_images:
                raise TemporaryError(f"pulling image {ref} failed: manifest unknown")
            found = FakeImage(f"{next(self._ids):064x}", [ref], 0)
        for other in self.images.values():
            if ref in other.names and other.id != found.id:
                other.names.remove(ref)
        have = self.images.get(found.id)
        if have is None:
            self.images[found.id] = FakeImage(found.id, [ref], found.size)
        elif ref not in have.names:
            have.names.append(ref)
        self.pulled[found.id] = ref

    def _local(self, ref: str) -> FakeImage:
        """The local image ``ref`` names. Raises ``ImageAbsent``."""
        image = self.image_named(ref)
        if image is not None:
            return image
        if not self.strict_images:
            image = FakeImage(f"{next(self._ids):064x}", [ref], 0)
            self.images[image.id] = image
            return image
        raise ImageAbsent(f"image {ref} is not present")


class FakeController:
    """Drives one fake container. Mirrors the podman controller's idempotence rules."""

    def __init__(self, executor: FakeExecutor, task: Task) -> None:
        self._x = executor
        self._task = task
        self.closed = False

    def _container(self) -> FakeContainer | None:
        return self._x.containers.get(self._task.id)

    async def prepare(self) -> str | None:
        await self._x._call(self._task, "prepare")
        if self._container() is not None:
            raise TaskPrepared()
        spec = self._task.spec
        rollback = self._task.rollback
        note = None
        if rollback is not None:
            pinned = next(
                (c for c in self._x.containers.values() if c.name == rollback.image_from), None
            )
            if pinned is not None and pinned.image_id in self._x.images:
                self._create(self._x.images[pinned.image_id], pinned.image_id)
                self._x.observer.image_pulled(PullResult.PRESENT)
                return None
            note = f"rollback not pinned: container {rollback.image_from} is gone"

        async def create() -> None:
            self._create(self._x._local(spec.image), spec.image)

        async def pull() -> None:
            await self._x._pull(spec.image)

        pulled = await prepare_image(
            spec.image,
            spec.pull,
            create=create,
            pull=pull,
            refusal=self._x._refusal,
            observe=self._x.observer.image_pulled,
        )
        return "; ".join(n for n in (note, pulled) if n) or None

    def _create(self, image: FakeImage, ref: str) -> None:
        cid = f"c{next(self._x._ids):08x}"
        rollback = self._task.rollback
        self._x.containers[self._task.id] = FakeContainer(
            id=cid,
            task_id=self._task.id,
            name=f"{self._task.name}.{self._task.id}",
            memory=self._task.spec.resources.memory,
            spec=self._task.spec,
            created=self._x.clock.time(),
            image_id=image.id,
            image_ref=ref,
            rolled_back_from=rollback.failed_hash if rollback is not None else None,
        )

    async def start(self) -> None:
        await self._x._call(self._task, "start")
        c = self._container()
        if c is None:
            raise ContainerGone("container removed")
        if c.state == "running":
            await self._until_healthy(c)
            raise TaskStarted()
        if c.state == "exited":
            c.ended = False
        c.state, c.pid, c.exit_code = "running", next(self._x._pids), None
        c.started = True
        code = self._x._exit_on_start.get(self._task.name)
        if code is not None:
            self._x.exit(self._task.id, code)
            return
        hc = self._task.spec.healthcheck
        if _checked(self._task.spec) and hc is not None:
            now = self._x.clock.time()
            after = self._x._health.get(self._task.name, 0.0)
            c.healthy_at = now + after if after is not None else None
            c.unhealthy_at = now + hc.start_period + hc.interval * max(1, hc.retries)
            await self._until_healthy(c)

    async def _until_healthy(self, c: FakeContainer) -> None:
        """Wait on the clock until the container is healthy; fail it if it never is."""
        if c.healthy_at is None and c.unhealthy_at is None:
            return
        clock = self._x.clock
        while c.state == "running":
            now = clock.time()
            if c.healthy_at is not None and now >= c.healthy_at:
                return
            if c.unhealthy_at is not None and now >= c.unhealthy_at:
                self._x.exit(c.task_id, 1)
                raise ExitError(1, "health check failed: unhealthy; container stopped")
            deadline = min(t for t in (c.healthy_at, c.unhealthy_at) if t is not None)
            await clock.sleep(deadline - now)

    async def wait(self) -> None:
        await self._x._call(self._task, "wait")
        c = self._container()
        if c is None:
            raise ContainerGone("container removed")
        if c.state == "created":
            raise PermanentError("container is not started")
        await c.wait_ended()
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
            c.end()

    async def terminate(self) -> None:
        await self._x._call(self._task, "terminate")
        c = self._container()
        if c is not None and c.state == "running":
            c.state, c.exit_code, c.pid = "exited", 137, None
            c.end()

    async def remove(self) -> None:
        await self._x._call(self._task, "remove")
        c = self._x.containers.pop(self._task.id, None)
        if c is not None:
            c.end()

    async def close(self) -> None:
        self.closed = True

    def container_status(self) -> ContainerStatus:
        c = self._container()
        if c is None:
            return ContainerStatus()
        return ContainerStatus(container_id=c.id, pid=c.pid, exit_code=c.exit_code)


def _checked(spec: TaskSpec) -> bool:
    hc = spec.healthcheck
    return hc is not None and bool(hc.test) and hc.test[0] != "NONE"

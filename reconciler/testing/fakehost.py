"""The fake runtime's world: its containers, images, registry and disk, and how a test
scripts them.

``FakeHost`` is what a container runtime would hold on a real host, kept in dicts: containers
(``FakeContainer``) by task id, the local image store and a fake registry (``FakeImage``), the
image store's disk. The executor port over it is ``FakeExecutor`` (``reconciler.testing.fake``),
a ``FakeHost`` itself, so that a test scripts and inspects the same object it hands the agent;
each instance's container is driven by a ``FakeController``
(``reconciler.testing.fakecontroller``). Outcomes are scriptable per task name and operation:

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

It counts every call in ``calls[(task_id, op)]`` so tests can assert that a path made exactly
the calls it should, e.g. that a resumed running task was never prepared or started again.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass, field

from reconciler.core.clock import Clock, SystemClock
from reconciler.core.errors import TemporaryError
from reconciler.core.executor import DiskSpace, NullObserver, RuntimeObserver
from reconciler.core.model import NodeDescription, Task, TaskSpec
from reconciler.core.pulls import ImageAbsent, pull_refusal

__all__ = ["OPS", "FakeContainer", "FakeHost", "FakeImage"]

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


class FakeHost:
    """Containers, images, a registry and a disk in dicts, and their scripts; see the module
    docstring."""

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

    # ---------------------------------------------------------------------------- images

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

"""One fake container driven through the controller port, by the podman controller's rules.

``FakeController`` is what ``FakeExecutor.controller(task)`` (``reconciler.testing.fake``)
hands the core for one task instance. It mirrors the podman controller's idempotence: a second
prepare says "already prepared", a second start "already started" (after the health wait), a
wait ends when the container exits and says how, stop and remove may be repeated. Prepare
applies the same pull policy as podman's (``reconciler.core.pulls``); a rollback is created from
the image of the container it names. It reads and changes its ``FakeHost``
(``reconciler.testing.fakehost``), the host's scripts included: the two are one fake, split
between the world and one container's view of it.
"""

from __future__ import annotations

from reconciler.core.errors import (
    ContainerGone,
    ExitError,
    PermanentError,
    TaskPrepared,
    TaskStarted,
)
from reconciler.core.executor import ContainerStatus
from reconciler.core.model import Task, TaskSpec
from reconciler.core.pulls import PullResult, prepare_image
from reconciler.testing.fakehost import FakeContainer, FakeHost, FakeImage

__all__ = ["FakeController"]


class FakeController:
    """Drives one fake container. Mirrors the podman controller's idempotence rules."""

    def __init__(self, host: FakeHost, task: Task) -> None:
        self._x = host
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

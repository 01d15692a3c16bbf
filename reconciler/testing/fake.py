"""An in-memory executor: real code for tests and benchmarks, no container runtime needed.

``FakeExecutor`` implements the core's executor port over a ``FakeHost``
(``reconciler.testing.fakehost``: the fake containers, images, registry and disk, and how a test
scripts them), and hands out ``FakeController``s (``reconciler.testing.fakecontroller``) that
behave like the podman controller at the level the core can see: "already prepared" and
"already started" errors, waits that end when the container exits, idempotent stop and
remove. Listing, usage, the orphan sweep and the image GC's calls read and change the host.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

from reconciler.core.codec import spec_hash
from reconciler.core.errors import PermanentError, TemporaryError
from reconciler.core.executor import (
    RuntimeContainer,
    RuntimeImage,
    RuntimeUsage,
    Supervise,
    TaskUsage,
)
from reconciler.core.model import NodeDescription, Task
from reconciler.testing.fakecontroller import FakeController
from reconciler.testing.fakehost import FakeHost

__all__ = ["FakeExecutor"]


class FakeExecutor(FakeHost):
    """An executor whose containers live in a dict."""

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

"""One task's podman container: the ``Controller`` that ``reconciler.core.lifecycle.do`` drives.

This module owns the steps of one task's container and keeps podman round trips to one per step
where it can; the parts that run long or judge are modules of their own: ``container`` (what is
known of the container, and the verdict on its exit), ``health`` (the health check) and
``wait`` (sleeping on events and exit files until the container ends).

* **prepare** is one ``create`` (the pull policy, ``reconciler.core.pulls``, adds a pull only
  when it must). A name conflict is resolved by one inspect: the same task id means
  ``TaskPrepared``. A rollback is pinned: one inspect of the container it rolls back to gives
  the image ID it is created from (no pull), so a tag moved to another build meanwhile cannot
  bring that build back; its container is labelled with the failed spec's hash. Without that
  container, the spec's image is used, and the status message says so.
* **start** is one ``start`` for a container this controller created and has no health check;
  an adopted container is inspected first, and one that has ever run counts as started
  (``TaskStarted``), so a restart of the agent never runs a container twice. With a health
  check, ``start`` returns only once the container is healthy (``health``); "unhealthy" stops
  the container and fails the start with the health message. A start cancelled meanwhile (an
  update) lets the check in flight finish, and a start called again resumes waiting for the
  verdict of the running container.
* **wait** is ``wait.until_exit``; **shutdown**, **terminate** and **remove** mark the
  container as the agent's own doing first, so its exit or removal is not counted as drift.
* **update** applies resource limits live and verifies them in the container's cgroup, because
  inspect on podman 4.3 does not reflect live updates; anything it cannot verify raises
  ``PermanentError`` so the instance is replaced.

Every call addresses the container by its name (``<task>.<instance id>``), which podman accepts
wherever it accepts an id; so a controller made after an agent restart needs no lookup before
its first call.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from reconciler.core.errors import (
    ContainerGone,
    PermanentError,
    ReconcilerError,
    TaskPrepared,
    TaskStarted,
    TemporaryError,
)
from reconciler.core.executor import ContainerStatus, RuntimeOp
from reconciler.core.model import Rollback, Task
from reconciler.core.pulls import PullResult, prepare_image
from runtime.podman import cgroups
from runtime.podman.container import Container, parse_timestamp_ns
from runtime.podman.errors import ImageMissing, NameConflict, NotFound
from runtime.podman.health import HealthChecks, health_status
from runtime.podman.shared import Runtime
from runtime.podman.spec import (
    TASK_ID_LABEL,
    container_name,
    cpu_limits,
    create_kwargs,
    runs_healthcheck,
)
from runtime.podman.wait import until_exit

__all__ = ["PodmanController"]

log = logging.getLogger(__name__)


class PodmanController:
    """Runs one task instance as one podman container."""

    def __init__(self, runtime: Runtime, task: Task) -> None:
        self._rt = runtime
        self._task = task
        rollback = task.rollback
        self._kwargs = create_kwargs(
            task.spec,
            task_id=task.id,
            node_id=runtime.node_id,
            rolled_back_from=rollback.failed_hash if rollback is not None else None,
        )
        self.name = container_name(task.spec, task.id)
        self._c = Container(
            runtime,
            self.name,
            container_id=task.status.container_id,
            pid=task.status.pid,
            exit_code=task.status.exit_code,
        )
        self._created_here = False  # created by this controller and not yet started
        hc = task.spec.healthcheck
        self._health = (
            HealthChecks(self._c, hc, grace=task.spec.stop_grace_period)
            if hc is not None and runs_healthcheck(task.spec)
            else None
        )

    # ------------------------------------------------------------------------ accessors

    @property
    def task(self) -> Task:
        return self._task

    @property
    def container(self) -> Container:
        """What this controller knows of its container, and the verdict on its exit."""
        return self._c

    def container_status(self) -> ContainerStatus:
        return self._c.status()

    def observe(self, listed: dict[str, Any] | None) -> None:
        """Take what a relist saw of this container (no I/O)."""
        self._c.observe(listed)

    def oom_killed(self, pid: int | None, process: str) -> None:
        """The kernel's OOM killer killed a process of this container (no I/O)."""
        self._c.oom_killed(pid, process)

    # -------------------------------------------------------------------------- prepare

    async def prepare(self) -> str | None:
        spec = self._task.spec
        rollback = self._task.rollback
        note = None
        if rollback is not None:
            pinned = await self._pinned_image(rollback)
            if pinned is not None:
                with contextlib.suppress(ImageMissing):
                    await self._create(image=pinned)
                    self._rt.observer.image_pulled(PullResult.PRESENT)
                    self._created_here = True
                    return None
            note = (
                f"rollback not pinned: container {rollback.image_from} is gone, "
                f"so its image could not be used; using {spec.image} as the spec names it"
            )
            log.warning("%s task=%s", note, self.name)
        pulled = await prepare_image(
            spec.image,
            spec.pull,
            create=self._create,
            pull=self._pull,
            refusal=self._rt.pull_refusal,
            observe=self._rt.observer.image_pulled,
        )
        self._created_here = True
        if pulled is not None:
            log.warning("%s task=%s", pulled, self.name)
        return "; ".join(n for n in (note, pulled) if n) or None

    async def _pinned_image(self, rollback: Rollback) -> str | None:
        """The image ID of the container a rollback is pinned to, or None if it is gone."""
        try:
            info = await self._rt.api.inspect(rollback.image_from)
        except NotFound:
            return None
        image = str(info.get("Image") or "")
        return image or None

    async def _create(self, image: str | None = None) -> None:
        """One create call (from ``image`` instead of the spec's when given); a name conflict
        means our container exists: adopt it."""
        kwargs = self._kwargs if image is None else {**self._kwargs, "image": image}
        try:
            self._c.cid = await self._rt.api.create(kwargs)
        except NameConflict:
            await self._adopt_existing()
            raise TaskPrepared() from None

    async def _pull(self) -> None:
        image = self._task.spec.image
        try:
            image_id = await self._rt.api.pull(image)
        except TemporaryError:
            raise
        except ReconcilerError as err:
            # A registry refusing is worth retrying too: every failed pull under missing or
            # always is temporary (docs/desired-state.md, "Images and pulls").
            raise TemporaryError(f"pulling image {image} failed: {err}") from err
        if image_id:
            self._rt.pulled(image_id, image)

    async def _adopt_existing(self) -> None:
        """The name is taken: it is ours if it carries this task's id."""
        try:
            info = await self._rt.api.inspect(self.name)
        except NotFound:
            raise TemporaryError(f"container {self.name} vanished while being created") from None
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(TASK_ID_LABEL) != self._task.id:
            raise PermanentError(
                f"container name {self.name} is taken by a container of another task"
            )
        self._c.take_inspect(info)

    # ---------------------------------------------------------------------------- start

    async def start(self) -> None:
        if not self._created_here:
            info = await self._c.inspect_or_gone()
            state = info.get("State") or {}
            if state.get("Running") or parse_timestamp_ns(state.get("StartedAt")) > 0:
                # It has run before (maybe still runs): never run it a second time. A start
                # that was cancelled while it waited for the health verdict resumes that wait.
                if state.get("Running") and self._health is not None:
                    await self._health.until_healthy(health_status(state))
                raise TaskStarted()
        self._c.stopping = False
        try:
            started = await self._rt.api.start(self.name)
        except NotFound:
            raise ContainerGone() from None
        finally:
            # Started or not: a start cancelled while podman ran it must look at the container
            # when retried, and so resume the health verdict rather than skip it.
            self._created_here = False
        self._c.started_here = started
        if not started:
            raise TaskStarted()
        if self._health is not None:
            await self._health.until_healthy("starting")

    # ----------------------------------------------------------------------------- wait

    async def wait(self) -> None:
        await until_exit(self._c, health=self._health, grace=self._task.spec.stop_grace_period)

    # -------------------------------------------------------------------- stop / remove

    async def shutdown(self) -> None:
        self._c.stopping = True
        with contextlib.suppress(NotFound):
            await self._rt.api.stop(self.name, grace=self._task.spec.stop_grace_period)

    async def terminate(self) -> None:
        self._c.stopping = True
        with contextlib.suppress(NotFound):
            await self._rt.api.kill(self.name)

    async def remove(self) -> None:
        self._c.stopping = True
        with contextlib.suppress(NotFound):
            await self._rt.api.remove(self.name)
        self._unregister()

    async def close(self) -> None:
        self._unregister()

    def _unregister(self) -> None:
        if self._rt.registry.get(self.name) is self:
            del self._rt.registry[self.name]

    # --------------------------------------------------------------------------- update

    async def update(self, task: Task) -> None:
        old = self._task.spec
        new = task.spec
        if task.id != self._task.id:
            raise PermanentError("update: a controller cannot change its task id")
        other = [f for f in new.fields_differing(old) if f not in ("resources",)]
        if other:
            raise PermanentError(
                f"cannot change {', '.join(other)} of a running container in place"
            )
        if new.resources == old.resources:
            self._task = task
            return
        body: dict[str, Any] = {}
        mem = new.resources.memory
        if mem != old.resources.memory:
            # podman creates containers with swap = 2 x memory; keep that, or raising memory
            # above the old swap limit fails under cgroup v1.
            body["memory"] = {"limit": mem, "swap": 2 * mem} if mem else {"limit": -1, "swap": -1}
        cpu = cpu_limits(new.resources.cpus)
        if new.resources.cpus != old.resources.cpus:
            period, quota = cpu if cpu is not None else (100_000, -1)
            body["cpu"] = {"period": period, "quota": quota}
        try:
            await self._rt.api.update_resources(self.name, body)
        except TemporaryError:
            raise
        except ReconcilerError as err:
            raise PermanentError(f"resources could not be changed in place: {err}") from err
        info = await self._c.inspect_or_gone()
        applied = cgroups.read_limits(str((info.get("State") or {}).get("CgroupPath") or ""))
        if applied is None:
            self._rt.observer.runtime_error(RuntimeOp.UPDATE)
            raise PermanentError("resources could not be verified in place (cgroup not readable)")
        problems = []
        if "memory" in body and not cgroups.memory_matches(applied.memory, mem):
            problems.append(f"memory is {applied.memory}, wanted {mem}")
        if "cpu" in body:
            want_quota = cpu[1] if cpu is not None else None
            if applied.cpu_quota != want_quota:
                problems.append(f"cpu quota is {applied.cpu_quota}, wanted {want_quota}")
        if problems:
            self._rt.observer.runtime_error(RuntimeOp.UPDATE)
            raise PermanentError("resources did not change in place: " + "; ".join(problems))
        self._task = task

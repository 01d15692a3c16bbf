"""The port between the agent core and a container runtime.

``Executor`` and ``Controller`` are what ``runtime/`` implements (podman for real hosts,
``reconciler.testing.fake`` for tests and benchmarks). The core drives one controller per task
through
``reconciler.core.lifecycle.do``; a controller never decides state itself, it only performs one
operation per call and reports the outcome through the error values of ``reconciler.core.errors``.

All methods are coroutines. A runtime whose client blocks (podman-py) runs it in its own bounded
thread pool, and a cancelled call lets its thread finish before re-raising ``CancelledError``.

``RuntimeObserver`` is where a runtime reports what the metrics count, in the port's own words:
``RuntimeOp``, ``DriftKind`` and ``PullResult``. They are string enums, so each value is the
metric's label value as written, and a runtime cannot name an operation the metrics do not
export.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from reconciler.core.model import NodeDescription, Task


@dataclass(frozen=True, slots=True)
class ContainerStatus:
    """What the runtime last knew of the task's container; read without any I/O."""

    container_id: str | None = None
    pid: int | None = None
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class RuntimeContainer:
    """One of this node's containers as the runtime lists it, for adoption after a store was
    created or rebuilt. ``spec_hash`` is None for a container made by an agent that did not
    label it."""

    task_id: str
    name: str  # the task name
    container_id: str
    spec_hash: str | None
    running: bool
    started: bool  # it has run at some point (created-only containers have not)
    exit_code: int | None
    created: float  # wall-clock seconds; the newest container of a name wins
    rolled_back_from: str | None = None  # a rollback's container: the spec hash that failed


@dataclass(frozen=True, slots=True)
class RuntimeImage:
    """One image in the runtime's store, as the image GC sees it."""

    id: str
    names: tuple[str, ...]  # its tags and digests ("registry/repo:tag", "repo@sha256:...")
    size: int  # bytes
    containers: int  # containers of any owner created from it (the runtime refuses to remove it)


@dataclass(frozen=True, slots=True)
class DiskSpace:
    """A filesystem's space, as ``statvfs`` gives it to unprivileged users."""

    free_bytes: int
    size_bytes: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.size_bytes if self.size_bytes > 0 else 100.0


@dataclass(frozen=True, slots=True)
class TaskUsage:
    """What one running task instance uses, read from the kernel's own accounting.

    Counters (CPU, network, block I/O) only grow while the container lives. ``None`` means the
    figure could not be read (the host lacks that accounting, or the container has no network
    namespace of its own); ``memory_limit_bytes`` is None without a limit.
    """

    task_id: str
    name: str
    cpu_seconds: float | None = None
    memory_working_set_bytes: int | None = None  # usage less inactive file cache
    memory_limit_bytes: int | None = None
    network_receive_bytes: int | None = None
    network_transmit_bytes: int | None = None
    block_read_bytes: int | None = None
    block_write_bytes: int | None = None
    pids: int | None = None


@dataclass(frozen=True, slots=True)
class RuntimeUsage:
    """One usage sample of a runtime: its running task instances, and where it keeps images
    (for the node's disk-free figure; None when unknown)."""

    tasks: tuple[TaskUsage, ...] = ()
    image_store: str | None = None


class Controller(Protocol):
    """Runs one task's container. Every method is idempotent unless it says otherwise."""

    async def prepare(self) -> str | None:
        """Create the container (pulling the image as the spec's policy says, see
        ``reconciler.core.pulls``). A rollback (``Task.rollback``) is created from the image ID of
        the container it names, without a pull.

        Returns a note for the task's status message when the outcome needs one (a local
        image used because the pull failed or was refused, a rollback that could not be
        pinned), else None. Raises ``TaskPrepared`` if the container already exists for this
        task, ``TemporaryError`` for a failure worth retrying (a failed or refused pull),
        anything else for a permanent failure.
        """

    async def start(self) -> None:
        """Start the prepared container. Raises ``TaskStarted`` if it has already run.

        A task with a health check returns only once the container is healthy (podman's
        cumulative verdict, after the check's start period and interval); an unhealthy
        verdict stops the container and raises ``ExitError`` with the health message. Called
        again after a cancellation, it resumes waiting for the verdict of the running
        container.
        """

    async def wait(self) -> None:
        """Return when the container exits with code 0.

        Raises ``ExitError`` for a nonzero exit (a failed health check ends the container and
        raises ``ExitError`` too, with a health message), ``ContainerGone`` if the container was
        removed, ``TemporaryError`` if the runtime stopped answering. Safe to call again after a
        cancellation: it re-attaches to the same container.
        """

    async def update(self, task: Task) -> None:
        """Apply an updated task (resource limits) to the existing container in place.

        Raises ``PermanentError`` when the change cannot be applied and verified; the caller
        then replaces the instance.
        """

    async def shutdown(self) -> None:
        """Stop the container gracefully: stop signal, then kill after the grace period."""

    async def terminate(self) -> None:
        """Kill the container at once."""

    async def remove(self) -> None:
        """Remove the container (never named volumes). Removing a missing container is fine."""

    async def close(self) -> None:
        """Release what the controller holds. Never stops or removes the container."""

    def container_status(self) -> ContainerStatus:
        """The last known container id, pid and exit code, without calling the runtime."""
        ...


Supervise = Callable[[str, Callable[[], Awaitable[None]]], None]
"""Hands a named long-running coroutine to a supervisor (``reconciler.core.supervisor``), which
restarts it after an unexpected error."""


class Executor(Protocol):
    """Makes controllers and describes the node."""

    async def describe(self) -> NodeDescription:
        """The node's description from the runtime. Raises ``TemporaryError`` if unreachable."""
        ...

    def controller(self, task: Task) -> Controller:
        """A controller for the task. Raises ``PermanentError`` if the spec cannot be run."""
        ...

    async def start(self, *, supervise: Supervise | None = None) -> None:
        """Begin watching the runtime (events, connection). Never fails if it is down.

        With ``supervise``, the runtime hands its long-running loops (the event stream, as
        ``events``) to it instead of running them itself."""
        ...

    async def close(self) -> None:
        """Stop watching the runtime and release threads. Containers keep running."""
        ...

    async def ping(self) -> bool:
        """Whether the runtime answers now."""
        ...

    async def resync(self) -> None:
        """Relist the node's containers once and feed what is true to the controllers, so
        that anything the event stream missed is noticed. Raises ``TemporaryError`` if the
        runtime does not answer."""
        ...

    async def list_containers(self) -> list[RuntimeContainer]:
        """This node's labelled containers, running or not, in one listing.

        Containers without reconciler's labels, or labelled for another node, are left out.
        Raises ``TemporaryError`` if the runtime does not answer."""
        ...

    async def remove_orphans(self, known_task_ids: Collection[str]) -> list[str]:
        """Remove this node's containers whose task id is not in ``known_task_ids``.

        Containers without reconciler's labels, or labelled for another node, are never
        touched. Returns the removed containers' task ids.
        """
        ...

    async def usage(self) -> RuntimeUsage:
        """What this node's running task containers use now, without calling the runtime.

        Reads what the runtime already knows (container ids and pids) and the kernel's
        accounting; a container that cannot be read (it just exited, say) is left out. Never
        raises for the runtime being down.
        """
        ...

    # ------------------------------------------------------------------------- images

    def used_images(self) -> Mapping[str, str]:
        """The images this node's containers were created from, as of the last ``resync``,
        and the images pulled since: image ID -> the reference it was used by. No I/O."""
        ...

    async def list_images(self) -> list[RuntimeImage]:
        """Every image in the runtime's store, in one listing. Raises ``TemporaryError`` if
        the runtime does not answer."""
        ...

    async def remove_image(self, ref: str) -> bool:
        """Remove one name of an image, or an untagged image by ID; the image itself goes with
        its last name. Never forced: an image a container uses keeps its last name. Returns
        whether anything was removed. Raises ``TemporaryError`` if the runtime does not
        answer."""
        ...

    async def image_store_space(self) -> DiskSpace | None:
        """The space of the filesystem holding the runtime's images (podman's graph root),
        or None when it cannot be known. May ask the runtime once for where that is; raises
        ``TemporaryError`` if it must and the runtime does not answer."""
        ...


class RuntimeOp(enum.StrEnum):
    """A runtime operation that failed, as ``RuntimeObserver.runtime_error`` names it; the value is
    the metric's ``op`` label (``reconciler_runtime_errors_total``)."""

    CREATE = "create"
    START = "start"
    STOP = "stop"
    REMOVE = "remove"
    INSPECT = "inspect"
    LIST = "list"
    EVENTS = "events"
    PULL = "pull"
    UPDATE = "update"
    HEALTHCHECK = "healthcheck"


class DriftKind(enum.StrEnum):
    """A correction of out-of-band change, as ``RuntimeObserver.drift_corrected`` names it; the
    value is the metric's ``kind`` label (``reconciler_drift_corrections_total``)."""

    CONTAINER_MISSING = "container_missing"  # the task's container was removed outside the agent
    CONTAINER_EXITED = "container_exited"  # it exited while the agent did not stop it
    ORPHAN_REMOVED = "orphan_removed"  # a labelled container of no known task was removed


class PullResult(enum.StrEnum):
    """One pull decision of a prepare (``reconciler.core.pulls``), as
    ``RuntimeObserver.image_pulled`` names it; the value is the metric's ``result`` label
    (``reconciler_image_pulls_total``)."""

    PULLED = "pulled"  # pulled from the registry
    PRESENT = "present"  # the local image, no registry contacted (missing, never, a rollback)
    FALLBACK = "fallback"  # pull: always, the pull failed or was refused: the local image
    FAILED = "failed"  # the pull failed and there is no local image
    REFUSED = "refused"  # no pull while the image store is short of space, no local image


class RuntimeObserver(Protocol):
    """Where a runtime reports what the metrics count. ``reconciler.observe.metrics`` implements
    it."""

    def runtime_error(self, op: RuntimeOp) -> None:
        """A runtime call failed."""

    def drift_corrected(self, kind: DriftKind) -> None:
        """A correction of out-of-band change."""

    def runtime_up(self, up: bool) -> None:
        """Whether the runtime answers, reported on every change."""

    def oom_killed(self, name: str, task_id: str) -> None:
        """The kernel's OOM killer killed a process of the task instance's container (its main
        process or another one), as the kernel reported it. Called once per kill, on the event
        loop."""

    def image_pulled(self, result: PullResult) -> None:
        """One pull decision of a prepare."""


class NullObserver:
    """An observer that ignores everything, for tests and tools that export no metrics."""

    def runtime_error(self, op: RuntimeOp) -> None:
        pass

    def drift_corrected(self, kind: DriftKind) -> None:
        pass

    def runtime_up(self, up: bool) -> None:
        pass

    def oom_killed(self, name: str, task_id: str) -> None:
        pass

    def image_pulled(self, result: PullResult) -> None:
        pass

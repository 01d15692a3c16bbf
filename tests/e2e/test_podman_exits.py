"""End to end: exits judged from conmon's exit files, against a real, private podman.

A ``podman kill`` is judged from the exit file (the executor's exit watch counts it), a
``podman rm -f`` still ends as "container removed", never as exit 137, and an executor that
cannot watch the exit directory judges the same kill from podman's events alone. No timing
assertions: which path judged an exit is what the exit watch counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from reconciler.core.clock import SystemClock
from reconciler.core.model import TaskState
from reconciler.testing.podman import PodmanService
from runtime.podman import PodmanExecutor
from runtime.podman.exits import ExitWatch
from tests.e2e.podman_support import (
    Driven,
    RecordingObserver,
    drive,
    make_task,
    resolved,
    until,
)

pytestmark = pytest.mark.e2e

STUBBORN = ("sh", "-c", "trap '' TERM; while :; do sleep 0.2; done")


def executor(url: str, node_id: str, observer: RecordingObserver, **kw: object) -> PodmanExecutor:
    return PodmanExecutor(
        url=url,
        node_id=node_id,
        clock=SystemClock(),
        observer=observer,
        agent_version="test",
        image_gc_threshold=15.0,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def started(
    podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> AsyncIterator[PodmanExecutor]:
    ex = executor(podman_service.url, node_id, observer)
    await ex.start()
    try:
        yield ex
    finally:
        await ex.close()


async def waiting_on(
    ex: PodmanExecutor, node_id: str, *, command: tuple[str, ...] | None = None
) -> tuple[object, str, asyncio.Task[Driven]]:
    """A running task whose ``wait`` is attached; its controller, container name, and the
    task driving it on to its end."""
    kw = {"command": command} if command else {}
    ctlr, task = resolved(make_task(node_id=node_id, **kw), ex)  # type: ignore[arg-type]
    driven = await drive(task, ctlr, until=TaskState.RUNNING)
    assert driven.task.status.state == TaskState.RUNNING
    name = f"{driven.task.spec.name}.{driven.task.id}"
    waiting = asyncio.create_task(drive(driven.task, ctlr, until=TaskState.COMPLETE))
    await until(lambda: name in ex.events.watched_names(), what="wait() attached")
    await until(lambda: bool(ex.exits.directories), what="the exit directory watched")
    return ctlr, name, waiting


async def test_a_podman_kill_is_judged_from_the_exit_file_with_its_exit_code(
    started: PodmanExecutor,
    podman_service: PodmanService,
    node_id: str,
    observer: RecordingObserver,
) -> None:
    ctlr, name, waiting = await waiting_on(started, node_id)
    directory = Path(started.exits.directories[0])
    assert await asyncio.to_thread(directory.is_dir)  # found on conmon's command line

    await asyncio.to_thread(podman_service.run, "kill", name)

    async with asyncio.timeout(60):
        result = await waiting
    st = result.task.status
    assert st.state == TaskState.FAILED
    assert st.exit_code == 137
    assert "killed outside the agent" in st.message
    assert started.exits.files_seen == started.exits.early_exits == 1  # not from the stream
    assert observer.drift["container_exited"] == 1
    await ctlr.remove()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("command", "rm"),
    [
        (None, ("rm", "--force", "--time", "0")),  # killed at once
        (STUBBORN, ("rm", "--force", "--time", "1")),  # SIGTERM ignored, then killed
    ],
)
async def test_a_podman_rm_f_still_ends_as_removed_not_as_exit_137(
    started: PodmanExecutor,
    podman_service: PodmanService,
    node_id: str,
    observer: RecordingObserver,
    command: tuple[str, ...] | None,
    rm: tuple[str, ...],
) -> None:
    _, name, waiting = await waiting_on(started, node_id, command=command)

    await asyncio.to_thread(podman_service.run, *rm, name)

    async with asyncio.timeout(60):
        result = await waiting
    st = result.task.status
    assert st.state == TaskState.FAILED
    assert st.message == "container removed"
    assert st.exit_code != 137
    assert observer.drift["container_missing"] == 1
    assert started.exits.files_seen == 1  # the exit file was seen, and not taken for a verdict
    assert started.exits.early_exits == 0


async def test_an_exit_directory_that_cannot_be_watched_leaves_the_kill_to_podmans_events(
    podman_service: PodmanService,
    node_id: str,
    observer: RecordingObserver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # conmon's command lines as seen from a /proc where they name an absent exit directory
    proc = tmp_path / "proc"

    class Unwatchable(ExitWatch):
        @contextlib.contextmanager
        def subscribe(
            self, container_id: str, conmon_pid: int, fn: Callable[[], None]
        ) -> Iterator[bool]:
            cmdline = proc / str(conmon_pid) / "cmdline"
            cmdline.parent.mkdir(parents=True, exist_ok=True)
            cmdline.write_bytes(b"/usr/bin/conmon\0--exit-dir\0" + bytes(tmp_path / "gone"))
            with super().subscribe(container_id, conmon_pid, fn) as watching:
                yield watching

    exits = Unwatchable(proc=proc)
    ex = executor(podman_service.url, node_id, observer, exit_watch=exits)
    await ex.start()
    try:
        ctlr, task = resolved(make_task(node_id=node_id), ex)
        driven = await drive(task, ctlr, until=TaskState.RUNNING)
        name = f"{driven.task.spec.name}.{driven.task.id}"
        waiting = asyncio.create_task(drive(driven.task, ctlr, until=TaskState.COMPLETE))
        await until(lambda: name in ex.events.watched_names(), what="wait() attached")
        await until(lambda: exits.degraded is not None, what="the watch given up")

        await asyncio.to_thread(podman_service.run, "kill", name)

        async with asyncio.timeout(60):
            result = await waiting
        st = result.task.status
        assert st.state == TaskState.FAILED
        assert st.exit_code == 137
        assert "killed outside the agent" in st.message  # the stream's kill event
        assert exits.early_exits == 0
        assert exits.directories == []
        assert "judged from podman's events alone" in caplog.text
        await ctlr.remove()
    finally:
        await ex.close()

"""The podman controller's health-gated start, against a real podman service.

A task with a health check reaches ``running`` only once podman's cumulative verdict is
healthy (the start waits for it), an unhealthy verdict fails the start with the health message
and stops the container, a start cancelled meanwhile resumes the wait when called again, and
the checks go on in ``wait`` once it runs. The agent's clock is a ``FakeClock`` advanced by the
test (each advance is one check interval), so nothing here waits for real intervals; podman's
own bookkeeping (the start period, the retries) is real.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

import pytest

from reconciler.core.clock import FakeClock
from reconciler.core.errors import ExitError, TaskStarted
from reconciler.core.model import HealthCheck, TaskState
from reconciler.testing.faultproxy import FaultProxy
from reconciler.testing.podman import PodmanService
from runtime.podman import PodmanExecutor
from tests.e2e.podman_support import (
    RecordingObserver,
    drive,
    make_task,
    new_executor,
    resolved,
    until,
)

pytestmark = pytest.mark.e2e

INTERVAL = 5.0
READY_FILE = ("CMD-SHELL", "echo not-yet; test -e /tmp/ok")


async def ticking(clock: FakeClock, work: Awaitable[object], *, limit: float = 60.0) -> object:
    """Await ``work`` while advancing the clock one check interval at a time (each check is a
    real podman round trip, so the real time between ticks is short but not zero)."""
    job = asyncio.ensure_future(work)
    deadline = time.monotonic() + limit
    while not job.done() and time.monotonic() < deadline:
        await clock.advance(INTERVAL)
        await asyncio.wait({job}, timeout=0.3)
    return await asyncio.wait_for(job, 30)


def running(svc: PodmanService, name: str) -> bool:
    return svc.run("inspect", "--format", "{{.State.Running}}", name).strip() == "true"


async def checked_executor(
    svc: PodmanService, node_id: str, observer: RecordingObserver
) -> tuple[PodmanExecutor, FakeClock]:
    clock = FakeClock()
    ex = new_executor(svc.url, node_id, observer, clock=clock)
    await ex.start()
    return ex, clock


async def test_a_checked_task_is_running_only_once_healthy(
    podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    ex, clock = await checked_executor(podman_service, node_id, observer)
    try:
        hc = HealthCheck(test=READY_FILE, interval=INTERVAL, timeout=5, retries=100)
        ctlr, task = resolved(make_task(node_id=node_id, healthcheck=hc), ex)
        ready = await drive(task, ctlr, until=TaskState.STARTING)
        starting = asyncio.create_task(drive(ready.task, ctlr, until=TaskState.RUNNING))
        for _ in range(3):  # checks run and fail: the start goes on waiting
            await clock.advance(INTERVAL)
            await asyncio.wait({starting}, timeout=0.5)
        assert not starting.done()
        name = f"{task.spec.name}.{task.id}"
        assert running(podman_service, name)
        podman_service.run("exec", name, "touch", "/tmp/ok")
        result = await ticking(clock, starting)
        assert isinstance(result, type(ready))
        assert result.task.status.state == TaskState.RUNNING
        await ctlr.remove()
    finally:
        await ex.close()


async def test_a_check_that_never_passes_fails_the_start_and_stops_the_container(
    podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    ex, clock = await checked_executor(podman_service, node_id, observer)
    try:
        hc = HealthCheck(
            test=("CMD-SHELL", "echo sick; exit 1"), interval=INTERVAL, timeout=5, retries=2
        )
        ctlr, task = resolved(make_task(node_id=node_id, healthcheck=hc), ex)
        ready = await drive(task, ctlr, until=TaskState.STARTING)
        result = await ticking(clock, drive(ready.task, ctlr, until=TaskState.RUNNING))
        assert isinstance(result, type(ready))
        st = result.task.status
        assert st.state == TaskState.FAILED
        assert "health check failed" in st.message
        assert "sick" in st.message
        assert not running(podman_service, f"{task.spec.name}.{task.id}")
        assert observer.drift["container_exited"] == 0  # the agent stopped it
        await ctlr.remove()
    finally:
        await ex.close()


async def test_a_cancelled_start_resumes_waiting_for_the_verdict(
    podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    ex, clock = await checked_executor(podman_service, node_id, observer)
    try:
        hc = HealthCheck(test=READY_FILE, interval=INTERVAL, timeout=5, retries=100)
        ctlr, task = resolved(make_task(node_id=node_id, healthcheck=hc), ex)
        await drive(task, ctlr, until=TaskState.READY)
        name = f"{task.spec.name}.{task.id}"
        first = asyncio.create_task(ctlr.start())
        await clock.advance(INTERVAL)
        # the container starts (a hang guard, no timing), and its verdict is still awaited
        await until(lambda: running(podman_service, name) or first.done(), what="the start")
        assert not first.done(), "the start must wait for the health verdict"
        first.cancel()  # an update cancels the step in flight
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert running(podman_service, name)

        again = asyncio.create_task(ctlr.start())  # the retried step
        await clock.advance(INTERVAL)
        await asyncio.wait({again}, timeout=0.5)
        assert not again.done(), "a retried start must not skip the health verdict"
        podman_service.run("exec", name, "touch", "/tmp/ok")
        with pytest.raises(TaskStarted):  # already started, and now healthy
            await ticking(clock, again)
        await ctlr.remove()
    finally:
        await ex.close()


async def test_checks_go_on_after_the_start_and_end_an_unhealthy_task(
    podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    ex, clock = await checked_executor(podman_service, node_id, observer)
    try:
        hc = HealthCheck(test=READY_FILE, interval=INTERVAL, timeout=5, retries=2)
        command = ("sh", "-c", "touch /tmp/ok; trap 'exit 0' TERM; while :; do sleep 0.2; done")
        ctlr, task = resolved(make_task(node_id=node_id, healthcheck=hc, command=command), ex)
        ready = await drive(task, ctlr, until=TaskState.STARTING)
        started = await ticking(clock, drive(ready.task, ctlr, until=TaskState.RUNNING))
        assert isinstance(started, type(ready))
        assert started.task.status.state == TaskState.RUNNING
        name = f"{task.spec.name}.{task.id}"
        podman_service.run("exec", name, "rm", "/tmp/ok")
        result = await ticking(clock, drive(started.task, ctlr, until=TaskState.COMPLETE))
        assert isinstance(result, type(ready))
        st = result.task.status
        assert st.state == TaskState.FAILED
        assert "health check failed" in st.message
        assert not running(podman_service, name)
        await ctlr.remove()
    finally:
        await ex.close()


async def test_an_unhealthy_start_raises_an_exit_error_with_the_output(
    podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    ex, clock = await checked_executor(podman_service, node_id, observer)
    try:
        hc = HealthCheck(
            test=("CMD-SHELL", "echo broken-probe; exit 1"),
            interval=INTERVAL,
            timeout=5,
            retries=1,
        )
        ctlr, task = resolved(make_task(node_id=node_id, healthcheck=hc), ex)
        await drive(task, ctlr, until=TaskState.READY)
        with pytest.raises(ExitError) as info:
            await ticking(clock, ctlr.start())
        assert "broken-probe" in str(info.value)
        await ctlr.remove()
    finally:
        await ex.close()


async def test_a_task_without_a_check_starts_with_one_podman_call(
    podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    base = Path(tempfile.mkdtemp(prefix="rch-", dir="/tmp"))
    try:
        with FaultProxy(podman_service.socket_path, base / "p.sock") as proxy:
            ex = new_executor(proxy.url, node_id, observer)
            await ex.start()
            try:
                ctlr, task = resolved(make_task(node_id=node_id), ex)
                await drive(task, ctlr, until=TaskState.READY)
                before = time.monotonic()
                await ctlr.start()
                calls = [r for r in proxy.requests_since(before) if "/containers/" in r.path]
                assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in calls] == [("POST", "start")]
                await ctlr.remove()
            finally:
                await ex.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)

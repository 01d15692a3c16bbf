"""End to end: the podman runtime through podman outages, made by a fault proxy in front of a real
podman service.

The executor under test talks to the proxy (``reconciler.testing.faultproxy``); the test switches
the
proxy to make podman hang (blackhole), vanish, crawl or drop connections, and checks podman's
own view through the real socket behind it. Outcomes and their order are asserted, never
timings; every wait has a generous hang guard.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.core.backoff import Backoff
from reconciler.core.clock import SystemClock
from reconciler.core.model import Assignment, Task, TaskState
from reconciler.core.worker import Worker
from reconciler.store.rocks import RocksStore
from reconciler.testing.faultproxy import FaultProxy, Mode
from reconciler.testing.podman import PodmanService
from runtime.podman import PodmanExecutor
from runtime.podman.discovery import first_answering
from runtime.podman.errors import RuntimeUnavailable
from runtime.podman.spec import NODE_LABEL
from tests.e2e.podman_support import (
    Driven,
    RecordingObserver,
    drive,
    make_task,
    new_executor,
    resolved,
    state_of,
    until,
)

pytestmark = pytest.mark.e2e

# Ignores SIGTERM: only the SIGKILL at the end of the grace period stops it.
STUBBORN = ("sh", "-c", "trap '' TERM; while :; do sleep 0.2; done")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rco-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def proxy(podman_service: PodmanService, short_dir: Path) -> Iterator[FaultProxy]:
    with FaultProxy(podman_service.socket_path, short_dir / "p.sock") as p:
        yield p


@pytest.fixture
async def proxied(
    proxy: FaultProxy, node_id: str, observer: RecordingObserver
) -> AsyncIterator[PodmanExecutor]:
    ex = new_executor(proxy.url, node_id, observer)
    await ex.start()
    try:
        await until(lambda: ex.runtime_up and ex.events.connected, what="executor connected")
        yield ex
    finally:
        await ex.close()


def cname(task: Task) -> str:
    return f"{task.spec.name}.{task.id}"


async def running(ex: PodmanExecutor, task: Task) -> tuple[object, Driven]:
    ctlr, task = resolved(task, ex)
    driven = await drive(task, ctlr, until=TaskState.RUNNING)
    assert driven.task.status.state == TaskState.RUNNING, driven.task.status
    return ctlr, driven


def inspects_of(proxy: FaultProxy, name: str, since: float) -> int:
    return sum(
        1 for r in proxy.requests_since(since) if r.path.endswith(f"/containers/{name}/json")
    )


# ------------------------------------------------------------------------------ blackhole


async def test_runtime_up_turns_0_under_a_blackhole_and_1_when_podman_answers_again(
    proxied: PodmanExecutor, proxy: FaultProxy, observer: RecordingObserver
) -> None:
    connections = proxied.events.connections
    proxy.set_mode(Mode.BLACKHOLE)
    await until(lambda: observer.up[-1] is False, what="runtime_up reported 0")
    assert not proxied.runtime_up
    assert not proxied.events.connected  # the hung stream was dropped, not left to hang
    assert await proxied.ping() is False
    with pytest.raises(RuntimeUnavailable, match="not answering"):
        await proxied.api.inspect("anything")  # at once, without waiting on the socket

    proxy.set_mode(Mode.PASS)
    await until(lambda: observer.up[-1] is True, what="runtime_up reported 1")
    await until(lambda: proxied.events.connected, what="the event stream reconnected")
    assert proxied.events.connections > connections
    assert observer.up[-2:] == [False, True]
    assert await proxied.ping() is True


async def test_a_container_killed_during_a_blackhole_is_judged_after_the_outage(
    proxied: PodmanExecutor,
    proxy: FaultProxy,
    podman_service: PodmanService,
    node_id: str,
    observer: RecordingObserver,
) -> None:
    ctlr, driven = await running(proxied, make_task(node_id=node_id))
    name = cname(driven.task)
    out = Driven(driven.task)
    waiting = asyncio.create_task(drive(driven.task, ctlr, until=TaskState.COMPLETE, out=out))  # type: ignore[arg-type]
    await until(lambda: name in proxied.events.watched_names(), what="wait() attached")

    proxy.set_mode(Mode.BLACKHOLE)
    await until(lambda: observer.up[-1] is False, what="runtime_up reported 0")
    await until(lambda: len(out.retries) >= 1, what="the waiter told the stream was lost")
    await asyncio.to_thread(podman_service.run, "kill", name)  # podman itself, not the proxy
    await until(lambda: state_of(podman_service, name)["Running"] is False, what="the exit")
    assert not waiting.done()  # nothing can be judged while podman does not answer

    ended = proxy.set_mode(Mode.PASS)
    result = await asyncio.wait_for(waiting, 60)

    assert result.task.status.state == TaskState.FAILED
    assert result.task.status.exit_code == 137
    assert inspects_of(proxy, name, ended) >= 1  # judged by an inspect after the outage
    assert observer.up[-2:] == [False, True]
    await ctlr.remove()  # type: ignore[attr-defined]


@dataclass
class RetryOnComeback(RecordingObserver):
    """The agent's rule: when the runtime comes back up, every task manager retries at once."""

    worker: Worker | None = None

    def runtime_up(self, up: bool) -> None:
        came_back = up and bool(self.up) and self.up[-1] is False
        super().runtime_up(up)
        if came_back and self.worker is not None:
            self.worker.retry_now()


async def test_a_task_due_during_an_outage_runs_once_podman_answers_again(
    proxy: FaultProxy, podman_service: PodmanService, node_id: str, short_dir: Path
) -> None:
    observer = RetryOnComeback()
    ex = new_executor(proxy.url, node_id, observer)
    store = RocksStore.open(short_dir / "state")
    # A backoff far longer than the test's hang guard: only the comeback can retry the task.
    worker = Worker(store, ex, clock=SystemClock(), backoff=Backoff(initial=600, cap=600))
    observer.worker = worker
    task = make_task(node_id=node_id)
    await ex.start()
    try:
        await until(lambda: ex.runtime_up, what="runtime up")
        proxy.set_mode(Mode.BLACKHOLE)
        await until(lambda: observer.up[-1] is False, what="runtime_up reported 0")

        await worker.assign(Assignment.complete([task]))
        mgr = worker.managers[task.id]
        await until(lambda: mgr.attempts >= 1, what="the first attempt failing")
        assert mgr.task.status.state == TaskState.PREPARING
        assert "not answering" in (mgr.task.status.err or "")

        ended = proxy.set_mode(Mode.PASS)
        await until(lambda: mgr.task.status.state == TaskState.RUNNING, what="the task running")

        creates = [r for r in proxy.requests if r.path.endswith("/containers/create")]
        assert len(creates) == 1 and creates[0].at >= ended  # created only after the outage
        assert state_of(podman_service, cname(task))["Running"] is True
        assert observer.up[-2:] == [False, True]
    finally:
        await worker.close()
        await ex.close()
        store.close()
        await asyncio.to_thread(podman_service.run, "rm", "--force", "--time", "0", cname(task))


# ----------------------------------------------------------------------------- long stops


async def test_a_long_stop_holds_no_thread_that_a_ping_or_an_inspect_needs(
    proxy: FaultProxy, podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    ex = PodmanExecutor(
        url=proxy.url,
        node_id=node_id,
        clock=SystemClock(),
        observer=observer,
        agent_version="test",
        max_workers=2,  # so one stop fills the lane for long calls
        image_gc_threshold=15.0,
    )
    await ex.start()
    try:
        await until(lambda: ex.runtime_up, what="runtime up")
        assert ex.api.slow.size == 1
        stubborn = [make_task(node_id=node_id, command=STUBBORN, grace=600) for _ in range(2)]
        started = [await running(ex, t) for t in stubborn]
        names = [cname(d.task) for _, d in started]
        # More stops than there are threads in all: a single shared pool would be full now.
        stopping = [asyncio.create_task(c.shutdown()) for c, _ in started]  # type: ignore[attr-defined]
        await until(
            lambda: (
                any(r.path.endswith(f"/containers/{names[0]}/stop") for r in proxy.requests)
                or any(r.path.endswith(f"/containers/{names[1]}/stop") for r in proxy.requests)
            ),
            what="a stop reaching podman",
        )
        assert ex.api.slow.busy == 1

        assert await asyncio.wait_for(ex.ping(), 30) is True
        for name in names:
            info = await asyncio.wait_for(ex.api.inspect(name), 30)
            assert info["State"]["Running"] or info["State"]["Status"] == "stopping"
        listed = await asyncio.wait_for(ex.api.list(labels={NODE_LABEL: node_id}), 30)
        assert sorted(str(n).lstrip("/") for c in listed for n in c["Names"]) == sorted(names)
        assert not any(s.done() for s in stopping)
        assert ex.runtime_up

        for name in names:
            await asyncio.to_thread(podman_service.run, "kill", name)
        await asyncio.wait_for(asyncio.gather(*stopping), 60)
        for ctlr, _ in started:
            await ctlr.remove()  # type: ignore[attr-defined]
    finally:
        await ex.close()


# ------------------------------------------------------------------------- cut and slow


async def test_a_cut_event_stream_is_reconnected_and_waiters_reinspect(
    proxied: PodmanExecutor,
    proxy: FaultProxy,
    podman_service: PodmanService,
    node_id: str,
) -> None:
    ctlr, driven = await running(proxied, make_task(node_id=node_id))
    name = cname(driven.task)
    out = Driven(driven.task)
    waiting = asyncio.create_task(drive(driven.task, ctlr, until=TaskState.COMPLETE, out=out))  # type: ignore[arg-type]
    await until(lambda: name in proxied.events.watched_names(), what="wait() attached")
    connections = proxied.events.connections

    cut = proxy.set_mode(Mode.CUT)
    await until(lambda: len(out.retries) >= 1, what="the waiter told the stream was lost")
    await asyncio.to_thread(podman_service.run, "kill", name)  # an exit the stream cannot see
    await until(lambda: state_of(podman_service, name)["Running"] is False, what="the exit")
    proxy.set_mode(Mode.PASS)

    result = await asyncio.wait_for(waiting, 60)
    assert result.task.status.state == TaskState.FAILED
    assert result.task.status.exit_code == 137
    assert proxied.events.connections > connections
    assert inspects_of(proxy, name, cut) >= 1  # the waiter re-inspected after the cut
    await ctlr.remove()  # type: ignore[attr-defined]


async def test_a_slow_podman_still_runs_and_judges_tasks(
    proxy: FaultProxy, podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> None:
    proxy.delay = 0.05
    proxy.set_mode(Mode.SLOW)
    ex = new_executor(proxy.url, node_id, observer)
    await ex.start()
    try:
        ctlr, driven = await running(ex, make_task(node_id=node_id))
        name = cname(driven.task)
        waiting = asyncio.create_task(drive(driven.task, ctlr, until=TaskState.COMPLETE))  # type: ignore[arg-type]
        await until(lambda: name in ex.events.watched_names(), what="wait() attached")
        await asyncio.to_thread(podman_service.run, "kill", name)
        result = await asyncio.wait_for(waiting, 60)
        assert result.task.status.exit_code == 137
        assert "killed outside the agent" in result.task.status.message  # seen on the stream
        assert False not in observer.up  # slow is not down
        await ctlr.remove()  # type: ignore[attr-defined]
    finally:
        await ex.close()


# ------------------------------------------------------------------------------ discovery


async def test_discovery_finds_a_socket_that_appears_after_start(
    podman_service: PodmanService, node_id: str, observer: RecordingObserver, short_dir: Path
) -> None:
    missing = f"unix://{short_dir}/gone.sock"
    later = short_dir / "later.sock"
    candidates = [missing, f"unix://{later}"]
    ex = PodmanExecutor(
        url=missing,
        node_id=node_id,
        clock=SystemClock(),
        observer=observer,
        agent_version="test",
        discover=lambda: first_answering(candidates, timeout=1.0),
        image_gc_threshold=15.0,
    )
    await ex.start()
    try:
        await until(lambda: observer.up[-1:] == [False], what="runtime_up reported 0")
        with FaultProxy(podman_service.socket_path, later):
            await until(lambda: ex.runtime_up and ex.events.connected, what="podman found")
            assert ex.url == f"unix://{later}"
            ctlr, _ = await running(ex, make_task(node_id=node_id))
            await ctlr.remove()  # type: ignore[attr-defined]
    finally:
        await ex.close()

"""The process runner with a real agent and a real manager: the routes it serves, health and
readiness from the program's supervisor, signals, shutdown, and an address already taken."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.assemble.agent import AssembledAgent, assemble_agent
from reconciler.assemble.manager import ManagerOptions, assemble_manager
from reconciler.assemble.process import CannotListen, Program, run_process
from reconciler.core.clock import SystemClock
from reconciler.core.model import TaskSpec
from reconciler.core.session import DesiredTask, DesiredTasks
from reconciler.fleet.options import NatsOptions
from reconciler.local.records import check_records
from reconciler.sessions.memory import MemorySession
from reconciler.store.recovery import open_store
from reconciler.testing.agents import agent_options
from reconciler.testing.fake import FakeExecutor
from reconciler.testing.polling import eventually


class FailingSession(MemorySession):
    """A session whose messages always fail, as a hostile input once made them."""

    async def messages(self) -> AsyncIterator[DesiredTasks]:  # type: ignore[override]
        raise RuntimeError("boom")
        yield  # pragma: no cover


async def get(
    port: int, path: str, *, method: str = "GET", host: str = "127.0.0.1"
) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class Running:
    """A program under ``run_process`` in this loop, and the port it listens on."""

    def __init__(self, program: Program, *, hosts: frozenset[str] = frozenset()) -> None:
        self.program = program
        self.stop = asyncio.Event()
        self.bound: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        listening = self.bound.set_result
        self.task = asyncio.create_task(
            run_process(program, ("127.0.0.1", 0), stop=self.stop, listening=listening, hosts=hosts)
        )

    async def port(self) -> int:
        return (await asyncio.wait_for(asyncio.shield(self.bound), 30))[1]

    async def wait_answer(self, path: str, status: int) -> bytes:
        """The body of ``path`` once it answers ``status``."""
        port = await self.port()
        answers: list[tuple[int, bytes]] = []

        async def answered() -> bool:
            answers.append(await get(port, path))
            return answers[-1][0] == status

        await eventually(answered, f"{path} answering {status}")
        return answers[-1][1]


def fake_agent(state: Path, session: MemorySession, executor: FakeExecutor) -> AssembledAgent:
    opened = open_store(state, verify=check_records)
    return assemble_agent(
        agent_options(state),
        store=opened.store,
        origin=opened.origin,
        node_id="node-a",
        clock=SystemClock(),
        runtime=lambda _: executor,
        session=session,
        boot_id="boot-1",
    )


async def test_the_agent_is_served_with_health_and_readiness_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    session, executor = MemorySession(), FakeExecutor(clock=SystemClock())
    agent = fake_agent(tmp_path, session, executor)
    run = Running(agent)
    try:
        port = await run.port()
        assert await get(port, "/healthz") == (200, b"ok")
        assert await run.wait_answer("/readyz", 503) == b"desired state has not been read yet"
        session.send(DesiredTasks(tasks=(DesiredTask(TaskSpec(name="web", image="i")),), full=True))
        assert await run.wait_answer("/readyz", 200) == b"ready"
        tasks = json.loads(await run.wait_answer("/v1/tasks", 200))
        assert [t["name"] for t in tasks] == ["web"]
        status, page = await get(port, "/")
        assert status == 200 and b"<html" in page
        status, metrics = await get(port, "/metrics")
        assert status == 200 and b"reconciler_node_ready 1.0" in metrics
        assert (await get(port, "/nope"))[0] == 404
        assert (await get(port, "/healthz", method="POST"))[0] == 405
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(run.task, 30)
    finally:
        run.stop.set()
        await asyncio.gather(run.task, return_exceptions=True)
        agent.store.close()
    assert [c.name.split(".")[0] for c in executor.running()] == ["web"]  # still running
    with pytest.raises(OSError):
        await get(port, "/healthz")  # the server is closed


async def test_a_loop_that_keeps_failing_turns_healthz_503_naming_it(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path, FailingSession(), FakeExecutor(clock=SystemClock()))
    run = Running(agent)
    try:
        why = await run.wait_answer("/healthz", 503)
        assert why == b"agent loop session is down: RuntimeError: boom"
        assert (await get(await run.port(), "/readyz"))[0] == 503
    finally:
        run.stop.set()
        await asyncio.wait_for(run.task, 30)
        agent.store.close()


async def test_an_unconnected_manager_is_alive_not_ready_and_resigns_when_stopped() -> None:
    assembled = assemble_manager(
        ManagerOptions(
            nats=NatsOptions(servers=("nats://127.0.0.1:1",)),
            listen=("127.0.0.1", 0),
            grace=15.0,
            lease=10.0,
        ),
        manager_id="m1",
    )
    run = Running(assembled)
    try:
        port = await run.port()
        assert await get(port, "/healthz") == (200, b"ok")
        status, why = await get(port, "/readyz")
        assert status == 503 and why.startswith(b"not connected to NATS")
        status, body = await get(port, "/metrics")
        assert status == 200 and b"reconciler_manager_leader 0.0" in body
        status, page = await get(port, "/")
        assert status == 200 and b"<html" in page
    finally:
        run.stop.set()
        await asyncio.wait_for(run.task, 30)
    assert assembled.supervisor.down == {}


async def test_an_address_in_use_is_refused_before_anything_runs(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    executor = FakeExecutor(clock=SystemClock())
    agent = fake_agent(tmp_path, MemorySession(), executor)
    try:
        with pytest.raises(CannotListen, match=r"cannot listen on 127\.0\.0\.1"):
            await run_process(agent, taken.getsockname())
    finally:
        taken.close()
        agent.store.close()
    assert executor.calls == {}  # the runtime was never touched

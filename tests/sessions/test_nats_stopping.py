"""An agent's fleet session asked to close ends, whatever it awaits, while NATS keeps it busy.

The agent stops its session with ``close()``, which cancels the session's loops. Python 3.11's
``asyncio.wait_for``, under every NATS reply nats-py awaits, drops a cancellation that comes
with the reply; a session that lost its cancellation that way (connecting, starting a watch)
ran on, and ``close()`` waited for it for ever (``reconciler.core.cancel``). Here sessions run
against a real nats-server under load: a flood of assignment changes for their node and a short
heartbeat period, so they are always reading, writing or reconnecting. Each round closes one at
another moment (connecting, up, in the middle of a burst), and each close must end within a
generous deadline whose expiry names where the session waits; whole agents (fake runtime) are
stopped the same way. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

from reconciler.core.clock import SystemClock
from reconciler.core.session import DesiredTasks, SessionMessage
from reconciler.fleet.options import NatsOptions
from reconciler.sessions.nats import NatsSession
from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually
from reconciler.testing.tasks import ended
from tests.fleet.support import Manager, running_agent, spec

ROUNDS = 12
TASKS = 20


async def flood(manager: Manager, stop: asyncio.Event) -> None:
    """Assignments for node-a put and deleted back to back, until ``stop`` is set (not
    cancelled: its NATS calls, nats-py's, could lose the cancellation too)."""
    n = 0
    while not stop.is_set():
        n += 1
        name = f"t{n % TASKS}"
        if n % 3:
            await manager.assign("node-a", name, spec(name, env={"N": str(n)}))
        else:
            await manager.unassign("node-a", name)


@contextlib.asynccontextmanager
async def busy_manager(server: NatsServer) -> AsyncIterator[Manager]:
    manager = await Manager.connect(server.url)
    await manager.init()
    await manager.fleet(heartbeatPeriod="100ms")
    stop = asyncio.Event()
    load = asyncio.create_task(flood(manager, stop))
    try:
        yield manager
    finally:
        stop.set()
        await ended(load, "the load")
        await manager.close()


class Consumer:
    """The agent's side of a session: it reads every message until the session ends."""

    def __init__(self, session: NatsSession) -> None:
        self.session = session
        self.messages: list[SessionMessage] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.session.messages():
            self.messages.append(message)

    def changes(self) -> int:
        return sum(1 for m in self.messages if isinstance(m, DesiredTasks) and not m.full)


async def reach(consumer: Consumer, phase: int) -> None:
    """Let the session reach a phase: 0 connecting, 1 up, 2 delivering changes."""
    if phase >= 1:
        await eventually(lambda: consumer.session.connected, "the session up")
    if phase >= 2:
        seen = consumer.changes()
        await eventually(lambda: consumer.changes() > seen, "a change delivered")


async def test_sessions_closed_at_any_moment_under_load_always_end(
    nats_server: NatsServer,
) -> None:
    rng = random.Random(20)
    async with busy_manager(nats_server):
        for i in range(ROUNDS):
            session = NatsSession(
                node_id="node-a",
                options=NatsOptions(servers=(nats_server.url,)),
                clock=SystemClock(),
                idle_heartbeat=0.5,
            )
            consumer = Consumer(session)
            try:
                await reach(consumer, i % 3)
                for _ in range(rng.randrange(50)):
                    await asyncio.sleep(0)  # a few turns of the loop: another moment each round
            finally:
                await ended(asyncio.ensure_future(session.close()), f"round {i}'s close")
                await ended(consumer.task, f"round {i}'s messages")
            assert not session.connected


async def test_agents_stopped_at_any_moment_under_load_always_end(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    # the whole agent (fake runtime): its stop closes the session after its supervised loops
    rng = random.Random(21)
    async with busy_manager(nats_server):
        for i in range(ROUNDS // 2):
            async with running_agent(tmp_path / f"state-{i}", [nats_server.url]) as r:
                if i % 3 >= 1:
                    await eventually(
                        lambda r=r: r.metric("reconciler_session_connected") == 1.0,
                        "the agent connected",
                    )
                if i % 3 == 2:
                    await eventually(lambda r=r: bool(r.states()), "the agent running tasks")
                for _ in range(rng.randrange(50)):
                    await asyncio.sleep(0)  # a few turns of the loop: another moment each round
            # leaving running_agent stopped it, within a deadline that names where it waits

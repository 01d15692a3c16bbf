"""A manager asked to stop ends, whatever it awaits, while the fleet keeps it busy.

A manager is stopped by cancelling its task (``reconciler manager run`` on SIGTERM, the harness's
``kill``). Python 3.11's ``asyncio.wait_for``, under every NATS reply nats-py awaits, drops a
cancellation that comes with the reply; a manager that lost its cancellation that way ran on
for ever (``reconciler.core.cancel``). Here managers run against a real nats-server under load:
a flood of heartbeats from many nodes, a service whose size keeps changing so the leader keeps
writing, and a lease short enough that two managers' electors are always asking NATS something.
Each round stops them at another moment (connecting, watching, leading), and each stop must end:
``ManagerProcess.kill`` cancels once and fails, naming where the manager waits, when it does not
end within a generous deadline. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import nats
from nats.aio.client import Client

from reconciler import __version__
from reconciler.core.model import Availability, NodeDescription
from reconciler.fleet.buckets import NODES
from reconciler.fleet.values import node_value
from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually
from reconciler.testing.tasks import ended
from tests.manager.harness import Fleet, ManagerProcess, service_set

ROUNDS = 12
NODE_COUNT = 40
LEASE = 0.3  # the elector renews every 0.1 s, a standby campaigns every 0.06 s
NODE = NodeDescription(
    hostname="edge",
    os="linux",
    arch="amd64",
    cpus=64,
    memory_bytes=64 << 30,
    runtime_name="fake",
    runtime_version="0",
    agent_version=__version__,
)


async def flood(nc: Client, fleet: Fleet, stop: asyncio.Event) -> None:
    """Heartbeats of ``NODE_COUNT`` ready nodes, back to back, and a resize of the service
    every few rounds of them, until ``stop`` is set (not cancelled: its NATS calls, nats-py's,
    could lose the cancellation too)."""
    kv = await nc.jetstream(timeout=10).key_value(NODES)
    rounds = 0
    while not stop.is_set():
        rounds += 1
        for n in range(NODE_COUNT):
            node_id = f"node-{n:02d}"
            value = node_value(
                node_id=node_id,
                node=NODE,
                ready=True,
                availability=Availability.ACTIVE,
                labels={},
                version=__version__,
                now=0.0,
            )
            await kv.put(node_id, value)
        if rounds % 3 == 0:
            replicas = 20 + 20 * (rounds % 2)
            await fleet.apply(service_set({"name": "web", "replicas": replicas}))


@contextlib.asynccontextmanager
async def busy_fleet(server: NatsServer) -> AsyncIterator[Fleet]:
    nc = await nats.connect(server.url)
    fleet = Fleet([server.url])
    await fleet.init(nc)
    await nc.jetstream(timeout=10).key_value(NODES)  # the buckets exist
    stop = asyncio.Event()
    load = asyncio.create_task(flood(nc, fleet, stop))
    try:
        yield fleet
    finally:
        stop.set()
        await ended(load, "the load")
        await nc.close()


async def reach(managers: list[ManagerProcess], phase: int) -> None:
    """Let the managers reach a phase of their life: 0 connecting, 1 ready, 2 one of them
    leading and writing."""
    if phase >= 1:
        await eventually(
            lambda: all(m.manager.readiness()[0] for m in managers), "the managers ready"
        )
    if phase >= 2:
        await eventually(
            lambda: any(m.manager.led_passes > 0 for m in managers), "a manager leading"
        )


async def test_managers_stopped_at_any_moment_under_load_always_end(
    nats_server: NatsServer,
) -> None:
    rng = random.Random(20)
    async with busy_fleet(nats_server):
        for i in range(ROUNDS):
            managers = [
                ManagerProcess([nats_server.url], f"m{n}-{i}", lease=LEASE, grace=2.0)
                for n in (1, 2)
            ]
            for m in managers:
                m.start()
            try:
                await reach(managers, i % 3)
                for _ in range(rng.randrange(50)):
                    await asyncio.sleep(0)  # a few turns of the loop: another moment each round
            finally:
                for m in managers:
                    await m.kill()  # not resigning: the other one campaigns on meanwhile
            assert not any(m.leading for m in managers)

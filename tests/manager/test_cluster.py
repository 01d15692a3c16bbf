"""A 3-server NATS cluster (replicated buckets) loses a server; the manager and agents carry on."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import nats
import pytest

from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually
from tests.manager.harness import Fleet, FleetAgent, ManagerProcess, service_set, spread

# a failover's waits may each take up to 180 s: on this 2-core VM, nats-server 2.9's JetStream
# has been seen leaving a consumer create unanswered for over 90 s after losing a server (the
# meta leader retrying the clean-up of consumers that lived on the dead one). They fail first,
# with their own message, before the per-test timeout does
pytestmark = pytest.mark.timeout(900)


async def test_the_fleet_carries_on_when_a_cluster_server_dies(
    tmp_path: Path, nats_cluster: Sequence[NatsServer]
) -> None:
    servers = nats_cluster
    urls = [s.url for s in servers]
    nc = await nats.connect(urls)
    fleet = Fleet(urls)
    await fleet.init(nc, replicas=3)
    await nc.close()
    # a grace period long enough for agents to find a server whose streams have leaders
    manager = ManagerProcess(urls, "manager-1", grace=60.0)
    manager.start()
    agents = [FleetAgent(tmp_path / f"node-{c}", urls, f"node-{c}") for c in "abc"]
    try:
        for agent in agents:
            await agent.start()
        await eventually(
            lambda: manager.metric("reconciler_manager_nodes", state="ready") == 3.0,
            "3 nodes ready",
        )
        await fleet.apply(service_set({"name": "web", "replicas": 3}))
        tasks = {"web-1", "web-2", "web-3"}
        where = await eventually(lambda: fleet.settled(tasks, agents), "3 tasks running", every=1.0)

        # everyone connects to the first server that answers: the first one. Each read of the
        # fleet makes a consumer per bucket through JetStream's meta leader, which is recovering
        # from the kill: the reads below come once a second, not in a tight loop
        await asyncio.to_thread(servers[0].kill)
        fleet = Fleet(urls[1:])
        await eventually(lambda: manager.leading, "the manager leads again", within=180)
        await eventually(
            lambda: manager.metric("reconciler_manager_nodes", state="ready") == 3.0,
            "the manager sees 3 nodes ready again",
            within=180,
        )
        await eventually(
            lambda: fleet.apply(service_set({"name": "web", "replicas": 6})),
            "the scale-up written",
            within=180,
            every=1.0,
        )
        more = {f"web-{i}" for i in range(1, 7)}
        grown = await eventually(
            lambda: fleet.settled(more, agents), "6 tasks, one copy each", within=180, every=1.0
        )
        assert {t: grown[t] for t in tasks} == where
        assert spread(grown) == [2, 2, 2]
        assert manager.metric("reconciler_manager_tasks", state="unassigned") == 0.0
    finally:
        await manager.stop()
        for agent in agents:
            await agent.stop()
            agent.close()

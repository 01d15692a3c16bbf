"""A 3-server NATS cluster loses the server an agent is connected to; the agent carries on."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually
from tests.fleet.support import Manager, running_agent, spec


def serves_agent(server: NatsServer, node_id: str) -> bool:
    """Whether ``server`` holds the agent's connection."""
    return f"reconciler-agent {node_id}" in server.clients()


async def test_agent_carries_on_through_another_server_when_its_server_dies(
    tmp_path: Path, nats_cluster: Sequence[NatsServer]
) -> None:
    servers = nats_cluster
    urls = [s.url for s in servers]
    manager = await Manager.connect(urls)
    try:
        await manager.init(replicas=3)
        await manager.assign("node-a", "web", spec("web"))
        async with running_agent(tmp_path / "state", urls) as r:
            await eventually(lambda: r.running("web"), "web running")
            await eventually(lambda: manager.status("node-a", "web"), "web's status")
            held = await eventually(
                lambda: [s for s in servers if serves_agent(s, "node-a")],
                "the agent's server",
            )
            await asyncio.to_thread(held[0].kill)
            # the manager may need to reconnect, and the cluster to elect new leaders
            await eventually(lambda: manager.assign("node-a", "db", spec("db")), "db put")
            await eventually(lambda: r.running("web", "db"), "db running as well")
            stored = await eventually(lambda: manager.status("node-a", "db"), "db's status")
            assert stored["id"] == r.current_id("db")
            others = [s for s in servers if s is not held[0]]
            assert any(serves_agent(s, "node-a") for s in others)
            assert r.metric("reconciler_session_connected") == 1.0
    finally:
        await manager.close()

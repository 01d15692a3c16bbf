"""A real manager places a fleet task only on nodes whose own policy allows it, and leaves it
unassigned where none does: the policy travels in each node's heartbeat
(``reconciler.core.policy``, ``reconciler.manager.scheduler``)."""

from __future__ import annotations

from pathlib import Path

from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually
from tests.manager.harness import Fleet, FleetAgent, ManagerProcess, service_set


async def test_a_task_with_a_bind_goes_only_to_the_node_that_allows_it(
    tmp_path: Path, nats_server: NatsServer, fleet: Fleet
) -> None:
    urls = [nats_server.url]
    manager = ManagerProcess(urls, "manager-1")
    manager.start()
    agents = [
        FleetAgent(tmp_path / "a", urls, "node-a"),
        FleetAgent(tmp_path / "b", urls, "node-b", flags=("--allow-bind", "/var/log")),
    ]
    try:
        for agent in agents:
            await agent.start()
        await eventually(
            lambda: manager.metric("reconciler_manager_nodes", state="ready") == 2.0,
            "2 nodes ready",
        )
        logs = {"type": "bind", "source": "/var/log/app", "target": "/logs"}
        await fleet.apply(service_set({"name": "logship", "replicas": 2, "mounts": [logs]}))
        await eventually(
            lambda: {"logship-1", "logship-2"} <= agents[1].running(), "both copies on node-b"
        )
        # nothing allows the host network: the task waits, unassigned, and no agent gets it
        await fleet.apply(service_set({"name": "sniff", "network": "host"}))
        await eventually(
            lambda: manager.metric("reconciler_manager_tasks", state="unassigned") == 1.0,
            "sniff unassigned",
        )
        assert await fleet.placement() == {"logship-1": ["node-b"], "logship-2": ["node-b"]}
        assert agents[0].states() == {}  # node-a was never handed anything
    finally:
        await manager.stop()
        for agent in agents:
            await agent.stop()
            agent.close()

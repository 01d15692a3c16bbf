"""End to end: ``reconciler run --manager`` on real podman, with a real nats-server.

The agent is a real ``reconciler run`` subprocess; the test plays the manager: it creates the
buckets with ``reconciler manager init``, writes this node's assignments into
``reconciler_assignments``, and reads ``reconciler_status`` and ``reconciler_nodes``. Podman
itself says what runs.

The path: an assignment becomes a running container and its status lands in the bucket; NATS
goes away, a container killed meanwhile is replaced offline and its status waits; NATS comes
back and the queued status is delivered; removing the assignment removes the container.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from reconciler.testing.natsserver import NatsServer
from tests.e2e.agent_support import Harness, cli, task
from tests.fleet.support import Manager

pytestmark = pytest.mark.e2e


def manage(url: str, action: str, *args: Any) -> Any:
    """One manager action on a fresh connection (the test itself is synchronous)."""

    async def run() -> Any:
        m = await Manager.connect(url)
        try:
            return await getattr(m, action)(*args)
        finally:
            await m.close()

    return asyncio.run(run())


def test_fleet_assignment_runs_on_podman_and_statuses_survive_a_nats_outage(
    harness: Harness, nats_server: NatsServer
) -> None:
    h = harness
    node = h.node_id
    init = cli("manager", "init", "--nats", nats_server.url)
    assert init.returncode == 0, init.stderr
    assert "created reconciler_assignments" in init.stdout
    manage(nats_server.url, "assign", node, "web", task("web", restart={"delay": "500ms"}))

    agent = h.start_agent("--manager", nats_server.url, "--node-label", "site=lab")
    web = h.wait_state("web", "running")
    assert len(h.named("web", running=True)) == 1

    def status(name: str, **want: Any) -> dict[str, Any] | None:
        got = manage(nats_server.url, "status", node, name)
        return got if got and all(got.get(k) == v for k, v in want.items()) else None

    stored = h.wait_for(lambda: status("web", id=web["id"], state="running"), "web's status")
    assert stored["containerId"] == web["containerId"]

    def ready_beat() -> dict[str, Any] | None:
        got = manage(nats_server.url, "node", node)
        return got[0] if got and got[0]["ready"] else None

    beat = h.wait_for(ready_beat, "a heartbeat saying ready")
    assert beat["labels"] == {"site": "lab"} and beat["availability"] == "active"
    assert beat["runtime"] == "podman"

    # NATS goes away: the task keeps running, and the agent still corrects drift
    nats_server.stop()
    h.wait_for(lambda: agent.metric("reconciler_session_connected") == 0, "offline")
    h.podman("kill", web["containerId"])
    replaced = h.wait_for(
        lambda: (v := h.current("web")) and v["id"] != web["id"] and v["state"] == "running" and v,
        "web replaced while offline",
    )
    assert agent.metric("reconciler_status_reports_pending") >= 1
    assert agent.readyz()[0] == 200

    # NATS is back: the queued status is delivered
    nats_server.start()
    h.wait_for(lambda: status("web", id=replaced["id"], state="running"), "the queued status")
    h.wait_for(lambda: agent.metric("reconciler_status_reports_pending") == 0, "none pending")
    assert agent.metric("reconciler_session_connected") == 1

    # the manager removes the task: its container goes
    manage(nats_server.url, "unassign", node, "web")
    h.wait_for(lambda: not h.named("web"), "web's containers removed")
    assert agent.terminate() == 0


def test_run_refuses_a_node_id_that_cannot_name_fleet_keys(harness: Harness) -> None:
    out = cli(
        "run",
        "--manager",
        "nats://127.0.0.1:1",
        "--node-id",
        "bad.id",
        "--state-dir",
        str(harness.state_dir),
    )
    assert out.returncode == 2
    assert "--node-id" in out.stderr and "cannot name fleet keys" in out.stderr

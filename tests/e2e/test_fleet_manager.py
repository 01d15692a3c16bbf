"""End to end: ``reconciler manager run`` places a service on an agent that runs on podman.

Everything runs as an operator runs it: a real nats-server, ``reconciler manager init``, a
``reconciler manager run`` subprocess, an agent subprocess on a private podman service, and the
``reconciler manager apply|ps|drain`` commands. Podman itself says what runs.

The path: a ServiceSet of two replicas becomes two running containers on the one node, and
``manager ps`` shows them running there; a changed spec replaces both containers with the new
env; draining the node removes them and leaves the tasks unassigned; the manager stops cleanly.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.testing.natsserver import NatsServer
from tests.e2e.agent_support import (
    FOREVER,
    IMAGE,
    AgentProcess,
    Harness,
    cli,
    free_port,
)
from tests.fleet.support import Manager

pytestmark = pytest.mark.e2e


def heartbeat_every(url: str, period: str) -> None:
    async def run() -> None:
        m = await Manager.connect(url)
        try:
            await m.fleet(heartbeatPeriod=period)
        finally:
            await m.close()

    asyncio.run(run())


def service_file(path: Path, **env: str) -> str:
    doc = {
        "apiVersion": "reconciler/v1",
        "kind": "ServiceSet",
        "services": [
            {
                "name": "web",
                "image": IMAGE,
                "command": FOREVER,
                "replicas": 2,
                "env": env,
                "placement": {"constraints": ["engine.labels.site==lab"]},
            }
        ],
    }
    path.write_text(json.dumps(doc, indent=2))
    return str(path)


def start_manager(h: Harness, url: str) -> AgentProcess:
    """``reconciler manager run`` as an operator starts it (short grace and lease), once it
    is ready and leads; killed on cleanup like an agent."""
    listen = f"127.0.0.1:{free_port()}"
    manager = AgentProcess(
        [
            sys.executable,
            "-m",
            "reconciler.cli",
            "manager",
            "run",
            "--nats",
            url,
            "--listen",
            listen,
            "--node-grace",
            "5s",
            "--lease",
            "3s",
        ],
        log_path=h.base / "manager.log",
        listen=listen,
    )
    h.agents.append(manager)
    manager.wait_ready()
    assert manager.get("/healthz")[0] == 200
    h.wait_for(lambda: manager.metric("reconciler_manager_leader") == 1, "the manager leads")
    return manager


def running_tasks(h: Harness) -> dict[str, dict[str, Any]] | None:
    """web-1's and web-2's containers, when each runs exactly once in podman."""
    found = {n: h.named(n, running=True) for n in ("web-1", "web-2")}
    if any(len(c) != 1 for c in found.values()):
        return None
    return {n: c[0] for n, c in found.items()}


def manager_ps(url: str) -> list[dict[str, Any]]:
    out = cli("manager", "ps", "--nats", url, "-o", "json")
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def test_the_manager_places_a_service_on_podman_rolls_out_a_change_and_drains(
    harness: Harness, nats_server: NatsServer
) -> None:
    h = harness
    url = nats_server.url
    init = cli("manager", "init", "--nats", url)
    assert init.returncode == 0, init.stderr
    heartbeat_every(url, "500ms")
    manager = start_manager(h, url)

    h.start_agent("--manager", url, "--node-label", "site=lab")
    h.wait_for(
        lambda: manager.metric("reconciler_manager_nodes", state="ready") == 1,
        "the manager sees the node ready",
    )
    applied = cli("manager", "apply", "-f", service_file(h.base / "web.yaml", V="1"), "--nats", url)
    assert (applied.returncode, applied.stdout) == (0, "create service web (2 replicas)\n")
    first = h.wait_for(lambda: running_tasks(h), "web-1 and web-2 running in podman")
    rows = h.wait_for(
        lambda: (r := manager_ps(url)) and all(x["state"] == "running" for x in r) and r,
        "ps says running",
    )
    assert [(r["task"], r["node"]) for r in rows] == [("web-1", h.node_id), ("web-2", h.node_id)]
    h.wait_for(
        lambda: manager.metric("reconciler_manager_tasks", state="running") == 2,
        "the manager counts 2 running",
    )

    # a changed spec reaches both containers on the node
    changed = cli("manager", "apply", "-f", service_file(h.base / "web.yaml", V="2"), "--nats", url)
    assert (changed.returncode, changed.stdout) == (0, "update service web (env)\n")

    def replaced() -> dict[str, dict[str, Any]] | None:
        now = running_tasks(h)
        if now is None or any(now[n]["Id"] == first[n]["Id"] for n in now):
            return None
        return now

    after = h.wait_for(replaced, "both containers replaced")
    for container in after.values():
        assert "V=2" in h.inspect(container["Id"])["Config"]["Env"]

    # draining the only node takes the tasks off it: nowhere else to go, so unassigned
    drained = cli("manager", "drain", h.node_id, "--nats", url)
    assert drained.returncode == 0, drained.stderr
    h.wait_for(lambda: not h.named("web-1") and not h.named("web-2"), "containers removed")
    h.wait_for(
        lambda: manager.metric("reconciler_manager_tasks", state="unassigned") == 2,
        "2 tasks unassigned",
    )
    assert manager.metric("reconciler_manager_reschedules_total", reason="drain") == 2
    assert {r["state"] for r in manager_ps(url)} == {"unassigned"}
    assert manager.terminate() == 0

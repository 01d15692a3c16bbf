"""The node's policy for fleet tasks: the whole agent (fake runtime, real clock) with its fleet
session to a real nats-server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.assemble.agent import assemble_agent
from reconciler.core.clock import SystemClock
from reconciler.core.model import TaskState
from reconciler.store.rocks import RocksStore
from reconciler.testing.agents import agent_options
from reconciler.testing.fake import FakeExecutor
from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually
from reconciler.web.agent_page import AgentPage
from reconciler.web.state import node_json
from tests.fleet.support import Manager, Running, running_agent, spec

ETC = spec("web", mounts=[{"type": "bind", "source": "/etc", "target": "/host-etc"}])
REFUSED = "mounts[0]: a bind mount of /etc is not allowed on this node (--allow-bind)"
RESTART = {"restart": {"delay": "10ms", "maxDelay": "10ms"}}


@pytest.fixture
async def manager(nats_server: NatsServer) -> AsyncIterator[Manager]:
    m = await Manager.connect(nats_server.url)
    await m.init()
    yield m
    await m.close()


def current(r: Running, name: str) -> tuple[str, TaskState, str | None] | None:
    for v in r.agent.snapshot().tasks:
        if v.current and v.name == name:
            return v.id, v.state, v.message
    return None


def untouched(ex: FakeExecutor, task_id: str) -> bool:
    """Nothing of the task reached the runtime: no controller, no pull, no container."""
    ops = ("resolve", "prepare", "start")
    return all(ex.calls[(task_id, op)] == 0 for op in ops) and task_id not in ex.containers


async def test_a_bind_of_etc_is_rejected_before_anything_is_pulled_and_not_retried(
    tmp_path: Path,
    manager: Manager,
    nats_server: NatsServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    await manager.assign("node-a", "web", {**ETC, **RESTART})
    async with running_agent(tmp_path / "state", [nats_server.url]) as r:
        got = await eventually(
            lambda: (c := current(r, "web")) and c[1] == TaskState.REJECTED and c, "web rejected"
        )
        task_id, _, message = got
        assert message == REFUSED
        stored = await eventually(
            lambda: _status(manager, "rejected"), "the rejection in the status bucket"
        )
        assert stored["message"] == REFUSED and stored["error"] == REFUSED
        await eventually(
            lambda: "refused by the node's policy name=web" in caplog.text,
            "the restart policy's verdict",
        )
        # judged once, and not restarted: still the one instance, nothing reached the runtime
        assert [v.id for v in r.agent.snapshot().tasks if v.name == "web"] == [task_id]
        assert r.agent.manager is not None and r.agent.manager.restarts().get("web", 0) == 0
        assert untouched(r.executor, task_id)
        assert not r.executor.containers


async def test_the_flag_allows_it_and_a_spec_change_is_checked_again(
    tmp_path: Path, manager: Manager, nats_server: NatsServer
) -> None:
    await manager.assign("node-a", "web", ETC)
    async with running_agent(
        tmp_path / "state", [nats_server.url], flags=("--allow-bind", "/etc")
    ) as r:
        await eventually(lambda: r.running("web"), "web running with --allow-bind /etc")
        beat = await eventually(lambda: _beat_policy(manager), "a heartbeat with its policy")
        assert beat == {
            "allowBind": ["/etc"],
            "allowDevice": [],
            "allowCap": [],
            "allowHostNetwork": False,
            "allowRegistry": [],
        }
        assert node_json(r.agent.snapshot())["policy"] == beat  # /v1/node
        html = AgentPage(r.agent.snapshot).html().decode()
        assert "Fleet tasks may use" in html and "bind /etc" in html
        await manager.assign("node-a", "web", {**ETC, "network": "host", "capAdd": ["SYS_ADMIN"]})
        got = await eventually(
            lambda: (c := current(r, "web")) and c[1] == TaskState.REJECTED and c,
            "the changed spec rejected",
        )
        assert got[2] == (
            "capAdd[0]: capability SYS_ADMIN is not allowed on this node (--allow-cap); "
            "network: the host's network is not allowed on this node (--allow-host-network)"
        )
        assert untouched(r.executor, got[0])


async def test_a_policy_change_at_restart_never_stops_a_running_instance_and_frees_a_refused_one(
    tmp_path: Path, manager: Manager, nats_server: NatsServer
) -> None:
    ex = FakeExecutor()
    logs = spec("logs", mounts=[{"type": "bind", "source": "/var/log", "target": "/logs"}])
    await manager.assign("node-a", "web", ETC)
    await manager.assign("node-a", "logs", logs)
    state = tmp_path / "state"
    async with running_agent(
        state, [nats_server.url], executor=ex, flags=("--allow-bind", "/etc")
    ) as r:
        await eventually(lambda: r.running("web"), "web running")
        got = await eventually(
            lambda: (c := current(r, "logs")) and c[1] == TaskState.REJECTED and c,
            "logs rejected",
        )
        web_id, logs_id = r.current_id("web"), got[0]
    # The operator swaps the flags: /etc is no longer allowed, /var/log is.
    async with running_agent(
        state, [nats_server.url], executor=ex, flags=("--allow-bind", "/var/log")
    ) as r:
        await eventually(lambda: r.running("logs"), "logs running under the new policy")
        assert r.current_id("logs") != logs_id
        assert r.running("web") and r.current_id("web") == web_id
        assert ex.calls[(web_id, "shutdown")] == 0 and ex.calls[(web_id, "remove")] == 0
        assert ex.containers[web_id].state == "running"


async def test_the_desired_directory_is_not_checked(tmp_path: Path) -> None:
    opts = agent_options(tmp_path / "state")
    assert opts.manager is None
    # the assembled agent of a directory node has no policy to apply
    store = RocksStore.open(tmp_path / "state")
    try:
        assembled = assemble_agent(
            opts, store=store, node_id="n", clock=SystemClock(), runtime=lambda _: FakeExecutor()
        )
        assert assembled.agent.config.policy is None
    finally:
        store.close()


async def _beat_policy(manager: Manager) -> dict[str, object] | None:
    got = await manager.node("node-a")
    return got[0].get("policy") if got is not None else None


async def _status(manager: Manager, state: str) -> dict[str, object] | None:
    got = await manager.status("node-a", "web")
    return got if got is not None and got.get("state") == state else None

"""The whole agent (fake runtime, real clock) with its fleet session to a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.fleet.buckets import NODES
from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually
from reconciler.testing.ports import free_port
from tests.fleet.support import Manager, TcpProxy, running_agent, spec

RESTART = {"restart": {"delay": "100ms", "maxDelay": "200ms"}}
AGENT = "reconciler-agent node-a"  # the agent's connection name


@pytest.fixture
async def manager(nats_server: NatsServer) -> AsyncIterator[Manager]:
    m = await Manager.connect(nats_server.url)
    await m.init()
    yield m
    await m.close()


async def status_of(manager: Manager, name: str, **want: object) -> dict[str, object] | None:
    got = await manager.status("node-a", name)
    if got is None or any(got.get(k) != v for k, v in want.items()):
        return None
    return got


async def test_agent_runs_its_assignments_reports_status_and_heartbeats(
    tmp_path: Path, manager: Manager, nats_server: NatsServer
) -> None:
    await manager.assign("node-a", "web", spec("web"))
    async with running_agent(tmp_path / "state", [nats_server.url]) as r:
        await eventually(lambda: r.running("web"), "web running")
        web_id = r.current_id("web")
        stored = await eventually(
            lambda: status_of(manager, "web", state="running"), "web's status in the bucket"
        )
        assert stored["id"] == web_id and stored["restarts"] == 0
        beat = await eventually(lambda: _ready_beat(manager), "a heartbeat that says ready")
        assert beat["nodeId"] == "node-a" and beat["availability"] == "active"
        assert beat["labels"] == {"zone": "test"} and beat["hostname"] == "fake"
        assert beat["heartbeatAt"].endswith("Z") and beat["version"]
        assert r.metric("reconciler_session_connected") == 1.0
        assert r.metric("reconciler_desired_state_valid") == 1.0


async def _ready_beat(manager: Manager) -> dict[str, object] | None:
    got = await manager.node("node-a")
    return got[0] if got is not None and got[0]["ready"] else None


async def test_a_malformed_value_keeps_the_last_good_spec_of_that_key_only(
    tmp_path: Path, manager: Manager, nats_server: NatsServer
) -> None:
    await manager.assign("node-a", "web", spec("web", env={"V": "1"}))
    await manager.assign("node-a", "db", spec("db"))
    async with running_agent(tmp_path / "state", [nats_server.url]) as r:
        await eventually(lambda: r.running("web", "db"), "web and db running")
        web_id = r.current_id("web")
        errors = r.metric("reconciler_desired_state_errors_total") or 0.0
        await manager.assign("node-a", "web", spec("web", memory="lots"))
        await manager.assign("node-a", "db", spec("db", env={"V": "2"}))
        await eventually(
            lambda: r.metric("reconciler_desired_state_valid") == 0.0, "desired state invalid"
        )
        # db's change applies; web keeps its last good spec and its instance
        await eventually(
            lambda: (
                dict(r.agent.manager.desired["db"].spec.env) == {"V": "2"}  # type: ignore[union-attr]
                and r.running("db")
            ),
            "db updated",
        )
        assert r.current_id("web") == web_id
        assert dict(r.agent.manager.desired["web"].spec.env) == {"V": "1"}  # type: ignore[union-attr]
        assert (r.metric("reconciler_desired_state_errors_total") or 0.0) == errors + 1
        await manager.assign("node-a", "web", spec("web", env={"V": "3"}))
        await eventually(
            lambda: r.metric("reconciler_desired_state_valid") == 1.0, "desired state valid again"
        )
        await eventually(lambda: r.current_id("web") not in (None, web_id), "web replaced")


async def test_nats_restart_tasks_keep_running_and_queued_statuses_are_delivered_after(
    tmp_path: Path, manager: Manager, nats_server: NatsServer
) -> None:
    await manager.assign("node-a", "web", spec("web", **RESTART))
    await manager.assign("node-a", "job", spec("job"))
    async with running_agent(tmp_path / "state", [nats_server.url]) as r:
        await eventually(lambda: r.running("web", "job"), "tasks running")
        web_id, job_id = r.current_id("web"), r.current_id("job")
        await eventually(lambda: status_of(manager, "web", id=web_id, state="running"), "status")

        await asyncio.to_thread(nats_server.stop)
        await eventually(lambda: r.metric("reconciler_session_connected") == 0.0, "offline")
        assert web_id is not None and job_id is not None
        r.executor.exit(web_id, 1)  # the restart policy still works offline
        await eventually(
            lambda: r.current_id("web") != web_id and r.running("web"), "web restarted"
        )
        new_web = r.current_id("web")
        assert r.current_id("job") == job_id
        assert r.executor.containers[job_id].state == "running"
        assert (r.metric("reconciler_status_reports_pending") or 0.0) >= 1.0

        await asyncio.to_thread(nats_server.start)
        stored = await eventually(
            lambda: status_of(manager, "web", id=new_web, state="running"),
            "the queued status delivered",
        )
        assert stored["restarts"] == 1
        await eventually(
            lambda: r.metric("reconciler_status_reports_pending") == 0.0, "nothing pending"
        )
        assert r.metric("reconciler_session_connected") == 1.0
        assert r.current_id("job") == job_id


async def test_reconnect_converges_to_assignments_changed_during_the_outage(
    tmp_path: Path, manager: Manager, nats_server: NatsServer
) -> None:
    proxy = TcpProxy(nats_server.port, free_port())
    await proxy.start()
    await manager.assign("node-a", "a", spec("a"))
    await manager.assign("node-a", "b", spec("b"))
    async with running_agent(tmp_path / "state", [proxy.url]) as r:
        await eventually(lambda: r.running("a", "b"), "a and b running")
        b_id = r.current_id("b")
        await proxy.cut()
        await eventually(lambda: r.metric("reconciler_session_connected") == 0.0, "offline")
        await manager.unassign("node-a", "a")
        await manager.assign("node-a", "b", spec("b", env={"NEW": "1"}))
        await manager.assign("node-a", "c", spec("c"))
        await asyncio.sleep(0.5)  # an outage that lasts: nothing changes meanwhile, under test
        assert set(r.states()) == {"a", "b"} and r.current_id("b") == b_id
        await proxy.start()
        # b's changed spec replaces it: the old instance runs until the new one takes over
        await eventually(
            lambda: (
                set(r.states()) == {"b", "c"} and r.running("b", "c") and r.current_id("b") != b_id
            ),
            "converged",
        )
        assert r.metric("reconciler_session_connected") == 1.0
    await proxy.cut()


async def test_pause_holds_new_tasks_while_existing_ones_keep_running_and_restarting(
    tmp_path: Path, manager: Manager, nats_server: NatsServer
) -> None:
    await manager.assign("node-a", "web", spec("web", **RESTART))
    async with running_agent(tmp_path / "state", [nats_server.url]) as r:
        await eventually(lambda: r.running("web"), "web running")
        await manager.availability("node-a", "pause")
        await eventually(lambda: _availability(manager, "pause"), "the pause seen")
        await manager.assign("node-a", "new", spec("new"))
        assert r.agent.manager is not None
        await eventually(lambda: "new" in r.agent.manager.desired, "new assigned")  # type: ignore[union-attr]
        web_id = r.current_id("web")
        assert web_id is not None
        r.executor.exit(web_id, 1)
        await eventually(
            lambda: r.current_id("web") not in (None, web_id) and r.running("web"),
            "web restarted while paused",
        )
        assert "new" not in r.states()
        assert not [c for c in r.executor.containers.values() if c.name.startswith("new.")]

        await manager.availability("node-a", "active")
        await eventually(lambda: r.running("new"), "new started once active")


async def _availability(manager: Manager, value: str) -> bool:
    got = await manager.node("node-a")
    return got is not None and got[0]["availability"] == value


async def test_heartbeats_stop_when_the_agent_stops_and_resume_at_once_when_it_starts(
    tmp_path: Path, manager: Manager, nats_server: NatsServer
) -> None:
    await manager.fleet(heartbeatPeriod="50ms")
    async with running_agent(tmp_path / "state", [nats_server.url]):
        first = await eventually(lambda: manager.node("node-a"), "a heartbeat")
        await eventually(lambda: _revision_above(manager, first[1] + 3), "heartbeats every period")
    await landed(nats_server, manager)  # a put already on the wire when the agent stopped
    stopped = await manager.node("node-a")
    assert stopped is not None
    await asyncio.sleep(1.0)  # twenty periods pass: no heartbeat in them is what is under test
    after = await manager.node("node-a")
    assert after is not None and after[1] == stopped[1]

    await manager.fleet(heartbeatPeriod="1h")
    async with running_agent(tmp_path / "state", [nats_server.url]):
        resumed = await eventually(
            lambda: _revision_above(manager, stopped[1]), "a heartbeat right after start"
        )
        assert resumed


async def landed(server: NatsServer, manager: Manager) -> None:
    """Every heartbeat the stopped agent sent is stored: the server has dropped its connection
    (so it read all the agent wrote), and a put of the manager's, queued behind them in the
    stream, is acknowledged."""
    await eventually(
        lambda: AGENT not in server.clients(), "the server dropping the agent's connection"
    )
    await manager.barrier(NODES)


async def _revision_above(manager: Manager, revision: int) -> tuple[dict[str, object], int] | None:
    got = await manager.node("node-a")
    return got if got is not None and got[1] > revision else None


async def test_an_agent_that_finds_no_buckets_keeps_retrying_and_is_not_ready_until_it_read_them(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with running_agent(tmp_path / "state", [nats_server.url]) as r:
        await eventually(lambda: r.agent.snapshot().node is not None, "the runtime described")
        tried = nats_server.connections_so_far()
        await eventually(
            lambda: nats_server.connections_so_far() >= tried + 2, "two more connection attempts"
        )
        snap = r.agent.snapshot()
        assert not snap.ready and snap.ready_reason == "desired state has not been read yet"
        assert r.metric("reconciler_session_connected") == 0.0
        m = await Manager.connect(nats_server.url)
        try:
            await m.init()
            await m.assign("node-a", "web", spec("web"))
            await eventually(lambda: r.running("web"), "web running")
            await eventually(lambda: r.agent.snapshot().ready, "ready")
        finally:
            await m.close()


async def test_an_agent_started_while_nats_is_down_runs_its_stored_tasks_until_it_is_back(
    tmp_path: Path, manager: Manager, nats_server: NatsServer
) -> None:
    await manager.assign("node-a", "web", spec("web"))
    async with running_agent(tmp_path / "state", [nats_server.url]) as r:
        await eventually(lambda: r.running("web"), "web running")
        web_id = r.current_id("web")
        executor = r.executor
    await asyncio.to_thread(nats_server.stop)
    async with running_agent(tmp_path / "state", [nats_server.url], executor=executor) as r:
        await eventually(lambda: r.agent.snapshot().node is not None, "the runtime described")
        assert r.current_id("web") == web_id and r.running("web")
        assert executor.calls[(web_id, "start")] == 1  # adopted, never started again
        assert r.agent.snapshot().ready_reason == "desired state has not been read yet"
        await asyncio.to_thread(nats_server.start)
        await manager.unassign("node-a", "web")
        await manager.assign("node-a", "db", spec("db"))
        await eventually(lambda: set(r.states()) == {"db"} and r.running("db"), "converged")
        await eventually(lambda: r.agent.snapshot().ready, "ready")

"""The fleet session on its own against a real nats-server: what it delivers and writes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from reconciler.core.clock import SystemClock
from reconciler.core.model import TaskState
from reconciler.core.session import (
    ConnectionChanged,
    DesiredTasks,
    ManagerMessage,
    NamedStatus,
    SessionMessage,
)
from reconciler.fleet.options import NatsOptions
from reconciler.sessions.nats import NatsSession
from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually
from reconciler.testing.ports import free_port
from reconciler.testing.tasks import ended
from tests.fleet.support import Manager, TcpProxy, spec


@pytest.fixture
async def manager(nats_server: NatsServer) -> AsyncIterator[Manager]:
    m = await Manager.connect(nats_server.url)
    await m.init()
    yield m
    await m.close()


class Collected:
    def __init__(self, session: NatsSession) -> None:
        self.session = session
        self.messages: list[SessionMessage] = []
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for message in self.session.messages():
            self.messages.append(message)

    def desired(self) -> list[DesiredTasks]:
        return [m for m in self.messages if isinstance(m, DesiredTasks)]

    async def close(self) -> None:
        await ended(asyncio.ensure_future(self.session.close()), "the session's close")
        await ended(self._task, "the consumer of the session's messages")


@pytest.fixture
async def collected(nats_server: NatsServer) -> AsyncIterator[Collected]:
    session = NatsSession(
        node_id="node-a",
        options=NatsOptions(servers=(nats_server.url,)),
        clock=SystemClock(),
        idle_heartbeat=1.0,
    )
    c = Collected(session)
    yield c
    await c.close()


def status(task_id: str, state: TaskState, ts: float, **kw: object) -> NamedStatus:
    fields: dict[str, object] = {
        "name": "web",
        "id": task_id,
        "state": state,
        "message": state.label,
        "err": None,
        "exit_code": None,
        "container_id": None,
        "updated_at": ts,
        "restarts": 0,
    }
    fields.update(kw)
    return NamedStatus(**fields)  # type: ignore[arg-type]


async def test_connect_delivers_availability_then_one_full_assignment_of_this_node_only(
    manager: Manager, nats_server: NatsServer
) -> None:
    await manager.assign("node-a", "web", spec("web"))
    await manager.assign("node-a", "db", spec("db", env={"MODE": "edge"}))
    await manager.assign("node-b", "other", spec("other"))
    session = NatsSession(
        node_id="node-a", options=NatsOptions(servers=(nats_server.url,)), clock=SystemClock()
    )
    c = Collected(session)
    try:
        await eventually(c.desired, "a full assignment")
        assert c.messages[:2] == [ConnectionChanged(True), ManagerMessage("active")]
        full = c.desired()[0]
        assert full.full
        assert [t.name for t in full.tasks] == ["db", "web"]
        assert dict(full.tasks[0].spec.env) == {"MODE": "edge"}
        assert session.connected
    finally:
        await c.close()


async def test_an_empty_assignment_is_a_valid_full_one(
    manager: Manager, collected: Collected
) -> None:
    full = (await eventually(collected.desired, "a full assignment"))[0]
    assert full == DesiredTasks(tasks=(), full=True)


async def test_later_puts_and_deletes_are_incremental(
    manager: Manager, collected: Collected
) -> None:
    await eventually(collected.desired, "the initial assignment")
    await manager.assign("node-a", "web", spec("web"))
    added = await eventually(lambda: collected.desired()[1:], "the put")
    assert not added[0].full
    assert [t.name for t in added[0].tasks] == ["web"]
    await manager.unassign("node-a", "web")
    removed = await eventually(lambda: collected.desired()[2:], "the delete")
    assert removed[0] == DesiredTasks(tasks=(), full=False, removed=("web",))
    await manager.assign("node-b", "web", spec("web"))
    await manager.assign("node-a", "db", spec("db"))
    last = await eventually(lambda: collected.desired()[3:], "the next put")
    assert [t.name for t in last[0].tasks] == ["db"]  # node-b's key never arrived


async def test_a_malformed_value_rejects_its_key_alone(
    manager: Manager, nats_server: NatsServer
) -> None:
    await manager.assign("node-a", "web", spec("web"))
    await manager.assign("node-a", "bad", b"{not json")
    await manager.assign("node-a", "typo", spec("typo", imagee="x"))
    await manager.assign("node-a", "other", spec("someone-else"))
    session = NatsSession(
        node_id="node-a", options=NatsOptions(servers=(nats_server.url,)), clock=SystemClock()
    )
    c = Collected(session)
    try:
        full = (await eventually(c.desired, "a full assignment"))[0]
        assert [t.name for t in full.tasks] == ["web"]
        rejected = {r.name: r.problems for r in full.rejected}
        assert set(rejected) == {"bad", "typo", "other"}
        assert rejected["bad"][0].startswith("reconciler_assignments/node-a.bad:0: value: ")
        assert any("task.imagee" in p for p in rejected["typo"])
        assert any("does not match" in p for p in rejected["other"])
        await manager.assign("node-a", "web", b"[]")
        change = (await eventually(lambda: c.desired()[1:], "the bad put"))[0]
        assert change.tasks == () and [r.name for r in change.rejected] == ["web"]
    finally:
        await c.close()


async def test_availability_changes_arrive_as_manager_messages(
    manager: Manager, collected: Collected
) -> None:
    await eventually(collected.desired, "the initial assignment")
    await manager.availability("node-a", "pause")
    await manager.availability("node-b", "drain")
    await manager.availability("node-a", "bogus")  # rejected, pause stays
    await manager.availability("node-a", "active")

    def availabilities() -> list[str]:
        return [m.availability for m in collected.messages if isinstance(m, ManagerMessage)]

    assert await eventually(
        lambda: availabilities() if availabilities()[-1:] == ["active"] else None, "active"
    ) == ["active", "pause", "active"]


async def test_fleet_settings_are_read_and_bad_ones_are_refused(
    manager: Manager, collected: Collected
) -> None:
    await eventually(collected.desired, "the initial assignment")
    await manager.fleet(heartbeatPeriod="250ms", managers=["nats://127.0.0.1:1"])
    settings = await eventually(
        lambda: (
            collected.session.settings
            if collected.session.settings.heartbeat_period == 0.25
            else None
        ),
        "the new period",
    )
    assert settings.managers == ("nats://127.0.0.1:1",)
    await manager.fleet(heartbeatPeriod="soon")
    await manager.fleet(heartbeatPeriod=2)
    await eventually(lambda: collected.session.settings.heartbeat_period == 2.0, "period 2s")
    assert collected.session.settings.managers == ()


async def test_status_is_written_and_never_moves_backwards_for_one_instance(
    manager: Manager, collected: Collected
) -> None:
    await eventually(collected.desired, "the initial assignment")
    session = collected.session
    await session.report({"web": status("i1", TaskState.RUNNING, 100.0, container_id="c1")})
    stored = await manager.status("node-a", "web")
    assert stored is not None
    assert stored["id"] == "i1" and stored["state"] == "running"
    assert stored["containerId"] == "c1" and stored["updatedAt"] == "1970-01-01T00:01:40.000Z"
    assert set(stored) == {
        "id",
        "state",
        "message",
        "error",
        "exitCode",
        "containerId",
        "updatedAt",
        "restarts",
    }
    # a late retry of an earlier state of the same instance
    await session.report({"web": status("i1", TaskState.STARTING, 99.0)})
    assert (await manager.status("node-a", "web") or {})["state"] == "running"
    # the instance ends, then its successor starts
    await session.report({"web": status("i1", TaskState.FAILED, 101.0, exit_code=3)})
    await session.report({"web": status("i2", TaskState.PENDING, 102.0, restarts=1)})
    stored = await manager.status("node-a", "web")
    assert stored is not None and (stored["id"], stored["state"]) == ("i2", "pending")


async def test_status_write_rereads_a_key_changed_behind_its_back(
    manager: Manager, collected: Collected
) -> None:
    await eventually(collected.desired, "the initial assignment")
    session = collected.session
    await session.report({"web": status("i1", TaskState.STARTING, 100.0)})
    # someone (a second agent process, a late writer) moves the key on
    kv = await manager.kv("reconciler_status")
    newer = {"id": "i1", "state": "running", "updatedAt": "1970-01-01T00:01:50.000Z"}
    await kv.put("node-a.web", json.dumps(newer).encode())
    await session.report({"web": status("i1", TaskState.STARTING, 101.0, message="retry")})
    assert (await manager.status("node-a", "web") or {})["state"] == "running"
    await session.report({"web": status("i1", TaskState.COMPLETE, 120.0)})
    assert (await manager.status("node-a", "web") or {})["state"] == "complete"


async def test_managers_from_the_fleet_settings_are_used_on_the_next_reconnect(
    manager: Manager, nats_server: NatsServer
) -> None:
    configured = TcpProxy(nats_server.port, free_port())
    published = TcpProxy(nats_server.port, free_port())
    await configured.start()
    await published.start()
    session = NatsSession(
        node_id="node-a", options=NatsOptions(servers=(configured.url,)), clock=SystemClock()
    )
    c = Collected(session)
    try:
        await eventually(c.desired, "connected through the configured URL")
        await manager.fleet(managers=[published.url])
        await eventually(lambda: session.settings.managers == (published.url,), "managers read")
        await configured.cut()  # for good: only the published URL leads back
        await eventually(lambda: c.messages.count(ConnectionChanged(True)) == 2, "reconnected")
        assert ConnectionChanged(False) in c.messages
        assert session.connected
    finally:
        await c.close()
        await published.cut()


async def test_a_new_iteration_after_the_consumer_failed_starts_with_a_full_assignment(
    manager: Manager, nats_server: NatsServer
) -> None:
    await manager.assign("node-a", "web", spec("web"))
    session = NatsSession(
        node_id="node-a", options=NatsOptions(servers=(nats_server.url,)), clock=SystemClock()
    )
    try:
        first: list[SessionMessage] = []

        async def consume_until_full_then_fail() -> None:
            async for message in session.messages():
                first.append(message)
                if isinstance(message, DesiredTasks) and message.full:
                    raise RuntimeError("the agent's session loop failed")

        with pytest.raises(RuntimeError):
            await asyncio.wait_for(consume_until_full_then_fail(), 30)
        await manager.assign("node-a", "db", spec("db"))

        async def next_full() -> DesiredTasks:
            async for message in session.messages():
                if isinstance(message, DesiredTasks) and message.full:
                    return message
            raise AssertionError("the session ended")

        full = await asyncio.wait_for(next_full(), 30)
        assert [t.name for t in full.tasks] == ["db", "web"]
    finally:
        await session.close()


async def test_heartbeats_carry_the_node_conditions_and_beat_again_when_they_change(
    manager: Manager, nats_server: NatsServer
) -> None:
    await manager.fleet(heartbeatPeriod="1h")  # only changes make the later beats
    pressure = {"diskPressure": False, "memoryPressure": False}
    session = NatsSession(
        node_id="node-a",
        options=NatsOptions(servers=(nats_server.url,)),
        clock=SystemClock(),
        describe=lambda: (None, True),
        conditions=lambda: dict(pressure),
    )
    c = Collected(session)
    try:
        first = await eventually(lambda: manager.node("node-a"), "a heartbeat")
        assert first[0]["conditions"] == {"diskPressure": False, "memoryPressure": False}
        pressure["diskPressure"] = True  # seen at the session's next look at the node
        later = await eventually(
            lambda: _node_with(manager, lambda v: v["conditions"]["diskPressure"] is True),
            "a heartbeat with disk pressure",
        )
        assert later[1] > first[1]
    finally:
        await c.close()


async def _node_with(manager: Manager, ok: Any) -> Any:
    got = await manager.node("node-a")
    return got if got is not None and ok(got[0]) else None

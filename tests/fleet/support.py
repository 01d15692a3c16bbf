"""What the fleet tests share: the manager's side of the buckets, an agent in-process, a proxy.

- ``Manager``: plays the fleet manager on a real NATS server: creates the buckets, writes
  assignments and control keys, reads statuses and heartbeats.
- ``running_agent``: the whole ``Agent`` in this event loop, on the fake runtime
  (``reconciler/testing/fake.py``) and the real clock, with a ``NatsSession`` to the given URLs.
- ``TcpProxy``: a loopback TCP proxy between the agent and a server, which a test can cut and
  restore; the agent loses NATS while the manager keeps writing.

Waits are ``reconciler.testing.polling``'s, and stopping an agent is bounded
(``reconciler.testing.tasks``): an agent that does not end fails the test, naming where it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from reconciler.agent.agent import Agent
from reconciler.assemble.agent import assemble_agent, fleet_session
from reconciler.core.clock import SystemClock
from reconciler.core.model import TaskState
from reconciler.fleet.buckets import ASSIGNMENTS, CONTROL, NODES, STATUS, node_control_key
from reconciler.fleet.options import NatsOptions
from reconciler.fleet.provision import init_buckets
from reconciler.fleet.values import FLEET_FORMAT
from reconciler.sessions.nats import NatsSession
from reconciler.store.rocks import RocksStore
from reconciler.testing.agents import agent_options
from reconciler.testing.fake import FakeExecutor
from reconciler.testing.tasks import ended

IMAGE = "localhost/busybox:latest"
BARRIER_KEY = "test-barrier"


def spec(name: str, **fields: Any) -> dict[str, Any]:
    """An assignment value: one task spec with the YAML's field names."""
    return {"name": name, "image": IMAGE, **fields}


class Manager:
    """The manager's side of the fleet's buckets, as the tests play it."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self._kv: dict[str, KeyValue] = {}

    @classmethod
    async def connect(cls, url: str | list[str], **kwargs: Any) -> Manager:
        """Connect; the client reconnects on its own, quickly and for ever, quietly."""

        async def quiet(err: Exception) -> None:
            pass

        kwargs.setdefault("reconnect_time_wait", 0.1)
        kwargs.setdefault("max_reconnect_attempts", -1)
        kwargs.setdefault("error_cb", quiet)
        return cls(await nats.connect(url, **kwargs))

    async def init(self, *, replicas: int = 1) -> None:
        await init_buckets(self.js, replicas=replicas)

    async def kv(self, bucket: str) -> KeyValue:
        if bucket not in self._kv:
            self._kv[bucket] = await self.js.key_value(bucket)
        return self._kv[bucket]

    async def assign(self, node: str, name: str, value: dict[str, Any] | bytes) -> int:
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        return int(await (await self.kv(ASSIGNMENTS)).put(f"{node}.{name}", data))

    async def unassign(self, node: str, name: str) -> None:
        await (await self.kv(ASSIGNMENTS)).delete(f"{node}.{name}")

    async def availability(self, node: str, value: str) -> None:
        data = json.dumps({"availability": value}).encode()
        await (await self.kv(CONTROL)).put(node_control_key(node), data)

    async def fleet(self, **settings: Any) -> None:
        value = {"formatVersion": FLEET_FORMAT, **settings}  # a fleet made by this version
        await (await self.kv(CONTROL)).put("fleet", json.dumps(value).encode())

    async def _get(self, bucket: str, key: str) -> tuple[dict[str, Any], int] | None:
        try:
            entry = await (await self.kv(bucket)).get(key)
        except KeyNotFoundError:
            return None
        return json.loads(entry.value or b"null"), int(entry.revision or 0)

    async def barrier(self, bucket: str) -> int:
        """Put a marker key into ``bucket`` and wait for its acknowledgement: every message the
        stream had queued before it is stored. Returns its revision."""
        return int(await (await self.kv(bucket)).put(BARRIER_KEY, b"{}"))

    async def status(self, node: str, name: str) -> dict[str, Any] | None:
        got = await self._get(STATUS, f"{node}.{name}")
        return got[0] if got else None

    async def node(self, node: str) -> tuple[dict[str, Any], int] | None:
        """The node's heartbeat value and its revision."""
        return await self._get(NODES, node)

    async def close(self) -> None:
        await self.nc.close()


@dataclass
class Running:
    agent: Agent
    session: NatsSession
    executor: FakeExecutor
    store: RocksStore

    def states(self) -> dict[str, TaskState]:
        return {v.name: v.state for v in self.agent.snapshot().tasks if v.current}

    def current_id(self, name: str) -> str | None:
        for v in self.agent.snapshot().tasks:
            if v.current and v.name == name:
                return v.id
        return None

    def running(self, *names: str) -> bool:
        states = self.states()
        return all(states.get(n) == TaskState.RUNNING for n in names)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.agent.metrics.registry.get_sample_value(name, labels)


@contextlib.asynccontextmanager
async def running_agent(
    state: Path,
    servers: list[str],
    *,
    node_id: str = "node-a",
    creds: Path | None = None,
    executor: FakeExecutor | None = None,
    flags: tuple[str, ...] = (),
) -> AsyncIterator[Running]:
    """The agent on the fake runtime with a fleet session to ``servers``; stopped on exit.
    ``flags`` are more of ``reconciler run``'s (the node's policy, say)."""
    clock = SystemClock()
    store = RocksStore.open(state)
    ex = executor or FakeExecutor(clock=clock, node_id=node_id)
    assembled = assemble_agent(
        agent_options(state, "--manager", ",".join(servers), *flags),
        store=store,
        node_id=node_id,
        clock=clock,
        runtime=lambda _: ex,
        session=lambda agent: fleet_session(
            agent,
            NatsOptions(servers=tuple(servers), creds=creds),
            labels=(("zone", "test"),),
            idle_heartbeat=1.0,
        ),
        boot_id="boot-1",
    )
    agent, session = assembled.agent, assembled.session
    assert isinstance(session, NatsSession)
    stop = asyncio.Event()
    task = asyncio.create_task(assembled.run(stop))
    try:
        yield Running(agent, session, ex, store)
    finally:
        stop.set()
        await ended(task, f"the agent {node_id}")
        store.close()


class TcpProxy:
    """A loopback TCP proxy to ``target_port`` that can be cut (every connection closed, no
    new ones accepted) and restored on the same port."""

    def __init__(self, target_port: int, port: int) -> None:
        self.target_port = target_port
        self.port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for w in list(self._writers):
            w.close()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)

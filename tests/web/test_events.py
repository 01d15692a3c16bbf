"""``GET /v1/events``: a real server on 127.0.0.1, read as a browser's EventSource reads it.

Hang guards only: no test asserts how fast anything happens (``bench/page.py`` measures that).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from reconciler.core.model import TaskState
from reconciler.core.snapshot import Changes, Snapshot
from reconciler.observe.metrics import Metrics
from reconciler.testing.polling import eventually
from reconciler.web import server as rhttp
from reconciler.web import sse
from reconciler.web.agent_routes import serve_agent
from tests.web.support import snapshot, view, with_state

HANG = 10.0


class Source:
    """The snapshot an agent would hold, and its ``Changes``."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.changes = Changes()
        self.reads = 0  # how often the server read the snapshot

    def __call__(self) -> Snapshot:
        self.reads += 1
        return self.snap

    def swap(self, snap: Snapshot) -> None:
        self.snap = snap
        self.changes.bump()


@dataclass
class Agent:
    source: Source
    server: rhttp.Server
    port: int
    clients: list[Stream] = field(default_factory=list)

    async def open(self, *, rcvbuf: int | None = None, host: str = "127.0.0.1") -> Stream:
        stream = await Stream.open(self.port, rcvbuf=rcvbuf, host=host)
        self.clients.append(stream)
        return stream


async def serve(
    source: Source,
    *,
    changes: Changes | None,
    limits: rhttp.Limits = rhttp.DEFAULT_LIMITS,
    hosts: frozenset[str] = frozenset(),
) -> rhttp.Server:
    metrics = Metrics(snapshot=source, registry=CollectorRegistry())
    return await serve_agent(
        "127.0.0.1",
        0,
        snapshot=source,
        metrics=metrics,
        changes=changes,
        limits=limits,
        hosts=hosts,
    )


@contextlib.asynccontextmanager
async def running(
    limits: rhttp.Limits = rhttp.DEFAULT_LIMITS, *, hosts: frozenset[str] = frozenset()
) -> AsyncIterator[Agent]:
    """An agent's server on 127.0.0.1 with ``limits`` and ``hosts``; its clients closed at
    the end."""
    source = Source(snapshot())
    server = await serve(source, changes=source.changes, limits=limits, hosts=hosts)
    a = Agent(source, server, server.sockets[0].getsockname()[1])
    try:
        yield a
    finally:
        for client in a.clients:
            await client.close()
        server.close()
        async with asyncio.timeout(HANG):
            await server.wait_closed()


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    async with running() as a:
        yield a


class Stream:
    """One client connection to /v1/events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None, host: str = "127.0.0.1") -> Stream:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(
            b"GET /v1/events HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n"
            % host.encode()
        )
        await writer.drain()
        stream = cls(reader, writer)
        async with asyncio.timeout(HANG):
            head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        stream.status = int(lines[0].split(" ")[1])
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                stream.headers[k.strip().lower()] = v.strip()
        return stream

    async def block(self) -> list[str]:
        """The lines of the next block (an event, a comment or a retry field)."""
        lines: list[str] = []
        async with asyncio.timeout(HANG):
            while True:
                raw = await self.reader.readuntil(b"\n")
                line = raw.decode().rstrip("\n")
                if not line:
                    if lines:
                        return lines
                    continue
                lines.append(line)

    async def event(self) -> dict[str, Any]:
        """The data of the next event, skipping comments and fields without data."""
        while True:
            lines = await self.block()
            data = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
            if data:
                assert len(data) == 1, lines
                out: dict[str, Any] = json.loads(data[0])
                return out

    async def eof(self) -> bytes:
        async with asyncio.timeout(HANG):
            return await self.reader.read()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def request(port: int, raw: bytes) -> bytes:
    """Send one raw request; the whole answer, up to the server's close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        async with asyncio.timeout(HANG):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_the_stream_is_an_event_stream_that_starts_with_the_full_state(agent: Agent) -> None:
    s = await agent.open()
    assert s.status == 200
    assert s.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert s.headers["cache-control"] == "no-store"
    assert "content-length" not in s.headers
    assert await s.block() == [f"retry: {sse.RETRY_MS}"]
    first = await s.event()
    assert first["full"] is True
    assert [t["name"] for t in first["tasks"]] == ["api", "web"]
    assert first["node"]["nodeId"] == "node-a"


async def test_a_change_sends_only_the_changed_task(agent: Agent) -> None:
    s = await agent.open()
    await s.event()
    agent.source.swap(with_state(agent.source.snap, "web", TaskState.RUNNING))
    delta = await s.event()
    assert "full" not in delta
    assert [t["name"] for t in delta["tasks"]] == ["web"]
    assert delta["tasks"][0]["instances"][0]["state"] == "running"
    assert set(delta) == {"now", "tasks"}


async def test_a_removed_name_is_sent_as_removed(agent: Agent) -> None:
    s = await agent.open()
    await s.event()
    agent.source.swap(replace(agent.source.snap, tasks=agent.source.snap.tasks[:2]))
    assert (await s.event())["removed"] == ["web"]


async def test_a_new_snapshot_with_nothing_new_sends_nothing(agent: Agent) -> None:
    s = await agent.open()
    await s.event()
    reads = agent.source.reads
    agent.source.swap(snapshot())  # equal content: the agent rebuilds after every resync pass
    # the stream read it (and found nothing to send) before the next, real change
    await eventually(lambda: agent.source.reads > reads, "the stream reading the equal snapshot")
    agent.source.swap(snapshot(reports_pending=3))
    delta = await s.event()  # the first event after the no-op swap is the real change
    assert set(delta) == {"now", "agent"}
    assert delta["agent"]["reportsPending"] == 3


async def test_changes_between_two_wakes_fold_into_one_delta(agent: Agent) -> None:
    s = await agent.open()
    await s.event()
    base = agent.source.snap
    agent.source.swap(with_state(base, "web", TaskState.RUNNING))
    agent.source.swap(with_state(base, "web", TaskState.FAILED, err="exit 1"))
    agent.source.swap(
        replace(agent.source.snap, tasks=(*agent.source.snap.tasks, view("zed", "z")))
    )
    delta = await s.event()
    assert [t["name"] for t in delta["tasks"]] == ["web", "zed"]
    assert delta["tasks"][0]["instances"][0]["state"] == "failed"


async def test_an_idle_stream_gets_keepalive_comments(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE", 0.05)
    s = await agent.open()
    await s.event()
    assert await s.block() == [sse.KEEPALIVE_COMMENT.decode().strip()]


async def test_without_changes_the_stream_sends_the_state_then_keepalives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE", 0.05)
    server = await serve(Source(snapshot()), changes=None)
    try:
        s = await Stream.open(server.sockets[0].getsockname()[1])
        assert (await s.event())["full"] is True
        assert (await s.block())[0].startswith(":")
        await s.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_streams_are_capped_apart_from_other_requests() -> None:
    async with running(rhttp.Limits(max_streams=2, max_connections=2)) as agent:
        streams = [await agent.open() for _ in range(2)]
        for s in streams:
            await s.event()
        refused = await agent.open()
        assert refused.status == 503
        assert refused.headers["retry-after"]
        answer = await request(agent.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK")


async def test_a_stream_ends_after_its_life_and_a_new_one_starts_from_the_full_state() -> None:
    async with running(rhttp.Limits(max_streams=1, stream_life=0.2)) as agent:
        first = await agent.open()
        assert (await first.event())["full"] is True
        await first.eof()  # the server ends it, the client never hangs up (else HANG fails)
        again = await agent.open()  # what a browser's EventSource does after `retry` ms
        assert again.status == 200  # the slot the first held is free
        assert (await again.event())["full"] is True


async def test_a_client_that_hangs_up_frees_its_stream_slot() -> None:
    async with running(rhttp.Limits(max_streams=1)) as agent:
        await _hang_up_and_reconnect(agent)


async def _hang_up_and_reconnect(agent: Agent) -> None:
    first = await agent.open()
    await first.event()
    await first.close()

    async def admitted() -> Stream | None:
        s = await agent.open()
        return s if s.status == 200 else None

    # the server notices the hangup on its own, without a write
    s = await eventually(admitted, "a new stream admitted in the freed slot", within=HANG)
    assert (await s.event())["full"] is True


async def test_closing_the_server_ends_open_streams(agent: Agent) -> None:
    s = await agent.open()
    await s.event()
    agent.server.close()
    async with asyncio.timeout(HANG):
        await agent.server.wait_closed()
    assert await s.eof() == b""


async def test_a_client_that_does_not_read_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "WRITE_TIMEOUT", 0.2)
    async with running(rhttp.Limits(max_streams=1)) as agent:
        await _dropped_when_it_does_not_read(agent)


async def _dropped_when_it_does_not_read(agent: Agent) -> None:
    s = await agent.open(rcvbuf=4096)
    await s.event()
    # deltas of a few MB each, far beyond the socket buffers, which the client never reads,
    # until the server drops it: its slot is free again (MAX_STREAMS is 1)
    swaps = 0

    async def dropped() -> bool:
        nonlocal swaps
        swaps += 1
        tasks = tuple(view(f"t{i:05d}", f"{i:010x}", message=f"{swaps}" * 300) for i in range(4000))
        agent.source.swap(replace(agent.source.snap, tasks=tasks))
        return (await agent.open()).status == 200

    await eventually(dropped, "the client that does not read dropped", every=0.2)
    try:
        received = await s.eof()  # the server cut it off: the end comes without a shutdown
    except ConnectionResetError:
        received = b""
    assert received.count(b"\ndata: ") < swaps  # and it never got every event


async def test_head_answers_the_stream_headers_without_a_stream(agent: Agent) -> None:
    head = await request(agent.port, b"HEAD /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: text/event-stream" in head


async def test_other_methods_on_the_stream_are_405(agent: Agent) -> None:
    head = await request(
        agent.port, b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )
    assert head.startswith(b"HTTP/1.1 405")

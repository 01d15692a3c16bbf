"""Who the server lets in: the Host rule (DNS rebinding) and the connection slots, by real
clients (raw sockets and ``http.client``) against a real agent server on 127.0.0.1.

Hang guards only: no test asserts how fast anything happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
from collections.abc import AsyncIterator

import pytest

from reconciler.testing.polling import eventually
from reconciler.web import server as rhttp
from reconciler.web.admission import host_allowed, normal_host
from tests.web.test_events import HANG, Agent, request, running

STATE_PATHS = ("/", "/v1/tasks", "/v1/node", "/v1/events")
PROBE_PATHS = ("/metrics", "/healthz", "/readyz")


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    async with running() as a:
        yield a


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:9469",
        "10.1.2.3:80",
        "[::1]",
        "[::1]:9469",
        "[fe80::1]:9469",
        "localhost",
        "LocalHost:9469",
        "localhost.",
    ],
)
def test_ip_literals_and_localhost_are_admitted(host: str) -> None:
    assert host_allowed(host)


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "evil.example",
        "evil.example:9469",
        "127.0.0.1.evil.example",
        "app.localhost",  # some resolvers send *.localhost to the network
        "::1",  # IPv6 only in brackets
        "[::1",
        "[::1]x",
        "[evil.example]",
        "127.0.0.1:port",
        "127.0.0.1:",
        "localhost:123456",
    ],
)
def test_other_hosts_are_foreign(host: str | None) -> None:
    assert not host_allowed(host)


def test_a_given_name_is_admitted_with_or_without_port() -> None:
    names = frozenset({normal_host("Edge-1.Example.")})
    assert host_allowed("edge-1.example", names)
    assert host_allowed("EDGE-1.example:9469", names)
    assert not host_allowed("edge-2.example", names)


@pytest.mark.parametrize("name", ["", "a b", "x:80", "[::1]", "-x.example", "a..b", "é.example"])
def test_a_name_that_is_not_a_dns_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="expected a DNS name"):
        normal_host(name)


def fetch(port: int, path: str, host: str | None) -> int:
    """The status of GET ``path`` by ``http.client`` with ``Host: host`` (None: no Host)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


async def status(port: int, path: str, host: str | None) -> int:
    return await asyncio.to_thread(fetch, port, path, host)


async def test_a_foreign_host_gets_421_on_state_routes_and_answers_on_probes(
    agent: Agent,
) -> None:
    for host in ("evil.example", f"evil.example:{agent.port}", None):
        assert [await status(agent.port, p, host) for p in STATE_PATHS] == [421] * 4
        assert [await status(agent.port, p, host) for p in PROBE_PATHS] == [200] * 3


async def test_a_second_host_header_is_a_bad_request(agent: Agent) -> None:
    answer = await request(
        agent.port, b"GET /v1/node HTTP/1.1\r\nHost: evil.example\r\nHost: 127.0.0.1\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400")


async def test_ip_literals_and_localhost_reach_every_route(agent: Agent) -> None:
    for host in (f"127.0.0.1:{agent.port}", f"[::1]:{agent.port}", "localhost"):
        routes = ("/", "/v1/tasks", "/v1/node", *PROBE_PATHS)
        assert [await status(agent.port, p, host) for p in routes] == [200] * 6
    for host in ("localhost", f"[::1]:{agent.port}"):
        stream = await agent.open(host=host)
        assert stream.status == 200 and (await stream.event())["full"] is True
    assert (await agent.open(host="evil.example")).status == 421


async def test_a_name_given_to_the_server_reaches_the_state_routes() -> None:
    async with running(hosts=frozenset({"edge-1.example"})) as agent:
        assert await status(agent.port, "/v1/node", "edge-1.example:9469") == 200
        assert await status(agent.port, "/", "edge-1.example") == 200
        assert await status(agent.port, "/v1/node", "edge-2.example") == 421


class Idle:
    """Connections that send nothing, each holding a slot until closed."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self, port: int, n: int) -> None:
        for _ in range(n):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            self.writers.append(writer)

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        self.writers.clear()


@contextlib.asynccontextmanager
async def idle() -> AsyncIterator[Idle]:
    held = Idle()
    try:
        yield held
    finally:
        await held.close()


async def test_with_every_ordinary_slot_held_scrapes_and_probes_still_answer() -> None:
    limits = rhttp.Limits(max_connections=4, per_client=100, reserved=2, first_line_timeout=HANG)
    async with running(limits) as agent, idle() as held:
        await held.open(agent.port, 4)
        assert [await status(agent.port, p, "127.0.0.1") for p in PROBE_PATHS] == [200] * 3
        assert await status(agent.port, "/v1/node", "127.0.0.1") == 503  # ordinary: all held
        await held.close()

        async def served() -> bool:
            return await status(agent.port, "/v1/node", "127.0.0.1") == 200

        await eventually(served, "the ordinary slots freed", within=HANG)


async def attempt(port: int, path: str = "/healthz") -> bytes:
    """What the server answers GET ``path`` on a new connection (b"" when it drops it)."""
    try:
        return await request(port, b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
    except ConnectionResetError:
        return b""


async def test_one_client_holds_at_most_its_share_and_its_probes_still_answer() -> None:
    limits = rhttp.Limits(per_client=3, reserved_per_client=2, first_line_timeout=HANG)
    async with running(limits) as agent, idle() as held:
        await held.open(agent.port, 3)  # its ordinary share
        assert (await attempt(agent.port, "/v1/node")).startswith(b"HTTP/1.1 503")
        assert (await attempt(agent.port, "/healthz")).startswith(b"HTTP/1.1 200 OK")
        await held.open(agent.port, 2)  # and its reserved share
        assert await attempt(agent.port) == b""  # dropped unanswered
        writer = held.writers.pop(0)
        writer.close()
        await writer.wait_closed()

        async def answered() -> bool:
            return (await attempt(agent.port, "/v1/node")).startswith(b"HTTP/1.1 200 OK")

        await eventually(answered, "a slot of the client's own freed", within=HANG)


async def test_a_socket_that_sends_no_request_line_is_closed() -> None:
    async with running(rhttp.Limits(first_line_timeout=0.1)) as agent:
        reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
        try:
            async with asyncio.timeout(HANG):  # the server closes it: read() ends
                answer = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 408") or answer == b""

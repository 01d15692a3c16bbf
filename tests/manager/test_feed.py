"""The manager's page over HTTP (``serve_routes`` with a page): ``/`` under its own policy, and
``/v1/events`` following the manager's ``Snapshots`` from a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from reconciler.core.clock import settle
from reconciler.manager.page import CONTENT_SECURITY_POLICY, ManagerPage
from reconciler.manager.snapshot import FleetSnapshot, Snapshots
from reconciler.testing.fleetworld import GRACE, World, two_nodes
from reconciler.web import server as rhttp
from tests.web.test_events import HANG, Stream, request


class Manager:
    """A manager's picture and its ``Snapshots``, served as ``reconciler manager`` serves it."""

    def __init__(self) -> None:
        self.world = two_nodes()
        self.builds = 0
        self.snapshots = Snapshots(self._build, lambda: 0.0)

    def _build(self, keep: FleetSnapshot | None) -> FleetSnapshot:
        self.builds += 1
        return self.world.snapshot(keep=keep)

    def change(self, world: World) -> None:
        self.world = world
        self.snapshots.changed()


@pytest.fixture
async def served() -> AsyncIterator[tuple[Manager, int]]:
    m = Manager()
    routes: dict[str, rhttp.Route] = {"/healthz": lambda: (200, "text/plain", b"ok\n")}
    page = ManagerPage(m.snapshots.current)
    server = await rhttp.serve_routes(
        "127.0.0.1", 0, routes, page=page, changes=m.snapshots.changes
    )
    try:
        yield m, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        async with asyncio.timeout(HANG):
            await server.wait_closed()


async def test_the_manager_serves_its_page_under_its_policy_beside_its_routes(
    served: tuple[Manager, int],
) -> None:
    _, port = served
    answer = await request(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-type: text/html; charset=utf-8" in head.lower()
    assert f"Content-Security-Policy: {CONTENT_SECURITY_POLICY}".encode() in head
    assert b'<tr data-key="web-1"' not in body and b'<tr data-key="a.web-1"' in body
    healthz = await request(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert healthz.startswith(b"HTTP/1.1 200") and healthz.endswith(b"ok\n")


async def test_the_stream_starts_with_the_fleet_and_follows_a_node_going_down(
    served: tuple[Manager, int],
) -> None:
    m, port = served
    s = await Stream.open(port)
    try:
        first = await s.event()
        assert first["full"] is True
        assert [(n["node"], n["state"]) for n in first["nodes"]] == [("a", "ready"), ("b", "ready")]
        later = two_nodes()
        later.now = GRACE * 3
        later.node("a", later.now, site="north")
        m.change(later)
        delta = await s.event()
        assert [(n["node"], n["state"]) for n in delta["nodes"]] == [("b", "down")]
        assert "full" not in delta
    finally:
        await s.close()


async def test_without_a_watcher_changes_build_nothing(served: tuple[Manager, int]) -> None:
    m, port = served
    await request(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    builds = m.builds
    for _ in range(50):
        m.change(two_nodes())
    await settle()
    assert m.builds == builds

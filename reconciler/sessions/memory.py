"""An in-memory session: the manager is whoever calls ``send()``.

Shipped as real code for tests, benchmarks and embedding: it implements ``Session`` over an
asyncio queue, records every status report, and can be told to fail reports to exercise the
agent's retry path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

from reconciler.core.model import NodeDescription
from reconciler.core.session import NamedStatus, SessionMessage


class MemorySession:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[SessionMessage | None] = asyncio.Queue()
        self.reports: list[NamedStatus] = []
        self.latest: dict[str, NamedStatus] = {}
        self.heartbeats: list[tuple[NodeDescription, bool]] = []
        self.fail_reports = 0
        self.closed = False

    def send(self, message: SessionMessage) -> None:
        self._queue.put_nowait(message)

    async def messages(self) -> AsyncIterator[SessionMessage]:
        while True:
            message = await self._queue.get()
            if message is None:
                return
            yield message

    async def report(self, statuses: Mapping[str, NamedStatus]) -> None:
        if self.fail_reports > 0:
            self.fail_reports -= 1
            raise ConnectionError("manager unreachable")
        for name, status in statuses.items():
            self.reports.append(status)
            self.latest[name] = status

    async def heartbeat(self, node: NodeDescription, *, ready: bool) -> None:
        self.heartbeats.append((node, ready))

    @property
    def connected(self) -> bool:
        return not self.closed

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)

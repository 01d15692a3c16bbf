"""Putting a fleet manager together: the driver, its metrics and its status page.

``assemble_manager`` is the one place a manager is built, for ``reconciler manager run``, the
test harnesses and the benchmarks alike. It connects to NATS only when it runs.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.core.clock import Clock, SystemClock
from reconciler.core.snapshot import Changes
from reconciler.core.supervisor import Supervisor
from reconciler.fleet.options import NatsOptions
from reconciler.manager.driver import FleetManager, ManagerConfig
from reconciler.manager.metrics import ManagerMetrics
from reconciler.manager.page import ManagerPage
from reconciler.observe.metrics import CONTENT_TYPE
from reconciler.web.server import Route
from reconciler.web.sse import Page

__all__ = ["AssembledManager", "ManagerOptions", "assemble_manager"]


@dataclass(frozen=True, slots=True)
class ManagerOptions:
    """Everything ``reconciler manager run`` was asked to do, checked. ``max_bytes`` and
    ``max_value_size``: the buckets' quotas that differ from the contract's defaults, by
    bucket name."""

    nats: NatsOptions
    listen: tuple[str, int]
    grace: float
    lease: float
    max_bytes: Mapping[str, int] = field(default_factory=dict)
    max_value_size: Mapping[str, int] = field(default_factory=dict)
    http_hosts: frozenset[str] = frozenset()  # names the page answers to (--http-host)


@dataclass
class AssembledManager:
    """A fleet manager with its metrics and status page, ready to ``run``."""

    manager: FleetManager
    metrics: ManagerMetrics
    supervisor: Supervisor
    program: str = "manager"
    _page: ManagerPage | None = field(default=None, repr=False)

    def readiness(self) -> tuple[bool, str]:
        return self.manager.readiness()

    def routes(self) -> dict[str, Route]:
        return {"/metrics": lambda: (200, CONTENT_TYPE, self.metrics.render())}

    @property
    def page(self) -> Page[Any]:
        if self._page is None:
            self._page = ManagerPage(self.manager.snapshots.current)
        return self._page

    @property
    def changes(self) -> Changes:
        return self.manager.snapshots.changes

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set. A leader resigns on the way out, so a standby takes
        over at once."""
        self.supervisor.start("manager", self.manager.run)
        try:
            await stop.wait()
        finally:
            await self.manager.resign()
            await self.supervisor.stop()


def new_manager_id() -> str:
    """A name for this manager in the leader key: host, process and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def assemble_manager(
    options: ManagerOptions,
    *,
    clock: Clock | None = None,
    manager_id: str | None = None,
    **tuning: Any,
) -> AssembledManager:
    """Put a fleet manager together (its NATS connection is made when it runs). ``tuning``
    sets ``ManagerConfig``'s other timings (tests shorten the heartbeat)."""
    clock = clock or SystemClock()
    manager = FleetManager(
        options=options.nats,
        config=ManagerConfig(
            manager_id=manager_id or new_manager_id(),
            grace=options.grace,
            lease=options.lease,
            max_bytes=options.max_bytes,
            max_value_size=options.max_value_size,
            **tuning,
        ),
        clock=clock,
    )
    metrics = ManagerMetrics(counts=manager.counts)
    manager.metrics = metrics
    return AssembledManager(manager=manager, metrics=metrics, supervisor=Supervisor(clock=clock))

"""A whole fleet in one event loop for the manager's tests: real nats-server, managers and agents.

- ``FleetAgent``: the whole ``Agent`` on the fake runtime (``reconciler/testing/fake.py``) with a
  ``NatsSession``, with labels of its own; ``stop()`` and ``start()`` again keep its store and
  its fake containers, as an agent that goes away and comes back does.
- ``ManagerProcess``: a ``FleetManager`` (with its metrics) as a task; ``kill()`` cancels it
  without resigning, as a crash leaves the leader key to age out; ``stop()`` resigns first.
- ``Fleet``: the fleet's buckets as a test reads them, applying ServiceSet text as
  ``reconciler manager apply`` does, and writing availability as ``manager drain`` does.

Each takes ``creds`` (a credentials file) for a server that wants users, and a manager takes
the buckets' quotas as ``reconciler manager run`` does (``max_bytes``, ``max_value_size``).

Timings are short (a grace period and lease of about a second, heartbeats every 200 ms), so
failures and failovers happen within a test; every wait is ``eventually``'s generous deadline
(``reconciler.testing.polling``). Stopping is bounded too: a manager cancelled once, or an agent
asked to stop, that does not end fails the test and names where it waits
(``reconciler.testing.tasks``), rather than hanging it.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from reconciler.agent.agent import Agent
from reconciler.assemble.agent import assemble_agent, fleet_session
from reconciler.assemble.manager import ManagerOptions, assemble_manager
from reconciler.core.clock import SystemClock
from reconciler.core.model import Availability, NodeDescription, TaskState
from reconciler.fleet.buckets import CONTROL, FLEET_KEY
from reconciler.fleet.options import NatsOptions
from reconciler.fleet.provision import init_buckets
from reconciler.fleet.values import FLEET_FORMAT
from reconciler.manager.admin import apply_services, read_fleet
from reconciler.manager.control import set_availability
from reconciler.manager.services import parse_service_file
from reconciler.manager.view import FleetView
from reconciler.store.rocks import RocksStore
from reconciler.testing.agents import agent_options
from reconciler.testing.fake import FakeExecutor
from reconciler.testing.tasks import ended, stopped
from tests.fleet.support import IMAGE

__all__ = [
    "IMAGE",
    "Fleet",
    "FleetAgent",
    "ManagerProcess",
    "service_set",
    "spread",
]

GRACE = 1.5
LEASE = 1.5
HEARTBEAT = "200ms"


def service_set(*services: dict[str, Any]) -> str:
    """ServiceSet YAML (JSON is YAML) for ``services``, each with the test image by default."""
    items = [{"image": IMAGE, **s} for s in services]
    return json.dumps({"apiVersion": "reconciler/v1", "kind": "ServiceSet", "services": items})


class FleetAgent:
    """One agent of the fleet, on the fake runtime; see the module docstring."""

    def __init__(
        self,
        state: Path,
        servers: list[str],
        node_id: str,
        *,
        labels: dict[str, str] | None = None,
        cpus: int = 8,
        creds: Path | None = None,
        flags: tuple[str, ...] = (),
    ) -> None:
        self.node_id = node_id
        self.flags = flags  # more `reconciler run` flags (the node's policy, say)
        self.servers = servers
        self.creds = creds
        self.labels = tuple((labels or {}).items())
        self.clock = SystemClock()
        self.executor = FakeExecutor(
            clock=self.clock,
            node_id=node_id,
            node=NodeDescription(
                hostname=node_id,
                os="linux",
                arch="amd64",
                cpus=cpus,
                memory_bytes=16 << 30,
                runtime_name="fake",
                runtime_version="0",
                agent_version="0",
            ),
        )
        self.state = state
        self.store = RocksStore.open(state)
        self.agent: Agent | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        assert self._task is None
        assembled = assemble_agent(
            agent_options(self.state, "--manager", ",".join(self.servers), *self.flags),
            store=self.store,
            node_id=self.node_id,
            clock=self.clock,
            runtime=lambda _: self.executor,
            session=lambda agent: fleet_session(
                agent,
                NatsOptions(servers=tuple(self.servers), creds=self.creds),
                labels=self.labels,
                idle_heartbeat=1.0,
            ),
            boot_id="boot-1",
        )
        self.agent = assembled.agent
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(assembled.run(self._stop))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stop.set()
            await ended(task, f"the agent {self.node_id}")

    def close(self) -> None:
        self.store.close()

    def states(self) -> dict[str, TaskState]:
        if self.agent is None:
            return {}
        return {v.name: v.state for v in self.agent.snapshot().tasks if v.current}

    def running(self) -> set[str]:
        return {n for n, s in self.states().items() if s == TaskState.RUNNING}

    def current_id(self, name: str) -> str | None:
        if self.agent is None:
            return None
        return next(
            (v.id for v in self.agent.snapshot().tasks if v.current and v.name == name), None
        )

    def env(self, name: str) -> dict[str, str]:
        assert self.agent is not None and self.agent.manager is not None
        desired = self.agent.manager.desired[name]
        assert desired is not None
        return dict(desired.spec.env)


class ManagerProcess:
    """A ``FleetManager`` running in this loop; see the module docstring."""

    def __init__(
        self,
        servers: list[str],
        manager_id: str,
        *,
        creds: Path | None = None,
        max_bytes: Mapping[str, int] | None = None,
        max_value_size: Mapping[str, int] | None = None,
        **config: Any,
    ) -> None:
        config.setdefault("idle_heartbeat", 1.0)
        assembled = assemble_manager(
            ManagerOptions(
                nats=NatsOptions(servers=tuple(servers), creds=creds),
                listen=("127.0.0.1", 0),
                grace=config.pop("grace", GRACE),
                lease=config.pop("lease", LEASE),
                max_bytes=dict(max_bytes or {}),
                max_value_size=dict(max_value_size or {}),
            ),
            manager_id=manager_id,
            **config,
        )
        self.manager = assembled.manager
        self.metrics = assembled.metrics
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.manager.run())

    @property
    def leading(self) -> bool:
        return self.manager.leading

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    async def kill(self) -> None:
        """End it as a crash would: the leader key is left to age out."""
        task, self._task = self._task, None
        if task is not None:
            await stopped(task, f"the manager {self.manager.config.manager_id}")

    async def stop(self) -> None:
        await self.manager.resign()
        await self.kill()


class Fleet:
    """A test's handle on the fleet: the buckets through the commands' own functions."""

    def __init__(self, servers: list[str], *, creds: Path | None = None) -> None:
        self.servers = servers
        self.options = NatsOptions(servers=tuple(servers), creds=creds)

    async def init(self, nc: Client, *, replicas: int = 1, **quotas: Mapping[str, int]) -> None:
        """The buckets, as ``manager init`` makes them (``quotas``: ``max_bytes``,
        ``max_value_size``), with the fleet's short heartbeat period."""
        js = nc.jetstream(timeout=10)
        await init_buckets(js, replicas=replicas, lease=LEASE, **quotas)
        kv = await js.key_value(CONTROL)
        fleet = {"heartbeatPeriod": HEARTBEAT, "formatVersion": FLEET_FORMAT}
        await kv.put(FLEET_KEY, json.dumps(fleet).encode())

    async def apply(self, text: str, *, prune: bool = False) -> list[str]:
        services = parse_service_file(textwrap.dedent(text).encode(), "test.yaml")
        lines, _ = await apply_services(self.options, services, prune=prune, dry_run=False)
        return lines

    async def availability(self, node: str, value: Availability) -> None:
        await set_availability(self.options, node, value)

    async def read(self) -> FleetView:
        return await read_fleet(self.options)

    async def placement(self) -> dict[str, list[str]]:
        """Task name -> the nodes whose assignments hold it."""
        view = await self.read()
        out: dict[str, list[str]] = {}
        for p in sorted(view.placed(), key=lambda p: (p.task, p.node)):
            out.setdefault(p.task, []).append(p.node)
        return out

    async def settled(self, tasks: set[str], agents: list[FleetAgent]) -> dict[str, str] | None:
        """When every task in ``tasks`` is assigned exactly once and runs on its node (and no
        other task is assigned): task -> node. Otherwise None."""
        placement = await self.placement()
        if set(placement) != tasks or any(len(nodes) != 1 for nodes in placement.values()):
            return None
        where = {task: nodes[0] for task, nodes in placement.items()}
        by_id = {a.node_id: a for a in agents}
        for task, node in where.items():
            agent = by_id.get(node)
            if agent is None or task not in agent.running():
                return None
        return where


def spread(where: dict[str, str]) -> list[int]:
    """Tasks per node, sorted."""
    return sorted(Counter(where.values()).values())

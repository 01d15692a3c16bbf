"""The fleet behind ``bench page``'s manager half: what a busy manager's page shows, and the
manager's own route to it (``FleetView`` -> ``Snapshots`` -> ``ManagerPage``).

``Fleet`` is the test aids' ``World`` (``reconciler.testing.fleetworld``: a real ``FleetView``
judged by the real scheduler and pictured by the real ``build_snapshot``) with ``NODES``
nodes and ``SERVICES`` services of ``REPLICAS`` replicas each (1,000 tasks), every task
assigned and reported running, behind the manager's ``Snapshots`` (built at the first read
after a change, the plan made once, as ``FleetManager`` does). ``beat(node)`` applies a
heartbeat as the manager's watch does (``Snapshots.beat``); ``change(task, n)`` a status
report with message ``update n`` (``Snapshots.changed``).
"""

from __future__ import annotations

import time
from typing import Final

from reconciler.fleet.buckets import NODES
from reconciler.fleet.values import rfc3339
from reconciler.manager.snapshot import FleetSnapshot, Snapshots
from reconciler.testing.fleetworld import World, heartbeat

NODES_N: Final = 20
SERVICES_N: Final = 50
REPLICAS: Final = 20  # 50 x 20 = 1,000 tasks
GRACE: Final = 15.0


def node_id(i: int) -> str:
    return f"edge-{i:02d}"


class Fleet:
    """See the module docstring."""

    def __init__(self) -> None:
        self.world = World(GRACE, start=time.monotonic())
        self.snapshots = Snapshots(self._build, time.monotonic)  # built at its first read
        for i in range(NODES_N):
            self.beat(node_id(i))
        for s in range(SERVICES_N):
            self.world.service(f"svc{s:02d}", command=["sleep", "3600"], replicas=REPLICAS)
        for put in self.world.plan(time.monotonic()).puts:
            self.world.assign(put.node, put.task)
            self._status(put.node, put.task, "running", "started")
        self.plan = self.world.plan(time.monotonic())
        self.where = {p.task: p.node for p in self.world.view.placed()}

    def _status(self, node: str, task: str, state: str, message: str) -> None:
        self.world.status(
            node,
            task,
            state,
            id=f"{task}-{self.world.revision}",
            message=message,
            updatedAt=rfc3339(time.time()),
        )

    def _build(self, keep: FleetSnapshot | None) -> FleetSnapshot:
        return self.world.snapshot(time.monotonic(), keep=keep, plan=self.plan)

    def beat(self, node: str) -> None:
        """``node``'s heartbeat arrives."""
        value = heartbeat(node, wall=time.time(), site="lab")
        self.world.put(NODES, node, value, time.monotonic())
        self.snapshots.beat()

    def change(self, task: str, n: int) -> None:
        """``task``'s agent reports it failed or running again, with message ``update n``."""
        state = "failed" if n % 2 else "running"
        self._status(self.where[task], task, state, f"update {n}")
        self.snapshots.changed()

"""The fleet behind ``bench page``'s manager half: what a busy manager's page shows, and the
manager's own route to it (``FleetView`` -> ``Snapshots`` -> ``ManagerPage``).

``Fleet`` holds a real ``FleetView`` of ``NODES`` nodes and ``SERVICES`` services of
``REPLICAS`` replicas each (1,000 tasks), every task assigned and reported running, and the
manager's ``Snapshots`` over it, built as ``FleetManager`` builds them (nodes judged at the
read, the plan made once). ``beat(node)`` applies a heartbeat as the manager's watch does
(``Snapshots.beat``); ``change(task, n)`` a status report with message ``update n``
(``Snapshots.changed``).
"""

from __future__ import annotations

import json
import time
from typing import Final

from reconciler import __version__
from reconciler.core.model import NodeDescription
from reconciler.fleet.buckets import ASSIGNMENTS, NODES, SERVICES, STATUS
from reconciler.fleet.values import Availability, node_value, rfc3339
from reconciler.fleet.watch import Entry
from reconciler.manager.scheduler import schedule
from reconciler.manager.snapshot import FleetSnapshot, ManagerState, Snapshots, build_snapshot
from reconciler.manager.view import FleetView

NODES_N: Final = 20
SERVICES_N: Final = 50
REPLICAS: Final = 20  # 50 x 20 = 1,000 tasks
GRACE: Final = 15.0
IMAGE: Final = "localhost/busybox:latest"


def node_id(i: int) -> str:
    return f"edge-{i:02d}"


class Fleet:
    """See the module docstring."""

    def __init__(self) -> None:
        self.view = FleetView(GRACE)
        self.revision = 0
        self.view.load(NODES, {}, time.monotonic())
        self.snapshots = Snapshots(self._build, time.monotonic)  # built at its first read
        for i in range(NODES_N):
            self.beat(node_id(i))
        for s in range(SERVICES_N):
            doc = {"image": IMAGE, "command": ["sleep", "3600"], "replicas": REPLICAS}
            self._put(SERVICES, f"svc{s:02d}", json.dumps(doc).encode())
        nodes = self.view.node_views(time.monotonic())
        plan = schedule(self.view.services, nodes, self.view.placed())
        for put in plan.puts:
            self._put(ASSIGNMENTS, f"{put.node}.{put.task}", put.value)
            self._status(put.node, put.task, "running", "started")
        self.plan = schedule(self.view.services, nodes, self.view.placed())
        self.where = {p.task: p.node for p in self.view.placed()}

    def _put(self, bucket: str, key: str, value: bytes) -> None:
        self.revision += 1
        self.view.apply(bucket, Entry(key, value, self.revision), time.monotonic())

    def _status(self, node: str, task: str, state: str, message: str) -> None:
        doc = {
            "id": f"{task}-{self.revision}",
            "state": state,
            "restarts": 0,
            "message": message,
            "updatedAt": rfc3339(time.time()),
        }
        self._put(STATUS, f"{node}.{task}", json.dumps(doc).encode())

    def _build(self, keep: FleetSnapshot | None) -> FleetSnapshot:
        state = ManagerState("bench-manager", __version__, True, True, "ready")
        nodes = self.view.node_views(time.monotonic())
        return build_snapshot(self.view, nodes, self.plan, state, keep=keep)

    def beat(self, node: str) -> None:
        """``node``'s heartbeat arrives."""
        description = NodeDescription(
            hostname=node,
            os="linux",
            arch="arm64",
            cpus=4,
            memory_bytes=8 << 30,
            runtime_name="podman",
            runtime_version="4.3.1",
            agent_version=__version__,
        )
        value = node_value(
            node_id=node,
            node=description,
            ready=True,
            availability=Availability.ACTIVE,
            labels={"site": "lab"},
            version=__version__,
            now=time.time(),
        )
        self._put(NODES, node, value)
        self.snapshots.beat()

    def change(self, task: str, n: int) -> None:
        """``task``'s agent reports it failed or running again, with message ``update n``."""
        state = "failed" if n % 2 else "running"
        self._status(self.where[task], task, state, f"update {n}")
        self.snapshots.changed()

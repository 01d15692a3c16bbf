"""A small fleet as the manager sees it, for the manager page's tests: plain bucket values fed to
a real ``FleetView``, judged and planned by the real scheduler (no NATS, no manager loop).

``World`` holds the buckets' values; ``snapshot(now)`` is what the manager's page would show at
``now`` (seconds on the manager's monotonic clock; heartbeats arrive at 0).
"""

from __future__ import annotations

import json
from typing import Any

from reconciler import __version__
from reconciler.core.model import NodeDescription
from reconciler.fleet.buckets import ASSIGNMENTS, NODES, SERVICES, STATUS
from reconciler.fleet.values import Availability, node_value
from reconciler.fleet.watch import Entry
from reconciler.manager.scheduler import schedule
from reconciler.manager.snapshot import FleetSnapshot, ManagerState, build_snapshot
from reconciler.manager.view import FleetView

IMAGE = "localhost/busybox:latest"
GRACE = 10.0
WALL = 1_700_000_000.0  # what the heartbeats say their time was
SECRET = "hunter2-never-shown"


def description(host: str) -> NodeDescription:
    return NodeDescription(
        hostname=host,
        os="linux",
        arch="arm64",
        cpus=4,
        memory_bytes=8 << 30,
        runtime_name="podman",
        runtime_version="4.3.1",
        agent_version=__version__,
    )


def heartbeat(node: str, conditions: dict[str, bool] | None = None, **labels: str) -> bytes:
    return node_value(
        node_id=node,
        node=description(f"{node}.lab"),
        ready=True,
        availability=Availability.ACTIVE,
        labels=labels,
        version=__version__,
        now=WALL,
        conditions=conditions,
    )


def service_value(**fields: Any) -> bytes:
    doc = {"image": IMAGE, "env": {"TOKEN": SECRET}, **fields}
    return json.dumps(doc).encode()


def status_value(state: str, *, id: str = "i1", restarts: int = 0, **fields: Any) -> bytes:
    doc = {"id": id, "state": state, "restarts": restarts, "updatedAt": "2023-11-14T22:13:00Z"}
    return json.dumps({**doc, **fields}).encode()


class World:
    """Bucket values in, the manager's page's snapshot out."""

    def __init__(self) -> None:
        self.view = FleetView(GRACE)
        self.revision = 0
        self.view.load(NODES, {}, 0.0)
        self.leader = True
        self.now = 1.0  # when the manager judges the nodes

    def put(self, bucket: str, key: str, value: bytes | None, now: float = 0.0) -> World:
        self.revision += 1
        self.view.apply(bucket, Entry(key, value, self.revision), now)
        return self

    def node(
        self,
        node: str,
        now: float = 0.0,
        conditions: dict[str, bool] | None = None,
        **labels: str,
    ) -> World:
        return self.put(NODES, node, heartbeat(node, conditions, **labels), now)

    def service(self, name: str, **fields: Any) -> World:
        return self.put(SERVICES, name, service_value(**fields))

    def assign(self, node: str, task: str) -> World:
        name = task.rsplit("-", 1)[0]
        value = self.view.services[name].assignment
        return self.put(ASSIGNMENTS, f"{node}.{task}", value)

    def status(self, node: str, task: str, state: str, **fields: Any) -> World:
        return self.put(STATUS, f"{node}.{task}", status_value(state, **fields))

    def snapshot(
        self, now: float | None = None, *, keep: FleetSnapshot | None = None
    ) -> FleetSnapshot:
        nodes = self.view.node_views(self.now if now is None else now)
        plan = schedule(self.view.services, nodes, self.view.placed())
        state = ManagerState("m-1", __version__, self.leader, True, "ready")
        return build_snapshot(self.view, nodes, plan, state, keep=keep)


def two_nodes() -> World:
    """Nodes a (site=north) and b (site=south); ``web`` (2 replicas, one on each, web-2 failed),
    and ``edge`` (1 replica, only on site=east: unassigned)."""
    w = World().node("a", site="north").node("b", site="south")
    w.service("web", replicas=2).service(
        "edge", placement={"constraints": ["node.labels.site==east"]}
    )
    w.assign("a", "web-1").assign("b", "web-2")
    w.status("a", "web-1", "running", restarts=1, message="started")
    w.status("b", "web-2", "failed", id="i2", restarts=3, error="exit code 1")
    return w

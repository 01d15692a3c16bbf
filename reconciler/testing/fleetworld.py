"""A fleet as the manager sees it, without NATS or a manager loop: bucket values fed to a real
``FleetView``, judged and planned by the real scheduler, pictured by the real ``build_snapshot``.

``World`` holds the buckets' values (``node``'s labels are the ones its agent claims, ``label``'s
those operators set); ``snapshot(now)`` is what the manager's page would show at
``now`` (seconds on the manager's monotonic clock; heartbeats arrive at ``now`` given to
``node``). The manager page's tests build small worlds of it, and ``bench page`` a busy one.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler import __version__
from reconciler.core.model import Availability, NodeDescription
from reconciler.fleet.buckets import ASSIGNMENTS, CONTROL, NODES, SERVICES, STATUS, node_control_key
from reconciler.fleet.values import node_value
from reconciler.fleet.watch import Entry
from reconciler.manager.scheduler import Plan, schedule
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


def heartbeat(
    node: str, conditions: dict[str, bool] | None = None, *, wall: float = WALL, **labels: str
) -> bytes:
    """``node``'s heartbeat value, as its agent writes it, sent at ``wall``."""
    return node_value(
        node_id=node,
        node=description(f"{node}.lab"),
        ready=True,
        availability=Availability.ACTIVE,
        labels=labels,
        version=__version__,
        now=wall,
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

    def __init__(self, grace: float = GRACE, *, start: float = 0.0) -> None:
        self.view = FleetView(grace)
        self.revision = 0
        self.view.load(NODES, {}, start)
        self.leader = True
        self.now = start + 1.0  # when the manager judges the nodes

    def put(self, bucket: str, key: str, value: bytes | None, now: float = 0.0) -> World:
        self.revision += 1
        self.view.apply(bucket, Entry(key, value, self.revision), now)
        return self

    def node(
        self,
        node: str,
        now: float = 0.0,
        conditions: dict[str, bool] | None = None,
        *,
        wall: float = WALL,
        **labels: str,
    ) -> World:
        return self.put(NODES, node, heartbeat(node, conditions, wall=wall, **labels), now)

    def label(self, node: str, **labels: str) -> World:
        """The labels operators set on ``node`` (``reconciler manager label``)."""
        value = json.dumps({"availability": "active", "labels": labels}).encode()
        return self.put(CONTROL, node_control_key(node), value)

    def service(self, name: str, **fields: Any) -> World:
        return self.put(SERVICES, name, service_value(**fields))

    def assign(self, node: str, task: str) -> World:
        name = task.rsplit("-", 1)[0]
        value = self.view.services[name].assignment
        return self.put(ASSIGNMENTS, f"{node}.{task}", value)

    def status(self, node: str, task: str, state: str, **fields: Any) -> World:
        return self.put(STATUS, f"{node}.{task}", status_value(state, **fields))

    def plan(self, now: float | None = None) -> Plan:
        """The scheduler's plan over the world as it stands at ``now``."""
        nodes = self.view.node_views(self.now if now is None else now)
        return schedule(self.view.services, nodes, self.view.placed())

    def snapshot(
        self,
        now: float | None = None,
        *,
        keep: FleetSnapshot | None = None,
        plan: Plan | None = None,
    ) -> FleetSnapshot:
        """What the manager's page shows at ``now``; ``plan`` one already made (the scheduler
        runs again without it)."""
        at = self.now if now is None else now
        nodes = self.view.node_views(at)
        plan = plan or schedule(self.view.services, nodes, self.view.placed())
        state = ManagerState("m-1", __version__, self.leader, True, "ready")
        return build_snapshot(self.view, nodes, plan, state, keep=keep)


def two_nodes() -> World:
    """Nodes a (site=north) and b (site=south), labelled so by their agents and by operators
    (a also by=operator); ``web`` (2 replicas, one on each, web-2 failed),
    and ``edge`` (1 replica, only on site=east: unassigned)."""
    w = World().node("a", site="north").node("b", site="south")
    w.label("a", site="north", by="operator").label("b", site="south")
    w.service("web", replicas=2).service(
        "edge", placement={"constraints": ["node.labels.site==east"]}
    )
    w.assign("a", "web-1").assign("b", "web-2")
    w.status("a", "web-1", "running", restarts=1, message="started")
    w.status("b", "web-2", "failed", id="i2", restarts=3, error="exit code 1")
    return w

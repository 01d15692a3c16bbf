"""Node health on the manager's clock, and the manager's picture of the buckets: plain values."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reconciler.core.codec import node_to_dict
from reconciler.core.model import Availability, Condition, NodeDescription, TaskState
from reconciler.fleet.buckets import ASSIGNMENTS, CONTROL, NODES, SERVICES, STATUS
from reconciler.fleet.values import BadValue, node_value
from reconciler.fleet.watch import Entry
from reconciler.manager.health import Health, NodeHealth, parse_heartbeat
from reconciler.manager.view import FleetView

GRACE = 10.0


def beat(ready: bool = True, **fields: Any) -> bytes:
    return json.dumps({"nodeId": "a", "ready": ready, "labels": {}, **fields}).encode()


def test_a_node_is_ready_while_ready_puts_keep_coming_and_down_a_grace_after_the_last() -> None:
    h = NodeHealth(GRACE)
    h.watching(0.0)
    h.seen("a", parse_heartbeat(beat()), 1.0)
    assert h.health("a", 1.0) is Health.READY
    assert h.health("a", 11.0) is Health.READY
    assert h.next_change(5.0) == 11.0
    assert h.health("a", 11.5) is Health.DOWN


def test_only_ready_false_puts_count_as_no_heartbeat() -> None:
    h = NodeHealth(GRACE)
    h.watching(0.0)
    h.seen("a", parse_heartbeat(beat()), 1.0)
    for t in range(2, 30, 2):
        h.seen("a", parse_heartbeat(beat(ready=False)), float(t))
    assert h.health("a", 5.0) is Health.NOT_READY
    assert h.health("a", 12.0) is Health.DOWN


def test_a_new_watch_gives_every_node_a_full_grace_before_judging_it() -> None:
    h = NodeHealth(GRACE)
    h.watching(100.0)
    h.initial("a", parse_heartbeat(beat()))  # its age is unknown: not a heartbeat seen
    assert h.health("a", 100.0) is Health.NOT_READY  # no new tasks until it beats
    assert h.health("a", 109.0) is Health.NOT_READY  # and not down yet
    assert h.next_change(100.0) == 110.0
    assert h.health("a", 110.5) is Health.DOWN
    h.seen("a", parse_heartbeat(beat()), 105.0)
    assert h.health("a", 105.0) is Health.READY


def test_a_reconnect_does_not_count_the_time_away_against_a_node() -> None:
    h = NodeHealth(GRACE)
    h.watching(0.0)
    h.seen("a", parse_heartbeat(beat()), 1.0)
    h.watching(50.0)  # reconnected: what happened meanwhile was not seen
    assert h.health("a", 55.0) is Health.NOT_READY
    assert h.health("a", 61.0) is Health.DOWN


GIB = 1 << 30
NODE = NodeDescription("a.lab", "linux", "arm64", 4, GIB, "podman", "4.3.1", "0.1.0")


def test_heartbeats_are_read_defensively() -> None:
    described = node_to_dict(NODE, version="0.1.0")
    got = parse_heartbeat(
        beat(**described, labels={"site": "x"}, conditions={"diskPressure": True})
    )
    assert (got.cpus, got.memory, dict(got.labels), got.pressure) == (
        4.0,
        GIB,
        {"site": "x"},
        (Condition.DISK_PRESSURE,),
    )
    assert got.node == NODE and got.hostname == "a.lab" and got.version == "0.1.0"
    assert parse_heartbeat(beat(conditions=["memoryPressure"])).pressure == (
        Condition.MEMORY_PRESSURE,
    )
    undescribed = parse_heartbeat(beat(version="0.1.0"))  # the runtime has not answered yet
    assert (undescribed.node, undescribed.cpus, undescribed.version) == (None, None, "0.1.0")
    for bad in (
        b"[]",
        b'{"ready": "yes"}',
        beat(**{**described, "cpus": "many"}),
        beat(**{**described, "memoryBytes": -1}),
        beat(cpus=4),  # a description is whole or null
        beat(labels={"a": 1}),
        b"\xff",
    ):
        with pytest.raises(BadValue):
            parse_heartbeat(bad)


def test_the_manager_reads_the_description_an_agent_writes() -> None:
    value = node_value(
        node_id="a",
        node=NODE,
        ready=True,
        availability=Availability.ACTIVE,
        labels={"site": "x"},
        version="0.2.0",
        now=0.0,
        conditions={"diskPressure": False, "memoryPressure": True},
    )
    got = parse_heartbeat(value)
    assert got.node == NodeDescription(
        "a.lab", "linux", "arm64", 4, GIB, "podman", "4.3.1", "0.2.0"
    )
    assert (got.version, got.pressure) == ("0.2.0", (Condition.MEMORY_PRESSURE,))


def entry(key: str, value: Any, revision: int) -> Entry:
    data = (
        None
        if value is None
        else (value if isinstance(value, bytes) else json.dumps(value).encode())
    )
    return Entry(key=key, value=data, revision=revision)


def test_the_view_says_when_the_schedulers_inputs_changed() -> None:
    view = FleetView(GRACE)
    view.load(NODES, {}, 0.0)
    assert view.apply(NODES, entry("a", beat(), 1), 1.0)  # first beat: not-ready -> ready
    assert not view.apply(NODES, entry("a", beat(), 2), 2.0)  # only its time moved
    assert view.apply(NODES, entry("a", beat(labels={"site": "x"}), 3), 3.0)
    assert view.apply(CONTROL, entry("node.a", {"availability": "drain"}, 4), 4.0)
    assert view.availability["a"] is Availability.DRAIN
    assert not view.apply(CONTROL, entry("node.a", {"availability": "sideways"}, 5), 5.0)
    assert view.problems and view.availability["a"] is Availability.DRAIN
    assert not view.apply(STATUS, entry("a.web-1", {"state": "running"}, 6), 6.0)
    assert view.statuses["a.web-1"].state is TaskState.RUNNING
    assert not view.apply(STATUS, entry("a.web-2", {"state": "sulking"}, 7), 7.0)
    assert "a.web-2" not in view.statuses  # not a task state: not read


def test_the_view_ignores_an_assignment_older_than_what_it_knows() -> None:
    view = FleetView(GRACE)
    value = json.dumps({"image": "x", "resources": {"cpus": 0.5, "memory": "64Mi"}}).encode()
    view.wrote("a.web-1", value, 10)
    assert not view.apply(ASSIGNMENTS, entry("a.web-1", value, 10), 0.0)  # its own echo
    assert not view.apply(ASSIGNMENTS, entry("a.web-1", b"{}", 7), 0.0)  # an older write
    placed = view.assignments["a.web-1"]
    assert (placed.revision, placed.cpus, placed.memory) == (10, 0.5, 64 << 20)
    assert view.apply(ASSIGNMENTS, entry("a.web-1", None, 11), 0.0)
    assert "a.web-1" not in view.assignments and view.revisions["a.web-1"] == 11
    assert "a" in view.node_views(0.0)  # a node named by an assignment is known


def test_an_invalid_service_value_freezes_that_service() -> None:
    view = FleetView(GRACE)
    assert view.apply(SERVICES, entry("web", {"image": "x", "replicas": 2}, 1), 0.0)
    assert view.apply(SERVICES, entry("web", {"image": "x", "replicas": "two"}, 2), 0.0)
    assert "web" not in view.services and "web" in view.invalid
    assert any(p.startswith("reconciler_services/web:0: service.replicas") for p in view.problems)
    assert view.apply(SERVICES, entry("web", None, 3), 0.0)
    assert view.invalid == {}

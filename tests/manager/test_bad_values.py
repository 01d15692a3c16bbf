"""The manager's picture of the fleet never breaks on a bad value: each is skipped in its
bucket's safe way, reported and counted once per key and revision, and touches no other key."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reconciler.core.model import Availability
from reconciler.fleet.buckets import ASSIGNMENTS, CONTROL, FLEET_KEY, NODES, SERVICES, STATUS
from reconciler.fleet.watch import Entry
from reconciler.manager.health import CPUS, MEMORY_BYTES, Health, parse_heartbeat
from reconciler.manager.scheduler import schedule
from reconciler.manager.view import FleetView
from reconciler.testing.hostile.values import hostile_values

DESCRIBED = {
    "hostname": "h",
    "os": "linux",
    "arch": "amd64",
    "cpus": 4,
    "memoryBytes": 8 << 30,
    "runtime": "podman",
    "runtimeVersion": "4.3.1",
}


def beat(**fields: Any) -> bytes:
    return json.dumps({"ready": True, **DESCRIBED, **fields}).encode()


def raw_beat(memory: str) -> bytes:
    return beat().replace(str(8 << 30).encode(), memory.encode())


ISSUE_VALUES = [
    b'{"ready": true, "memoryBytes": Infinity}',
    raw_beat("Infinity"),
    raw_beat("NaN"),
    raw_beat("9" * 5000),
    raw_beat("9" * 400),
    b'{"ready": true, "labels": {"a\\u001b[2J": "x"}}',
]


@pytest.mark.parametrize("value", ISSUE_VALUES)
def test_a_bad_node_value_is_no_heartbeat_and_the_fleet_still_plans(value: bytes) -> None:
    view = FleetView(grace=5.0)
    view.apply(NODES, Entry("good", beat(), 1), 1.0)
    view.apply(NODES, Entry("bad", value, 2), 1.0)
    assert view.health.beat("bad") is None and view.health.health("bad", 1.0) is Health.NOT_READY
    assert view.health.beat("good") is not None
    assert view.bad == {NODES: 1} and len(view.problems) == 1
    assert view.problems[0].startswith(f"{NODES}/bad: ") and "(revision 2)" in view.problems[0]
    schedule(view.services, view.node_views(1.0), view.placed(), frozen=view.invalid)


@pytest.mark.parametrize("bucket", [STATUS, ASSIGNMENTS, NODES, CONTROL])
def test_a_bad_value_is_reported_once_per_key_and_revision_however_often_read(
    bucket: str,
) -> None:
    key = {CONTROL: "node.a", NODES: "a"}.get(bucket, "a.web")
    bad = Entry(key, b'{"x": NaN}', 7)
    view = FleetView(grace=5.0)
    view.load(bucket, {key: bad}, 0.0)
    view.load(bucket, {key: bad}, 1.0)  # the watch restarted: the same revision again
    view.apply(bucket, bad, 2.0)
    assert view.bad == {bucket: 1} and len(view.problems) == 1
    view.apply(bucket, Entry(key, b'{"x": NaN}', 8), 3.0)  # a new revision, bad again
    assert view.bad == {bucket: 2}


def test_each_bucket_reads_a_bad_value_its_safe_way() -> None:
    view = FleetView(grace=5.0)
    # control: the availability and settings in force are kept
    view.apply(CONTROL, Entry("node.a", b'{"availability": "drain"}', 1), 0.0)
    view.apply(CONTROL, Entry("node.a", b'{"availability": Infinity}', 2), 0.0)
    view.apply(CONTROL, Entry(FLEET_KEY, b'{"heartbeatPeriod": "2s"}', 3), 0.0)
    view.apply(CONTROL, Entry(FLEET_KEY, b'{"heartbeatPeriod": 1e999}', 4), 0.0)
    assert view.availability["a"] is Availability.DRAIN
    assert view.settings.heartbeat_period == 2.0
    # status: absent, never the older state
    view.apply(STATUS, Entry("a.web-1", b'{"id": "1", "state": "running"}', 1), 0.0)
    view.apply(STATUS, Entry("a.web-1", b'{"state": "' + b"\xff" + b'"}', 2), 0.0)
    assert "a.web-1" not in view.statuses
    # an assignment: kept, without resources, so the leader overwrites it compare-and-set
    view.apply(ASSIGNMENTS, Entry("a.web-1", b"[" * 100, 5), 0.0)
    placed = view.assignments["a.web-1"]
    assert (placed.revision, placed.cpus, placed.memory) == (5, None, None)
    # a service: frozen
    view.apply(SERVICES, Entry("web", b'{"name": "web", "replicas": ' + b"9" * 30 + b"}", 1), 0.0)
    assert "web" in view.invalid and "web" not in view.services
    assert view.bad == {CONTROL: 2, STATUS: 1, ASSIGNMENTS: 1, SERVICES: 1}


@pytest.mark.parametrize(
    ("cpus", "memory", "counted"),
    [
        (4, 8 << 30, (4.0, 8 << 30)),
        (CPUS[0], MEMORY_BYTES[0], (float(CPUS[0]), MEMORY_BYTES[0])),
        (CPUS[1], MEMORY_BYTES[1], (float(CPUS[1]), MEMORY_BYTES[1])),
        (0, (16 << 20) - 1, (None, None)),
        (CPUS[1] + 1, MEMORY_BYTES[1] + 1, (None, None)),
        (10**17, 10**18 - 1, (None, None)),
    ],
)
def test_a_capacity_claim_outside_sane_bounds_counts_as_none(
    cpus: int, memory: int, counted: tuple[float | None, int | None]
) -> None:
    got = parse_heartbeat(beat(cpus=cpus, memoryBytes=memory))
    assert (got.cpus, got.memory) == counted


@pytest.mark.parametrize("bucket", [SERVICES, NODES, CONTROL, ASSIGNMENTS, STATUS])
def test_thousands_of_hostile_values_never_raise_and_never_touch_a_good_key(bucket: str) -> None:
    view = FleetView(grace=5.0)
    good = {
        SERVICES: ("good", b'{"name": "good", "image": "localhost/busybox:latest"}'),
        NODES: ("good", beat()),
        CONTROL: ("node.good", b'{"availability": "pause"}'),
        ASSIGNMENTS: ("good.web-1", b'{"name": "web-1", "image": "x"}'),
        STATUS: ("good.web-1", b'{"id": "1", "state": "running"}'),
    }[bucket]
    view.apply(bucket, Entry(*good, 1), 0.0)
    before = (dict(view.services), view.availability.copy(), dict(view.statuses), view.settings)
    for i, value in enumerate(hostile_values(11, 2000, 64 << 10)):
        key = f"node.h{i % 50}" if bucket == CONTROL else f"good.h{i % 50}"
        view.apply(bucket, Entry(FLEET_KEY if i % 50 == 49 else key, value, i + 2), 1.0)
    after = (dict(view.services), view.availability.copy(), dict(view.statuses), view.settings)
    assert before == after
    assert (
        view.assignments.get("good.web-1") is None
        or view.assignments["good.web-1"].value == good[1]
    )
    if bucket == NODES:
        assert view.health.beat("good") is not None
    if bucket != ASSIGNMENTS:  # the manager reads an assignment's resources only
        assert view.bad[bucket] >= 1900
    schedule(view.services, view.node_views(1.0), view.placed(), frozen=view.invalid)

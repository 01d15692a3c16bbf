"""The fleet's JSON values: what the agent writes, what it accepts, and the status rule."""

from __future__ import annotations

import json
import re

import pytest

from reconciler.core.model import Availability, NodeDescription, TaskState
from reconciler.core.session import NamedStatus
from reconciler.fleet.buckets import MAX_VALUE_SIZE, STATUS
from reconciler.fleet.values import (
    STATUS_TEXT_MAX,
    BadValue,
    FleetSettings,
    NodeControl,
    StoredStatus,
    check_label,
    node_value,
    parse_fleet,
    parse_node_control,
    parse_node_controls,
    parse_status,
    status_supersedes,
    status_value,
)

S = TaskState
NODE = NodeDescription("edge-1", "linux", "arm64", 4, 2 << 30, "podman", "4.3.1", "0.1.0")


def named(task_id: str, state: TaskState, ts: float) -> NamedStatus:
    return NamedStatus("web", task_id, state, "", None, None, None, ts, 0)


def test_node_value_carries_the_description_readiness_and_heartbeat_time() -> None:
    raw = node_value(
        node_id="n1",
        node=NODE,
        ready=True,
        availability=Availability.PAUSE,
        labels={"zone": "a"},
        version="9.9",
        now=1_700_000_000.25,
        conditions={"diskPressure": True, "memoryPressure": False},
    )
    value = json.loads(raw)
    assert raw == json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    assert value == {
        "nodeId": "n1",
        "hostname": "edge-1",
        "os": "linux",
        "arch": "arm64",
        "cpus": 4,
        "memoryBytes": 2 << 30,
        "runtime": "podman",
        "runtimeVersion": "4.3.1",
        "version": "9.9",
        "labels": {"zone": "a"},
        "ready": True,
        "availability": "pause",
        "heartbeatAt": "2023-11-14T22:13:20.250Z",
        "conditions": {"diskPressure": True, "memoryPressure": False},
        "policy": None,
    }


def test_node_value_before_the_runtime_answered_has_null_description() -> None:
    value = json.loads(
        node_value(
            node_id="n1",
            node=None,
            ready=False,
            availability=Availability.ACTIVE,
            labels={},
            version="1",
            now=0.0,
        )
    )
    assert value["hostname"] is None and value["ready"] is False


def test_status_value_round_trips_through_parse_status() -> None:
    status = NamedStatus("web", "abc", S.FAILED, "exited", "exit 3", 3, "c0ffee", 1000.5, 2)
    value = json.loads(status_value(status))
    assert value == {
        "id": "abc",
        "state": "failed",
        "message": "exited",
        "error": "exit 3",
        "exitCode": 3,
        "containerId": "c0ffee",
        "updatedAt": "1970-01-01T00:16:40.500Z",
        "restarts": 2,
    }
    assert parse_status(status_value(status)) == StoredStatus("abc", S.FAILED, 1000.5)


def test_a_status_with_the_longest_texts_fits_the_status_buckets_value_limit() -> None:
    # podman's errors can run long; a status refused for its size would be retried for ever
    long = "\u00e9" * 50_000
    status = NamedStatus("web", "abc", S.FAILED, long, long, 3, "c" * 64, 1000.5, 2)
    value = status_value(status)
    assert len(value) <= MAX_VALUE_SIZE[STATUS]
    doc = json.loads(value)
    assert doc["message"].startswith("\u00e9" * 100) and doc["message"].endswith("...")
    assert len(doc["error"]) == STATUS_TEXT_MAX


@pytest.mark.parametrize(
    ("stored", "new", "supersedes"),
    [
        (None, named("a", S.PENDING, 1.0), True),
        (StoredStatus("a", S.STARTING, 1.0), named("a", S.RUNNING, 2.0), True),
        (StoredStatus("a", S.RUNNING, 2.0), named("a", S.RUNNING, 3.0), True),
        (StoredStatus("a", S.RUNNING, 2.0), named("a", S.STARTING, 3.0), False),
        (StoredStatus("a", S.FAILED, 2.0), named("a", S.RUNNING, 3.0), False),
        # a new instance follows its predecessor's terminal status, whatever the clocks say
        (StoredStatus("a", S.FAILED, 9.0), named("b", S.PENDING, 3.0), True),
        # a stale status of another instance does not overwrite a newer live one
        (StoredStatus("b", S.RUNNING, 9.0), named("a", S.RUNNING, 3.0), False),
        (StoredStatus("a", S.RUNNING, 2.0), named("b", S.PENDING, 3.0), True),
    ],
)
def test_status_supersedes(stored: StoredStatus | None, new: NamedStatus, supersedes: bool) -> None:
    assert status_supersedes(new, stored) is supersedes


def test_fleet_settings_take_durations_or_seconds_and_default_to_5s() -> None:
    assert parse_fleet(b"{}") == FleetSettings(5.0, ())
    assert parse_fleet(b'{"heartbeatPeriod": "1m30s"}').heartbeat_period == 90.0
    assert parse_fleet(b'{"heartbeatPeriod": 2.5}').heartbeat_period == 2.5
    settings = parse_fleet(b'{"managers": ["nats://a:4222", " tls://b:4222 "]}')
    assert settings.managers == ("nats://a:4222", "tls://b:4222")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"heartbeatPeriod": "soon"}', "heartbeatPeriod"),
        (b'{"heartbeatPeriod": true}', "heartbeatPeriod"),
        (b'{"heartbeatPeriod": "0s"}', "outside"),
        (b'{"heartbeatPeriod": 86400}', "outside"),
        (b'{"managers": "nats://a:4222"}', "managers"),
        (b'{"managers": [1]}', "managers"),
        (b"[" * 100_000, "nesting is deeper than 64 levels"),
        (b" " * (2 << 20), "limit"),
    ],
)
def test_bad_fleet_settings_say_what_is_wrong(data: bytes, problem: str) -> None:
    with pytest.raises(BadValue, match=problem):
        parse_fleet(data)


def test_node_control_reads_availability() -> None:
    assert parse_node_control(b"{}") is Availability.ACTIVE
    assert parse_node_control(b'{"availability": "drain"}') is Availability.DRAIN
    with pytest.raises(BadValue, match="'sleep' is not one of active, pause, drain"):
        parse_node_control(b'{"availability": "sleep"}')


def test_a_stored_status_without_its_fields_is_a_bad_value() -> None:
    with pytest.raises(BadValue):
        parse_status(b'{"id": "a", "state": "lost", "updatedAt": "1970-01-01T00:00:00Z"}')
    with pytest.raises(BadValue):
        parse_status(b'{"id": "a", "state": "running", "updatedAt": "yesterday"}')
    with pytest.raises(BadValue):  # not a string, nor hashable
        parse_status(b'{"id": "a", "state": ["running"], "updatedAt": "1970-01-01T00:00:00Z"}')


def test_the_node_control_value_carries_availability_and_the_operators_labels() -> None:
    both = parse_node_controls(b'{"availability": "pause", "labels": {"site": "secure"}}')
    assert both == NodeControl(Availability.PAUSE, {"site": "secure"})
    assert parse_node_controls(b"{}") == NodeControl(Availability.ACTIVE, {})
    # an agent reads only the availability: labels it cannot read do not stop it
    assert parse_node_control(b'{"availability": "drain", "labels": [1]}') is Availability.DRAIN
    for bad, field in [
        (b'{"labels": ["site"]}', "labels: expected a map of strings"),
        (b'{"labels": {"site": 1}}', "labels: expected a map of strings"),
        (b'{"labels": {"my site": "x"}}', "label key 'my site'"),
        (b'{"labels": {"site": "a\\u0000"}}', "control character"),
    ]:
        with pytest.raises(BadValue, match=re.escape(field)):
            parse_node_controls(bad)


def test_the_fleet_value_carries_its_format_version() -> None:
    assert parse_fleet(b"{}").format_version is None
    assert parse_fleet(b'{"formatVersion": 2}').format_version == 2
    for bad in (b'{"formatVersion": "2"}', b'{"formatVersion": true}', b'{"formatVersion": 0}'):
        with pytest.raises(BadValue, match="formatVersion"):
            parse_fleet(bad)


def test_a_label_is_held_to_one_rule() -> None:
    check_label("site", "north pole")
    for key, value in [("", "x"), ("a=b", "x"), ("a!", "x"), ("k", "\n"), ("k" * 257, "x")]:
        with pytest.raises(ValueError):
            check_label(key, value)

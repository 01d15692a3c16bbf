"""The model's JSON forms: the one compact encoder and the one node codec."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from reconciler.core.codec import compact, node_from_dict, node_to_dict
from reconciler.core.model import NodeDescription
from reconciler.core.policy import Policy

NODE = NodeDescription("edge-1", "linux", "arm64", 4, 2 << 30, "podman", "4.3.1", "0.1.0")


def test_compact_writes_the_bytes_json_dumps_writes_without_spaces() -> None:
    value: dict[str, Any] = {"b": [1, 2.5, None, True], "a": {"z": "é", "y": "x"}}
    assert compact(value) == json.dumps(value, separators=(",", ":")).encode()
    assert compact(value, sort_keys=True) == (
        json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    )
    assert compact({"k": "é"}) == b'{"k":"\\u00e9"}'  # ASCII, as every hash of it expects


def test_a_described_node_round_trips() -> None:
    doc = node_to_dict(NODE, version="9.9")
    assert doc == {
        "hostname": "edge-1",
        "os": "linux",
        "arch": "arm64",
        "cpus": 4,
        "memoryBytes": 2 << 30,
        "runtime": "podman",
        "runtimeVersion": "4.3.1",
        "version": "9.9",
        "policy": None,
    }
    assert node_from_dict(json.loads(compact(doc))) == NodeDescription(
        "edge-1", "linux", "arm64", 4, 2 << 30, "podman", "4.3.1", "9.9"
    )


def test_a_nodes_policy_round_trips_and_a_hostile_one_names_its_field() -> None:
    policy = Policy.of(binds=["/var/log"], caps=["NET_ADMIN"], registries=["localhost"])
    doc = node_to_dict(replace(NODE, policy=policy), version="9.9")
    assert doc["policy"] == {
        "allowBind": ["/var/log"],
        "allowDevice": [],
        "allowCap": ["NET_ADMIN"],
        "allowHostNetwork": False,
        "allowRegistry": ["localhost"],
    }
    back = node_from_dict(json.loads(compact(doc)))
    assert back is not None and back.policy == policy
    with pytest.raises(ValueError, match=r"policy\.allowCap: expected a list"):
        node_from_dict({**doc, "policy": {"allowCap": 7}})


def test_a_node_not_described_yet_is_null_but_for_the_agents_version() -> None:
    doc = node_to_dict(None, version="0.1.0")
    assert doc["version"] == "0.1.0"
    assert [k for k, v in doc.items() if v is not None] == ["version"]
    assert node_from_dict(doc) is None
    assert node_from_dict({"nodeId": "n1", "ready": True}) is None  # inside a larger object


def test_a_description_read_from_another_host_is_whole_and_well_typed() -> None:
    good = node_to_dict(NODE, version="0.1.0")
    assert node_from_dict({**good, "cpus": 4.0}) == NODE  # a whole number written as a float
    assert node_from_dict({**good, "version": None}) == NodeDescription(
        "edge-1", "linux", "arm64", 4, 2 << 30, "podman", "4.3.1", ""
    )
    for field, bad in [
        ("cpus", "many"),
        ("cpus", 1.5),
        ("cpus", True),
        ("memoryBytes", -1),
        ("hostname", 7),
        ("runtimeVersion", None),  # a description is whole or absent
    ]:
        with pytest.raises(ValueError, match=field):
            node_from_dict({**good, field: bad})

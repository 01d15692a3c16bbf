"""The fleet's KV buckets: their names and settings, and the keys in them.

The bucket names, their keys and their settings are part of the contract that agents, managers
and operators' tools share:

| bucket | key | settings |
|---|---|---|
| ``reconciler_nodes`` | ``<node>`` | max age 24 h: it only collects nodes gone for good |
| ``reconciler_assignments`` | ``<node>.<task name>`` | |
| ``reconciler_status`` | ``<node>.<task name>`` | |
| ``reconciler_services`` | ``<service>`` | |
| ``reconciler_control`` | ``fleet``, ``node.<node>`` | |
| ``reconciler_leader`` | ``leader`` | max age = the manager's lease (default 10 s) |

Every bucket keeps one value per key (history 1) and allows direct gets, which is what lets a
node read its own status key through a subject that names the key (and so can be permitted key
by key). A node id is one subject token (letters, digits, ``-`` and ``_``), because keys and
permission subjects are built from it.

Creating them is ``reconciler.fleet.provision``'s job; this module is pure, so that an agent
can check its node id without loading the NATS client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ASSIGNMENTS",
    "CONTROL",
    "DEFAULT_LEASE",
    "FLEET_KEY",
    "LEADER",
    "NODES",
    "NODES_MAX_AGE",
    "SERVICES",
    "STATUS",
    "Bucket",
    "assignment_key",
    "buckets",
    "check_node_id",
    "key_subject",
    "node_control_key",
    "status_key",
    "stream_name",
]

NODES = "reconciler_nodes"
ASSIGNMENTS = "reconciler_assignments"
STATUS = "reconciler_status"
SERVICES = "reconciler_services"
CONTROL = "reconciler_control"
LEADER = "reconciler_leader"

FLEET_KEY = "fleet"
"""The key in ``reconciler_control`` holding fleet-wide settings."""

NODES_MAX_AGE = 24 * 3600.0
DEFAULT_LEASE = 10.0

_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True, slots=True)
class Bucket:
    """One KV bucket's contract settings. ``max_age`` 0 means values never age out."""

    name: str
    max_age: float = 0.0
    history: int = 1


def buckets(*, lease: float = DEFAULT_LEASE) -> tuple[Bucket, ...]:
    """Every bucket of the contract, with the leader bucket's max age set to ``lease``."""
    if lease <= 0:
        raise ValueError(f"the lease must be positive, got {lease}")
    return (
        Bucket(NODES, max_age=NODES_MAX_AGE),
        Bucket(ASSIGNMENTS),
        Bucket(STATUS),
        Bucket(SERVICES),
        Bucket(CONTROL),
        Bucket(LEADER, max_age=lease),
    )


def check_node_id(node_id: str) -> str:
    """Return ``node_id`` if it can name a node's keys; raise ``ValueError`` saying why not."""
    if not _NODE_ID.fullmatch(node_id):
        raise ValueError(
            f"node id {node_id!r} cannot name fleet keys: use 1-128 letters, digits, '-' or '_'"
        )
    return node_id


def stream_name(bucket: str) -> str:
    """The JetStream stream behind a KV bucket."""
    return f"KV_{bucket}"


def key_subject(bucket: str, key: str) -> str:
    """The subject a key's values are published on (and permitted by)."""
    return f"$KV.{bucket}.{key}"


def assignment_key(node_id: str, name: str) -> str:
    return f"{node_id}.{name}"


def status_key(node_id: str, name: str) -> str:
    return f"{node_id}.{name}"


def node_control_key(node_id: str) -> str:
    return f"node.{node_id}"

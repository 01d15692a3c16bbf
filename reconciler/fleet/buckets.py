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

Every bucket keeps one value per key (history 1: only the latest value of a key matters, to
every reader) and allows direct gets, which is what lets a node read its own status key
through a subject that names the key (and so can be permitted key by key). A node id is one
subject token (letters, digits, ``-`` and ``_``), because keys and permission subjects are
built from it.

**Quotas.** Every bucket has a ``max_bytes`` (what its stream may hold) and a
``max_value_size`` (the largest value JetStream accepts into it), so that no bucket can fill
the store that the others need: JetStream reserves each bucket's ``max_bytes`` against the
account's and the server's storage when the bucket is made, and refuses a write that would
take a bucket past its own. The defaults (``MAX_BYTES``, ``MAX_VALUE_SIZE``) are sized for a
fleet of ``FLEET_NODES`` nodes running ``FLEET_TASKS`` tasks, from the size a value really
has; each is said beside it. ``buckets()`` takes overrides (``reconciler manager init`` and
``manager run``'s ``--bucket-max-bytes`` and ``--bucket-max-value``).

Creating them is ``reconciler.fleet.provision``'s job; this module is pure, so that an agent
can check its node id without loading the NATS client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from reconciler.spec.units import format_size

__all__ = [
    "ASSIGNMENTS",
    "CONTROL",
    "DEFAULT_LEASE",
    "FLEET_KEY",
    "FLEET_NODES",
    "FLEET_TASKS",
    "LEADER",
    "MAX_BYTES",
    "MAX_VALUE_CEILING",
    "MAX_VALUE_SIZE",
    "NAMES",
    "NODES",
    "NODES_MAX_AGE",
    "SERVICES",
    "STATUS",
    "Bucket",
    "assignment_key",
    "bucket_name",
    "buckets",
    "check_node_id",
    "key_subject",
    "node_control_key",
    "status_key",
    "stream_name",
    "watch_subject",
]

NODES = "reconciler_nodes"
ASSIGNMENTS = "reconciler_assignments"
STATUS = "reconciler_status"
SERVICES = "reconciler_services"
CONTROL = "reconciler_control"
LEADER = "reconciler_leader"
NAMES: Final = (NODES, ASSIGNMENTS, STATUS, SERVICES, CONTROL, LEADER)
"""Every bucket of the contract, in the order they are made."""
_PREFIX = "reconciler_"

FLEET_KEY = "fleet"
"""The key in ``reconciler_control`` holding fleet-wide settings."""

NODES_MAX_AGE = 24 * 3600.0
DEFAULT_LEASE = 10.0

_KI: Final = 1 << 10
_MI: Final = 1 << 20

FLEET_NODES: Final = 1_000
"""The fleet the default quotas are sized for: this many nodes ..."""
FLEET_TASKS: Final = 10_000
"""... running this many tasks (the manager's benchmark schedules 10,000 replicas)."""

MAX_VALUE_CEILING: Final = _MI
"""No bucket takes values larger than this: agents and managers refuse a larger value unread
(``reconciler.fleet.values.MAX_VALUE_BYTES``), and it is nats-server's default
``max_payload``, which a value and its headers must fit anyway."""

MAX_VALUE_SIZE: Final[Mapping[str, int]] = {
    # a heartbeat is about 400 bytes (the node's description, labels and conditions)
    NODES: 16 * _KI,
    # a task as its desired file could hold it: that file may have 1 MiB
    ASSIGNMENTS: MAX_VALUE_CEILING,
    # a status is about 300 bytes; its message and error are a line or two of text
    STATUS: 16 * _KI,
    # a service is a task plus replicas and placement: as an assignment
    SERVICES: MAX_VALUE_CEILING,
    # the fleet settings (a period, the managers' URLs) or one node's availability
    CONTROL: 4 * _KI,
    # one manager's id
    LEADER: 1 * _KI,
}
"""The largest value each bucket takes, by default."""

MAX_BYTES: Final[Mapping[str, int]] = {
    # one key per node (a node's user may write no other): FLEET_NODES at the value limit
    NODES: 16 * _MI,
    # FLEET_TASKS tasks at 6 KiB each, key and headers included; a real spec has 0.3-2 KiB
    ASSIGNMENTS: 64 * _MI,
    # FLEET_TASKS statuses at 3 KiB each, about seven times a real one with its key and headers
    STATUS: 32 * _MI,
    # services are fewer than the tasks they make
    SERVICES: 32 * _MI,
    # the fleet key and FLEET_NODES availability keys at the value limit
    CONTROL: 4 * _MI,
    # one key, replaced every third of a lease
    LEADER: 1 * _MI,
}
"""What each bucket may hold, by default. Together 149 MiB: three replicas of all of them fit
a 1 GiB account (``max_file``), as JetStream counts every replica against it."""

_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True, slots=True)
class Bucket:
    """One KV bucket's contract settings. ``max_age`` 0 means values never age out;
    ``max_bytes`` and ``max_value_size`` are its quotas, in bytes."""

    name: str
    max_bytes: int
    max_value_size: int
    max_age: float = 0.0
    history: int = 1


def bucket_name(name: str) -> str:
    """A bucket's full name from its name or its short form (``status`` for
    ``reconciler_status``). Raises ``ValueError`` naming the buckets for any other name."""
    full = name if name.startswith(_PREFIX) else _PREFIX + name
    if full not in NAMES:
        shown = ", ".join(n.removeprefix(_PREFIX) for n in NAMES)
        raise ValueError(f"no bucket {name!r}: the buckets are {shown} (or reconciler_<name>)")
    return full


def buckets(
    *,
    lease: float = DEFAULT_LEASE,
    max_bytes: Mapping[str, int] | None = None,
    max_value_size: Mapping[str, int] | None = None,
) -> tuple[Bucket, ...]:
    """Every bucket of the contract, with the leader bucket's max age set to ``lease`` and
    the quotas of ``MAX_BYTES`` and ``MAX_VALUE_SIZE`` but where ``max_bytes`` and
    ``max_value_size`` (bucket name, full or short, to bytes) say otherwise. Raises
    ``ValueError`` for a lease or a quota that cannot be (naming the bucket)."""
    if lease <= 0:
        raise ValueError(f"the lease must be positive, got {lease}")
    sizes = {**MAX_BYTES, **_overrides(max_bytes)}
    values = {**MAX_VALUE_SIZE, **_overrides(max_value_size)}
    for name in NAMES:
        _check(name, sizes[name], values[name])
    ages = {NODES: NODES_MAX_AGE, LEADER: lease}
    return tuple(
        Bucket(
            name, max_bytes=sizes[name], max_value_size=values[name], max_age=ages.get(name, 0.0)
        )
        for name in NAMES
    )


def _overrides(given: Mapping[str, int] | None) -> dict[str, int]:
    return {bucket_name(name): size for name, size in (given or {}).items()}


def _check(name: str, size: int, value: int) -> None:
    if size <= 0 or value <= 0:
        raise ValueError(f"{name}: a quota must be more than 0 bytes")
    if value > MAX_VALUE_CEILING:
        raise ValueError(
            f"{name}: a value limit of {format_size(value)} is over "
            f"{format_size(MAX_VALUE_CEILING)}, the largest value agents and managers read"
        )
    if value > size:
        raise ValueError(
            f"{name}: its value limit ({format_size(value)}) is more than it may hold "
            f"({format_size(size)})"
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


def watch_subject(bucket: str, keys: str, consumer: str = "*") -> str:
    """The consumer create subject that carries a watch's filter: ``keys`` of ``bucket``, for
    the consumer named ``consumer`` (``*``: any, as a permission). The server refuses a
    request whose filter differs from the subject's, so a permission on it confines a watch
    to those keys (``reconciler.fleet.watch`` creates them, ``reconciler.fleet.identity``
    permits them)."""
    return f"$JS.API.CONSUMER.CREATE.{stream_name(bucket)}.{consumer}.{key_subject(bucket, keys)}"


def assignment_key(node_id: str, name: str) -> str:
    return f"{node_id}.{name}"


def status_key(node_id: str, name: str) -> str:
    return f"{node_id}.{name}"


def node_control_key(node_id: str) -> str:
    return f"node.{node_id}"

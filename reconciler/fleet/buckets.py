"""The fleet's KV buckets: their names and settings, the keys in them, and creating them.

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

``init_buckets`` creates missing buckets and brings the settings of existing ones back to the
table above; it is idempotent. Node users have no permission to create buckets: an agent that
finds none keeps retrying until the manager (or ``reconciler manager init``) has made them.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass
from typing import Any

from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import NotFoundError

from reconciler.core.cancel import cancellable

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
    "InitResult",
    "assignment_key",
    "buckets",
    "check_node_id",
    "default_replicas",
    "init_buckets",
    "key_subject",
    "node_control_key",
    "status_key",
    "stream_name",
]

log = logging.getLogger(__name__)

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


class InitResult(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


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


def default_replicas(nc: Any) -> int:
    """Replicas for new buckets: the size of the connected server's cluster, at most 3.

    A server lists every client URL of its cluster, itself included, in ``connect_urls`` of
    its INFO (nats-py keeps it unexposed, in ``_server_info``); a lone server lists none.
    """
    info = getattr(nc, "_server_info", None) or {}
    urls = info.get("connect_urls") or ()
    return max(1, min(3, len(set(urls))))


async def init_buckets(
    js: Any, *, lease: float = DEFAULT_LEASE, replicas: int = 1
) -> list[tuple[str, InitResult]]:
    """Create the contract's buckets, or bring existing ones to its settings. Idempotent.

    ``js`` is a nats-py ``JetStreamContext`` of a user allowed to manage streams. ``replicas``
    applies to buckets created now; an existing bucket keeps its replica count. Returns each
    bucket with what was done. Raises nats-py's errors (``nats.errors.TimeoutError``,
    ``nats.js.errors.APIError``, ...) when JetStream refuses or does not answer.
    """
    results: list[tuple[str, InitResult]] = []
    for bucket in buckets(lease=lease):
        # cancellable: nats-py's requests can swallow a cancellation (reconciler.core.cancel)
        results.append((bucket.name, await cancellable(_ensure(js, bucket, replicas))))
    return results


async def _ensure(js: Any, bucket: Bucket, replicas: int) -> InitResult:
    try:
        info = await js.stream_info(stream_name(bucket.name))
    except NotFoundError:
        await js.create_key_value(
            KeyValueConfig(
                bucket=bucket.name,
                history=bucket.history,
                ttl=bucket.max_age or None,
                replicas=replicas,
                storage=StorageType.FILE,
                direct=True,
            )
        )
        log.debug("bucket created bucket=%s replicas=%d", bucket.name, replicas)
        return InitResult.CREATED
    config = info.config
    wanted = {
        "max_age": bucket.max_age,
        "max_msgs_per_subject": bucket.history,
        "allow_direct": True,
    }
    have = {
        "max_age": float(config.max_age or 0.0),
        "max_msgs_per_subject": config.max_msgs_per_subject,
        "allow_direct": bool(config.allow_direct),
    }
    if have == wanted:
        return InitResult.UNCHANGED
    config.max_age = bucket.max_age
    if bucket.max_age and (config.duplicate_window or 0) > bucket.max_age:
        config.duplicate_window = bucket.max_age  # JetStream refuses a window beyond max age
    config.max_msgs_per_subject = bucket.history
    config.allow_direct = True
    await js.update_stream(config)
    log.debug("bucket settings updated bucket=%s was=%s", bucket.name, have)
    return InitResult.UPDATED

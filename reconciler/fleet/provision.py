"""Creating the fleet's buckets (``reconciler manager init``, and the leader at start-up).

``init_buckets`` creates missing buckets and brings the settings of existing ones back to the
contract (``reconciler.fleet.buckets``): max age, history, direct gets, discarding new values
when full, and the quotas (``max_bytes`` and the value limit, the stream's ``max_msg_size``).
It is idempotent. Then it brings the fleet's format up to this version's
(``reconciler.fleet.upgrade``: once, in a fleet made by an older version). Node users have no
permission to create buckets: an agent that finds none keeps retrying until the manager (or
``reconciler manager init``) has made them.

**Lowering a quota.** nats-server 2.9 takes a ``max_bytes`` below what a stream holds and then
drops the stream's oldest messages until it fits: old keys would vanish without a delete that
any watcher sees. So a bucket that holds more than its new ``max_bytes`` keeps its old one (no
limit, for a bucket made before there were quotas), and a warning says so: delete keys, or
choose a larger limit, and run it again. A
lower value limit is applied at once: values already stored stay, only new writes must fit.
Raising either is always applied; JetStream refuses a ``max_bytes`` that the account's or the
server's storage cannot reserve, and that error is raised.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import Any

from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType
from nats.js.errors import NotFoundError

from reconciler.core.cancel import cancellable
from reconciler.fleet.buckets import CONTROL, DEFAULT_LEASE, Bucket, buckets, stream_name
from reconciler.fleet.upgrade import upgrade_fleet

__all__ = ["InitResult", "default_replicas", "init_buckets"]

log = logging.getLogger(__name__)


class InitResult(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


def default_replicas(nc: Any) -> int:
    """Replicas for new buckets: the size of the connected server's cluster, at most 3.

    A server lists every client URL of its cluster, itself included, in ``connect_urls`` of
    its INFO (nats-py keeps it unexposed, in ``_server_info``); a lone server lists none.
    """
    info = getattr(nc, "_server_info", None) or {}
    urls = info.get("connect_urls") or ()
    return max(1, min(3, len(set(urls))))


async def init_buckets(
    js: Any,
    *,
    lease: float = DEFAULT_LEASE,
    replicas: int = 1,
    max_bytes: Mapping[str, int] | None = None,
    max_value_size: Mapping[str, int] | None = None,
) -> list[tuple[str, InitResult]]:
    """Create the contract's buckets, or bring existing ones to its settings. Idempotent.

    ``js`` is a nats-py ``JetStreamContext`` of a user allowed to manage streams. ``replicas``
    applies to buckets created now; an existing bucket keeps its replica count.
    ``max_bytes`` and ``max_value_size`` override the default quotas of some buckets (see
    ``reconciler.fleet.buckets.buckets``, which raises ``ValueError`` for a bad one). Returns
    each bucket with what was done. Raises nats-py's errors (``nats.errors.TimeoutError``,
    ``nats.js.errors.APIError``, ...) when JetStream refuses or does not answer.
    """
    wanted = buckets(lease=lease, max_bytes=max_bytes, max_value_size=max_value_size)
    results: list[tuple[str, InitResult]] = []
    for bucket in wanted:
        # cancellable: nats-py's requests can swallow a cancellation (reconciler.core.cancel)
        results.append((bucket.name, await cancellable(_ensure(js, bucket, replicas))))
    await upgrade_fleet(js, new=(CONTROL, InitResult.CREATED) in results)
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
                max_bytes=bucket.max_bytes,
                max_value_size=bucket.max_value_size,
                replicas=replicas,
                storage=StorageType.FILE,
                direct=True,
            )
        )
        log.debug("bucket created bucket=%s replicas=%d", bucket.name, replicas)
        # nats-py creates a bucket that takes rollup headers; the update below turns them off
        await _update(js, bucket, await js.stream_info(stream_name(bucket.name)))
        return InitResult.CREATED
    return await _update(js, bucket, info)


async def _update(js: Any, bucket: Bucket, info: Any) -> InitResult:
    """Bring an existing bucket's stream to the contract's settings."""
    config = info.config
    have = _settings(config)
    wanted = _wanted(bucket, have, int(info.state.bytes or 0))
    if have == wanted:
        return InitResult.UNCHANGED
    config.max_age = bucket.max_age
    if bucket.max_age and (config.duplicate_window or 0) > bucket.max_age:
        config.duplicate_window = bucket.max_age  # JetStream refuses a window beyond max age
    config.max_msgs_per_subject = bucket.history
    config.allow_direct = True
    config.discard = DiscardPolicy.NEW
    config.max_bytes = wanted["max_bytes"]
    config.max_msg_size = bucket.max_value_size
    config.allow_rollup_hdrs = False
    await js.update_stream(config)
    log.debug("bucket settings updated bucket=%s was=%s", bucket.name, have)
    return InitResult.UPDATED


def _settings(config: Any) -> dict[str, Any]:
    """What the contract sets of a stream's config, as the contract spells it."""
    return {
        "max_age": float(config.max_age or 0.0),
        "max_msgs_per_subject": config.max_msgs_per_subject,
        "allow_direct": bool(config.allow_direct),
        "discard": DiscardPolicy(config.discard or DiscardPolicy.OLD),
        "max_bytes": _limit(config.max_bytes),
        "max_msg_size": _limit(config.max_msg_size),
        "allow_rollup_hdrs": bool(config.allow_rollup_hdrs),
    }


def _wanted(bucket: Bucket, have: Mapping[str, Any], held: int) -> dict[str, Any]:
    """The settings ``bucket`` should have, but its old ``max_bytes`` where the stream holds
    ``held`` bytes, more than the new one (lowering it would drop the oldest values)."""
    max_bytes = bucket.max_bytes
    old = have["max_bytes"]
    if held > max_bytes and (old < 0 or old > max_bytes):
        max_bytes = old
        log.warning(
            "bucket %s holds %d bytes, more than its new max bytes %d: keeping %s, as "
            "JetStream would drop its oldest values to fit; delete keys or choose a larger "
            "limit (--bucket-max-bytes), then run it again",
            bucket.name,
            held,
            bucket.max_bytes,
            "no limit" if old < 0 else f"{old} bytes",
        )
    return {
        "max_age": bucket.max_age,
        "max_msgs_per_subject": bucket.history,
        "allow_direct": True,
        "discard": DiscardPolicy.NEW,
        "max_bytes": max_bytes,
        "max_msg_size": bucket.max_value_size,
        # A message with a rollup header purges a whole bucket (``Nats-Rollup: all``), and
        # permissions cannot look at headers: a node allowed its own status keys could wipe
        # every node's. Nothing of ours purges; deletes are markers.
        "allow_rollup_hdrs": False,
    }


def _limit(value: int | None) -> int:
    """A stream limit as JetStream reports it, with -1 for none (JetStream's own spelling)."""
    return -1 if value is None or value <= 0 else int(value)

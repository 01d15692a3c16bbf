"""Creating the fleet's buckets (``reconciler manager init``, and the leader at start-up).

``init_buckets`` creates missing buckets and brings the settings of existing ones back to the
contract (``reconciler.fleet.buckets``); it is idempotent. Node users have no permission to
create buckets: an agent that finds none keeps retrying until the manager (or ``reconciler
manager init``) has made them.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import NotFoundError

from reconciler.core.cancel import cancellable
from reconciler.fleet.buckets import DEFAULT_LEASE, Bucket, buckets, stream_name

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

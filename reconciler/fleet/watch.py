"""Watching keys of a KV bucket through a consumer whose create subject carries its filter.

nats-py's ``KeyValue.watch`` creates its consumer on the bare ``$JS.API.CONSUMER.CREATE.<stream>``
subject, which a permission can only allow or deny as a whole, so anyone allowed to watch one key
could watch them all. JetStream (2.9 and later) also takes the request on
``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`` and refuses it unless the filter in the body
equals the one in the subject, so a node's permissions can allow exactly its own filter. This
module makes that request itself and reads the consumer's deliveries on a subscription under the
connection's inbox prefix (which the node's permissions also confine).

What a watch gives is a KV watch's: ``start()`` returns the values present when it started (the
latest per key; deleted keys left out, their delete markers' revisions kept in ``deleted`` for a
compare-and-set write that brings one back), which is the end-of-initial marker, and ``next()`` then
returns every later put and delete (``value`` None) in order.

The consumer is ephemeral, in memory, with one replica and no acks; the server removes it a few
seconds after its subscription goes away. Delivery is checked the way an ordered consumer checks
it: each delivery carries the consumer sequence, which must grow by exactly one, and the idle
heartbeats carry the last sequence sent. A gap, three heartbeat periods of silence, or a
deleted consumer end the watch with ``WatchLost``; the caller starts a new watch and takes its
initial values as the whole picture, so nothing is lost, only read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from reconciler.core.cancel import cancellable
from reconciler.fleet.buckets import key_subject, stream_name, watch_subject

__all__ = ["BucketMissing", "Entry", "KeyWatch", "WatchLost"]

_STREAM_NOT_FOUND = 10059
_DELETE_OPS = ("DEL", "PURGE")


class WatchLost(Exception):
    """The watch can no longer be trusted (or never started); start a new one."""


class BucketMissing(WatchLost):
    """The bucket does not exist (yet)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One key's latest value. ``value`` None: the key was deleted or purged."""

    key: str
    value: bytes | None
    revision: int


@dataclass(frozen=True, slots=True)
class _Delivery:
    entry: Entry
    pending: int


class _Tick:
    """A heartbeat arrived: the watch is alive."""


class KeyWatch:
    """One watch of ``keys`` (a KV key or a pattern such as ``node-a.*``) in ``bucket``."""

    def __init__(
        self,
        nc: Client,
        bucket: str,
        keys: str,
        *,
        idle_heartbeat: float = 5.0,
        timeout: float = 5.0,
    ) -> None:
        self._nc = nc
        self._bucket = bucket
        self._stream = stream_name(bucket)
        self._keys = keys
        self._filter = key_subject(bucket, keys)
        self._prefix = key_subject(bucket, "")
        self._idle = idle_heartbeat
        self._timeout = timeout
        self._queue: asyncio.Queue[_Delivery | _Tick | WatchLost] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._seq = 0  # the last consumer sequence delivered
        self._lost = False
        self.deleted: dict[str, int] = {}  # initially deleted keys: their markers' revisions

    @property
    def bucket(self) -> str:
        return self._bucket

    async def start(self) -> dict[str, Entry]:
        """Create the consumer and return the initial values, keyed by key. Call once.

        Raises ``BucketMissing`` when the bucket does not exist, and ``WatchLost`` when
        JetStream refuses or does not answer (no JetStream, no permission, a timeout).
        """
        inbox = self._nc.new_inbox()
        name = inbox.rsplit(".", 1)[-1]
        self._sub = await self._nc.subscribe(inbox, cb=self._on_msg)
        config = {
            "name": name,
            "deliver_subject": inbox,
            "deliver_policy": "last_per_subject",
            "ack_policy": "none",
            "filter_subject": self._filter,
            "replay_policy": "instant",
            "idle_heartbeat": int(self._idle * 1e9),
            "inactive_threshold": int(max(5.0, 2 * self._idle) * 1e9),
            "mem_storage": True,
            "num_replicas": 1,
        }
        request = json.dumps({"stream_name": self._stream, "config": config}).encode()
        subject = watch_subject(self._bucket, self._keys, name)
        try:
            # cancellable: nats-py's request can swallow a cancellation (reconciler.core.cancel)
            reply = await cancellable(self._nc.request(subject, request, timeout=self._timeout))
        except NoRespondersError:
            raise WatchLost("JetStream does not answer (is the server running with -js?)") from None
        except (TimeoutError, NatsTimeout):
            raise WatchLost(
                f"no answer to the watch of {self._filter} (JetStream down, or not permitted)"
            ) from None
        info = _api_reply(reply.data, self._bucket)
        total = int(info.get("num_pending", 0)) + int(
            info.get("delivered", {}).get("consumer_seq", 0)
        )
        initial: dict[str, Entry] = {}
        while total > 0:
            item = await self._get()
            if isinstance(item, _Tick):
                # An idle heartbeat that names our last delivery (``_on_msg`` fails the watch
                # otherwise): the server has had nothing more for us for a whole heartbeat
                # period, so the initial values are all in, whatever ``num_pending`` said when
                # the consumer was made (a key that changed since counts once). Waiting on
                # would wait for ever, a heartbeat at a time.
                break
            entry = item.entry
            if entry.value is None:
                initial.pop(entry.key, None)
                self.deleted[entry.key] = entry.revision
            else:
                initial[entry.key] = entry
                self.deleted.pop(entry.key, None)
            if item.pending == 0:
                break
        return initial

    async def next(self) -> Entry:
        """The next put or delete. Raises ``WatchLost`` when the watch can no longer be trusted."""
        while True:
            item = await self._get()
            if isinstance(item, _Delivery):
                return item.entry

    async def stop(self) -> None:
        """Unsubscribe; the server removes the consumer soon after. Idempotent, never raises."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # ------------------------------------------------------------------------ internals

    async def _get(self) -> _Delivery | _Tick:
        try:
            async with asyncio.timeout(3 * self._idle):  # wait_for may swallow a cancellation
                item = await self._queue.get()
        except TimeoutError:
            raise WatchLost(f"the watch of {self._filter} fell silent") from None
        if isinstance(item, WatchLost):
            raise item
        return item

    def _fail(self, why: str) -> None:
        if not self._lost:
            self._lost = True
            self._queue.put_nowait(WatchLost(f"the watch of {self._filter}: {why}"))

    async def _on_msg(self, msg: Msg) -> None:
        # Runs in nats-py's per-subscription task, in delivery order.
        if self._lost:
            return
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is not None:
            if status == "100":
                last = headers.get("Nats-Last-Consumer")
                if last is not None and last.isdigit() and int(last) != self._seq:
                    self._fail(f"missed deliveries (sent up to {last}, got {self._seq})")
                else:
                    self._queue.put_nowait(_Tick())
            else:
                self._fail(f"status {status} {headers.get('Description', '')}".strip())
            return
        try:
            meta = msg.metadata
        except Exception:
            self._fail("a delivery without JetStream metadata")
            return
        seq = meta.sequence.consumer
        if seq != self._seq + 1:
            self._fail(f"missed deliveries (expected {self._seq + 1}, got {seq})")
            return
        self._seq = seq
        op = headers.get("KV-Operation")
        entry = Entry(
            key=msg.subject[len(self._prefix) :],
            value=None if op in _DELETE_OPS else msg.data,
            revision=meta.sequence.stream,
        )
        self._queue.put_nowait(_Delivery(entry, meta.num_pending))


def _api_reply(data: bytes, bucket: str) -> dict[str, Any]:
    try:
        reply = json.loads(data)
    except ValueError:
        raise WatchLost("JetStream answered with something that is not JSON") from None
    if not isinstance(reply, dict):
        raise WatchLost("JetStream answered with something that is not an object")
    error = reply.get("error")
    if isinstance(error, dict):
        if error.get("err_code") == _STREAM_NOT_FOUND:
            raise BucketMissing(f"bucket {bucket} does not exist")
        raise WatchLost(f"JetStream refused the watch: {error.get('description', error)}")
    return reply

"""One connection of the fleet session: connected, watching this node's keys, then torn down.

The fleet session (``reconciler.sessions.nats``) lives through a series of connections, one at
a time (its *epochs*). A ``Connection`` is the plumbing of one of them, apart from what the
values mean:

1. ``connect``: the first server that answers, in the order given (``connect_first``, with
   nats-py's own reconnecting off); losing it or closing it ends the connection;
2. ``watch``: ``reconciler_control/fleet``, ``reconciler_control/node.<node>`` and
   ``reconciler_assignments/<node>.*``, each through a consumer whose create subject carries
   its filter (``reconciler.fleet.watch``), so the node's permissions can confine it to its
   keys; their initial values are returned, and handles on the status and node buckets made;
3. ``pump``, then ``next``: every later change of the three, in the order they arrive, until
   the connection ends (None) or a watch can no longer be trusted (its error is raised);
4. ``close``: ``over`` is set, so a write in flight gives up at once, and the watches and the
   client are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client
from nats.js.kv import KeyValue

from reconciler.fleet.buckets import (
    ASSIGNMENTS,
    CONTROL,
    FLEET_KEY,
    NODES,
    STATUS,
    key_subject,
    node_control_key,
    stream_name,
)
from reconciler.fleet.connect import ErrorCallback, connect_first
from reconciler.fleet.options import NatsOptions, redact
from reconciler.fleet.watch import Entry, KeyWatch

__all__ = ["FLEET", "NODE", "TASKS", "Connection"]

log = logging.getLogger(__name__)

FLEET, NODE, TASKS = "fleet", "node", "tasks"
"""The tags of the three watches: the fleet settings, this node's control, its assignments."""

_Event = tuple[str, Entry | BaseException | None]


class Connection:
    """One connection and its watches of this node's keys; see the module docstring."""

    def __init__(self, node_id: str, *, idle_heartbeat: float, request_timeout: float) -> None:
        self._node_id = node_id
        self._idle = idle_heartbeat
        self._timeout = request_timeout
        self._events: asyncio.Queue[_Event] = asyncio.Queue()
        self._nc: Client | None = None
        self._watches: dict[str, KeyWatch] = {}
        self._pumps: list[asyncio.Task[None]] = []
        self.over = asyncio.Event()
        """Set once the connection is closed."""
        self.status_kv: KeyValue | None = None
        self.nodes_kv: KeyValue | None = None

    def end(self) -> None:
        """End the connection (lost, closed, or renewed): ``next()`` returns None."""
        self._events.put_nowait(("", None))

    async def connect(
        self, options: NatsOptions, servers: Sequence[str], *, error_cb: ErrorCallback
    ) -> None:
        """Connect to the first of ``servers`` that answers. Raises what ``connect_first``
        raises; nothing is left open then."""

        async def lost() -> None:
            self.end()

        nc, url = await connect_first(
            options, servers, error_cb=error_cb, disconnected_cb=lost, closed_cb=lost
        )
        log.info("connected to the fleet url=%s", redact(url))
        self._nc = nc
        node, idle = self._node_id, self._idle
        self._watches = {
            FLEET: KeyWatch(nc, CONTROL, FLEET_KEY, idle_heartbeat=idle),
            NODE: KeyWatch(nc, CONTROL, node_control_key(node), idle_heartbeat=idle),
            TASKS: KeyWatch(nc, ASSIGNMENTS, f"{node}.*", idle_heartbeat=idle),
        }

    async def watch(self) -> dict[str, dict[str, Entry]]:
        """Start the watches; their initial values, by tag, then by key. Raises what a watch
        raises (``BucketMissing`` before the manager created the buckets)."""
        assert self._nc is not None
        initial = {tag: await w.start() for tag, w in self._watches.items()}
        js = self._nc.jetstream(timeout=self._timeout)
        self.status_kv = _kv(js, STATUS)
        self.nodes_kv = _kv(js, NODES)
        return initial

    def pump(self) -> None:
        """Start forwarding the watches' later changes to ``next()``."""
        self._pumps = [
            asyncio.create_task(_pump(tag, w, self._events)) for tag, w in self._watches.items()
        ]

    async def next(self) -> tuple[str, Entry] | None:
        """The next change (tag, entry), or None once the connection ended. Raises the error
        that ended a watch."""
        tag, item = await self._events.get()
        if item is None:
            return None
        if isinstance(item, BaseException):
            raise item
        return tag, item

    async def close(self) -> None:
        """Set ``over``, then stop the pumps and the watches and close the client."""
        self.over.set()
        self.status_kv = self.nodes_kv = None
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for w in self._watches.values():
            await w.stop()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()


def _kv(js: Any, bucket: str) -> KeyValue:
    """A bucket handle that needs no stream lookup (nodes may not be allowed one)."""
    return KeyValue(
        name=bucket, stream=stream_name(bucket), pre=key_subject(bucket, ""), js=js, direct=True
    )


async def _pump(tag: str, watch: KeyWatch, events: asyncio.Queue[_Event]) -> None:
    try:
        while True:
            events.put_nowait((tag, await watch.next()))
    except asyncio.CancelledError:
        raise
    except Exception as err:
        events.put_nowait((tag, err))

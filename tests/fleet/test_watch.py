"""``KeyWatch.start`` against a scripted server: the initial read ends, whatever the consumer's
``num_pending`` promised, once an idle heartbeat says nothing more is coming.

A real nats-server cannot be made to promise more than it delivers on purpose (it happens when
keys change while the consumer is made), so a small fake client plays the server's part here.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.aio.client import Client

from reconciler.fleet.watch import KeyWatch, WatchLost


@dataclass
class Msg:
    subject: str = ""
    data: bytes = b""
    headers: dict[str, str] | None = None
    metadata: Any = None


@dataclass
class ScriptedServer:
    """Answers the consumer create with ``pending``, then sends ``script`` to the watch."""

    pending: int
    script: list[Msg] = field(default_factory=list)
    cb: Callable[[Msg], Awaitable[None]] | None = None

    def new_inbox(self) -> str:
        return "_INBOX.test.abc"

    async def subscribe(self, inbox: str, cb: Callable[[Msg], Awaitable[None]]) -> Any:
        self.cb = cb
        return SimpleNamespace(unsubscribe=self._nothing)

    async def request(self, subject: str, payload: bytes, timeout: float) -> Msg:  # noqa: ASYNC109 - nats-py's
        assert self.cb is not None
        for msg in self.script:
            await self.cb(msg)
        reply = {"num_pending": self.pending, "delivered": {"consumer_seq": 0}}
        return Msg(data=json.dumps(reply).encode())

    async def _nothing(self) -> None:
        return None


def delivery(key: str, seq: int, pending: int) -> Msg:
    sequence = SimpleNamespace(consumer=seq, stream=100 + seq)
    return Msg(
        subject=f"$KV.b.{key}",
        data=b"v",
        headers={},
        metadata=SimpleNamespace(sequence=sequence, num_pending=pending),
    )


def heartbeat(last: int) -> Msg:
    return Msg(headers={"Status": "100", "Nats-Last-Consumer": str(last)})


async def test_an_idle_heartbeat_ends_an_initial_read_that_promised_more() -> None:
    # two values were pending when the consumer was made; one of them changed meanwhile and
    # came once, its delivery saying one more is pending: the heartbeat says there is none
    server = ScriptedServer(pending=2, script=[delivery("a", 1, pending=1), heartbeat(last=1)])
    watch = KeyWatch(cast(Client, server), "b", ">", idle_heartbeat=1.0)
    initial = await watch.start()
    assert list(initial) == ["a"] and initial["a"].revision == 101


async def test_a_heartbeat_naming_a_delivery_never_seen_fails_the_read() -> None:
    server = ScriptedServer(pending=2, script=[delivery("a", 1, pending=1), heartbeat(last=2)])
    watch = KeyWatch(cast(Client, server), "b", ">", idle_heartbeat=60.0)
    with pytest.raises(WatchLost, match="missed deliveries"):
        await watch.start()

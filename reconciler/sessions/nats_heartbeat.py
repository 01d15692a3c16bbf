"""The fleet session's heartbeats: when the agent puts its node value.

A loop puts the node value into ``reconciler_nodes/<node>`` every heartbeat period (the fleet
setting ``heartbeatPeriod``, default 5 s; a change applies from the next beat), at once after
every (re)connect, and when readiness or availability changes. ``describe`` gives the node
description and readiness (the agent's snapshot), ``conditions`` the node's conditions (a
manager places nothing new on a node under pressure); a change of either beats at once. The
loop looks for such a change at least every ``READY_POLL`` seconds between beats.

It beats only while the session is connected; a beat that fails is logged (at debug level:
the session logs the outage itself) and the next one comes a period later. ``Heartbeats``
owns *when*; the put itself is ``NatsSession.heartbeat`` (``reconciler.sessions.nats``),
which runs the loop and ends it when the session closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from reconciler.core.clock import Clock, sleep_or_wake
from reconciler.core.model import NodeDescription

__all__ = ["READY_POLL", "Beat", "Describe", "Heartbeats"]

log = logging.getLogger(__name__)

Describe = Callable[[], tuple[NodeDescription | None, bool]]
"""Gives the node description (None until the runtime described it) and readiness."""


class Beat(Protocol):
    def __call__(
        self, node: NodeDescription | None, *, ready: bool, conditions: Mapping[str, bool]
    ) -> Awaitable[None]: ...


READY_POLL = 1.0
"""How often (seconds) the heartbeat loop looks for a readiness change between beats."""


class Heartbeats:
    """The heartbeat loop of one session; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Clock,
        online: asyncio.Event,
        period: Callable[[], float],
        beat: Beat,
        describe: Describe | None = None,
        conditions: Callable[[], Mapping[str, bool]] | None = None,
    ) -> None:
        self._clock = clock
        self._online = online
        self._period = period
        self._beat = beat
        self._describe = describe
        self._conditions = conditions
        self._wake = asyncio.Event()
        self._now = False

    def soon(self) -> None:
        """Beat at once: the session (re)connected, or the availability changed."""
        self._now = True
        self._wake.set()

    def wake(self) -> None:
        """Look again now: the period changed."""
        self._wake.set()

    async def run(self) -> None:
        """Beat until cancelled; see the module docstring."""
        last_beat: float | None = None
        last_ready: bool | None = None
        last_conditions: dict[str, bool] | None = None
        while True:
            await self._online.wait()
            self._wake.clear()
            node, ready = self._describe() if self._describe is not None else (None, False)
            conditions = dict(self._conditions()) if self._conditions is not None else {}
            due = last_beat is None or self._clock.monotonic() - last_beat >= self._period()
            changed = ready != last_ready or conditions != last_conditions
            if self._now or due or changed:
                self._now = False
                try:
                    await self._beat(node, ready=ready, conditions=conditions)
                    last_ready, last_conditions = ready, conditions
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    log.debug("heartbeat failed: %s", str(err) or type(err).__name__)
                last_beat = self._clock.monotonic()
            assert last_beat is not None
            wait = last_beat + self._period() - self._clock.monotonic()
            await sleep_or_wake(self._clock, min(max(0.0, wait), READY_POLL), self._wake)

"""Leader election on the ``leader`` key of ``reconciler_leader``: one manager acts, the rest wait.

The bucket's max age is the lease (default 10 s), so the key disappears one lease after its
last write. The ``Elector`` of each manager, once per connection:

* **Campaigns** while it does not lead: every ``lease / 5`` it tries to *create* the key (a
  write that succeeds only where the key is absent). NATS 2.9 does not tell watchers when a key
  ages out, so a standby never waits for a delete: it simply tries again, and takes over within
  one of those periods of the key ageing out. A key that already holds this manager's own id
  (its previous connection's term, still alive) is taken back at its revision.
* **Holds** while it leads: every ``lease / 3`` it *updates* the key at the revision it last
  wrote (compare-and-set). A refused update means the key aged out or someone else holds it now:
  it stops leading at once. A refresh that fails otherwise (a timeout, a lost connection) is
  retried until the hold runs out.
* **The hold.** A leader acts only until ``HOLD`` of the lease has passed since it *sent* its
  last successful write: the server stamped that write later still, so the key outlives the
  hold and no standby can have created it meanwhile. ``leading`` reads the clock, so it turns
  false at that moment even while a refresh hangs; the driver checks it before every write.
* **Resigning.** On a clean stop the leader deletes the key (at its revision), so a standby
  takes over at its next attempt instead of waiting for the key to age out; a resigned elector
  never campaigns again.

The value is JSON, ``{"id": "<manager id>"}``; ``holder`` is the id last seen in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from nats.js.errors import KeyWrongLastSequenceError

from reconciler.core.cancel import cancellable
from reconciler.core.clock import Clock
from reconciler.core.codec import compact
from reconciler.fleet.values import load_json

__all__ = ["HOLD", "LEADER_KEY", "Elector", "LeaseStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

LEADER_KEY = "leader"
HOLD = 0.9
"""The share of the lease a leader acts for after each successful write."""


class LeaseStore(Protocol):
    """The calls of nats-py's ``KeyValue`` that the elector makes."""

    async def create(self, key: str, value: bytes) -> int: ...

    async def update(self, key: str, value: bytes, last: int | None = None) -> int: ...

    async def get(self, key: str) -> Any: ...

    async def delete(self, key: str, last: int | None = None) -> bool: ...


class Elector:
    """Campaigns for and holds the leader key; see the module docstring."""

    def __init__(
        self,
        *,
        manager_id: str,
        lease: float,
        clock: Clock,
        on_change: Callable[[bool], None] = lambda leading: None,
    ) -> None:
        if lease <= 0:
            raise ValueError(f"the lease must be positive, got {lease}")
        self.manager_id = manager_id
        self.lease = lease
        self._clock = clock
        self._on_change = on_change
        self._value = compact({"id": manager_id})
        self._revision: int | None = None
        self._until = 0.0
        self._resigned = False
        self.holder: str | None = None

    @property
    def leading(self) -> bool:
        """Whether this manager may act now."""
        return self._revision is not None and self._clock.monotonic() < self._until

    @property
    def renew_every(self) -> float:
        return self.lease / 3

    @property
    def campaign_every(self) -> float:
        return self.lease / 5

    async def run(self, kv: LeaseStore) -> None:
        """Campaign, then hold, until cancelled (the connection's end), when it stops leading.
        Never raises for NATS errors."""
        try:
            while True:
                if self._revision is None and not self._resigned:
                    await self._campaign(kv)
                else:
                    await self._renew(kv)
                wait = self.campaign_every if self._revision is None else self.renew_every
                if self._revision is not None:
                    wait = min(wait, max(0.0, self._until - self._clock.monotonic()))
                await self._clock.sleep(wait)
                if self._revision is not None and self._clock.monotonic() >= self._until:
                    self._step_down("could not refresh the leader key within the lease")
        finally:
            if self._revision is not None:
                self._step_down("the connection to NATS ended")

    async def resign(self, kv: LeaseStore) -> None:
        """Stop leading, for good, and delete the key so a standby takes over at once.
        Never raises."""
        self._resigned = True
        revision = self._revision
        if revision is None:
            return
        self._step_down("resigned")
        with contextlib.suppress(Exception):
            await _within(self.renew_every, kv.delete(LEADER_KEY, last=revision))

    # ------------------------------------------------------------------------ internals

    def _timeout(self) -> float:
        return self.renew_every

    async def _campaign(self, kv: LeaseStore) -> None:
        sent = self._clock.monotonic()
        revision: int | None
        try:
            revision = await _within(self._timeout(), kv.create(LEADER_KEY, self._value))
        except KeyWrongLastSequenceError:
            revision = await self._reclaim(kv, sent)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.debug("leader campaign failed: %s", str(err) or type(err).__name__)
            return
        if revision is not None:
            self._take(revision, sent)

    async def _reclaim(self, kv: LeaseStore, sent: float) -> int | None:
        """The key exists: note its holder; take it back when it is this manager's own."""
        try:
            entry = await _within(self._timeout(), kv.get(LEADER_KEY))
            holder = _holder(entry.value or b"")
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.debug("leader key unreadable: %s", str(err) or type(err).__name__)
            return None
        if holder != self.holder:
            self.holder = holder
            log.info("following leader=%s", holder)
        if holder != self.manager_id:
            return None
        try:
            revision: int = await _within(
                self._timeout(), kv.update(LEADER_KEY, self._value, last=entry.revision)
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            return None
        return revision

    async def _renew(self, kv: LeaseStore) -> None:
        sent = self._clock.monotonic()
        try:
            revision = await _within(
                max(0.01, min(self._timeout(), self._until - sent)),
                kv.update(LEADER_KEY, self._value, last=self._revision),
            )
        except KeyWrongLastSequenceError:
            self._step_down("the leader key is gone or held by another manager")
            return
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.debug("leader key refresh failed: %s", str(err) or type(err).__name__)
            return
        if self._revision is not None:
            self._revision = revision
            self._until = sent + HOLD * self.lease

    def _take(self, revision: int, sent: float) -> None:
        self._revision = revision
        self._until = sent + HOLD * self.lease
        self.holder = self.manager_id
        log.info("leading id=%s lease=%gs", self.manager_id, self.lease)
        self._on_change(True)

    def _step_down(self, why: str) -> None:
        self._revision = None
        self._until = 0.0
        if self.holder == self.manager_id:
            self.holder = None
        log.warning("no longer leading: %s", why)
        self._on_change(False)


async def _within(seconds: float, call: Awaitable[T]) -> T:
    """``call``, or ``TimeoutError`` after ``seconds``. Through ``cancellable``: nats-py awaits
    its replies with Python 3.11's ``asyncio.wait_for``, which swallows the cancellation that
    ends the elector when a reply arrives with it, and the elector then renewed its lease for
    ever while the manager's shutdown waited for it to end."""
    return await cancellable(call, within=seconds)


def _holder(value: bytes) -> str | None:
    doc = load_json(value)
    holder = doc.get("id") if isinstance(doc, dict) else None
    return holder if isinstance(holder, str) else None

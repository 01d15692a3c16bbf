"""The store failing and coming back: not ready while writes fail, nothing lost once they work.

A failed store write (a full disk, say) makes the node not ready with the reason, and this
watch starts: it retries ``Store.recover()`` with backoff until writes work again. What runs
keeps running meanwhile; statuses stay queued in the worker, the local manager's round waits,
and a desired set that could not be stored is kept. Once writes work, the watch hands each of
them their turn (``on_recovered``), without a restart.

Start-up steps that write the store go through ``stored()``: a step that fails because the
store fails waits for it to recover and runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from reconciler.core.backoff import Backoff, Retry
from reconciler.core.errors import StoreError
from reconciler.core.store import Store
from reconciler.core.supervisor import describe_error

__all__ = ["STORE_RETRY", "StoreWatch"]

log = logging.getLogger(__name__)

STORE_RETRY = Backoff(initial=0.5, cap=5.0)
"""How often a failed store is probed until writes work again."""

T = TypeVar("T")


class StoreWatch:
    """Probes a failed store until it takes writes, then runs ``on_recovered``."""

    def __init__(
        self,
        store: Store,
        *,
        retry: Callable[[], Retry],
        changed: Callable[[], None],
    ) -> None:
        self._store = store
        self._retry = retry
        self._changed = changed
        self.on_recovered: list[Callable[[], Awaitable[None] | None]] = []
        self._task: asyncio.Task[None] | None = None
        store.add_failure_listener(self._failed)

    def _failed(self, reason: str) -> None:
        """A store write failed: not ready until a probe writes again."""
        self._changed()
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):  # no loop: start-up retries by itself
                self._task = asyncio.get_running_loop().create_task(
                    self._watch(), name="store-recovery"
                )

    async def recovered(self) -> None:
        """Wait until the store takes writes again."""
        retry = self._retry()
        while not self._store.recover():
            self._changed()
            await retry.wait()
        self._changed()

    async def stored(self, write: Callable[[], Awaitable[T]]) -> T:
        """Run a start-up step that writes the store, again after each store failure."""
        while True:
            try:
                return await write()
            except StoreError as err:
                if self._store.failure is None:
                    raise
                log.warning("start-up waits for the store err=%s", describe_error(err))
                await self.recovered()

    async def _watch(self) -> None:
        await self.recovered()
        log.info("store recovered; writing what was queued")
        for resume in self.on_recovered:
            pending = resume()
            if pending is not None:
                await pending

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

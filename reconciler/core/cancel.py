"""Cancellation that is never lost: how a loop that is asked to stop is sure to stop.

Cancelling a task is how the agent and the manager stop their loops, and a stop must end in
bounded time whatever the loop awaits. Python 3.11's ``asyncio.wait_for`` can lose a
cancellation: when the awaited result arrives in the same turn of the event loop as the
cancellation, it returns the result and the task runs on as if it had never been cancelled.
nats-py awaits every reply with ``wait_for`` (requests, connect, flushes), so a manager or a
session cancelled just as NATS answers could run on for ever, and whoever waited for it to end
waited for ever (seen as a hung test: a manager's elector kept renewing its lease while the
manager's shutdown waited for it).

Two remedies, one for each side of a cancellation:

* ``cancellable(call)``, for the task being cancelled: it awaits a library's call in a task of
  its own, so a cancellation of the caller always raises ``CancelledError`` in the caller,
  whatever the call does with it. The call is cancelled too and left to finish on its own.
  Use it for every NATS call a stoppable loop awaits directly. (Connecting is the exception: a
  connect cancelled midway leaves its socket open, so ``reconciler.fleet.connect`` shields it
  and closes what it opens after its caller is gone.)
* ``cancel_and_wait(tasks)``, for the one stopping them: it cancels again, every ``every``
  seconds on the clock, each task that has not ended yet, so a cancellation that a library
  swallowed anyway is delivered again at the task's next await. A task that is ending on
  purpose, a podman call letting its thread finish first (``runtime/podman/lanes.py``), ignores
  the extra cancellations until it has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from reconciler.core.clock import Clock

__all__ = ["RECANCEL_EVERY", "cancel_and_wait", "cancellable"]

log = logging.getLogger(__name__)
T = TypeVar("T")

RECANCEL_EVERY = 1.0
"""Seconds between the cancellations ``cancel_and_wait`` sends a task that goes on running."""


async def cancellable(call: Awaitable[T], *, within: float | None = None) -> T:
    """Await ``call`` (in a task of its own) and return its result, or raise what it raised.

    Raises ``CancelledError`` whenever the caller is cancelled, even if ``call`` would have
    swallowed the cancellation, and ``TimeoutError`` when ``within`` seconds pass first. In
    both cases ``call`` is cancelled and not waited for.
    """
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=within)
    finally:
        if not task.done():
            task.cancel()
            task.add_done_callback(_retrieve)
    if not done:
        raise TimeoutError
    return task.result()


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], *, clock: Clock, every: float = RECANCEL_EVERY
) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again every ``every``
    seconds (on ``clock``) those still running. Their results and errors are discarded.
    Cancelling the caller stops the wait, not the cancellations already sent."""
    every_task = list(tasks)
    pending = {t for t in every_task if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        ended = asyncio.ensure_future(asyncio.wait(pending))
        tick = asyncio.ensure_future(clock.sleep(every))
        try:
            await asyncio.wait({ended, tick}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            tick.cancel()
            await asyncio.gather(ended, tick, return_exceptions=True)
        pending = {t for t in pending if not t.done()}
        for task in pending:  # a podman call finishing its thread, or a lost cancellation
            log.info(
                "task %s still running after its cancellation; cancelling it again", task.get_name()
            )
    for task in every_task:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: the caller asked only for the end


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Consume the outcome of an abandoned call, so that asyncio does not report it."""
    if not task.cancelled():
        task.exception()

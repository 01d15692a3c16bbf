"""Cancellation is never lost: ``cancellable`` for the task cancelled, ``cancel_and_wait`` for the
one stopping it.

The call that loses a cancellation is built here the way nats-py awaits a reply: through
``asyncio.wait_for``, which on Python 3.11 returns a reply that arrived in the same turn of the
event loop as the cancellation and drops the cancellation. Each test stops what it started
within a generous deadline whose expiry names where the task waits
(``reconciler.testing.tasks``), so a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio

import pytest

from reconciler.core.cancel import RECANCEL_EVERY, cancel_and_wait, cancellable
from reconciler.core.clock import FakeClock, settle
from reconciler.testing.tasks import ended


class Reply:
    """A request whose reply the test delivers, awaited as nats-py awaits one."""

    def __init__(self) -> None:
        self.pending: asyncio.Future[int] | None = None
        self.cancelled = False

    async def request(self) -> int:
        self.pending = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(self.pending, 60)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_cancelling_the_caller_as_the_reply_arrives_raises_in_the_caller() -> None:
    reply = Reply()
    after: list[str] = []

    async def caller() -> None:
        await cancellable(reply.request())
        after.append("went on as if never cancelled")

    task = asyncio.create_task(caller())
    await settle()
    assert reply.pending is not None
    reply.pending.set_result(7)  # the reply and the cancellation in the same turn
    task.cancel()
    await ended(task, "the cancelled caller")
    assert task.cancelled() and after == []


async def test_the_calls_result_and_error_pass_through() -> None:
    async def answer() -> str:
        return "answer"

    async def refuse() -> str:
        raise LookupError("no such key")

    assert await cancellable(answer()) == "answer"
    with pytest.raises(LookupError, match="no such key"):
        await cancellable(refuse())


async def test_a_call_that_outlives_its_deadline_raises_timeout_and_is_cancelled() -> None:
    reply = Reply()
    with pytest.raises(TimeoutError):
        await cancellable(reply.request(), within=0.01)
    await settle()
    assert reply.cancelled


async def test_cancel_and_wait_cancels_again_a_task_that_swallowed_the_cancellation(
    clock: FakeClock,
) -> None:
    cancellations: list[int] = []

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancellations.append(1)  # swallowed, as a library may
        await asyncio.Event().wait()

    task = asyncio.create_task(stubborn())
    await settle()
    stopping = asyncio.create_task(cancel_and_wait([task], clock=clock))
    await settle()
    assert cancellations == [1] and not task.done()
    await clock.advance(RECANCEL_EVERY)
    await ended(stopping, "cancel_and_wait")
    assert task.cancelled()


async def test_cancel_and_wait_returns_at_once_for_tasks_that_end_when_cancelled(
    clock: FakeClock,
) -> None:
    tasks = [asyncio.create_task(asyncio.Event().wait()) for _ in range(3)]
    await settle()
    await cancel_and_wait(tasks, clock=clock)
    assert all(t.cancelled() for t in tasks)
    assert clock.monotonic() == 0.0 and clock.sleepers == 0

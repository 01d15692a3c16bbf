"""The loop supervisor: a failing loop is logged once, counted, marked down and restarted."""

from __future__ import annotations

import asyncio
import logging

import pytest

from reconciler.core.backoff import Backoff
from reconciler.core.cancel import RECANCEL_EVERY
from reconciler.core.clock import FakeClock, settle
from reconciler.core.supervisor import Supervisor, describe_error
from reconciler.testing.tasks import ended


def make(clock: FakeClock, restarts: list[str]) -> Supervisor:
    return Supervisor(
        clock=clock,
        on_restart=restarts.append,
        backoff=Backoff(initial=1.0, cap=4.0, jitter=0.0),
        healthy_after=60.0,
    )


async def test_a_failing_loop_is_counted_marked_down_and_restarted(clock: FakeClock) -> None:
    runs: list[int] = []

    async def body() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RecursionError("maximum recursion depth exceeded")
        await asyncio.Event().wait()

    restarts: list[str] = []
    sup = make(clock, restarts)
    sup.start("session", body)
    await settle()
    assert restarts == ["session"]
    assert sup.down == {"session": "RecursionError: maximum recursion depth exceeded"}
    await clock.advance(1.0)
    assert len(runs) == 2
    assert sup.down == {}
    await sup.stop()


async def test_a_loop_that_returns_is_restarted_too(clock: FakeClock) -> None:
    runs: list[int] = []

    async def body() -> None:
        runs.append(1)

    restarts: list[str] = []
    sup = make(clock, restarts)
    sup.start("resync", body)
    await settle()
    assert sup.down == {"resync": "the loop ended unexpectedly"}
    await clock.advance(1.0)
    await clock.advance(2.0)
    assert len(runs) == 3
    assert restarts == ["resync"] * 3
    await sup.stop()


async def test_restarts_back_off_and_a_long_healthy_run_resets_the_backoff(
    clock: FakeClock,
) -> None:
    started: list[float] = []
    fail_after = [0.0, 0.0, 0.0, 100.0, 0.0]

    async def body() -> None:
        started.append(clock.monotonic())
        await clock.sleep(fail_after[len(started) - 1])
        raise ValueError("bad")

    sup = make(clock, [])
    sup.start("reporter", body)
    await clock.advance(200.0)
    # waits 1, 2, 4 after quick failures; after a 100 s run the next wait is 1 again
    assert started[:5] == [0.0, 1.0, 3.0, 7.0, 108.0]
    await sup.stop()


async def test_the_log_line_is_bounded_and_the_traceback_only_at_debug(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        raise ValueError("x" * 100_000)

    sup = make(clock, [])
    with caplog.at_level(logging.INFO, logger="reconciler.core.supervisor"):
        sup.start("http", body)
        await settle()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert len(errors[0].getMessage()) < 500
    assert errors[0].exc_info is None
    await sup.stop()


async def test_stop_cancels_every_loop_and_is_idempotent(clock: FakeClock) -> None:
    cancelled: list[str] = []

    async def body() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("x")
            raise

    sup = make(clock, [])
    sup.start("session", body)
    sup.start("resync", body)
    await settle()
    await sup.stop()
    await sup.stop()
    assert cancelled == ["x", "x"]


async def test_stop_ends_a_loop_that_swallowed_its_cancellation(clock: FakeClock) -> None:
    # as a library may (Python 3.11's asyncio.wait_for, under nats-py): stop cancels again
    cancellations: list[str] = []

    async def body() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancellations.append("swallowed")
        await asyncio.Event().wait()

    sup = make(clock, [])
    sup.start("session", body)
    await settle()
    stopping = asyncio.create_task(sup.stop())
    await settle()
    assert cancellations == ["swallowed"] and not stopping.done()
    await clock.advance(RECANCEL_EVERY)
    await ended(stopping, "the supervisor's stop")


def test_describe_error_is_one_bounded_line() -> None:
    text = describe_error(RuntimeError("a\nb " + "y" * 1000))
    assert "\n" not in text
    assert text.startswith("RuntimeError: a b yyy")
    assert len(text) < 350
    assert describe_error(KeyError()) == "KeyError"

"""The one wait on the clock that an event can cut short."""

from __future__ import annotations

import asyncio

from reconciler.core.clock import FakeClock, settle, sleep_or_wake


async def test_sleep_or_wake_ends_when_the_clock_passes_the_delay() -> None:
    clock = FakeClock()
    wake = asyncio.Event()
    waiting = asyncio.ensure_future(sleep_or_wake(clock, 5.0, wake))
    await clock.advance(4.9)
    assert not waiting.done()
    await clock.advance(0.1)
    assert await waiting is False
    assert clock.sleepers == 0


async def test_sleep_or_wake_ends_at_once_when_woken_and_leaves_no_sleeper() -> None:
    clock = FakeClock()
    wake = asyncio.Event()
    waiting = asyncio.ensure_future(sleep_or_wake(clock, 60.0, wake))
    await settle()
    assert clock.sleepers == 1
    wake.set()
    assert await waiting is True
    assert clock.sleepers == 0
    assert wake.is_set()  # clearing it is the caller's choice


async def test_sleep_or_wake_returns_at_once_when_already_woken() -> None:
    clock = FakeClock()
    wake = asyncio.Event()
    wake.set()
    assert await sleep_or_wake(clock, 60.0, wake) is True
    assert clock.sleepers == 0


async def test_cancelling_sleep_or_wake_cancels_both_waits() -> None:
    clock = FakeClock()
    wake = asyncio.Event()
    waiting = asyncio.ensure_future(sleep_or_wake(clock, 60.0, wake))
    await settle()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting.cancelled()
    assert clock.sleepers == 0

"""The manager's bucket watches on a fake clock: a lost watch is started again after a backoff
that grows while it keeps being lost and starts again from the shortest after a good run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import pytest

from reconciler.core.backoff import Backoff
from reconciler.core.clock import FakeClock, settle
from reconciler.fleet.watch import BucketMissing, Entry, WatchLost
from reconciler.manager.watches import BucketWatches, WatchEvent

BUCKET = "reconciler_nodes"
ENTRY = Entry(key="a", value=b"{}", revision=1)


class FakeWatch:
    """A watch whose start and end the test decides."""

    def __init__(self, start_error: Exception | None) -> None:
        self.start_error = start_error
        self.stopped = False
        self._next: asyncio.Queue[Entry | Exception] = asyncio.Queue()

    async def start(self) -> Mapping[str, Entry]:
        if self.start_error is not None:
            raise self.start_error
        return {ENTRY.key: ENTRY}

    async def next(self) -> Entry:
        item = await self._next.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def stop(self) -> None:
        self.stopped = True

    def deliver(self, item: Entry | Exception) -> None:
        self._next.put_nowait(item)


class Opened:
    """Every watch opened, and the start errors the next ones raise."""

    def __init__(self) -> None:
        self.watches: list[FakeWatch] = []
        self.failures: list[Exception] = []

    def __call__(self, bucket: str) -> FakeWatch:
        assert bucket == BUCKET
        watch = FakeWatch(self.failures.pop(0) if self.failures else None)
        self.watches.append(watch)
        return watch

    @property
    def last(self) -> FakeWatch:
        return self.watches[-1]


@pytest.fixture
async def world(
    clock: FakeClock,
) -> AsyncIterator[tuple[BucketWatches, Opened, asyncio.Queue[WatchEvent]]]:
    opened = Opened()
    events: asyncio.Queue[WatchEvent] = asyncio.Queue()
    watches = BucketWatches(
        open=opened,
        events=events,
        clock=clock,
        backoff=Backoff(initial=1.0, factor=2.0, cap=8.0, jitter=0.0),
        healthy_after=30.0,
        attempts=3,
    )
    yield watches, opened, events
    await watches.stop()


async def lose(opened: Opened, events: asyncio.Queue[WatchEvent]) -> WatchEvent:
    """End the current watch as JetStream would; the event its pump delivers."""
    opened.last.deliver(WatchLost("consumer deleted"))
    await settle()
    event = events.get_nowait()
    assert isinstance(event.error, WatchLost)
    return event


async def restarted_after(
    clock: FakeClock, watches: BucketWatches, opened: Opened, seconds: float
) -> None:
    """Restart the lost watch: nothing is opened before ``seconds`` pass, then it is."""
    count = len(opened.watches)
    restart = asyncio.create_task(watches.restart(BUCKET))
    await clock.advance(seconds - 0.5)
    assert len(opened.watches) == count and not restart.done()
    await clock.advance(0.5)
    assert restart.done() and len(opened.watches) == count + 1
    assert await restart == {ENTRY.key: ENTRY}


async def test_a_lost_watch_restarts_after_a_growing_backoff_reset_by_a_good_run(
    clock: FakeClock, world: tuple[BucketWatches, Opened, asyncio.Queue[WatchEvent]]
) -> None:
    watches, opened, events = world
    assert await watches.start(BUCKET) == {ENTRY.key: ENTRY}

    await lose(opened, events)
    await restarted_after(clock, watches, opened, 1.0)
    await lose(opened, events)  # lost again at once: the wait doubles
    await restarted_after(clock, watches, opened, 2.0)
    await lose(opened, events)
    await restarted_after(clock, watches, opened, 4.0)
    assert watches.retry(BUCKET).attempts == 3

    await clock.advance(30.0)  # a good run
    await lose(opened, events)
    await restarted_after(clock, watches, opened, 1.0)  # from the shortest wait again
    assert watches.retry(BUCKET).attempts == 1


async def test_deliveries_of_a_replaced_watch_are_not_current(
    clock: FakeClock, world: tuple[BucketWatches, Opened, asyncio.Queue[WatchEvent]]
) -> None:
    watches, opened, events = world
    await watches.start(BUCKET)
    first = opened.last
    first.deliver(ENTRY)
    await settle()
    old = events.get_nowait()
    assert old.entry == ENTRY and watches.current(old)
    await watches.start(BUCKET)  # read afresh, as after a write conflict
    assert first.stopped and not watches.current(old)
    opened.last.deliver(ENTRY)
    await settle()
    assert watches.current(events.get_nowait())


async def test_a_start_is_tried_again_after_the_backoff_and_gives_up_after_the_last_try(
    clock: FakeClock, world: tuple[BucketWatches, Opened, asyncio.Queue[WatchEvent]]
) -> None:
    watches, opened, _ = world
    opened.failures = [WatchLost("no answer"), WatchLost("no answer")]
    start = asyncio.create_task(watches.start(BUCKET))
    await settle()
    assert len(opened.watches) == 1 and opened.last.stopped
    await clock.advance(1.0)
    assert len(opened.watches) == 2
    await clock.advance(2.0)
    assert len(opened.watches) == 3 and await start == {ENTRY.key: ENTRY}

    opened.failures = [WatchLost("no answer")] * 3
    start = asyncio.create_task(watches.start(BUCKET))
    await clock.advance(100.0)
    with pytest.raises(WatchLost):
        await start
    assert len(opened.watches) == 6 and all(w.stopped for w in opened.watches[3:])


async def test_a_missing_bucket_is_not_tried_again(
    clock: FakeClock, world: tuple[BucketWatches, Opened, asyncio.Queue[WatchEvent]]
) -> None:
    watches, opened, _ = world
    opened.failures = [BucketMissing("no bucket")]
    with pytest.raises(BucketMissing):
        await watches.start(BUCKET)
    assert len(opened.watches) == 1

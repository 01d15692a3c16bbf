"""The status reporter: latest status per task, stale drops, retries, exactly-once delivery."""

from __future__ import annotations

import random

from reconciler.core.backoff import Backoff
from reconciler.core.clock import FakeClock, settle
from reconciler.core.model import TaskState, TaskStatus
from reconciler.core.reporter import StatusReporter

S = TaskState


class Upstream:
    def __init__(self, fail_rate: float = 0.0, seed: int = 7) -> None:
        self.got: list[tuple[str, TaskStatus]] = []
        self.fail_rate = fail_rate
        self.rng = random.Random(seed)
        self.fail_next = 0

    async def __call__(self, task_id: str, status: TaskStatus) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionError("manager unreachable")
        if self.rng.random() < self.fail_rate:
            raise ConnectionError("flaky")
        self.got.append((task_id, status))


async def test_keeps_only_latest_status_per_task(clock: FakeClock):
    up = Upstream()
    r = StatusReporter(up, clock=clock)
    r.update("a", TaskStatus(state=S.ACCEPTED, timestamp=1))
    r.update("a", TaskStatus(state=S.PREPARING, timestamp=2))
    r.update("a", TaskStatus(state=S.RUNNING, timestamp=3))
    assert r.pending == 1
    r.start()
    await settle()
    assert [s.state for _, s in up.got] == [S.RUNNING]
    await r.close()


async def test_drops_stale_lower_state(clock: FakeClock):
    up = Upstream()
    r = StatusReporter(up, clock=clock)
    r.start()
    r.update("a", TaskStatus(state=S.RUNNING, timestamp=3))
    await settle()
    r.update("a", TaskStatus(state=S.PREPARING, timestamp=2))
    await settle()
    assert [s.state for _, s in up.got] == [S.RUNNING]
    assert r.pending == 0
    await r.close()


async def test_never_delivers_the_same_status_twice(clock: FakeClock):
    up = Upstream()
    r = StatusReporter(up, clock=clock)
    r.start()
    st = TaskStatus(state=S.RUNNING, timestamp=3)
    r.update("a", st)
    await settle()
    r.update("a", st)
    await settle()
    assert len(up.got) == 1
    await r.close()


async def test_retries_failed_delivery_with_backoff(clock: FakeClock):
    up = Upstream()
    up.fail_next = 2
    r = StatusReporter(up, clock=clock, backoff=Backoff(initial=1, jitter=0))
    r.start()
    r.update("a", TaskStatus(state=S.RUNNING, timestamp=3))
    await settle()
    assert up.got == [] and r.pending == 1
    await clock.advance(1)
    assert up.got == []
    await clock.advance(2)
    assert [s.state for _, s in up.got] == [S.RUNNING]
    assert r.pending == 0
    await r.close()


async def test_the_backoff_starts_again_from_the_shortest_after_a_pass_that_delivered(
    clock: FakeClock,
):
    up = Upstream()
    up.fail_next = 2
    r = StatusReporter(up, clock=clock, backoff=Backoff(initial=1, jitter=0))
    r.start()
    r.update("a", TaskStatus(state=S.RUNNING, timestamp=3))
    await settle()
    await clock.advance(1)  # the second try fails too: the next wait is 2 s
    await clock.advance(2)
    assert [s.state for _, s in up.got] == [S.RUNNING]
    up.fail_next = 1
    r.update("a", TaskStatus(state=S.COMPLETE, timestamp=4))
    await settle()
    assert r.pending == 1
    await clock.advance(1)  # 1 s again, not the 4 s a third failure in a row would wait
    assert [s.state for _, s in up.got] == [S.RUNNING, S.COMPLETE]
    assert r.pending == 0
    await r.close()


async def test_hundred_tasks_with_flaky_upstream_deliver_every_final_state_once(clock: FakeClock):
    up = Upstream(fail_rate=0.1)
    r = StatusReporter(up, clock=clock, backoff=Backoff(initial=0.1, cap=1, jitter=0.5))
    r.start()
    states = [S.ACCEPTED, S.PREPARING, S.READY, S.STARTING, S.RUNNING, S.COMPLETE]
    rng = random.Random(3)
    cursors = {f"t{i:03d}": 0 for i in range(100)}
    ts = 0.0
    while any(c < len(states) for c in cursors.values()):
        tid = rng.choice([t for t, c in cursors.items() if c < len(states)])
        ts += 1
        r.update(tid, TaskStatus(state=states[cursors[tid]], timestamp=ts))
        cursors[tid] += 1
        if rng.random() < 0.3:
            await settle(3)
    for _ in range(200):
        if r.pending == 0:
            break
        await clock.advance(1)
    assert r.pending == 0
    assert r.failures > 0
    finals = [tid for tid, s in up.got if s.state == S.COMPLETE]
    assert sorted(finals) == sorted(cursors)  # every final state, exactly once
    delivered = [(tid, s) for tid, s in up.got]
    assert len(delivered) == len(set((tid, s.timestamp) for tid, s in delivered))
    for tid in cursors:  # per task, deliveries only move forward
        seq = [s.state for t, s in up.got if t == tid]
        assert seq == sorted(seq)
    await r.close()


async def test_retain_forgets_deleted_tasks(clock: FakeClock):
    up = Upstream()
    r = StatusReporter(up, clock=clock)
    r.update("a", TaskStatus(state=S.RUNNING, timestamp=1))
    r.update("b", TaskStatus(state=S.RUNNING, timestamp=1))
    r.retain({"b"})
    assert r.pending == 1
    r.start()
    await settle()
    assert [tid for tid, _ in up.got] == ["b"]
    await r.close()

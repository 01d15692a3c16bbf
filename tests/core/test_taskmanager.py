"""The task manager drives steps, retries with backoff, and takes updates, on the fake clock."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

from reconciler.core.backoff import Backoff
from reconciler.core.clock import FakeClock, settle
from reconciler.core.errors import TemporaryError
from reconciler.core.model import Task, TaskState, TaskStatus
from reconciler.core.taskmanager import TaskManager
from reconciler.testing.fake import FakeExecutor
from tests.conftest import make_task

S = TaskState


class Recorder:
    def __init__(self) -> None:
        self.statuses: list[TaskStatus] = []

    def __call__(self, task_id: str, status: TaskStatus) -> None:
        self.statuses.append(status)

    @property
    def states(self) -> list[TaskState]:
        return [s.state for s in self.statuses]


def manager(task: Task, executor: FakeExecutor, clock: FakeClock, rec: Recorder) -> TaskManager:
    tm = TaskManager(
        task, executor.controller(task), report=rec, clock=clock, backoff=Backoff(jitter=0)
    )
    tm.start()
    return tm


async def test_staged_desired_states_call_each_operation_once(
    executor: FakeExecutor, clock: FakeClock
):
    rec = Recorder()
    task = make_task(desired=S.ACCEPTED)
    tm = manager(task, executor, clock, rec)
    await settle()
    assert tm.task.status.state == S.ACCEPTED
    tm.update(replace(task, desired_state=S.READY))
    await settle()
    assert tm.task.status.state == S.READY
    tm.update(replace(task, desired_state=S.RUNNING))
    await settle()
    assert tm.task.status.state == S.RUNNING
    executor.exit(task.id, 0)
    await settle()
    assert tm.task.status.state == S.COMPLETE
    assert rec.states == [S.ACCEPTED, S.PREPARING, S.READY, S.STARTING, S.RUNNING, S.COMPLETE]
    assert executor.calls[(task.id, "prepare")] == 1
    assert executor.calls[(task.id, "start")] == 1
    assert executor.calls[(task.id, "wait")] == 1
    await tm.close()


async def test_temporary_errors_back_off_exponentially_then_succeed(
    executor: FakeExecutor, clock: FakeClock
):
    rec = Recorder()
    executor.fail("prepare", TemporaryError("pull failed"), times=3)
    tm = manager(make_task(), executor, clock, rec)
    await settle()
    assert tm.task.status.state == S.PREPARING
    assert tm.task.status.err == "pull failed"
    assert executor.calls[("t1", "prepare")] == 1
    await clock.advance(0.24)
    assert executor.calls[("t1", "prepare")] == 1
    await clock.advance(0.01)  # 0.25 s: first retry
    assert executor.calls[("t1", "prepare")] == 2
    await clock.advance(0.49)
    assert executor.calls[("t1", "prepare")] == 2
    await clock.advance(0.01)  # 0.5 s later: second retry
    assert executor.calls[("t1", "prepare")] == 3
    await clock.advance(1.0)  # 1 s later: third retry succeeds
    assert executor.calls[("t1", "prepare")] == 4
    assert tm.task.status.state == S.RUNNING
    assert tm.attempts == 0
    await tm.close()


def test_backoff_is_capped_and_jittered():
    b = Backoff(initial=1, factor=2, cap=30, jitter=0.2)
    rng = random.Random(1)
    delays = [b.delay(n, rng) for n in range(12)]
    assert all(d <= 36 for d in delays)
    assert delays[-1] >= 24
    assert len({round(d, 6) for d in delays[6:]}) > 1  # jitter spreads capped delays


async def test_update_cancels_wait_and_shuts_down(executor: FakeExecutor, clock: FakeClock):
    rec = Recorder()
    task = make_task()
    tm = manager(task, executor, clock, rec)
    await settle()
    assert tm.task.status.state == S.RUNNING
    assert tm.update(replace(task, desired_state=S.SHUTDOWN))
    await settle()
    assert tm.task.status.state == S.SHUTDOWN
    assert executor.containers[task.id].state == "exited"
    await tm.close()


async def test_identical_update_and_lower_desired_state_are_ignored(
    executor: FakeExecutor, clock: FakeClock
):
    rec = Recorder()
    task = make_task(desired=S.SHUTDOWN)
    tm = manager(task, executor, clock, rec)
    await settle()
    assert tm.task.status.state == S.SHUTDOWN
    incoming = replace(task, status=TaskStatus(state=S.NEW, message="from manager"))
    assert not tm.update(incoming)
    assert not tm.update(replace(task, desired_state=S.RUNNING))
    await settle()
    assert tm.task.status.state == S.SHUTDOWN
    assert executor.calls[(task.id, "start")] == 0
    await tm.close()


async def test_accepted_update_keeps_manager_status(executor: FakeExecutor, clock: FakeClock):
    rec = Recorder()
    task = make_task()
    tm = manager(task, executor, clock, rec)
    await settle()
    new = replace(task, spec=replace(task.spec, image="other"), status=TaskStatus(state=S.NEW))
    assert tm.update(new)
    await settle()
    assert tm.task.spec.image == "other"
    assert tm.task.status.state == S.RUNNING
    assert executor.calls[(task.id, "update")] == 1
    await tm.close()


async def test_close_is_idempotent_and_leaves_container_running(
    executor: FakeExecutor, clock: FakeClock
):
    rec = Recorder()
    task = make_task()
    tm = manager(task, executor, clock, rec)
    await settle()
    await tm.close()
    await tm.close()
    assert executor.containers[task.id].state == "running"
    assert executor.calls[(task.id, "shutdown")] == 0
    assert executor.calls[(task.id, "remove")] == 0
    assert not tm.update(replace(task, desired_state=S.SHUTDOWN))


async def test_slow_start_is_cancelled_by_shutdown_update(executor: FakeExecutor, clock: FakeClock):
    rec = Recorder()
    executor.delay("start", 60)
    task = make_task()
    tm = manager(task, executor, clock, rec)
    await settle()
    assert tm.task.status.state == S.STARTING
    tm.update(replace(task, desired_state=S.SHUTDOWN))
    await settle()
    assert tm.task.status.state == S.SHUTDOWN
    await tm.close()


async def test_retry_now_ends_the_backoff_and_resets_the_attempts(
    executor: FakeExecutor, clock: FakeClock
):
    rec = Recorder()
    executor.fail("prepare", TemporaryError("podman is not answering"), times=4)
    task = make_task()
    tm = TaskManager(
        task,
        executor.controller(task),
        report=rec,
        clock=clock,
        backoff=Backoff(initial=10, cap=600, jitter=0),
    )
    tm.start()
    await settle()
    await clock.advance(10)
    await clock.advance(20)  # two retries: the next one is owed in 40 s
    assert executor.calls[("t1", "prepare")] == 3
    assert tm.attempts == 3

    tm.retry_now()  # the runtime answers again
    await settle()
    assert executor.calls[("t1", "prepare")] == 4  # at once, without the clock moving
    # ...and that failure backs off from the start again: 10 s, not 80 s.
    await clock.advance(9.99)
    assert executor.calls[("t1", "prepare")] == 4
    await clock.advance(0.01)
    assert executor.calls[("t1", "prepare")] == 5
    assert tm.task.status.state == S.RUNNING
    await tm.close()


async def test_retry_now_leaves_a_running_task_and_a_step_in_flight_alone(
    executor: FakeExecutor, clock: FakeClock
):
    rec = Recorder()
    executor.delay("start", 60)
    task = make_task()
    tm = manager(task, executor, clock, rec)
    await settle()
    assert tm.task.status.state == S.STARTING
    tm.retry_now()  # stepping: nothing to cut short
    await settle()
    assert executor.calls[(task.id, "start")] == 1
    await clock.advance(60)
    assert tm.task.status.state == S.RUNNING
    tm.retry_now()  # waiting on the container: nothing to retry
    await settle()
    assert executor.calls[(task.id, "wait")] == 1
    assert tm.task.status.state == S.RUNNING
    await tm.close()


async def test_closing_a_manager_ends_its_task_without_holding_a_cancellation(
    executor: FakeExecutor, clock: FakeClock
):
    # A closed manager's task ends normally: a cancelled task would keep its exception, and
    # through its traceback every frame of the step, alive until someone awaited it.
    rec = Recorder()
    task = make_task(desired=S.RUNNING)
    tm = manager(task, executor, clock, rec)
    await settle()
    assert tm.task.status.state == S.RUNNING  # parked in the controller's wait
    (loop,) = [t for t in asyncio.all_tasks() if t.get_name() == f"task-{task.id}"]
    await tm.close()
    assert loop.done()
    assert not loop.cancelled()
    assert loop.exception() is None
    assert executor.containers[task.id].state == "running"


async def test_an_update_wakes_a_manager_waiting_at_its_desired_state(
    executor: FakeExecutor, clock: FakeClock
):
    rec = Recorder()
    task = make_task(desired=S.READY)
    tm = manager(task, executor, clock, rec)
    await settle()
    assert tm.task.status.state == S.READY
    for _ in range(3):  # waiting costs nothing per turn: nothing steps until the update
        await settle()
    assert executor.calls[(task.id, "prepare")] == 1
    tm.update(replace(task, desired_state=S.RUNNING))
    await settle()
    assert tm.task.status.state == S.RUNNING
    await tm.close()

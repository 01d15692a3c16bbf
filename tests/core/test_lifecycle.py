"""Every path of one state-machine step (SwarmKit's exec.Do and exec.Resolve), on the fake."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from reconciler.core.clock import FakeClock, settle
from reconciler.core.errors import PermanentError, TaskNoop, TaskRetry, TemporaryError
from reconciler.core.lifecycle import do, resolve
from reconciler.core.model import Task, TaskState, TaskStatus
from reconciler.testing.fake import FakeExecutor
from reconciler.testing.fakecontroller import FakeController
from tests.conftest import make_task

S = TaskState


def at(task: Task, state: TaskState) -> Task:
    return replace(task, status=replace(task.status, state=state))


async def step(task: Task, ctlr: FakeController, clock: FakeClock) -> Task:
    return replace(task, status=await do(task, ctlr, now=clock.time))


def test_resolve_success_moves_new_task_to_accepted(executor: FakeExecutor, clock: FakeClock):
    ctlr, status = resolve(make_task(), executor, now=clock.time)
    assert ctlr is not None
    assert status.state == S.ACCEPTED
    assert status.timestamp == clock.time()


def test_resolve_keeps_state_of_task_past_accepted(executor: FakeExecutor, clock: FakeClock):
    task = make_task(state=S.RUNNING)
    ctlr, status = resolve(task, executor, now=clock.time)
    assert ctlr is not None
    assert status is task.status


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (S.NEW, S.REJECTED),
        (S.PREPARING, S.REJECTED),
        (S.STARTING, S.FAILED),
        (S.RUNNING, S.FAILED),
        (S.COMPLETE, S.COMPLETE),
    ],
)
def test_resolve_failure_rejects_or_fails_by_state(
    executor: FakeExecutor, clock: FakeClock, state: TaskState, expected: TaskState
):
    executor.fail("resolve", PermanentError("bad spec"))
    ctlr, status = resolve(make_task(state=state), executor, now=clock.time)
    assert ctlr is None
    assert status.state == expected
    if expected != state:
        assert status.err == "bad spec"
        assert status.message == "resolving controller failed"


async def test_normal_path_steps_from_new_to_running(executor: FakeExecutor, clock: FakeClock):
    task = make_task()
    ctlr = executor.controller(task)
    seen = []
    for _ in range(5):
        task = await step(task, ctlr, clock)
        seen.append(task.status.state)
    assert seen == [S.ACCEPTED, S.PREPARING, S.READY, S.STARTING, S.RUNNING]
    assert task.status.container_id is not None
    assert task.status.pid is not None


async def test_running_task_waits_and_completes_on_exit_zero(
    executor: FakeExecutor, clock: FakeClock
):
    task = make_task()
    ctlr = executor.controller(task)
    await ctlr.prepare()
    await ctlr.start()
    running = at(task, S.RUNNING)
    waiter = asyncio.create_task(do(running, ctlr, now=clock.time))
    await settle()
    assert not waiter.done()
    executor.exit(task.id, 0)
    status = await waiter
    assert status.state == S.COMPLETE
    assert status.exit_code == 0
    assert executor.calls[(task.id, "wait")] == 1


async def test_nonzero_exit_gives_failed_with_exit_code(executor: FakeExecutor, clock: FakeClock):
    task = make_task()
    ctlr = executor.controller(task)
    await ctlr.prepare()
    await ctlr.start()
    executor.exit(task.id, 3)
    status = await do(at(task, S.RUNNING), ctlr, now=clock.time)
    assert status.state == S.FAILED
    assert status.exit_code == 3
    assert status.err is not None and "3" in status.err


async def test_already_prepared_counts_as_success(executor: FakeExecutor, clock: FakeClock):
    task = at(make_task(), S.PREPARING)
    ctlr = executor.controller(task)
    await ctlr.prepare()
    status = await do(task, ctlr, now=clock.time)
    assert status.state == S.READY
    assert executor.calls[(task.id, "prepare")] == 2


async def test_already_started_counts_as_success(executor: FakeExecutor, clock: FakeClock):
    task = at(make_task(), S.STARTING)
    ctlr = executor.controller(task)
    await ctlr.prepare()
    await ctlr.start()
    status = await do(task, ctlr, now=clock.time)
    assert status.state == S.RUNNING


async def test_permanent_prepare_failure_rejects(executor: FakeExecutor, clock: FakeClock):
    task = at(make_task(), S.PREPARING)
    executor.fail("prepare", PermanentError("image not allowed"))
    status = await do(task, executor.controller(task), now=clock.time)
    assert status.state == S.REJECTED
    assert status.err == "image not allowed"


async def test_a_runtime_errors_escape_sequences_never_reach_the_status(
    executor: FakeExecutor, clock: FakeClock
):
    task = at(make_task(), S.PREPARING)
    executor.fail("prepare", PermanentError("\x1b[31mpull failed\x1b[0m:\x00 denied"))
    status = await do(task, executor.controller(task), now=clock.time)
    assert (status.state, status.err) == (S.REJECTED, "pull failed:\ufffd denied")


async def test_permanent_start_failure_fails(executor: FakeExecutor, clock: FakeClock):
    task = at(make_task(), S.STARTING)
    ctlr = executor.controller(task)
    await ctlr.prepare()
    executor.fail("start", PermanentError("no such device"))
    status = await do(task, ctlr, now=clock.time)
    assert status.state == S.FAILED


async def test_temporary_error_retries_with_state_kept(executor: FakeExecutor, clock: FakeClock):
    task = at(make_task(), S.PREPARING)
    executor.fail("prepare", TemporaryError("pull failed: registry unreachable"))
    with pytest.raises(TaskRetry) as info:
        await do(task, executor.controller(task), now=clock.time)
    status = info.value.status
    assert isinstance(status, TaskStatus)
    assert status.state == S.PREPARING
    assert status.err == "pull failed: registry unreachable"


async def test_timeout_retries_with_state_kept(executor: FakeExecutor, clock: FakeClock):
    task = at(make_task(), S.STARTING)
    ctlr = executor.controller(task)
    await ctlr.prepare()
    executor.fail("start", TimeoutError("slow"))
    with pytest.raises(TaskRetry) as info:
        await do(task, ctlr, now=clock.time)
    assert info.value.status.state == S.STARTING  # type: ignore[attr-defined]


async def test_cancelled_wait_keeps_running_state(executor: FakeExecutor, clock: FakeClock):
    task = make_task()
    ctlr = executor.controller(task)
    await ctlr.prepare()
    await ctlr.start()
    op = asyncio.create_task(do(at(task, S.RUNNING), ctlr, now=clock.time))
    await settle()  # waiting for the exit
    op.cancel()
    with pytest.raises(asyncio.CancelledError):
        await op
    # the container still runs; a new step re-attaches
    assert executor.containers[task.id].state == "running"


async def test_operation_cancelled_by_runtime_is_retried(executor: FakeExecutor, clock: FakeClock):
    task = at(make_task(), S.PREPARING)
    executor.fail("prepare", asyncio.CancelledError())
    with pytest.raises(TaskRetry) as info:
        await do(task, executor.controller(task), now=clock.time)
    assert info.value.status.state == S.PREPARING  # type: ignore[attr-defined]


async def test_shutdown_from_new(executor: FakeExecutor, clock: FakeClock):
    task = make_task(desired=S.SHUTDOWN)
    status = await do(task, executor.controller(task), now=clock.time)
    assert status.state == S.SHUTDOWN
    assert executor.calls[(task.id, "shutdown")] == 1


async def test_desired_remove_stops_at_shutdown(executor: FakeExecutor, clock: FakeClock):
    task = make_task(desired=S.REMOVE)
    ctlr = executor.controller(task)
    await ctlr.prepare()
    await ctlr.start()
    task = await step(at(task, S.RUNNING), ctlr, clock)
    assert task.status.state == S.SHUTDOWN
    assert executor.containers[task.id].state == "exited"
    with pytest.raises(TaskNoop):
        await do(task, ctlr, now=clock.time)


@pytest.mark.parametrize("state", [S.COMPLETE, S.FAILED, S.REJECTED, S.SHUTDOWN])
@pytest.mark.parametrize("desired", [S.RUNNING, S.SHUTDOWN, S.REMOVE])
async def test_terminal_task_is_left_alone(
    executor: FakeExecutor, clock: FakeClock, state: TaskState, desired: TaskState
):
    task = make_task(state=state, desired=desired)
    with pytest.raises(TaskNoop):
        await do(task, executor.controller(task), now=clock.time)
    assert sum(executor.calls.values()) == 1  # just resolve


async def test_pause_states_go_no_further_than_desired(executor: FakeExecutor, clock: FakeClock):
    task = make_task(state=S.ACCEPTED, desired=S.ACCEPTED)
    with pytest.raises(TaskNoop):
        await do(task, executor.controller(task), now=clock.time)
    ready = make_task(state=S.READY, desired=S.READY)
    with pytest.raises(TaskNoop):
        await do(ready, executor.controller(ready), now=clock.time)


async def test_current_above_desired_does_nothing(executor: FakeExecutor, clock: FakeClock):
    task = make_task(state=S.RUNNING, desired=S.READY)
    with pytest.raises(TaskNoop):
        await do(task, executor.controller(task), now=clock.time)


async def test_preparing_may_go_past_desired_state(executor: FakeExecutor, clock: FakeClock):
    task = make_task(state=S.PREPARING, desired=S.PREPARING)
    status = await do(task, executor.controller(task), now=clock.time)
    assert status.state == S.READY


async def test_timestamp_changes_only_when_status_changes(executor: FakeExecutor, clock: FakeClock):
    task = make_task()
    ctlr = executor.controller(task)
    task = await step(task, ctlr, clock)
    first = task.status.timestamp
    assert first == clock.time()
    await clock.advance(5)
    task = await step(task, ctlr, clock)
    assert task.status.timestamp == first + 5
    # a retry that changes nothing keeps the timestamp
    executor.fail("prepare", TemporaryError("x"), times=2)
    with pytest.raises(TaskRetry) as one:
        await do(task, ctlr, now=clock.time)
    retried = replace(task, status=one.value.status)  # type: ignore[arg-type]
    await clock.advance(5)
    with pytest.raises(TaskRetry) as two:
        await do(retried, ctlr, now=clock.time)
    assert two.value.status is retried.status


async def test_a_step_never_moves_a_state_backwards(executor: FakeExecutor, clock: FakeClock):
    # A task that is already running past its desired state is left alone, never lowered.
    task = make_task(desired=S.READY, state=S.RUNNING)
    ctlr = executor.controller(task)
    with pytest.raises(TaskNoop):
        await do(task, ctlr, now=clock.time)

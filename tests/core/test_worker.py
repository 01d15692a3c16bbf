"""Worker init, full and incremental assignments, status precedence and listeners."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from reconciler.core.backoff import Backoff
from reconciler.core.clock import FakeClock, settle
from reconciler.core.codec import spec_hash
from reconciler.core.errors import TemporaryError
from reconciler.core.model import Assignment, TaskState, TaskStatus
from reconciler.core.worker import Worker
from reconciler.store.rocks import RocksStore
from reconciler.testing.fake import FakeExecutor
from tests.conftest import make_task

S = TaskState


def worker(store: RocksStore, executor: FakeExecutor, clock: FakeClock) -> Worker:
    return Worker(store, executor, clock=clock)


async def test_full_assignment_adds_and_runs_tasks(store, executor, clock):
    w = worker(store, executor, clock)
    await w.init()
    await w.assign(Assignment.complete([make_task("a"), make_task("b")]))
    await settle()
    assert {t.id: t.status.state for t in store.walk_tasks()} == {"a": S.RUNNING, "b": S.RUNNING}
    assert store.is_assigned("a") and store.is_assigned("b")
    assert len(executor.running()) == 2
    await w.close()


async def test_full_assignment_replaces_the_set(store, executor, clock):
    w = worker(store, executor, clock)
    await w.assign(Assignment.complete([make_task("a"), make_task("b")]))
    await settle()
    await w.assign(Assignment.complete([make_task("b"), make_task("c")]))
    await settle()
    await w.wait_closed()
    assert store.task_ids() == {"b", "c"}
    assert set(executor.containers) == {"b", "c"}
    assert executor.calls[("a", "remove")] == 1
    assert executor.calls[("b", "prepare")] == 1  # b was not restarted
    await w.close()


async def test_full_assignment_with_no_tasks_clears_everything(store, executor, clock):
    w = worker(store, executor, clock)
    await w.assign(Assignment.complete([make_task("a"), make_task("b")]))
    await settle()
    await w.assign(Assignment.complete([]))
    await w.wait_closed()
    assert store.task_ids() == set()
    assert executor.containers == {}
    assert w.managers == {}
    await w.close()


async def test_incremental_assignment_adds_and_removes(store, executor, clock):
    w = worker(store, executor, clock)
    await w.assign(Assignment.complete([make_task("a")]))
    await w.assign(Assignment.incremental(updated=[make_task("b")]))
    await settle()
    assert store.task_ids() == {"a", "b"}
    await w.assign(Assignment.incremental(removed=[make_task("a")]))
    await w.wait_closed()
    await settle()
    assert store.task_ids() == {"b"}
    assert set(executor.containers) == {"b"}
    await w.close()


async def test_incremental_removal_of_unknown_task_is_not_an_error(store, executor, clock):
    w = worker(store, executor, clock)
    await w.assign(Assignment.complete([make_task("a")]))
    await w.assign(Assignment.incremental(removed=[make_task("ghost")]))
    await settle()
    assert store.task_ids() == {"a"}
    await w.close()


async def test_init_deletes_unassigned_and_resumes_running_at_wait(tmp_path: Path, clock):
    state = tmp_path / "state"
    executor = FakeExecutor(clock=clock)
    s1 = RocksStore.open(state)
    w1 = worker(s1, executor, clock)
    await w1.assign(Assignment.complete([make_task("a"), make_task("b")]))
    await settle()
    assert s1.get_status("a").state == S.RUNNING
    s1.set_assigned("b", False)  # as if b's removal was interrupted half-way
    await w1.close()
    s1.close()
    assert executor.containers["a"].state == "running"

    s2 = RocksStore.open(state)
    w2 = worker(s2, executor, clock)
    await w2.init()
    await settle()
    assert s2.task_ids() == {"a"}
    assert executor.calls[("a", "prepare")] == 1
    assert executor.calls[("a", "start")] == 1
    assert executor.calls[("a", "wait")] == 2  # waited on again, never restarted
    executor.exit("a", 0)
    await settle()
    assert s2.get_status("a").state == S.COMPLETE
    await w2.close()
    s2.close()


async def test_stored_status_beats_incoming_for_known_unmanaged_task(store, executor, clock):
    task = make_task("a", state=S.NEW)
    store.apply_assignment([task], statuses=[("a", TaskStatus(state=S.COMPLETE, message="done"))])
    w = worker(store, executor, clock)
    await w.assign(Assignment.complete([replace(task, status=TaskStatus(state=S.NEW))]))
    await settle()
    assert store.get_status("a").state == S.COMPLETE
    assert executor.calls[("a", "prepare")] == 0
    await w.close()


async def test_incoming_status_is_ignored_for_managed_task(store, executor, clock):
    w = worker(store, executor, clock)
    task = make_task("a")
    await w.assign(Assignment.complete([task]))
    await settle()
    await w.assign(Assignment.complete([replace(task, status=TaskStatus(state=S.FAILED))]))
    await settle()
    assert store.get_status("a").state == S.RUNNING
    await w.close()


async def test_unknown_task_takes_incoming_status(store, executor, clock):
    w = worker(store, executor, clock)
    task = make_task("a", state=S.REJECTED)
    await w.assign(Assignment.complete([task]))
    await settle()
    assert store.get_status("a").state == S.REJECTED
    assert executor.calls[("a", "prepare")] == 0
    await w.close()


async def test_listener_gets_stored_statuses_in_id_order_then_changes(store, executor, clock):
    w = worker(store, executor, clock)
    await w.assign(
        Assignment.complete(
            [make_task("b", desired=S.ACCEPTED), make_task("a", desired=S.ACCEPTED)]
        )
    )
    await settle()
    got: list[tuple[str, TaskState]] = []
    unsubscribe = w.listen(lambda tid, st: got.append((tid, st.state)))
    assert got == [("a", S.ACCEPTED), ("b", S.ACCEPTED)]
    await w.assign(
        Assignment.complete(
            [make_task("a", desired=S.ACCEPTED), make_task("b", desired=S.PREPARING)]
        )
    )
    await settle()
    assert got[2:] == [("b", S.PREPARING), ("b", S.READY)]
    unsubscribe()
    await w.close()


async def test_no_broadcast_for_deleted_task(store, executor, clock):
    w = worker(store, executor, clock)
    await w.assign(Assignment.complete([make_task("a")]))
    await settle()
    got: list[str] = []
    w.listen(lambda tid, st: got.append(tid))
    got.clear()
    await w.assign(Assignment.complete([]))
    w.update_task_status("a", TaskStatus(state=S.COMPLETE))
    await w.wait_closed()
    assert got == []
    await w.close()


async def test_resolve_failure_is_stored_and_reported(store, executor, clock):
    w = worker(store, executor, clock)
    got: list[TaskState] = []
    w.listen(lambda tid, st: got.append(st.state))
    await w.assign(Assignment.complete([make_task("a", image="")]))
    await settle()
    assert store.get_status("a").state == S.REJECTED
    assert got == [S.REJECTED]
    assert "a" not in w.managers
    await w.close()


async def test_statuses_of_one_turn_are_written_once_latest_wins(store, executor, clock):
    w = worker(store, executor, clock)
    await w.assign(Assignment.complete([make_task("a", desired=S.ACCEPTED)]))
    await settle()
    got: list[TaskState] = []
    w.listen(lambda tid, st: got.append(st.state))
    w.update_task_status("a", TaskStatus(state=S.PREPARING))
    w.update_task_status("a", TaskStatus(state=S.READY))
    assert got[-2:] == [S.PREPARING, S.READY]  # every change is broadcast
    assert store.get_status("a").state == S.ACCEPTED  # written at the end of this turn
    await asyncio.sleep(0)  # one turn of the loop: the thing under test
    assert store.get_status("a").state == S.READY
    await w.close()


async def test_retry_now_retries_every_task_waiting_in_backoff(store, executor, clock):
    w = Worker(store, executor, clock=clock, backoff=Backoff(initial=600, cap=600, jitter=0))
    executor.fail("prepare", TemporaryError("podman is not answering"), times=2)
    await w.assign(Assignment.complete([make_task("a"), make_task("b")]))
    await settle()
    assert executor.calls[("a", "prepare")] + executor.calls[("b", "prepare")] == 2
    assert not executor.running()

    w.retry_now()  # the runtime answers again: no 600 s wait
    await settle()
    assert {t.id: t.status.state for t in store.walk_tasks()} == {"a": S.RUNNING, "b": S.RUNNING}
    assert all(m.attempts == 0 for m in w.managers.values())
    await w.close()


async def test_a_listed_container_carries_its_specs_hash(store, clock):
    # What the adoption matches a container to its desired spec by, as podman's label does.
    executor = FakeExecutor(clock=clock)
    worker = Worker(store, executor, clock=clock)
    task = make_task()
    await worker.assign(Assignment.complete([task]))
    await settle()
    (listed,) = await executor.list_containers()
    assert listed.spec_hash == spec_hash(task.spec)
    await worker.close()

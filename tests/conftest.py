"""Shared fixtures: a fake clock, a fake executor and a store in a temporary state dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.core.clock import FakeClock
from reconciler.core.model import Task, TaskSpec, TaskState, TaskStatus
from reconciler.store.rocks import RocksStore
from reconciler.testing.fake import FakeExecutor


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def executor(clock: FakeClock) -> FakeExecutor:
    return FakeExecutor(clock=clock)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RocksStore]:
    s = RocksStore.open(tmp_path / "state")
    yield s
    s.close()


def make_task(
    task_id: str = "t1",
    *,
    name: str | None = None,
    desired: TaskState = TaskState.RUNNING,
    state: TaskState = TaskState.NEW,
    image: str = "localhost/busybox:latest",
    memory: int | None = None,
) -> Task:
    from reconciler.core.model import Resources

    return Task(
        id=task_id,
        spec=TaskSpec(name=name or f"n{task_id}", image=image, resources=Resources(memory=memory)),
        desired_state=desired,
        status=TaskStatus(state=state),
    )

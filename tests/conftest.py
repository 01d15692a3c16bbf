"""Shared fixtures (a fake clock, a fake executor and a store in a temporary state dir), and the
per-test timeout's report.

**The per-test timeout** (pytest-timeout, set in pyproject.toml): when a test runs past it, the
failure names where every asyncio task of the running loop waits (``Task.print_stack`` shows only
a coroutine's own frame; ``reconciler.testing.tasks`` follows its awaits down), then every
thread's stack, so a hang fails in minutes and says where it waited.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from reconciler.core.clock import FakeClock
from reconciler.core.model import Task, TaskSpec, TaskState, TaskStatus
from reconciler.store.rocks import RocksStore
from reconciler.testing.fake import FakeExecutor
from reconciler.testing.tasks import dump_tasks

_REPO = Path(__file__).resolve().parents[1]


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


# ------------------------------------------------------------------ per-test timeout


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's signal method, with a report that names where asyncio tasks wait."""
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own timer

    def on_timeout(signum: int, frame: FrameType | None) -> None:
        __tracebackhide__ = True
        pytest.fail(
            f"Timeout: the test ran past {settings.timeout:.0f}s\n\n{_where_it_waits(frame)}",
            pytrace=False,
        )

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout's protocol
    signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


def _where_it_waits(interrupted: FrameType | None) -> str:
    """Every asyncio task of the running loop and where it waits; then the main thread's stack
    where the timeout interrupted it (from its first frame in the repository: pytest's own are
    noise), unless a loop runs there (its tasks said it all); then every other thread's."""
    loop = asyncio._get_running_loop()
    parts = [dump_tasks(loop) if loop is not None else "no asyncio event loop is running"]
    if loop is None and interrupted is not None:
        stack = traceback.extract_stack(interrupted)
        ours = [i for i, f in enumerate(stack) if _ours(f.filename)]
        stack = traceback.StackSummary.from_list(stack[ours[0] :] if ours else stack)
        parts += ["main thread:", "".join(stack.format()).rstrip()]
    names = {t.ident: t.name for t in threading.enumerate()}
    main = threading.main_thread().ident
    for ident, frame in sys._current_frames().items():
        if ident != main:
            parts.append(f"thread {names.get(ident, ident)!r}:")
            parts.append("".join(traceback.format_stack(frame)).rstrip())
    return "\n".join(parts)


def _ours(filename: str) -> bool:
    return filename.startswith(str(_REPO)) and not filename.startswith(str(_REPO / ".venv"))

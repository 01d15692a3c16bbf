"""Where asyncio tasks wait, and stopping one with a deadline that names it.

A hung test is an event loop with nothing to do: some task awaits something that never comes.
``Task.print_stack`` shows only a suspended coroutine's own frame, not the chain of awaits below
it, which is where the answer is. ``awaiting(task)`` follows ``cr_await`` from the task's
coroutine down to the future it waits on, one line per frame; ``dump_tasks()`` does that for
every task of a loop (the per-test timeout prints it, see ``tests/conftest.py``).

``stopped(task, what)`` is how a harness ends a task it started: cancel it once, and wait for
it to end within a generous deadline (``ended`` waits the same way for a task asked to stop by
other means, an event say). A task that outlives the deadline ignored or swallowed its
cancellation, a bug of the code under test; the failure names ``what`` and where the task waits,
and the task is not cancelled again, so the bug cannot hide.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["STOP_DEADLINE", "awaiting", "dump_tasks", "ended", "stopped"]

STOP_DEADLINE = 60.0
"""Seconds a cancelled task may take to end before that is a failure."""
_MAX_DEPTH = 100


def awaiting(task: asyncio.Future[Any]) -> str:
    """The chain of awaits ``task`` is suspended in, outermost first, one frame a line."""
    if not isinstance(task, asyncio.Task):
        return f"  {task!r}"
    lines: list[str] = []
    obj: Any = task.get_coro()
    for _ in range(_MAX_DEPTH):
        frame = (
            getattr(obj, "cr_frame", None)
            or getattr(obj, "gi_frame", None)
            or getattr(obj, "ag_frame", None)
        )
        if frame is None:
            lines.append(f"  awaiting {_short(obj)}")
            break
        code = frame.f_code
        lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}")
        inner = (
            getattr(obj, "cr_await", None)
            or getattr(obj, "gi_yieldfrom", None)
            or getattr(obj, "ag_await", None)
        )
        if inner is None:
            break
        obj = inner
    return "\n".join(lines)


def dump_tasks(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """Every unfinished task of ``loop`` (the running one by default) and where it waits."""
    tasks = asyncio.all_tasks(loop)
    parts = [f"{len(tasks)} asyncio task(s):"]
    for task in sorted(tasks, key=lambda t: t.get_name()):
        state = "cancelling" if task.cancelling() else "pending"
        parts.append(f"task {task.get_name()!r} ({state}):\n{awaiting(task)}")
    return "\n".join(parts)


async def stopped(task: asyncio.Future[Any], what: str, *, within: float = STOP_DEADLINE) -> None:
    """Cancel ``task`` once and wait until it has ended; its result or error is discarded.

    Raises ``AssertionError`` naming ``what`` and where the task waits when it has not ended
    within ``within`` seconds (the task is then left as it is).
    """
    task.cancel()
    await _end_of(task, what, within)
    if not task.cancelled():
        task.exception()


async def ended(task: asyncio.Future[Any], what: str, *, within: float = STOP_DEADLINE) -> None:
    """Wait until ``task``, asked to stop some other way, has ended; raise what it raised.

    Raises ``AssertionError`` as ``stopped`` does when it has not ended in time.
    """
    await _end_of(task, what, within)
    if not task.cancelled():
        task.result()


async def _end_of(task: asyncio.Future[Any], what: str, within: float) -> None:
    done, _ = await asyncio.wait({task}, timeout=within)
    if not done:
        raise AssertionError(
            f"{what} did not end within {within:.0f}s of being asked to stop; it waits in:\n"
            f"{awaiting(task)}"
        )


def _short(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 300 else text[:300] + "..."

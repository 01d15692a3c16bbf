"""The task state machine: ``resolve()`` and one step of it, ``do()``.

This is the single place where task states change. It follows SwarmKit's ``exec.Resolve`` and
``exec.Do``: each call of ``do()`` looks at the task's desired and current state, makes at most
one controller call, and returns the next status. It never sleeps, loops or spawns anything;
driving it repeatedly, with backoff and cancellation, is ``reconciler.core.taskmanager``'s job.

The rules (docs/desired-state.md, "Task states", says the same for operators):

* desired >= shutdown: a task below ``complete`` is shut down and becomes ``shutdown``;
  a terminal task is left alone;
* current > desired: nothing happens;
* ``preparing`` → prepare → ``ready``; ``starting`` → start → ``running``;
  ``running`` → wait → ``complete`` (exit 0) or ``failed`` (any other exit); these may go past
  the desired state, the others may not;
* ``new``/``pending``/``assigned`` → ``accepted`` → ``preparing``; ``ready`` → ``starting``;
* a temporary error, a timeout or a cancelled operation keeps the state (``TaskRetry``);
  a permanent error gives ``rejected`` before ``starting`` and ``failed`` from it on.

The timestamp changes only when the status does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace

from reconciler.core.errors import (
    ContainerGone,
    ExitError,
    InvalidTransition,
    TaskNoop,
    TaskPrepared,
    TaskRetry,
    TaskStarted,
    TemporaryError,
)
from reconciler.core.executor import Controller, Executor
from reconciler.core.model import Task, TaskSpec, TaskState, TaskStatus
from reconciler.core.policy import Refusal
from reconciler.core.text import printable

Now = Callable[[], float]
Admit = Callable[[TaskSpec], list[Refusal]]
"""The node's policy for fleet tasks (``reconciler.core.policy.check``): what it refuses."""


def _stamp(old: TaskStatus, new: TaskStatus, now: Now) -> TaskStatus:
    """Give ``new`` a fresh timestamp only if it differs from ``old``. Its texts quote errors
    from the runtime (and what it ran), so they are made printable first."""
    message, err = printable(new.message), None if new.err is None else printable(new.err)
    if (message, err) != (new.message, new.err):
        new = replace(new, message=message, err=err)
    if new.same_as(old):
        return old
    return new.with_timestamp(now())


def resolve(
    task: Task, executor: Executor, *, now: Now, admit: Admit | None = None
) -> tuple[Controller | None, TaskStatus]:
    """Turn a task into a controller, once, when its task manager is created.

    Success moves a task below ``accepted`` to ``accepted``. Failure gives ``rejected`` (before
    ``starting``) or ``failed`` (from ``starting`` to ``running``) and no controller; a task
    already past running keeps its state. The returned status is to be stored and reported.

    ``admit`` is the node's policy for fleet tasks: a task it refuses that has not begun
    ``preparing`` (so nothing of it was pulled or created) is ``rejected``, its message naming
    each refused field and the flag that allows it. A task already further along is not
    checked: a policy change never stops an instance.
    """
    status = task.status
    if admit is not None and status.state < TaskState.PREPARING:
        refused = admit(task.spec)
        if refused:
            text = "; ".join(str(r) for r in refused)
            new = replace(status, state=TaskState.REJECTED, message=text, err=text)
            return None, _stamp(status, new, now)
    try:
        ctlr = executor.controller(task)
    except Exception as err:  # any failure to build a controller is permanent for this spec
        if status.state < TaskState.STARTING:
            state = TaskState.REJECTED
        elif status.state <= TaskState.RUNNING:
            state = TaskState.FAILED
        else:
            state = status.state
        new = replace(status, state=state, message="resolving controller failed", err=str(err))
        return None, _stamp(status, new, now)
    if status.state < TaskState.ACCEPTED:
        new = replace(status, state=TaskState.ACCEPTED, message="accepted", err=None)
        return ctlr, _stamp(status, new, now)
    return ctlr, status


def _transition(status: TaskStatus, state: TaskState, message: str) -> TaskStatus:
    if state < status.state:
        raise InvalidTransition(f"{status.state.label} -> {state.label}")
    return TaskStatus(
        state, status.timestamp, message, None, status.container_id, status.pid, status.exit_code
    )


def _with_container(status: TaskStatus, ctlr: Controller) -> TaskStatus:
    cs = ctlr.container_status()
    cid = cs.container_id if cs.container_id is not None else status.container_id
    pid = cs.pid if cs.pid is not None else status.pid
    if cid == status.container_id and pid == status.pid:
        return status
    return replace(status, container_id=cid, pid=pid)


async def do(task: Task, ctlr: Controller, *, now: Now) -> TaskStatus:
    """Take one step for ``task``; return its new status.

    Raises ``TaskNoop`` when there is nothing to do until the task changes, and ``TaskRetry``
    (carrying the status to record) when the step should be retried after a backoff.
    ``CancelledError`` propagates only when the calling task itself is being cancelled.
    """
    status = task.status
    state = status.state

    try:
        new = await _step(task, ctlr)
    except TaskNoop:
        raise
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        retry = replace(status, message="operation cancelled")
        raise TaskRetry(_stamp(status, retry, now)) from None
    except TimeoutError as err:
        retry = replace(status, message="operation timed out", err=str(err) or "timed out")
        raise TaskRetry(_stamp(status, retry, now)) from err
    except TemporaryError as err:
        raise TaskRetry(_stamp(status, replace(status, err=str(err)), now)) from err
    except ExitError as err:
        failed = replace(
            _with_container(status, ctlr),
            state=TaskState.FAILED if state >= TaskState.STARTING else TaskState.REJECTED,
            message=str(err),
            err=str(err),
            exit_code=err.exit_code,
        )
        return _stamp(status, failed, now)
    except Exception as err:
        terminal = TaskState.REJECTED if state < TaskState.STARTING else TaskState.FAILED
        message = "container removed" if isinstance(err, ContainerGone) else "task failed"
        failed = replace(
            _with_container(status, ctlr), state=terminal, message=message, err=str(err)
        )
        return _stamp(status, failed, now)

    if new.state >= TaskState.STARTING:
        new = _with_container(new, ctlr)
    if new.state == TaskState.COMPLETE:
        new = replace(new, exit_code=0)
    return _stamp(status, new, now)


async def _step(task: Task, ctlr: Controller) -> TaskStatus:
    status = task.status
    state = status.state
    desired = task.desired_state

    # The shutdown branch bounds the highest state the agent drives a task to at shutdown.
    if desired >= TaskState.SHUTDOWN:
        if state >= TaskState.COMPLETE:
            raise TaskNoop()
        await ctlr.shutdown()
        return _transition(status, TaskState.SHUTDOWN, "shutdown")

    if state > desired:
        raise TaskNoop()

    # These states make a controller call and may proceed past the desired state.
    if state == TaskState.PREPARING:
        note = None
        with contextlib.suppress(TaskPrepared):
            note = await ctlr.prepare()
        return _transition(status, TaskState.READY, f"prepared; {note}" if note else "prepared")
    if state == TaskState.STARTING:
        with contextlib.suppress(TaskStarted):
            await ctlr.start()
        return _transition(status, TaskState.RUNNING, "started")
    if state == TaskState.RUNNING:
        await ctlr.wait()
        return _transition(status, TaskState.COMPLETE, "finished")

    # The rest are pause states: they go no further than the desired state.
    if state >= desired:
        raise TaskNoop()
    if state in (TaskState.NEW, TaskState.PENDING, TaskState.ASSIGNED):
        return _transition(status, TaskState.ACCEPTED, "accepted")
    if state == TaskState.ACCEPTED:
        return _transition(status, TaskState.PREPARING, "preparing")
    if state == TaskState.READY:
        return _transition(status, TaskState.STARTING, "starting")
    raise TaskNoop()

"""The error values that carry meaning between the state machine, controllers and the store.

SwarmKit writes idempotence into error values: a controller that finds its container already
created says ``TaskPrepared`` instead of failing, and ``do()`` treats that as success. The same
idea is used here, together with the one distinction that decides retry versus give-up:
``TemporaryError`` (retry with backoff, state kept) against anything else a controller raises
(permanent: the task becomes ``rejected`` or ``failed``).

Runtimes translate their own exceptions into these in one place (``runtime/podman/client.py``),
so the core never needs to know what podman's errors look like.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.core.model import TaskStatus


class ReconcilerError(Exception):
    """Base class for errors raised by reconciler itself."""


# ------------------------------------------------------------------ state machine signalling


class TaskNoop(ReconcilerError):
    """``do()`` had nothing to do: wait for an update before stepping again."""


class TaskRetry(ReconcilerError):
    """``do()`` hit a temporary problem: keep the state, back off, then step again.

    ``status`` is the status to record meanwhile (same state, message saying why).
    """

    def __init__(self, status: TaskStatus) -> None:
        super().__init__("retry")
        self.status = status


class InvalidTransition(ReconcilerError):
    """A status was about to move to a lower state. States only ever move forward."""


# ------------------------------------------------------------------- controller outcomes


class TaskPrepared(ReconcilerError):
    """``prepare`` found the task already prepared; counts as success."""


class TaskStarted(ReconcilerError):
    """``start`` found the task already started; counts as success."""


class TemporaryError(ReconcilerError):
    """A failure worth retrying: the runtime was unreachable, a pull failed, a call timed out."""


class PermanentError(ReconcilerError):
    """A failure that retrying will not fix: a bad spec, an image that may not be pulled."""


class ExitError(ReconcilerError):
    """The task's process exited with a nonzero code."""

    def __init__(self, exit_code: int, message: str = "") -> None:
        super().__init__(message or f"task exited with code {exit_code}")
        self.exit_code = exit_code


class ContainerGone(ReconcilerError):
    """The task's container disappeared (removed outside the agent)."""

    def __init__(self, message: str = "container removed") -> None:
        super().__init__(message)


# ---------------------------------------------------------------------------------- store


class StoreError(ReconcilerError):
    """Base for store problems."""


class StateDirInUse(StoreError):
    """Another process holds the state directory."""


class StoreVersionError(StoreError):
    """The store was written by a newer agent than this one."""


class UnknownTask(StoreError):
    """The store holds no task with that id."""


class StoreCorrupt(StoreError):
    """RocksDB reports corruption or missing files (``CURRENT``, ``MANIFEST``, an SST), or a
    stored row does not decode. A lock or an I/O error is not corruption."""


class StoreWriteError(StoreError):
    """A write failed (a full disk, an I/O error); nothing of it was stored. The caller keeps
    what it meant to write and retries once ``Store.recover()`` succeeds."""

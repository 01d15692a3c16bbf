"""The port to the agent's own record of every task: what the core reads and writes.

The worker, the local manager, the usage sampler and the image GC keep their state through this
protocol, never through a database library, so the core imports no I/O and its tests can run
on any implementation. ``reconciler.store.rocks.RocksStore`` (RocksDB) is the one the agent
runs on.

The contract every implementation keeps:

* **Tasks, statuses and assigned flags are apart.** A task's data is stored without its
  status, so the frequent status writes never rewrite the spec.
* **Durability by what a loss would cost.** ``apply_assignment``, ``put_task`` and
  ``put_meta`` (unless ``sync=False``) are durable when they return: losing them would lose a
  task. Status writes need not be: a lost status is reported again by the task's manager.
* **Failures are values.** A failed write raises ``StoreWriteError`` and leaves ``failure``
  set with the reason, and every failure listener is called, until ``recover()`` makes writes
  work again. Reads never fail because a write did.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from reconciler.core.model import Task, TaskStatus

__all__ = ["ADOPT_PENDING", "Store", "StoreOrigin"]

ADOPT_PENDING = "adopt-pending"
"""Metadata key set on a store that was just created or rebuilt: the agent must adopt the
runtime's containers before anything else (its value says why: "created" or "rebuilt")."""


class StoreOrigin(enum.Enum):
    """How the agent's store came to be open."""

    OPENED = "opened"  # an existing, valid store
    CREATED = "created"  # none existed
    REBUILT = "rebuilt"  # the old one was corrupt and was moved aside


class Store(Protocol):
    """The agent's record of its tasks (see the module docstring for the contract)."""

    @property
    def path(self) -> Path:
        """Where the store lives, for messages."""
        ...

    @property
    def failure(self) -> str | None:
        """Why the last write failed, until ``recover()`` succeeds; None while healthy."""
        ...

    @property
    def closed(self) -> bool: ...

    def close(self) -> None:
        """Close the store. Idempotent."""
        ...

    def add_failure_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` whenever a write fails."""
        ...

    def recover(self) -> bool:
        """Try to make writes work again after a failure. Returns whether they do."""
        ...

    # ----------------------------------------------------------------------------- reads

    def task_ids(self) -> set[str]: ...

    def __contains__(self, task_id: object) -> bool: ...

    def walk_tasks(self) -> Iterator[Task]:
        """Every task, in id order, each with its stored status."""
        ...

    def walk_statuses(self) -> Iterator[tuple[str, TaskStatus]]:
        """Every stored status, in task id order."""
        ...

    def get_task(self, task_id: str) -> Task:
        """The task with its stored status. Raises ``UnknownTask``."""
        ...

    def get_status(self, task_id: str) -> TaskStatus | None: ...

    def is_assigned(self, task_id: str) -> bool: ...

    def get_meta(self, key: str) -> Any:
        """A metadata value, or None."""
        ...

    def walk_meta(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """Metadata whose key starts with ``prefix``, in key order, keys without the prefix."""
        ...

    def oom_kills(self) -> dict[str, int]:
        """OOM kills counted so far, per task name."""
        ...

    def image_records(self) -> dict[str, Any]:
        """The image GC's records, by image id."""
        ...

    # ---------------------------------------------------------------------------- writes

    def put_task(self, task: Task) -> None:
        """Store the task's data (not its status). Durable."""
        ...

    def put_status(self, task_id: str, status: TaskStatus) -> None:
        """Store a task's status. Raises ``UnknownTask`` if the task is not stored."""
        ...

    def put_statuses(self, statuses: Iterable[tuple[str, TaskStatus]]) -> None:
        """Store many statuses in one batch; those of unknown tasks are skipped."""
        ...

    def set_assigned(self, task_id: str, assigned: bool) -> None: ...

    def delete_task(self, task_id: str) -> None:
        """Delete the whole record: data, status and assigned flag. Unknown ids are fine."""
        ...

    def apply_assignment(
        self,
        updated: Iterable[Task],
        removed: Iterable[str] = (),
        *,
        statuses: Iterable[tuple[str, TaskStatus]] = (),
        meta: Iterable[tuple[str, Any]] = (),
    ) -> None:
        """One atomic, durable write: store and mark assigned every updated task, store the
        given initial statuses, delete every removed task's record, and put metadata (a value
        of None deletes the key)."""
        ...

    def put_meta(self, key: str, value: Any, *, sync: bool = True) -> None:
        """Put a metadata value (None deletes it)."""
        ...

    def put_oom_kills(self, name: str, count: int | None) -> None:
        """Store a task name's OOM-kill count (None deletes it). Need not be durable."""
        ...

    def put_image_records(self, records: Iterable[tuple[str, Any]]) -> None:
        """Put image records (a value of None deletes one)."""
        ...

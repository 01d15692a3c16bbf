"""The agent's own record of every task: RocksDB at ``<state-dir>/worker/tasks.db``.

``RocksStore`` implements the core's ``Store`` protocol (``reconciler.core.store``): tasks,
statuses, assigned flags and metadata, in the rows ``reconciler.store.rows`` lays out. The
store package is the only one that imports ``rocksdict``.

Durability: the assignment batch and metadata that must not be lost are written with a synced
WAL; status writes are not synced (the WAL still survives a kill -9 of the process, and an
fsync per status would cap throughput at a few thousand per second).

One process owns a store: the agent holds ``reconciler.store.statedir.StateDirLock`` before it
opens one, and RocksDB's LOCK file makes a second read-write open fail too (``StateDirInUse``).
``ps``/``inspect`` open it read-only, which takes no lock, in a state dir of their user only
(``statedir.check_state_dir``: even a read-only open writes there). Opening, which never
re-creates a store silently, checks every row and migrates an older format, is
``reconciler.store.opening``'s.

**Failed writes** (a full disk) raise ``StoreWriteError`` and leave the store ``failed`` with the
reason. RocksDB keeps refusing writes after such an error ("Writer has previous error"), even
once space returns; ``recover()`` probes with a small synced write and, if the handle is stuck,
closes and reopens the database in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rocksdict import AccessType, Rdict, WriteBatch, WriteOptions

from reconciler.core.codec import task_from_dict, task_to_dict
from reconciler.core.errors import StoreError, StoreWriteError, UnknownTask
from reconciler.core.model import Task, TaskStatus
from reconciler.store.opening import (
    check_format,
    db_path,
    load_ids,
    open_db,
    reopen,
    short,
    verify_rows,
)
from reconciler.store.rows import (
    ASSIGNED,
    FORMAT_KEY,
    META,
    PROBE_KEY,
    STATUS,
    TASK,
    dumps,
    items,
    loads,
    status_bytes,
    status_from,
)
from reconciler.store.statedir import check_state_dir

__all__ = ["IMAGE_PREFIX", "OOM_PREFIX", "RocksStore"]

log = logging.getLogger(__name__)

OOM_PREFIX = "oom/"
"""Metadata keys ``oom/<task name>``: OOM kills per task name, kept across instances."""
IMAGE_PREFIX = "img/"
"""Metadata keys ``img/<image id>``: images the agent pulled or used
(``reconciler.agent.imagegc``)."""


class RocksStore:
    """Tasks, statuses, assigned flags and metadata of one agent."""

    def __init__(self, db: Rdict, path: Path, *, read_only: bool) -> None:
        self._db: Rdict | None = db
        self.path = path
        self.read_only = read_only
        self._sync = WriteOptions()
        self._sync.sync = True
        self._nosync = WriteOptions()
        self._nosync.sync = False
        self._ids: set[str] = set()
        self._closed = False
        self.failure: str | None = None
        """Why the last write failed, until ``recover()`` succeeds; None while healthy."""
        self._failure_listeners: list[Callable[[str], None]] = []

    # ------------------------------------------------------------------------ open / close

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], *, read_only: bool = False) -> RocksStore:
        """Open the store of ``state_dir``, creating it only where ``tasks.db`` does not exist.

        Every row is decoded on the way in. Raises ``StateDirInUse`` if another process has it
        open for writing, ``StoreCorrupt`` if RocksDB reports corruption or missing files or
        a row does not decode, ``StoreVersionError`` if a newer agent wrote it,
        ``StateDirRefused`` if read-only in a state dir this user does not own, and
        ``StoreError`` for anything else (a missing read-only store, an I/O error).
        """
        path = db_path(state_dir)
        create = False
        if read_only:
            check_state_dir(Path(state_dir))
            if not path.exists():
                raise StoreError(f"no store at {path}")
            access = AccessType.read_only()
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            create = not path.exists()
            access = AccessType.read_write()
        db = open_db(path, access, create=create, state_dir=Path(state_dir))
        store = cls(db, path, read_only=read_only)
        try:
            store._ids = load_ids(db, path)
            check_format(db, path, read_only=read_only, write=store._write_synced)
            verify_rows(db, path)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Close the store. Idempotent, and never raises (a handle stuck after a failed write
        complains when closed; there is nothing left to lose by then)."""
        if not self._closed:
            self._closed = True
            db, self._db = self._db, None
            if db is not None:
                with contextlib.suppress(Exception):
                    db.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def format_version(self) -> int:
        raw = self._handle().get(FORMAT_KEY)
        return int(loads(raw)) if raw is not None else 0

    def _handle(self) -> Rdict:
        db = self._db
        if db is None:
            raise StoreError(
                f"store {self.path} is not open"
                + (f" (last write failed: {self.failure})" if self.failure else "")
            )
        return db

    # ------------------------------------------------------------------ failure / recovery

    def add_failure_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` whenever a write fails."""
        self._failure_listeners.append(listener)

    def _write(self, batch: WriteBatch, opts: WriteOptions) -> None:
        """Write one batch; a failure marks the store failed and raises ``StoreWriteError``."""
        try:
            self._handle().write(batch, opts)
        except Exception as err:
            reason = str(err) if isinstance(err, StoreError) else short(err)
            if self.failure is None:
                log.error("store write failed path=%s err=%r", self.path, reason)
            self.failure = reason
            for listener in tuple(self._failure_listeners):
                listener(reason)
            raise StoreWriteError(f"store write failed: {reason}") from err

    def _write_synced(self, batch: WriteBatch) -> None:
        self._write(batch, self._sync)

    def _write_put(self, key: bytes, value: bytes, *, sync: bool = True) -> None:
        batch = WriteBatch(raw_mode=True)
        batch.put(key, value)
        self._write(batch, self._sync if sync else self._nosync)

    def recover(self) -> bool:
        """Try to make writes work again after a failure. Returns whether they do.

        Probes with one small synced write; if RocksDB still refuses (it stays in its
        background-error state after a full disk, even once space is back), the database is
        closed and reopened in place. Never raises. A no-op returning True when healthy.
        """
        if self.read_only or self._closed:
            return self.failure is None
        if self.failure is None and self._db is not None:
            return True
        try:
            if self._db is not None:
                try:
                    self._db.put(PROBE_KEY, b"1", self._sync)
                    self._recovered()
                    return True
                except Exception:
                    with contextlib.suppress(Exception):
                        self._db.close()
                    self._db = None
            self._db = reopen(self.path)
            self._db.put(PROBE_KEY, b"1", self._sync)
        except Exception as err:
            self.failure = short(err)
            return False
        self._recovered()
        return True

    def _recovered(self) -> None:
        log.info("store writable again path=%s", self.path)
        self.failure = None

    # --------------------------------------------------------------------------- reading

    def task_ids(self) -> set[str]:
        return set(self._ids)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._ids

    def walk_tasks(self) -> Iterator[Task]:
        """Every task, in id order, each with its stored status."""
        for task_id, raw in items(self._handle(), TASK):
            yield task_from_dict(loads(raw), self.get_status(task_id) or TaskStatus())

    def walk_statuses(self) -> Iterator[tuple[str, TaskStatus]]:
        """Every stored status, in task id order."""
        for task_id, raw in items(self._handle(), STATUS):
            yield task_id, status_from(raw)

    def get_task(self, task_id: str) -> Task:
        """The task with its stored status. Raises ``UnknownTask``."""
        raw = self._handle().get(TASK + task_id.encode())
        if raw is None:
            raise UnknownTask(task_id)
        return task_from_dict(loads(raw), self.get_status(task_id) or TaskStatus())

    def get_status(self, task_id: str) -> TaskStatus | None:
        raw = self._handle().get(STATUS + task_id.encode())
        return status_from(raw) if raw is not None else None

    def is_assigned(self, task_id: str) -> bool:
        return self._handle().get(ASSIGNED + task_id.encode()) is not None

    def get_meta(self, key: str) -> Any:
        """A metadata value, or None."""
        raw = self._handle().get(META + key.encode())
        return loads(raw) if raw is not None else None

    def walk_meta(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """Metadata whose key starts with ``prefix``, in key order, keys without the prefix."""
        for key, raw in items(self._handle(), META + prefix.encode()):
            yield key, loads(raw)

    # --------------------------------------------------------------------------- writing

    def put_task(self, task: Task) -> None:
        """Store the task's data (not its status). Synced: losing it would lose a task."""
        batch = WriteBatch(raw_mode=True)
        batch.put(TASK + task.id.encode(), dumps(task_to_dict(task, with_status=False)))
        self._write(batch, self._sync)
        self._ids.add(task.id)

    def put_status(self, task_id: str, status: TaskStatus) -> None:
        """Store a task's status. Raises ``UnknownTask`` if the task is not stored."""
        if task_id not in self._ids:
            raise UnknownTask(task_id)
        self._write_put(STATUS + task_id.encode(), status_bytes(status), sync=False)

    def put_statuses(self, statuses: Iterable[tuple[str, TaskStatus]]) -> None:
        """Store many statuses in one unsynced batch; those of unknown tasks are skipped."""
        batch = WriteBatch(raw_mode=True)
        for task_id, status in statuses:
            if task_id in self._ids:
                batch.put(STATUS + task_id.encode(), status_bytes(status))
        if not batch.is_empty():
            self._write(batch, self._nosync)

    def set_assigned(self, task_id: str, assigned: bool) -> None:
        batch = WriteBatch(raw_mode=True)
        key = ASSIGNED + task_id.encode()
        if assigned:
            batch.put(key, b"1")
        else:
            batch.delete(key)
        self._write(batch, self._sync)

    def delete_task(self, task_id: str) -> None:
        """Delete the whole record: data, status and assigned flag. Unknown ids are fine."""
        self.apply_assignment((), (task_id,))

    def apply_assignment(
        self,
        updated: Iterable[Task],
        removed: Iterable[str] = (),
        *,
        statuses: Iterable[tuple[str, TaskStatus]] = (),
        meta: Iterable[tuple[str, Any]] = (),
    ) -> None:
        """One atomic, synced batch: store and mark assigned every updated task, store the
        given initial statuses, delete every removed task's record, and put metadata
        (a value of None deletes the key)."""
        batch = WriteBatch(raw_mode=True)
        added: list[str] = []
        for task in updated:
            tid = task.id.encode()
            batch.put(TASK + tid, dumps(task_to_dict(task, with_status=False)))
            batch.put(ASSIGNED + tid, b"1")
            added.append(task.id)
        for task_id, status in statuses:
            batch.put(STATUS + task_id.encode(), status_bytes(status))
        gone: list[str] = []
        for task_id in removed:
            tid = task_id.encode()
            batch.delete(TASK + tid)
            batch.delete(STATUS + tid)
            batch.delete(ASSIGNED + tid)
            gone.append(task_id)
        for key, value in meta:
            if value is None:
                batch.delete(META + key.encode())
            else:
                batch.put(META + key.encode(), dumps(value))
        self._write(batch, self._sync)
        self._ids.update(added)
        self._ids.difference_update(gone)

    def put_meta(self, key: str, value: Any, *, sync: bool = True) -> None:
        """Put a metadata value (None deletes it)."""
        batch = WriteBatch(raw_mode=True)
        if value is None:
            batch.delete(META + key.encode())
        else:
            batch.put(META + key.encode(), dumps(value))
        self._write(batch, self._sync if sync else self._nosync)

    # ------------------------------------------------------------------------ OOM kills

    def oom_kills(self) -> dict[str, int]:
        """OOM kills counted so far, per task name (metadata ``m/oom/<name>``)."""
        return {name: int(n) for name, n in self.walk_meta(OOM_PREFIX) if isinstance(n, int)}

    def put_oom_kills(self, name: str, count: int | None) -> None:
        """Store a task name's OOM-kill count (None deletes it). Unsynced, like statuses."""
        self.put_meta(OOM_PREFIX + name, count, sync=False)

    # ----------------------------------------------------------------------- image records

    def image_records(self) -> dict[str, Any]:
        """The image records (metadata ``m/img/<image id>``): image id -> its JSON value."""
        return dict(self.walk_meta(IMAGE_PREFIX))

    def put_image_records(self, records: Iterable[tuple[str, Any]]) -> None:
        """Put image records by image id (a value of None deletes one) in one unsynced batch:
        losing the last few to a crash only makes an image look a little less recently used.
        Raises ``StoreWriteError`` if the write fails."""
        batch = WriteBatch(raw_mode=True)
        for image_id, value in records:
            key = META + (IMAGE_PREFIX + image_id).encode()
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, dumps(value))
        if not batch.is_empty():
            self._write(batch, self._nosync)

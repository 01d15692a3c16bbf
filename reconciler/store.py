"""The agent's own record of every task: RocksDB at ``<state-dir>/worker/tasks.db``.

This module owns persistence and is the only one that imports ``rocksdict``. It follows
SwarmKit's worker storage (``agent/storage.go``): a task's data (status stripped), its status
and its assigned flag are kept apart, so the frequent status writes never rewrite the spec.
Everything lives in the default column family under key prefixes, which keeps one assignment a
single atomic ``WriteBatch``:

    t/<id>   task JSON without status        s/<id>  status as a JSON row
    a/<id>   assigned flag (present = true)  m/<key> metadata JSON (format version, the
                                                      local manager's state, the node id...)

Durability: the assignment batch and metadata that must not be lost are written with a synced
WAL; status writes are not synced (the WAL still survives a kill -9 of the process, and an
fsync per status would cap throughput at a few thousand per second). Write buffers and the
block cache are sized for an edge host rather than RocksDB's server defaults.

One process owns a store: RocksDB's LOCK file makes a second read-write open fail, which is
reported as ``StateDirInUse``. ``ps``/``inspect`` open it read-only, which takes no lock.

The store holds a format version. Opening an older store migrates it in place after copying it
aside; a store newer than this agent is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from reconciler.errors import StateDirInUse, StoreError, StoreVersionError, UnknownTask
from reconciler.model import (
    Task,
    TaskState,
    TaskStatus,
    task_from_dict,
    task_to_dict,
)

FORMAT_VERSION = 1

_TASK = b"t/"
_STATUS = b"s/"
_ASSIGNED = b"a/"
_META = b"m/"
_FORMAT_KEY = _META + b"format"

# Migrations from version N to N+1. Each takes the open database; the store is copied aside
# before the first one runs. Version 0 is a store written before the format key existed.
Migration = Callable[[Rdict], None]
MIGRATIONS: dict[int, Migration] = {0: lambda db: None}


def db_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / "worker" / "tasks.db"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _loads(raw: bytes) -> Any:
    return json.loads(raw)


_encode = json.JSONEncoder(separators=(",", ":")).encode


def _status_bytes(status: TaskStatus) -> bytes:
    """A status as a compact JSON row: statuses are the hot write path (several per task)."""
    return _encode(
        [
            int(status.state),
            status.timestamp,
            status.message,
            status.err,
            status.container_id,
            status.pid,
            status.exit_code,
        ]
    ).encode()


def _status_from(raw: bytes) -> TaskStatus:
    state, ts, message, err, container_id, pid, exit_code = json.loads(raw)
    return TaskStatus(TaskState(state), ts, message, err, container_id, pid, exit_code)


def _options(read_only: bool) -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(not read_only)
    # Footprint for an edge host: 4 MiB memtables (two of them) instead of 64 MiB, one small
    # shared block cache, two background jobs, and few open files.
    opts.set_write_buffer_size(4 * 1024 * 1024)
    opts.set_max_write_buffer_number(2)
    opts.set_db_write_buffer_size(8 * 1024 * 1024)
    opts.set_max_background_jobs(2)
    opts.set_max_open_files(64)
    opts.set_keep_log_file_num(2)
    opts.set_max_log_file_size(1024 * 1024)
    opts.set_max_total_wal_size(16 * 1024 * 1024)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(8 * 1024 * 1024))
    opts.set_block_based_table_factory(table)
    return opts


def _is_lock_error(err: Exception) -> bool:
    text = str(err).lower()
    return "lock" in text and ("resource temporarily unavailable" in text or "lock hold" in text)


class Store:
    """Tasks, statuses, assigned flags and metadata of one agent."""

    def __init__(self, db: Rdict, path: Path, *, read_only: bool) -> None:
        self._db = db
        self.path = path
        self.read_only = read_only
        self._sync = WriteOptions()
        self._sync.sync = True
        self._nosync = WriteOptions()
        self._nosync.sync = False
        self._ids: set[str] = {k[len(_TASK) :].decode() for k in self._keys(_TASK)}
        self._closed = False

    # ------------------------------------------------------------------------ open / close

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], *, read_only: bool = False) -> Store:
        """Open (creating if needed) the store of ``state_dir``.

        Raises ``StateDirInUse`` if another process has it open for writing,
        ``StoreVersionError`` if a newer agent wrote it, ``StoreError`` otherwise.
        """
        path = db_path(state_dir)
        if read_only:
            if not (path / "CURRENT").exists():
                raise StoreError(f"no store at {path}")
            access = AccessType.read_only()
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            access = AccessType.read_write()
        try:
            db = Rdict(str(path), options=_options(read_only), access_type=access)
        except Exception as err:
            if _is_lock_error(err):
                raise StateDirInUse(
                    f"state dir {Path(state_dir)} is in use by another reconciler process"
                ) from err
            raise StoreError(f"cannot open store {path}: {err}") from err
        store = cls(db, path, read_only=read_only)
        try:
            store._check_format()
        except BaseException:
            store.close()
            raise
        return store

    def _check_format(self) -> None:
        raw = self._db.get(_FORMAT_KEY)
        if raw is None:
            empty = not any(True for _ in self._keys(b""))
            if empty:
                if not self.read_only:
                    self._db.put(_FORMAT_KEY, _dumps(FORMAT_VERSION), self._sync)
                return
            version = 0
        else:
            version = int(_loads(raw))
        if version > FORMAT_VERSION:
            raise StoreVersionError(
                f"store {self.path} has format version {version}, newer than this agent "
                f"supports ({FORMAT_VERSION}); upgrade reconciler or point it at another "
                f"state dir"
            )
        if version < FORMAT_VERSION:
            if self.read_only:
                raise StoreVersionError(
                    f"store {self.path} has format version {version}; run the agent once to "
                    f"migrate it to {FORMAT_VERSION}"
                )
            self._migrate(version)

    def _migrate(self, version: int) -> None:
        self._db.flush()
        backup = self.path.with_name(f"{self.path.name}.v{version}.{int(time.time())}.bak")
        shutil.copytree(self.path, backup, ignore=shutil.ignore_patterns("LOCK"))
        while version < FORMAT_VERSION:
            MIGRATIONS[version](self._db)
            version += 1
            self._db.put(_FORMAT_KEY, _dumps(version), self._sync)

    def close(self) -> None:
        """Close the store. Idempotent."""
        if not self._closed:
            self._closed = True
            self._db.close()

    @property
    def format_version(self) -> int:
        raw = self._db.get(_FORMAT_KEY)
        return int(_loads(raw)) if raw is not None else 0

    # --------------------------------------------------------------------------- reading

    def _keys(self, prefix: bytes) -> Iterator[bytes]:
        it = self._db.iter(ReadOptions())
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            yield key
            it.next()

    def _items(self, prefix: bytes) -> Iterator[tuple[str, bytes]]:
        it = self._db.iter(ReadOptions())
        it.seek(prefix)
        n = len(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            yield key[n:].decode(), it.value()
            it.next()

    def task_ids(self) -> set[str]:
        return set(self._ids)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._ids

    def walk_tasks(self) -> Iterator[Task]:
        """Every task, in id order, each with its stored status."""
        for task_id, raw in self._items(_TASK):
            yield task_from_dict(_loads(raw), self.get_status(task_id) or TaskStatus())

    def walk_statuses(self) -> Iterator[tuple[str, TaskStatus]]:
        """Every stored status, in task id order."""
        for task_id, raw in self._items(_STATUS):
            yield task_id, _status_from(raw)

    def get_task(self, task_id: str) -> Task:
        """The task with its stored status. Raises ``UnknownTask``."""
        raw = self._db.get(_TASK + task_id.encode())
        if raw is None:
            raise UnknownTask(task_id)
        return task_from_dict(_loads(raw), self.get_status(task_id) or TaskStatus())

    def get_status(self, task_id: str) -> TaskStatus | None:
        raw = self._db.get(_STATUS + task_id.encode())
        return _status_from(raw) if raw is not None else None

    def is_assigned(self, task_id: str) -> bool:
        return self._db.get(_ASSIGNED + task_id.encode()) is not None

    def get_meta(self, key: str) -> Any:
        """A metadata value, or None."""
        raw = self._db.get(_META + key.encode())
        return _loads(raw) if raw is not None else None

    def walk_meta(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """Metadata whose key starts with ``prefix``, in key order, keys without the prefix."""
        for key, raw in self._items(_META + prefix.encode()):
            yield key, _loads(raw)

    # --------------------------------------------------------------------------- writing

    def put_task(self, task: Task) -> None:
        """Store the task's data (not its status). Synced: losing it would lose a task."""
        batch = WriteBatch(raw_mode=True)
        batch.put(_TASK + task.id.encode(), _dumps(task_to_dict(task, with_status=False)))
        self._db.write(batch, self._sync)
        self._ids.add(task.id)

    def put_status(self, task_id: str, status: TaskStatus) -> None:
        """Store a task's status. Raises ``UnknownTask`` if the task is not stored."""
        if task_id not in self._ids:
            raise UnknownTask(task_id)
        self._db.put(_STATUS + task_id.encode(), _status_bytes(status), self._nosync)

    def put_statuses(self, statuses: Iterable[tuple[str, TaskStatus]]) -> None:
        """Store many statuses in one unsynced batch; those of unknown tasks are skipped."""
        batch = WriteBatch(raw_mode=True)
        for task_id, status in statuses:
            if task_id in self._ids:
                batch.put(_STATUS + task_id.encode(), _status_bytes(status))
        if not batch.is_empty():
            self._db.write(batch, self._nosync)

    def set_assigned(self, task_id: str, assigned: bool) -> None:
        key = _ASSIGNED + task_id.encode()
        if assigned:
            self._db.put(key, b"1", self._sync)
        else:
            self._db.delete(key, self._sync)

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
            batch.put(_TASK + tid, _dumps(task_to_dict(task, with_status=False)))
            batch.put(_ASSIGNED + tid, b"1")
            added.append(task.id)
        for task_id, status in statuses:
            batch.put(_STATUS + task_id.encode(), _status_bytes(status))
        gone: list[str] = []
        for task_id in removed:
            tid = task_id.encode()
            batch.delete(_TASK + tid)
            batch.delete(_STATUS + tid)
            batch.delete(_ASSIGNED + tid)
            gone.append(task_id)
        for key, value in meta:
            if value is None:
                batch.delete(_META + key.encode())
            else:
                batch.put(_META + key.encode(), _dumps(value))
        self._db.write(batch, self._sync)
        self._ids.update(added)
        self._ids.difference_update(gone)

    def put_meta(self, key: str, value: Any, *, sync: bool = True) -> None:
        """Put a metadata value (None deletes it)."""
        if value is None:
            self._db.delete(_META + key.encode(), self._sync if sync else self._nosync)
        else:
            self._db.put(_META + key.encode(), _dumps(value), self._sync if sync else self._nosync)

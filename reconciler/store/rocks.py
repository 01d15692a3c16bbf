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

One process owns a store: the agent holds ``reconciler.store.statedir.StateDirLock`` before it opens
one, and RocksDB's LOCK file makes a second read-write open fail too (``StateDirInUse``).
``ps``/``inspect`` open it read-only, which takes no lock.

The store holds a format version. Opening an older store migrates it in place after copying it
aside; a store newer than this agent is refused.

**Never silently re-created.** A store is created only where ``tasks.db`` does not exist (and
then marked ``adopt-pending``); an existing one is opened without RocksDB's
``create_if_missing`` (which would write a fresh, empty ``CURRENT`` over a lost one and make
every running container look like an orphan). Opening walks and decodes every row. A store that
RocksDB reports corrupt or missing files for, or with a row that does not decode, is moved aside
to ``tasks.db.corrupt-<UTC timestamp>`` and a new one is created, marked ``adopt-pending``: the
agent then rebuilds it from the containers the runtime holds for this node. A lock or I/O error
is never taken for corruption.

**Failed writes** (a full disk) raise ``StoreWriteError`` and leave the store ``failed`` with the
reason. RocksDB keeps refusing writes after such an error ("Writer has previous error"), even
once space returns; ``recover()`` probes with a small synced write and, if the handle is stuck,
closes and reopens the database in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
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

from reconciler.core.codec import compact, task_from_dict, task_to_dict
from reconciler.core.errors import (
    StateDirInUse,
    StoreCorrupt,
    StoreError,
    StoreVersionError,
    StoreWriteError,
    UnknownTask,
)
from reconciler.core.model import Task, TaskState, TaskStatus
from reconciler.core.store import ADOPT_PENDING

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

_TASK = b"t/"
_STATUS = b"s/"
_ASSIGNED = b"a/"
_META = b"m/"
_FORMAT_KEY = _META + b"format"
_PROBE_KEY = _META + b"probe"
OOM_PREFIX = "oom/"
"""Metadata keys ``oom/<task name>``: OOM kills per task name, kept across instances."""
IMAGE_PREFIX = "img/"
"""Metadata keys ``img/<image id>``: images the agent pulled or used
(``reconciler.agent.imagegc``)."""

# Migrations from version N to N+1. Each takes the open database; the store is copied aside
# before the first one runs. Version 0 is a store written before the format key existed.
Migration = Callable[[Rdict], None]
MIGRATIONS: dict[int, Migration] = {0: lambda db: None}


def db_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / "worker" / "tasks.db"


_dumps = compact
"""Every row is written by the one compact encoder (``reconciler.core.codec.compact``)."""


def _loads(raw: bytes) -> Any:
    return json.loads(raw)


def _status_bytes(status: TaskStatus) -> bytes:
    """A status as a compact JSON row: statuses are the hot write path (several per task).
    The update-failed flag is appended only when set, so most rows keep seven fields."""
    row = [
        int(status.state),
        status.timestamp,
        status.message,
        status.err,
        status.container_id,
        status.pid,
        status.exit_code,
    ]
    if status.update_failed:
        row.append(True)
    return compact(row)


def _status_from(raw: bytes) -> TaskStatus:
    state, ts, message, err, container_id, pid, exit_code, *flags = json.loads(raw)
    return TaskStatus(
        TaskState(state), ts, message, err, container_id, pid, exit_code, bool(flags and flags[0])
    )


def _options(read_only: bool) -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(not read_only)
    # Footprint for an edge host: 1 MiB memtables (two at most, 2 MiB in all) instead of
    # 64 MiB, a 1 MiB block cache, two background jobs, and few open files. A memtable fills
    # with status rows until it is flushed, so its size is what a long-running agent holds:
    # 4 MiB memtables held 6.0 MB after 200,000 status writes to 100 tasks, 1 MiB ones 3.1 MB.
    # Every row of an edge host's store fits the cache many times over.
    opts.set_write_buffer_size(1024 * 1024)
    opts.set_max_write_buffer_number(2)
    opts.set_db_write_buffer_size(2 * 1024 * 1024)
    opts.set_max_background_jobs(2)
    opts.set_max_open_files(64)
    opts.set_keep_log_file_num(2)
    opts.set_max_log_file_size(1024 * 1024)
    opts.set_max_total_wal_size(16 * 1024 * 1024)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(1024 * 1024))
    opts.set_block_based_table_factory(table)
    return opts


def _is_lock_error(err: Exception) -> bool:
    text = str(err).lower()
    return "lock" in text and ("resource temporarily unavailable" in text or "lock hold" in text)


def _is_corruption(err: Exception) -> bool:
    """RocksDB's own word for it, or a file it needs that is gone (CURRENT, MANIFEST, an SST)."""
    text = str(err)
    return (
        text.startswith("Corruption")
        or "does not exist (create_if_missing is false)" in text
        or ("No such file or directory" in text and "IO error" in text)
    )


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:300] + "..."


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
        a row does not decode, ``StoreVersionError`` if a newer agent wrote it, and
        ``StoreError`` for anything else (a missing read-only store, an I/O error).
        """
        path = db_path(state_dir)
        create = False
        if read_only:
            if not path.exists():
                raise StoreError(f"no store at {path}")
            access = AccessType.read_only()
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            create = not path.exists()
            access = AccessType.read_write()
        db = cls._open_db(path, access, create=create, state_dir=Path(state_dir))
        store = cls(db, path, read_only=read_only)
        try:
            store._load_ids()
            store._check_format()
            store._verify_rows()
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def _open_db(path: Path, access: AccessType, *, create: bool, state_dir: Path) -> Rdict:
        try:
            return Rdict(str(path), options=_options(not create), access_type=access)
        except Exception as err:
            if _is_lock_error(err):
                raise StateDirInUse(
                    f"state dir {state_dir} is in use by another reconciler process"
                ) from err
            if _is_corruption(err):
                raise StoreCorrupt(f"store {path} is corrupt: {_short(err)}") from err
            raise StoreError(f"cannot open store {path}: {_short(err)}") from err

    def _load_ids(self) -> None:
        try:
            self._ids = {k[len(_TASK) :].decode() for k in self._keys(_TASK)}
        except UnicodeDecodeError as err:
            raise StoreCorrupt(f"store {self.path} has an undecodable task key") from err
        except Exception as err:
            if _is_corruption(err):
                raise StoreCorrupt(f"store {self.path} is corrupt: {_short(err)}") from err
            raise StoreError(f"cannot read store {self.path}: {_short(err)}") from err

    def _verify_rows(self) -> None:
        """Decode every row once, so that damage is found at open, not mid-run."""
        try:
            for key, raw in self._items(b""):
                if key.startswith("t/"):
                    task_from_dict(_loads(raw))
                elif key.startswith("s/"):
                    _status_from(raw)
                elif key.startswith("m/"):
                    _loads(raw)
        except StoreError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as err:
            raise StoreCorrupt(f"store {self.path} has a row that does not decode: {err}") from err
        except Exception as err:
            if _is_corruption(err):
                raise StoreCorrupt(f"store {self.path} is corrupt: {_short(err)}") from err
            raise StoreError(f"cannot read store {self.path}: {_short(err)}") from err

    def _check_format(self) -> None:
        raw = self._handle().get(_FORMAT_KEY)
        if raw is None:
            empty = not any(True for _ in self._keys(b""))
            if empty:
                if not self.read_only:
                    # A new store: its format and the duty to adopt what the runtime already
                    # runs are written together, so no crash can leave a new store that looks
                    # like an established one.
                    batch = WriteBatch(raw_mode=True)
                    batch.put(_FORMAT_KEY, _dumps(FORMAT_VERSION))
                    batch.put(_META + ADOPT_PENDING.encode(), _dumps("created"))
                    self._write(batch, self._sync)
                return
            version = 0
        else:
            try:
                version = int(_loads(raw))
            except (ValueError, TypeError) as err:
                raise StoreCorrupt(f"store {self.path} has an unreadable format version") from err
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
        db = self._handle()
        db.flush()
        backup = self.path.with_name(f"{self.path.name}.v{version}.{int(time.time())}.bak")
        shutil.copytree(self.path, backup, ignore=shutil.ignore_patterns("LOCK"))
        while version < FORMAT_VERSION:
            MIGRATIONS[version](db)
            version += 1
            self._write_put(_FORMAT_KEY, _dumps(version))

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
        raw = self._handle().get(_FORMAT_KEY)
        return int(_loads(raw)) if raw is not None else 0

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
            reason = str(err) if isinstance(err, StoreError) else _short(err)
            if self.failure is None:
                log.error("store write failed path=%s err=%r", self.path, reason)
            self.failure = reason
            for listener in tuple(self._failure_listeners):
                listener(reason)
            raise StoreWriteError(f"store write failed: {reason}") from err

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
                    self._db.put(_PROBE_KEY, b"1", self._sync)
                    self._recovered()
                    return True
                except Exception:
                    with contextlib.suppress(Exception):
                        self._db.close()
                    self._db = None
            self._db = Rdict(
                str(self.path), options=_options(True), access_type=AccessType.read_write()
            )
            self._db.put(_PROBE_KEY, b"1", self._sync)
        except Exception as err:
            self.failure = _short(err)
            return False
        self._recovered()
        return True

    def _recovered(self) -> None:
        log.info("store writable again path=%s", self.path)
        self.failure = None

    # --------------------------------------------------------------------------- reading

    def _keys(self, prefix: bytes) -> Iterator[bytes]:
        it = self._handle().iter(ReadOptions())
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            yield key
            it.next()

    def _items(self, prefix: bytes) -> Iterator[tuple[str, bytes]]:
        it = self._handle().iter(ReadOptions())
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
        raw = self._handle().get(_TASK + task_id.encode())
        if raw is None:
            raise UnknownTask(task_id)
        return task_from_dict(_loads(raw), self.get_status(task_id) or TaskStatus())

    def get_status(self, task_id: str) -> TaskStatus | None:
        raw = self._handle().get(_STATUS + task_id.encode())
        return _status_from(raw) if raw is not None else None

    def is_assigned(self, task_id: str) -> bool:
        return self._handle().get(_ASSIGNED + task_id.encode()) is not None

    def get_meta(self, key: str) -> Any:
        """A metadata value, or None."""
        raw = self._handle().get(_META + key.encode())
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
        self._write(batch, self._sync)
        self._ids.add(task.id)

    def put_status(self, task_id: str, status: TaskStatus) -> None:
        """Store a task's status. Raises ``UnknownTask`` if the task is not stored."""
        if task_id not in self._ids:
            raise UnknownTask(task_id)
        self._write_put(_STATUS + task_id.encode(), _status_bytes(status), sync=False)

    def put_statuses(self, statuses: Iterable[tuple[str, TaskStatus]]) -> None:
        """Store many statuses in one unsynced batch; those of unknown tasks are skipped."""
        batch = WriteBatch(raw_mode=True)
        for task_id, status in statuses:
            if task_id in self._ids:
                batch.put(_STATUS + task_id.encode(), _status_bytes(status))
        if not batch.is_empty():
            self._write(batch, self._nosync)

    def set_assigned(self, task_id: str, assigned: bool) -> None:
        batch = WriteBatch(raw_mode=True)
        key = _ASSIGNED + task_id.encode()
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
        self._write(batch, self._sync)
        self._ids.update(added)
        self._ids.difference_update(gone)

    def put_meta(self, key: str, value: Any, *, sync: bool = True) -> None:
        """Put a metadata value (None deletes it)."""
        batch = WriteBatch(raw_mode=True)
        if value is None:
            batch.delete(_META + key.encode())
        else:
            batch.put(_META + key.encode(), _dumps(value))
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
            key = _META + (IMAGE_PREFIX + image_id).encode()
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, _dumps(value))
        if not batch.is_empty():
            self._write(batch, self._nosync)

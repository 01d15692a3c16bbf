"""Opening a store's RocksDB database: where it lives, its options for an edge host, what an
open error means, the format version and its migrations, and the check of every row.

**Never silently re-created.** A store is created only where ``tasks.db`` does not exist (and
then marked ``adopt-pending``); an existing one is opened without RocksDB's
``create_if_missing`` (which would write a fresh, empty ``CURRENT`` over a lost one and make
every running container look like an orphan). Opening walks and decodes every row, so damage
is found at open, not mid-run. An error that RocksDB words as corruption or as missing files,
or a row that does not decode, is ``StoreCorrupt``: the agent then moves the store aside and
rebuilds it (``reconciler.store.recovery``). A lock or I/O error is never taken for corruption.

**Footprint.** Write buffers and the block cache are sized for an edge host rather than
RocksDB's server defaults (``options``).

**Format version.** The store holds one. Opening an older store migrates it in place after
copying it aside; a store newer than this agent is refused (``StoreVersionError``), and a
read-only open (``ps``) never migrates.

These are functions of an open ``Rdict``; ``RocksStore.open`` (``reconciler.store.rocks``)
runs them in order.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from rocksdict import AccessType, BlockBasedOptions, Cache, Options, Rdict, WriteBatch

from reconciler.core.codec import task_from_dict
from reconciler.core.errors import StateDirInUse, StoreCorrupt, StoreError, StoreVersionError
from reconciler.core.store import ADOPT_PENDING
from reconciler.store.rows import FORMAT_KEY, META, TASK, dumps, items, keys, loads, status_from

__all__ = [
    "FORMAT_VERSION",
    "MIGRATIONS",
    "Migration",
    "check_format",
    "db_path",
    "is_corruption",
    "load_ids",
    "open_db",
    "options",
    "reopen",
    "short",
    "verify_rows",
]

FORMAT_VERSION = 1

# Migrations from version N to N+1. Each takes the open database; the store is copied aside
# before the first one runs. Version 0 is a store written before the format key existed.
Migration = Callable[[Rdict], None]
MIGRATIONS: dict[int, Migration] = {0: lambda db: None}

Write = Callable[[WriteBatch], None]
"""A synced write through the store, which marks it failed when the write fails."""


def db_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / "worker" / "tasks.db"


def options(read_only: bool) -> Options:
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


def is_corruption(err: Exception) -> bool:
    """RocksDB's own word for it, or a file it needs that is gone (CURRENT, MANIFEST, an SST)."""
    text = str(err)
    return (
        text.startswith("Corruption")
        or "does not exist (create_if_missing is false)" in text
        or ("No such file or directory" in text and "IO error" in text)
    )


def short(err: BaseException) -> str:
    """An error's text on one line, cut to 300 characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def open_db(path: Path, access: AccessType, *, create: bool, state_dir: Path) -> Rdict:
    """Open the database at ``path``, creating it only with ``create``. Raises
    ``StateDirInUse``, ``StoreCorrupt`` or ``StoreError``."""
    try:
        return Rdict(str(path), options=options(not create), access_type=access)
    except Exception as err:
        if _is_lock_error(err):
            raise StateDirInUse(
                f"state dir {state_dir} is in use by another reconciler process"
            ) from err
        if is_corruption(err):
            raise StoreCorrupt(f"store {path} is corrupt: {short(err)}") from err
        raise StoreError(f"cannot open store {path}: {short(err)}") from err


def reopen(path: Path) -> Rdict:
    """Open the existing database at ``path`` read-write again (after a failed write left
    its handle stuck). Raises RocksDB's error as it is."""
    return Rdict(str(path), options=options(True), access_type=AccessType.read_write())


def load_ids(db: Rdict, path: Path) -> set[str]:
    """The ids of the stored tasks. Raises ``StoreCorrupt`` or ``StoreError``."""
    try:
        return {k[len(TASK) :].decode() for k in keys(db, TASK)}
    except UnicodeDecodeError as err:
        raise StoreCorrupt(f"store {path} has an undecodable task key") from err
    except Exception as err:
        if is_corruption(err):
            raise StoreCorrupt(f"store {path} is corrupt: {short(err)}") from err
        raise StoreError(f"cannot read store {path}: {short(err)}") from err


def verify_rows(db: Rdict, path: Path) -> None:
    """Decode every row once, so that damage is found at open, not mid-run."""
    try:
        for key, raw in items(db, b""):
            if key.startswith("t/"):
                task_from_dict(loads(raw))
            elif key.startswith("s/"):
                status_from(raw)
            elif key.startswith("m/"):
                loads(raw)
    except StoreError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as err:
        raise StoreCorrupt(f"store {path} has a row that does not decode: {err}") from err
    except Exception as err:
        if is_corruption(err):
            raise StoreCorrupt(f"store {path} is corrupt: {short(err)}") from err
        raise StoreError(f"cannot read store {path}: {short(err)}") from err


def check_format(db: Rdict, path: Path, *, read_only: bool, write: Write) -> None:
    """Mark a new store with the format version (and adopt-pending), migrate an older one.
    Raises ``StoreVersionError``, ``StoreCorrupt``, and what ``write`` raises."""
    raw = db.get(FORMAT_KEY)
    if raw is None:
        empty = not any(True for _ in keys(db, b""))
        if empty:
            if not read_only:
                # A new store: its format and the duty to adopt what the runtime already
                # runs are written together, so no crash can leave a new store that looks
                # like an established one.
                batch = WriteBatch(raw_mode=True)
                batch.put(FORMAT_KEY, dumps(FORMAT_VERSION))
                batch.put(META + ADOPT_PENDING.encode(), dumps("created"))
                write(batch)
            return
        version = 0
    else:
        try:
            version = int(loads(raw))
        except (ValueError, TypeError) as err:
            raise StoreCorrupt(f"store {path} has an unreadable format version") from err
    if version > FORMAT_VERSION:
        raise StoreVersionError(
            f"store {path} has format version {version}, newer than this agent "
            f"supports ({FORMAT_VERSION}); upgrade reconciler or point it at another "
            f"state dir"
        )
    if version < FORMAT_VERSION:
        if read_only:
            raise StoreVersionError(
                f"store {path} has format version {version}; run the agent once to "
                f"migrate it to {FORMAT_VERSION}"
            )
        _migrate(db, path, version, write)


def _migrate(db: Rdict, path: Path, version: int, write: Write) -> None:
    db.flush()
    backup = path.with_name(f"{path.name}.v{version}.{int(time.time())}.bak")
    shutil.copytree(path, backup, ignore=shutil.ignore_patterns("LOCK"))
    while version < FORMAT_VERSION:
        MIGRATIONS[version](db)
        version += 1
        batch = WriteBatch(raw_mode=True)
        batch.put(FORMAT_KEY, dumps(version))
        write(batch)

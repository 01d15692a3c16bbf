"""The store's rows: the key layout, and how each value is encoded.

Following SwarmKit's worker storage (``agent/storage.go``), a task's data (status stripped),
its status and its assigned flag are kept apart, so the frequent status writes never rewrite
the spec. Everything lives in RocksDB's default column family under key prefixes, which keeps
one assignment a single atomic ``WriteBatch``:

    t/<id>   task JSON without status        s/<id>  status as a JSON row
    a/<id>   assigned flag (present = true)  m/<key> metadata JSON (format version, the
                                                      local manager's state, the node id...)

Values are compact JSON; a status is a positional row rather than an object, since statuses
are the hot write path. ``RocksStore`` (``reconciler.store.rocks``) reads and writes these rows;
opening a store (``reconciler.store.opening``) decodes every one of them once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from rocksdict import Rdict, ReadOptions

from reconciler.core.codec import compact
from reconciler.core.model import TaskState, TaskStatus

__all__ = [
    "ASSIGNED",
    "FORMAT_KEY",
    "META",
    "PROBE_KEY",
    "STATUS",
    "TASK",
    "dumps",
    "items",
    "keys",
    "loads",
    "status_bytes",
    "status_from",
]

TASK = b"t/"
STATUS = b"s/"
ASSIGNED = b"a/"
META = b"m/"
FORMAT_KEY = META + b"format"
PROBE_KEY = META + b"probe"

dumps = compact
"""Every row is written by the one compact encoder (``reconciler.core.codec.compact``)."""


def loads(raw: bytes) -> Any:
    return json.loads(raw)


def status_bytes(status: TaskStatus) -> bytes:
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


def status_from(raw: bytes) -> TaskStatus:
    state, ts, message, err, container_id, pid, exit_code, *flags = json.loads(raw)
    return TaskStatus(
        TaskState(state), ts, message, err, container_id, pid, exit_code, bool(flags and flags[0])
    )


def keys(db: Rdict, prefix: bytes) -> Iterator[bytes]:
    """Every key that starts with ``prefix``, in key order."""
    it = db.iter(ReadOptions())
    it.seek(prefix)
    while it.valid():
        key = it.key()
        if not key.startswith(prefix):
            break
        yield key
        it.next()


def items(db: Rdict, prefix: bytes) -> Iterator[tuple[str, bytes]]:
    """Every row whose key starts with ``prefix``, in key order, keys without the prefix."""
    it = db.iter(ReadOptions())
    it.seek(prefix)
    n = len(prefix)
    while it.valid():
        key = it.key()
        if not key.startswith(prefix):
            break
        yield key[n:].decode(), it.value()
        it.next()

"""The state directory: its lock, its node id and where the store lives in it.

``<state-dir>`` belongs to one agent at a time. That is enforced here with an ``flock`` on
``<state-dir>/lock``, taken before the store is opened and held for the agent's whole life
(the kernel drops it when the process dies, however it dies). RocksDB's own ``LOCK`` file is
not enough: moving a corrupt store aside, or reopening it after a full disk, happens while no
RocksDB handle is open, and a second agent must not slip in at that moment.

The node id lives apart from the store, in ``<state-dir>/node-id``, so that a store rebuilt
from the runtime still recognises this node's containers.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path

from reconciler.core.errors import StateDirInUse

__all__ = ["StateDirLock", "load_node_id", "prepare_state_dir"]


def prepare_state_dir(state_dir: Path) -> None:
    """Create the state dir (mode 0700) if needed and make sure its mode is 0700."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)


class StateDirLock:
    """An exclusive ``flock`` on ``<state-dir>/lock``, held until ``release()`` or exit."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting. Raises ``StateDirInUse`` if another process holds
        it, ``OSError`` if the file cannot be opened. Idempotent."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirInUse(
                f"state dir {self.path.parent} is in use by another reconciler process"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Drop the lock. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def load_node_id(state_dir: Path, explicit: str | None) -> str:
    """The node id: ``explicit``, else the one kept in the state dir, else a new one (kept)."""
    if explicit:
        return explicit
    path = state_dir / "node-id"
    try:
        existing = path.read_text().strip()
        if existing:
            return existing
    except FileNotFoundError:
        pass
    node_id = uuid.uuid4().hex[:16]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node_id + "\n")
    os.replace(tmp, path)
    return node_id

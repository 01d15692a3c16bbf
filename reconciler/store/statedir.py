"""The state directory: its lock, its node id and where the store lives in it.

``<state-dir>`` belongs to one agent at a time. That is enforced here with an ``flock`` on
``<state-dir>/lock``, taken before the store is opened and held for the agent's whole life
(the kernel drops it when the process dies, however it dies). RocksDB's own ``LOCK`` file is
not enough: moving a corrupt store aside, or reopening it after a full disk, happens while no
RocksDB handle is open, and a second agent must not slip in at that moment.

The node id lives apart from the store, in ``<state-dir>/node-id``, so that a store rebuilt
from the runtime still recognises this node's containers.

**Whose it is.** Whoever controls the state dir controls what the agent believes it runs, and a
link in it could have the agent write or ``chmod`` someone else's file. So ``prepare_state_dir``
opens the directory itself with ``O_NOFOLLOW | O_DIRECTORY`` (a symlink is refused, not
followed), checks on the open descriptor that its owner is the agent's effective user, and only
then sets its mode to 0700 through that descriptor (``fchmod``). Anything else is
``StateDirRefused``, which ``reconciler run`` reports with exit code 1. Once the directory is
the agent's and 0700, nobody else can plant anything in it; the files the agent writes there
are still never opened through a link (``O_NOFOLLOW``; the node id by the one atomic write,
``reconciler.spec.apply.write_atomically``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import stat
import uuid
from pathlib import Path

from reconciler.core.errors import StateDirInUse, StoreError
from reconciler.spec.apply import write_atomically

__all__ = [
    "StateDirLock",
    "StateDirRefused",
    "check_state_dir",
    "load_node_id",
    "prepare_state_dir",
    "user_name",
]

STATE_DIR_MODE = 0o700
NODE_ID_MODE = 0o600


class StateDirRefused(StoreError):
    """The state dir is a symlink, not a directory, or owned by another user."""


def user_name(uid: int) -> str:
    """``uid 1000 (alice)``, or ``uid 1000`` for a uid without a name."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def prepare_state_dir(state_dir: Path) -> None:
    """Create the state dir (mode 0700) if needed; check that it is a directory, not a link,
    owned by the agent's user; then set its mode to 0700. Raises ``StateDirRefused``."""
    try:
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(state_dir, STATE_DIR_MODE)
    except FileExistsError:
        pass  # checked below, whatever it is
    except OSError as err:
        raise StateDirRefused(f"state dir {state_dir} cannot be created: {err}") from err
    fd = _open_directory(state_dir)
    try:
        _check_owner(fd, state_dir, "the agent's user")
        os.fchmod(fd, STATE_DIR_MODE)
    finally:
        os.close(fd)


def check_state_dir(state_dir: Path) -> None:
    """For the commands that only read the store (``ps``, ``inspect``): the state dir, if it
    exists, must be a directory, not a link, owned by this user and not writable by group or
    others. Opening even a read-only store writes into it (rocksdict rewrites its
    ``rocksdict-config.json``), so root must not do that in a directory another user controls.
    Nothing is created or changed. Raises ``StateDirRefused``."""
    if not os.path.lexists(state_dir):
        return  # opening the store says there is none
    fd = _open_directory(state_dir)
    try:
        mode = _check_owner(fd, state_dir, "this user")
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise StateDirRefused(
                f"state dir {state_dir} is writable by group or others (mode {mode:04o}): "
                f"refusing it (chmod 0700 {state_dir})"
            )
    finally:
        os.close(fd)


def _check_owner(fd: int, state_dir: Path, whose: str) -> int:
    """Raise ``StateDirRefused`` unless the effective user owns the open directory; its
    permission bits otherwise."""
    st = os.fstat(fd)
    owner, me = st.st_uid, os.geteuid()
    if owner != me:
        raise StateDirRefused(
            f"state dir {state_dir} is owned by {user_name(owner)}, not by {whose} "
            f"{user_name(me)}: refusing it (run as {user_name(owner)}, give the directory to "
            f"{user_name(me)}, or use another --state-dir)"
        )
    return stat.S_IMODE(st.st_mode)


def _open_directory(state_dir: Path) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(state_dir, flags)
    except OSError as err:
        if os.path.islink(state_dir):  # Linux says ENOTDIR, or ELOOP
            why = f"is a symlink (to {os.readlink(state_dir)}); give the real path instead"
        elif err.errno in (errno.ENOTDIR, errno.ELOOP):
            why = "is not a directory"
        else:
            why = f"cannot be opened: {err.strerror or err}"
        raise StateDirRefused(f"state dir {state_dir} {why}") from err


class StateDirLock:
    """An exclusive ``flock`` on ``<state-dir>/lock``, held until ``release()`` or exit."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting. Raises ``StateDirInUse`` if another process holds
        it, ``StateDirRefused`` if the file cannot be opened (a link is not followed).
        Idempotent."""
        if self._fd is not None:
            return
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as err:
            raise StateDirRefused(f"cannot open the state dir's lock {self.path}: {err}") from err
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
    existing = _read_node_id(path)
    if existing:
        return existing
    node_id = uuid.uuid4().hex[:16]
    write_atomically(path, f"{node_id}\n".encode(), mode=NODE_ID_MODE)
    return node_id


def _read_node_id(path: Path) -> str | None:
    """The kept node id, or None if there is none. A link at ``path`` is not followed: it is
    ``StateDirRefused``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StateDirRefused(f"cannot read the node id from {path}: {err}") from err
    with os.fdopen(fd, "rb") as f:
        return f.read(4096).decode(errors="replace").strip() or None

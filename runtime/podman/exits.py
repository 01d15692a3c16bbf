"""conmon's exit directory, watched with inotify: a container's exit seen the moment it happens.

This module owns the one inotify instance of the runtime and the watches on podman's exit
directories (one watch per directory, however many containers are waited on). conmon writes a
container's exit file there, named by the container's id, as soon as the container's main
process dies; podman's ``died`` event comes 100-300 ms later (see ``runtime.podman.exitrule``,
which decides what an exit file is worth; this module only reports that one appeared).

Where the directory is: podman 4.3 names it neither in ``podman info`` nor in an inspect, but
conmon is started with ``--exit-dir DIR``, so it is read from ``/proc/<State.ConmonPid>/cmdline``
of the container being waited on. Nothing is hard-coded.

Why inotify through ``ctypes`` rather than ``watchfiles``: watchfiles hands changes over in
steps (it wakes every ``step`` ms to look for them), which costs the idle agent wake-ups and
adds up to a step of delay. The inotify descriptor here is read by the event loop itself
(``loop.add_reader``): no thread, no timer, nothing runs until a file appears.

Degrading: where the directory cannot be watched (no inotify, conmon's command line unreadable
or without ``--exit-dir``, the directory absent or unreadable), ``subscribe`` says so by
returning False, the first such failure is logged once as a warning, and exits are judged from
podman's events alone, as before. A directory that goes away (podman's tmpdir removed) drops
its watch; the next subscription adds it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

WATCH_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
"""A file written in place, or renamed into the directory (conmon writes a temporary file and
renames it); the directory itself going away."""

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
READ_SIZE = 64 * 1024


class InotifyError(OSError):
    """inotify is not available, or a directory could not be watched."""


class _Inotify:
    """The three inotify calls of libc (Linux only)."""

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._init1 = libc.inotify_init1
            self._add = libc.inotify_add_watch
            self._rm = libc.inotify_rm_watch
        except (OSError, AttributeError) as err:
            raise InotifyError(errno.ENOSYS, f"inotify is not available: {err}") from None
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = int(self._init1(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            code = ctypes.get_errno()
            raise InotifyError(code, f"inotify_init1: {os.strerror(code)}")
        self.fd = fd

    def add(self, path: str) -> int:
        wd = int(self._add(self.fd, os.fsencode(path), WATCH_MASK))
        if wd < 0:
            err = ctypes.get_errno()
            raise InotifyError(err, os.strerror(err), path)
        return wd

    def remove(self, wd: int) -> None:
        self._rm(self.fd, wd)

    def close(self) -> None:
        os.close(self.fd)


def parse_events(data: bytes) -> Iterator[tuple[int, int, str]]:
    """The ``(wd, mask, name)`` of each event in one read of an inotify descriptor."""
    offset = 0
    while offset + _EVENT.size <= len(data):
        wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
        start = offset + _EVENT.size
        name = data[start : start + length].split(b"\0", 1)[0]
        offset = start + length
        yield wd, mask, os.fsdecode(name)


def exit_dir_of(conmon_pid: int, *, proc: Path = Path("/proc")) -> Path:
    """The ``--exit-dir`` conmon ``conmon_pid`` was started with.

    Raises ``OSError`` when its command line cannot be read, ``ValueError`` when it names no
    exit directory."""
    if conmon_pid <= 0:
        raise ValueError("podman names no conmon process for the container")
    args = (proc / str(conmon_pid) / "cmdline").read_bytes().split(b"\0")
    for i, arg in enumerate(args):
        if arg == b"--exit-dir" and i + 1 < len(args) and args[i + 1]:
            return Path(os.fsdecode(args[i + 1]))
        if arg.startswith(b"--exit-dir="):
            return Path(os.fsdecode(arg.split(b"=", 1)[1]))
    raise ValueError(f"conmon (pid {conmon_pid}) was started without --exit-dir")


class ExitWatch:
    """Tells a subscriber when its container's exit file appears. Lives on one event loop."""

    def __init__(self, *, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._inotify: _Inotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wds: dict[str, int] = {}  # directory -> watch descriptor
        self._dirs: dict[int, str] = {}  # watch descriptor -> directory
        self._subs: dict[tuple[str, str], Callable[[], None]] = {}  # (dir, container id) -> fn
        self._warned = False
        self._closed = False
        self.degraded: str | None = None
        """Why the last subscription could not be watched (None while watching works)."""
        self.files_seen = 0
        """Exit files told to a subscriber."""
        self.early_exits = 0
        """Exits judged from an exit file before podman's events told of them."""

    @property
    def directories(self) -> list[str]:
        """The exit directories being watched."""
        return list(self._wds)

    @contextlib.contextmanager
    def subscribe(
        self, container_id: str, conmon_pid: int, fn: Callable[[], None]
    ) -> Iterator[bool]:
        """Call ``fn`` on the loop, once, when the exit file of ``container_id`` appears, for
        the duration of the ``with`` block; at once (soon) if it is already there.

        Yields whether the exit file is watched; False (with one warning logged for the first
        such failure) when it cannot be, and ``fn`` is then never called. Never raises for a
        directory that cannot be watched. Must be entered on the running loop."""
        key = self._add(container_id, conmon_pid, fn)
        try:
            yield key is not None
        finally:
            if key is not None:
                self._subs.pop(key, None)

    def count_early_exit(self) -> None:
        """Note one exit judged from its exit file (for tests and the benchmark)."""
        self.early_exits += 1

    def close(self) -> None:
        """Drop every watch and the inotify descriptor. Idempotent."""
        self._closed = True
        self._subs.clear()
        self._wds.clear()
        self._dirs.clear()
        ino, self._inotify = self._inotify, None
        if ino is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(ino.fd)
            ino.close()

    # ---------------------------------------------------------------------------- watching

    def _add(
        self, container_id: str, conmon_pid: int, fn: Callable[[], None]
    ) -> tuple[str, str] | None:
        if self._closed or not container_id:
            return None
        try:
            directory = str(exit_dir_of(conmon_pid, proc=self._proc))
            self._watch_dir(directory)
        except (OSError, ValueError) as err:
            self._degrade(str(err))
            return None
        self.degraded = None
        key = (directory, container_id)
        self._subs[key] = fn
        if os.path.exists(os.path.join(directory, container_id)):
            asyncio.get_running_loop().call_soon(self._fire, key)
        return key

    def _watch_dir(self, directory: str) -> None:
        if directory in self._wds:
            return
        if self._inotify is None:
            ino = _Inotify()
            loop = asyncio.get_running_loop()
            loop.add_reader(ino.fd, self._readable)
            self._inotify, self._loop = ino, loop
        wd = self._inotify.add(directory)
        self._wds[directory] = wd
        self._dirs[wd] = directory
        log.debug("watching podman's exit directory %s", directory)

    def _degrade(self, why: str) -> None:
        self.degraded = why
        if self._warned:
            log.debug("exit directory not watched: %s", why)
            return
        self._warned = True
        log.warning(
            "cannot watch podman's exit directory (%s): container exits are judged from "
            "podman's events alone, which tell of them some 100-300 ms later",
            why,
        )

    def _readable(self) -> None:
        ino = self._inotify
        if ino is None:
            return
        try:
            data = os.read(ino.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as err:
            log.warning("reading the exit directory's inotify events failed: %s", err)
            return
        for wd, mask, name in parse_events(data):
            if mask & IN_Q_OVERFLOW:
                self._rescan()
            elif mask & IN_IGNORED or mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                self._forget(wd)
            else:
                directory = self._dirs.get(wd)
                if directory is not None and name:
                    self._fire((directory, name))

    def _fire(self, key: tuple[str, str]) -> None:
        fn = self._subs.pop(key, None)
        if fn is not None:
            self.files_seen += 1
            fn()

    def _rescan(self) -> None:
        """Events were dropped (the queue overflowed): look for every awaited exit file."""
        for key in list(self._subs):
            if os.path.exists(os.path.join(*key)):
                self._fire(key)

    def _forget(self, wd: int) -> None:
        directory = self._dirs.pop(wd, None)
        if directory is None:
            return
        self._wds.pop(directory, None)
        if self._inotify is not None:
            with contextlib.suppress(OSError):
                self._inotify.remove(wd)
        log.info(
            "podman's exit directory %s went away; its exits are judged from events", directory
        )
        for key in [k for k in self._subs if k[0] == directory]:
            del self._subs[key]

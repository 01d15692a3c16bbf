"""OOM kills from the kernel log: the one source that sees every kill, whenever it happens.

This module owns noticing that the kernel's OOM killer killed a process of a container. podman
4.3 cannot be asked: under runc it reports ``OOMKilled: false`` for a container killed at its
memory limit. The cgroup's own counters are no better a source here:

* the counter (``memory.oom_control``'s ``oom_kill`` in cgroup v1, ``memory.events`` in v2) is
  exact while the cgroup lives, but the cgroup is removed as soon as the container's last
  process exits, which is exactly what happens when the main process is the one killed;
* cgroup v1's eventfd notification fires before the kill, several times per kill, and once more
  when the cgroup is removed, so it counts nothing by itself;
* nothing can be registered before the agent has first looked at a new container, so a process
  that allocates too much in its first milliseconds would be missed.

The kernel writes one line per kill to its log, naming the killed process and its memory cgroup,
whether the container lives on or not (cAdvisor counts OOM kills the same way). Since Linux 4.19
the line reads::

    oom-kill:constraint=CONSTRAINT_MEMCG,...,oom_memcg=/libpod_parent/libpod-<id>,
             task_memcg=/libpod_parent/libpod-<id>,task=tail,pid=532,uid=0

A container's id is the last 64-hex-digit name in ``task_memcg``, for podman's cgroupfs and
systemd layouts, in v1 and v2 alike. A kill by the host-wide OOM killer (the whole host out of
memory) counts too: it is still a process of the container killed for memory.

``KernelLogOoms`` reads ``/dev/kmsg`` without blocking, on the event loop, from its end (kills
before the agent started are not counted). Each read returns one record; ``EPIPE`` means records
were overwritten before they were read (a flood of kernel messages), which is logged. Reading
``/dev/kmsg`` needs root, or ``CAP_SYSLOG`` where ``kernel.dmesg_restrict`` is 1; without it the
agent logs one warning and counts no OOM kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.supervisor import describe_error

log = logging.getLogger(__name__)

KMSG = Path("/dev/kmsg")
RECORD_MAX = 1 << 14
"""Larger than any kernel log record (the kernel caps them near 8 KiB)."""
BATCH = 256
"""Records read per wake-up of the event loop."""

_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
_PREFIX = "oom-kill:"


@dataclass(frozen=True, slots=True)
class OomKill:
    """One process killed by the kernel's OOM killer, in the container with this id."""

    container_id: str
    pid: int | None  # as the host sees it
    process: str  # the killed process's command name


def parse_record(record: str) -> OomKill | None:
    """The OOM kill a kernel log record reports, or None for any other record.

    Takes a ``/dev/kmsg`` record (``PRIO,SEQ,USEC,FLAGS;MESSAGE``) or a bare message line.
    """
    head, sep, message = record.partition(";")
    if not sep or "," not in head:
        message = record
    message = message.strip()
    if not message.startswith(_PREFIX):
        return None
    fields: dict[str, str] = {}
    for item in message[len(_PREFIX) :].split(","):
        key, _, value = item.partition("=")
        fields.setdefault(key.strip(), value.strip())
    memcg = fields.get("task_memcg") or fields.get("oom_memcg") or ""
    ids = _CONTAINER_ID.findall(memcg)
    if not ids:
        return None  # a process outside any container
    pid = fields.get("pid", "")
    return OomKill(ids[-1], int(pid) if pid.isdigit() else None, fields.get("task", ""))


class KernelLogOoms:
    """Follows the kernel log and calls ``on_kill`` for every OOM kill in a container.

    ``start()`` and ``close()`` run on the event loop, and so does ``on_kill``.
    """

    def __init__(self, on_kill: Callable[[OomKill], None], *, path: Path = KMSG) -> None:
        self._on_kill = on_kill
        self._path = path
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._partial = b""

    @property
    def reading(self) -> bool:
        return self._fd is not None

    def start(self) -> bool:
        """Open the log at its end and follow it. Returns False, after one warning, when the
        log cannot be read. Idempotent."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            log.warning(
                "OOM kills are not counted: cannot read the kernel log path=%s err=%s "
                "(the agent needs root, or CAP_SYSLOG where kernel.dmesg_restrict=1)",
                self._path,
                err.strerror or err,
            )
            return False
        with contextlib.suppress(OSError):  # a pipe (in tests) cannot seek
            os.lseek(fd, 0, os.SEEK_END)
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)
        return True

    def close(self) -> None:
        """Stop following the log. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(fd)
        os.close(fd)

    def _readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        # A bounded batch per wake-up, so a flood of kernel messages cannot hold the loop;
        # the loop calls again while records remain.
        for _ in range(BATCH):
            try:
                data = os.read(fd, RECORD_MAX)
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno == errno.EPIPE:
                    log.warning("kernel log records were overwritten before being read")
                    continue
                log.warning("OOM kills are no longer counted: the kernel log failed err=%s", err)
                self.close()
                return
            if not data:  # end of file: only a pipe or a plain file ends
                self.close()
                return
            self._take(data)

    def _take(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if not line or line[:1] == b" ":
                continue  # a record's continuation (key=value) lines
            kill = parse_record(line.decode("utf-8", "replace"))
            if kill is not None:
                try:
                    self._on_kill(kill)
                except Exception as err:  # one bad kill must not stop the reader
                    log.warning("handling an OOM kill failed err=%s", describe_error(err))

"""The file session: the desired directory as this node's manager.

``FileSession`` implements ``reconciler.core.session.Session`` for the offline manager. It owns the
watching; the rules of what a valid directory is live in ``reconciler.spec``.

Level-triggered by design: whatever the event, the whole directory is re-read and validated,
and the result is a full ``DesiredTasks`` (or ``DesiredInvalid`` with the problem lines). Events
only say *when* to look, never *what* changed, so a lost or coalesced event cannot leave the
agent with a partial view. Duplicates are suppressed: a message equal to the last one sent is
not sent again (receivers are idempotent anyway).

- **Watching.** ``watchfiles.awatch`` on the directory (not recursive), with events for files
  that do not count (swap files, backups) filtered out. A burst of events is read once it has
  been quiet for ``step_ms``, or after ``debounce_ms`` of events that keep coming. The step is
  watchfiles' own 50 ms, for what it costs at idle: its watcher thread wakes every step and
  takes the interpreter lock to look at the stop event, 0.10-0.13% of a core at 50 ms, 0.46% at
  10 ms (measured on the VM of the README's performance table). A smaller step reads a write
  some 40 ms sooner, once per change; the idle cost is paid all the time.
- **Missed events.** The watcher wakes every ``poll_interval`` seconds even without events. The
  first such wake-up after a watch starts re-reads once, which covers changes made between the
  initial read and the watch being set up; later ones re-read every ``rescan_interval``
  seconds, a cheap safety net for changes the kernel does not report (``chmod`` on some
  filesystems, overflowed queues). Each wake-up also checks that the directory is still the
  one being watched: one that was removed, or replaced by a rename, restarts the watch.
- **Watch failures.** If the kernel refuses a watch (inotify limits, exotic filesystems), the
  session logs a warning and switches to watchfiles' polling mode; it never stops delivering.
- **A missing directory** is reported as invalid and then polled for every ``poll_interval``
  seconds until it appears; no watch is held on it meanwhile.
- **Stopping.** ``close()`` sets the watcher's stop event; the watcher thread sees it within its
  50 ms step and ``messages()`` ends. Cancelling the consumer instead also works but may take up
  to ``poll_interval`` seconds, the longest the watch thread blocks.

Reading and validating run in a worker thread (``asyncio.to_thread``) so a large file set never
stalls the event loop.

**Never dies on input.** Whatever the directory holds (a hostile file, a symlink swapped under
it, a file that makes a parser fail in a way nobody foresaw), a read ends as a ``DesiredTasks``
or a ``DesiredInvalid`` with bounded problem lines; no exception from reading reaches the
stream. The reader's own limits (file size, nesting, values, unsafe permissions on the way to
the directory) live in ``reconciler.spec``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path

from watchfiles import Change, awatch

from reconciler.core.model import NodeDescription
from reconciler.core.session import (
    DesiredInvalid,
    DesiredTasks,
    NamedStatus,
    SessionMessage,
)
from reconciler.spec.loader import is_desired_file_name, load_directory
from reconciler.spec.problems import DesiredStateError, Problem, describe

__all__ = ["FileSession", "read_desired"]

log = logging.getLogger(__name__)


def read_desired(desired_dir: Path) -> DesiredTasks | DesiredInvalid:
    """Read and validate the directory once, as the message the session would send.

    Blocking file I/O. ``DesiredTasks`` lists the tasks sorted by name and is always full.
    Never raises: anything unforeseen becomes a ``DesiredInvalid`` naming the directory.
    """
    try:
        desired = load_directory(desired_dir)
    except DesiredStateError as e:
        return DesiredInvalid(errors=e.lines())
    except Exception as e:  # load_directory promises otherwise; the session must outlive a bug
        return _unreadable(desired_dir, e)
    tasks = tuple(desired.tasks[name] for name in sorted(desired.tasks))
    return DesiredTasks(tasks=tasks, full=True)


def _unreadable(desired_dir: Path, e: BaseException) -> DesiredInvalid:
    problem = Problem(os.fspath(desired_dir), 0, "directory", f"could not be read ({describe(e)})")
    return DesiredInvalid(errors=(str(problem),))


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the directory, or None when it is not there (or not a directory)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isdir(path):
        return None
    return (st.st_dev, st.st_ino)


class FileSession:
    """The desired directory as a ``Session``: one full message per (debounced) change."""

    def __init__(
        self,
        desired_dir: Path,
        *,
        debounce_ms: int = 50,
        step_ms: int = 50,
        poll_interval: float = 1.0,
        rescan_interval: float = 30.0,
    ) -> None:
        self._dir = Path(desired_dir)
        self._abs_dir = os.path.abspath(self._dir)
        self._debounce_ms = debounce_ms
        self._step_ms = max(1, min(step_ms, debounce_ms))
        self._poll_interval = poll_interval
        self._rescan_interval = rescan_interval
        self._stop = asyncio.Event()
        self._last: SessionMessage | None = None
        self._started = False
        self._force_polling = False

    @property
    def desired_dir(self) -> Path:
        return self._dir

    @property
    def connected(self) -> bool:
        """Always True: the directory is the manager, and it is always "reachable"."""
        return True

    async def report(self, statuses: Mapping[str, NamedStatus]) -> None:
        """No-op: a directory takes no statuses (they live in the store and ``ps``)."""

    async def heartbeat(self, node: NodeDescription, *, ready: bool) -> None:
        """No-op: nobody watches this node's heartbeat in offline mode."""

    async def close(self) -> None:
        """Stop watching; ``messages()`` ends soon after. Idempotent."""
        self._stop.set()

    async def messages(self) -> AsyncGenerator[SessionMessage, None]:
        """The initial read, then one message per change that alters the result.

        Every message is a full ``DesiredTasks`` or a ``DesiredInvalid``. Ends when ``close()``
        is called. One iteration at a time; a new one (after the previous ended or failed)
        starts again with a full read. Never raises for bad input.
        """
        if self._started:
            raise RuntimeError("FileSession.messages() is already being iterated")
        self._started = True
        try:
            async for msg in self._messages():
                yield msg
        finally:
            self._started = False

    async def _messages(self) -> AsyncGenerator[SessionMessage, None]:
        self._last = None  # a new iteration (a restarted loop) starts with a full message
        msg = await self._read()
        if msg is not None:
            yield msg
        while not self._stop.is_set():
            ident = _identity(self._dir)
            if ident is None:
                await self._sleep(self._poll_interval)
                if self._stop.is_set():
                    break
                msg = await self._read()
                if msg is not None:
                    yield msg
                continue
            async with contextlib.aclosing(self._watch(ident)) as watched:
                async for msg in watched:
                    yield msg

    async def _watch(self, ident: tuple[int, int]) -> AsyncGenerator[SessionMessage, None]:
        """Watch the directory while it stays the same directory; yield changed results."""
        loop = asyncio.get_running_loop()
        caught_up = False
        last_scan = loop.time()
        directory = self._abs_dir

        def wanted(_change: Change, path: str) -> bool:
            return (
                is_desired_file_name(os.path.basename(path)) or os.path.abspath(path) == directory
            )

        try:
            changes = awatch(
                self._dir,
                watch_filter=wanted,
                debounce=self._debounce_ms,
                step=self._step_ms,
                stop_event=self._stop,
                rust_timeout=max(1, int(self._poll_interval * 1000)),
                yield_on_timeout=True,
                recursive=False,
                ignore_permission_denied=True,
                force_polling=self._force_polling or None,
                poll_delay_ms=max(50, self._debounce_ms),
            )
            async with contextlib.aclosing(changes):
                async for batch in changes:
                    now = loop.time()
                    moved = _identity(self._dir) != ident
                    if batch or moved or not caught_up or now - last_scan >= self._rescan_interval:
                        caught_up = True
                        last_scan = now
                        msg = await self._read()
                        if msg is not None:
                            yield msg
                    if moved:
                        return
        except Exception as e:
            # The watch failed: the directory vanished as it started (the caller then polls
            # for it), or the kernel refused a watch (inotify limits): fall back to
            # watchfiles' polling. Either way, report what a read sees now.
            if _identity(self._dir) is not None and not self._force_polling:
                self._force_polling = True
                log.warning(
                    "desired directory watch failed, polling instead: dir=%s error=%r",
                    self._dir,
                    e,
                )
            msg = await self._read()
            if msg is not None:
                yield msg
            await self._sleep(self._poll_interval)

    async def _read(self) -> SessionMessage | None:
        """Read the directory; the message, or None when it equals the last one sent."""
        try:
            msg: SessionMessage = await asyncio.to_thread(read_desired, self._dir)
        except Exception as e:  # the thread could not run: still a message, never a crash
            msg = _unreadable(self._dir, e)
            log.warning("desired directory read failed: %s", msg.errors[0])
        if msg == self._last:
            return None
        self._last = msg
        return msg

    async def _sleep(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

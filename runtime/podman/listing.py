"""One ``list`` call answering many controllers' first look at their containers.

After an agent restart every task manager re-attaches to its container at once: each ``wait``
must learn its container's state once before it sleeps on the event stream. One inspect per
container would queue a hundred round trips in the quick lane (and the node description, which
readiness waits for, behind them). Instead the first looks that arrive in one event-loop turn
share one list call of this node's containers (``Listing.look``).

A look is never answered by a list that began before it was asked for: the caller registers
its event watch first and then looks, so no exit can fall between what the list saw and the
first event the watch gets. A look asked for while a list is already in flight waits for the
next one.

A list entry carries what the first look needs (id, state, exit code, pid, start time to the
second), not the health log: health checks keep their own calls. Nor conmon's pid, which the
exit-file watch (``exits``) needs: a running container's main process is conmon's child
(conmon reaps it), so ``parent_pid`` reads it from ``/proc``. A container missing from the
list is gone (the list asks for every container with this node's label, running or not).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Listed", "Listing", "parent_pid"]

ListCall = Callable[[], Awaitable[list[dict[str, Any]]]]


@dataclass(frozen=True, slots=True)
class Listed:
    """What one list entry says of a container (libpod's list format)."""

    id: str
    state: str  # running, exited, created, paused, stopping, ...
    exit_code: int
    pid: int | None
    started_ns: int  # 0 if it never started; podman lists it to the second

    @property
    def running(self) -> bool:
        return self.state in ("running", "paused", "stopping")

    @classmethod
    def from_list(cls, entry: dict[str, Any]) -> Listed:
        code = entry.get("ExitCode")
        pid = entry.get("Pid")
        started = entry.get("StartedAt")
        return cls(
            id=str(entry.get("Id") or ""),
            state=str(entry.get("State") or ""),
            exit_code=code if isinstance(code, int) else 0,
            pid=pid if isinstance(pid, int) and pid > 0 else None,
            started_ns=int(started) * 1_000_000_000
            if isinstance(started, int | float) and started > 0
            else 0,
        )


def parent_pid(pid: int | None, *, proc: Path = Path("/proc")) -> int:
    """The parent of process ``pid`` (conmon, for a container's main process), or 0 when it
    cannot be read. Never raises."""
    if not pid or pid <= 0:
        return 0
    try:
        stat = (proc / str(pid) / "stat").read_bytes()
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after
        # its last ")".
        fields = stat.rsplit(b")", 1)[1].split()
        return int(fields[1])
    except (OSError, IndexError, ValueError):
        return 0


class Listing:
    """Batches first looks: every look asked for in one loop turn shares one list call."""

    def __init__(self, list_call: ListCall) -> None:
        self._list = list_call
        self._next: asyncio.Future[dict[str, Listed]] | None = None
        self.calls = 0
        """How many list calls were made (for tests and the bench)."""

    async def look(self, name: str) -> Listed | None:
        """The container named ``name`` as a list call begun after this call saw it, or None
        when the list does not hold it. Raises what the list call raises (``TemporaryError``
        when podman does not answer). Cancelling one look never cancels the shared call."""
        batch = self._next
        if batch is None:
            batch = asyncio.get_running_loop().create_future()
            self._next = batch
            asyncio.get_running_loop().create_task(self._run(batch), name="podman first looks")
        by_name = await asyncio.shield(batch)
        return by_name.get(name)

    async def _run(self, batch: asyncio.Future[dict[str, Listed]]) -> None:
        # Runs on the loop turn after the first look of the batch: every look asked for until
        # now joins it; later ones start the next batch.
        self._next = None
        self.calls += 1
        try:
            entries = await self._list()
        except asyncio.CancelledError:
            batch.cancel()
            raise
        except Exception as err:
            batch.set_exception(err)
            batch.exception()  # marked retrieved: every look may have been cancelled
            return
        by_name: dict[str, Listed] = {}
        for entry in entries:
            listed = Listed.from_list(entry)
            for n in entry.get("Names") or ():
                by_name[str(n).lstrip("/")] = listed
        batch.set_result(by_name)

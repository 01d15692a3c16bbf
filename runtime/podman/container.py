"""One task's container as its controller knows it, and the judgement of its exit.

This module owns what the controller's parts share about one container and the rules that turn
what podman says about it into the task's outcome:

* **What is known.** Its id, main pid, conmon's pid (where conmon's exit directory is found)
  and exit code, taken from every inspect or list entry, so that ``container_status`` never
  needs a call; and who ended it: the agent itself (``stopping``: its stop, kill or removal)
  or someone else (``killed_outside``: a ``kill`` event or a logged kill).
* **Looking once** (``check_state``): one inspect, or for a first look at a container this
  process did not start, a shared list entry (``runtime.podman.listing``); a running container
  answers its ``StartedAt``, an exited one is judged, one never started is a ``PermanentError``.
* **The verdict** (``judge``): exit code 0 ends the wait; any other code is an ``ExitError``
  whose message says why when the agent knows: killed outside the agent, or out of memory when
  the kernel's OOM killer killed the main process (or, for a SIGKILL exit, any of its
  processes). A container that is gone is ``ContainerGone``. An exit or removal the agent did
  not cause is counted as drift (``container_exited`` / ``container_missing``).

It is its own module because every step (start, wait, the health checks, update) inspects the
container and may find it gone, and the verdict rules should be read, and tested, in one place.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, NoReturn

from reconciler.core.errors import ContainerGone, ExitError, PermanentError
from reconciler.core.executor import ContainerStatus, DriftKind
from runtime.podman.errors import NotFound
from runtime.podman.listing import Listed, parent_pid
from runtime.podman.shared import Runtime

__all__ = ["Container", "parse_timestamp_ns"]

_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


def parse_timestamp_ns(text: str | None) -> int:
    """podman's RFC 3339 timestamps with nanoseconds as integer ns since the epoch (0 if unset)."""
    if not text:
        return 0
    m = _TS.match(text.strip())
    if m is None:
        return 0
    base, frac, tz = m.groups()
    tzs = "+00:00" if tz in (None, "Z") else tz
    if len(tzs) == 5:
        tzs = tzs[:3] + ":" + tzs[3:]
    dt = datetime.fromisoformat(base + tzs)
    if dt.year <= 1:
        return 0
    secs = int(dt.astimezone(UTC).timestamp())
    ns = int((frac or "0").ljust(9, "0")[:9])
    return secs * 1_000_000_000 + ns


class Container:
    """What one controller knows of its container (no I/O but ``inspect_or_gone`` and
    ``check_state``), and the verdict on its exit."""

    def __init__(
        self,
        rt: Runtime,
        name: str,
        *,
        container_id: str | None = None,
        pid: int | None = None,
        exit_code: int | None = None,
    ) -> None:
        self.rt = rt
        self.name = name
        self.cid = container_id
        self.pid = pid
        self.conmon_pid = 0  # from the last inspect: where the exit directory is found
        self.exit_code = exit_code
        self.started_here = False  # the controller's start call started the container
        self.stopping = False  # the agent itself is stopping or removing the container
        self.killed_outside = False
        self._oom_kills: list[tuple[int | None, str]] = []  # (pid, process) the kernel killed

    def status(self) -> ContainerStatus:
        return ContainerStatus(self.cid, self.pid, self.exit_code)

    def observe(self, listed: dict[str, Any] | None) -> None:
        """Take what a relist saw of this container (no I/O)."""
        if listed is None:
            return
        self.cid = str(listed.get("Id") or self.cid or "") or None
        pid = listed.get("Pid")
        if isinstance(pid, int) and pid > 0:
            self.pid = pid

    def take_inspect(self, info: dict[str, Any]) -> None:
        """Take what an inspect said of this container (no I/O)."""
        self.cid = str(info.get("Id") or self.cid or "") or None
        state = info.get("State") or {}
        pid = state.get("Pid")
        if isinstance(pid, int) and pid > 0:
            self.pid = pid
        conmon = state.get("ConmonPid")
        self.conmon_pid = conmon if isinstance(conmon, int) else 0
        if state.get("Status") in ("exited", "stopped"):
            code = state.get("ExitCode")
            if isinstance(code, int):
                self.exit_code = code

    async def inspect_or_gone(self) -> dict[str, Any]:
        """One inspect, taken; raises ``ContainerGone`` when the container is missing."""
        try:
            info = await self.rt.api.inspect(self.name)
        except NotFound:
            self.gone()
        self.take_inspect(info)
        return info

    def gone(self) -> NoReturn:
        """The container is missing: counted as drift unless the agent removed it."""
        if not self.stopping:
            self.rt.observer.drift_corrected(DriftKind.CONTAINER_MISSING)
        raise ContainerGone()

    async def check_state(self, *, first_look: bool = False) -> int | None:
        """Inspect once: a running container's StartedAt (ns), or judge an exited one.

        Returns None when the container exited with code 0; raises ``ExitError`` for another
        code and ``ContainerGone`` when it is missing. A ``first_look`` at a container this
        controller did not start (one adopted after a restart) reads a shared list call
        instead of inspecting (``listing``)."""
        listing = self.rt.listing
        if first_look and listing is not None and not self.started_here:
            return self.judge_listed(await listing.look(self.name))
        info = await self.inspect_or_gone()
        state = info.get("State") or {}
        status = str(state.get("Status") or "")
        started_ns = parse_timestamp_ns(state.get("StartedAt"))
        if state.get("Running") or status in ("running", "paused", "stopping"):
            return started_ns
        if started_ns == 0 and status in ("created", "configured", "initialized"):
            raise PermanentError(f"container {self.name} was never started (state {status})")
        self.judge(int(state.get("ExitCode") or 0))
        return None

    def judge_listed(self, listed: Listed | None) -> int | None:
        """``check_state`` from a list entry (None: the container is gone)."""
        if listed is None:
            self.gone()
        self.cid = listed.id or self.cid
        if listed.pid is not None:
            self.pid = listed.pid
        if listed.running:
            # The exit-file watch needs conmon, whose child the container's process is.
            self.conmon_pid = parent_pid(listed.pid)
            return listed.started_ns
        if listed.started_ns == 0 and listed.state in ("created", "configured", "initialized"):
            raise PermanentError(f"container {self.name} was never started (state {listed.state})")
        self.judge(listed.exit_code)
        return None

    def judge(self, code: int) -> None:
        """End the wait by exit code: return for 0, raise ``ExitError`` otherwise."""
        self.exit_code = code
        if not self.stopping:
            self.rt.observer.drift_corrected(DriftKind.CONTAINER_EXITED)
        if code == 0:
            return
        if self.killed_outside and not self.stopping:
            raise ExitError(code, f"container was killed outside the agent (exit code {code})")
        oom = self._oom_victim(code)
        if oom is not None:
            raise ExitError(code, f"out of memory: the kernel killed {oom} (exit code {code})")
        raise ExitError(code)

    def oom_killed(self, pid: int | None, process: str) -> None:
        """The kernel's OOM killer killed a process of this container (no I/O)."""
        self._oom_kills.append((pid, process))

    def _oom_victim(self, code: int) -> str | None:
        """What the OOM killer killed that explains exit ``code``: the main process, or for a
        SIGKILL exit (137) any process of the container; None if nothing does."""
        if any(pid is not None and pid == self.pid for pid, _ in self._oom_kills):
            return "the main process"
        if code == 137 and self._oom_kills:
            pid, process = self._oom_kills[-1]
            return f"process {process or '?'}, pid {pid or '?'}"
        return None

"""The node's own usage, read from ``/proc`` and the filesystems, and the conditions it implies.

This module owns the node half of a usage sample and the one rule behind the node conditions.
It reads plain files and ``statvfs``; nothing here talks to the container runtime.

* **CPU seconds by mode** come from the ``cpu`` line of ``/proc/stat`` (USER_HZ ticks, turned
  into seconds with ``SC_CLK_TCK``): user, nice, system, idle, iowait, irq, softirq and steal.
  The kernel already counts guest time inside user and nice, so it is not repeated.
* **Memory available** is ``MemAvailable`` of ``/proc/meminfo``: what can be allocated without
  swapping, page cache that can be dropped included.
* **Disk free** is ``statvfs``'s blocks available to unprivileged users, for the state dir
  (``state``) and the runtime's image store (``images``).
* **Pressure stall information** is the ``total`` (microseconds) of every line of
  ``/proc/pressure/{cpu,memory,io}``. A kernel without PSI (or booted with ``psi=0``) has no
  such files, and then the figures are absent: never zeros that look like an idle node.

**Conditions** (``conditions()``, a pure decision): ``disk_pressure`` while the state dir's or
the image store's filesystem has under 5% of its blocks available, ``memory_pressure`` while
``MemAvailable`` is under 5% of ``MemTotal``. The node's description (``/v1/node``) names them
``diskPressure`` and ``memoryPressure``. A figure that could not be read raises no condition.
Conditions are reported; they never make the node not ready.

``HostStats.read`` blocks on file I/O (a few small files): run it off the event loop. Its roots
(``/proc``, ``statvfs``) are injectable, for tests with fixture files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from reconciler.core.model import Condition

PROC: Final = Path("/proc")

CPU_MODES: Final = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
"""The modes of ``reconciler_node_cpu_seconds_total``, in ``/proc/stat``'s column order."""

PRESSURE_RESOURCES: Final = ("cpu", "memory", "io")
PRESSURE_KINDS: Final = ("some", "full")

PRESSURE_THRESHOLD: Final = 0.05
"""A condition holds while less than this share of the disk or the memory is available."""


@dataclass(frozen=True, slots=True)
class DiskFree:
    """One filesystem the agent depends on: ``fs`` is ``state`` or ``images``."""

    fs: str
    free_bytes: int  # available to unprivileged users
    size_bytes: int


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """One sample of the node's usage. Empty or None where the host does not tell."""

    cpu_seconds: tuple[tuple[str, float], ...] = ()  # (mode, seconds)
    memory_available_bytes: int | None = None
    memory_total_bytes: int | None = None
    disks: tuple[DiskFree, ...] = ()
    pressure: tuple[tuple[str, str, float], ...] = ()  # (resource, kind, seconds)


def conditions(node: NodeUsage) -> tuple[tuple[Condition, bool], ...]:
    """Every condition and whether it holds for this sample (see the module docstring)."""
    disk = any(
        d.size_bytes > 0 and d.free_bytes < PRESSURE_THRESHOLD * d.size_bytes for d in node.disks
    )
    available, total = node.memory_available_bytes, node.memory_total_bytes
    memory = available is not None and total is not None and available < PRESSURE_THRESHOLD * total
    return ((Condition.DISK_PRESSURE, disk), (Condition.MEMORY_PRESSURE, memory))


# --------------------------------------------------------------------------------- parsers


def parse_proc_stat(text: str, ticks_per_second: float) -> tuple[tuple[str, float], ...]:
    """CPU seconds by mode from ``/proc/stat``'s aggregate ``cpu`` line."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = fields[1 : 1 + len(CPU_MODES)]
            return tuple(
                (mode, int(v) / ticks_per_second)
                for mode, v in zip(CPU_MODES, values, strict=False)
            )
    return ()


def parse_meminfo(text: str) -> tuple[int | None, int | None]:
    """(MemAvailable, MemTotal) in bytes from ``/proc/meminfo``."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemAvailable", "MemTotal"):
            parts = rest.split()
            if parts and parts[0].isdigit():
                scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
                found[key] = int(parts[0]) * scale
    return found.get("MemAvailable"), found.get("MemTotal")


def parse_pressure(text: str) -> tuple[tuple[str, float], ...]:
    """(kind, stalled seconds) for each line of a ``/proc/pressure/*`` file."""
    out: list[tuple[str, float]] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] not in PRESSURE_KINDS:
            continue
        for item in fields[1:]:
            key, _, value = item.partition("=")
            if key == "total" and value.isdigit():
                out.append((fields[0], int(value) / 1e6))
    return tuple(out)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


class HostStats:
    """Reads a ``NodeUsage`` from the host; every root is injectable."""

    def __init__(
        self,
        *,
        proc: Path = PROC,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
        ticks_per_second: float | None = None,
    ) -> None:
        self._proc = proc
        self._statvfs = statvfs
        self._ticks = ticks_per_second or float(os.sysconf("SC_CLK_TCK"))

    def read(self, filesystems: Mapping[str, str]) -> NodeUsage:
        """A sample of the node; ``filesystems`` maps ``fs`` label -> a path on it."""
        stat = _read(self._proc / "stat")
        meminfo = _read(self._proc / "meminfo")
        available, total = parse_meminfo(meminfo) if meminfo is not None else (None, None)
        return NodeUsage(
            cpu_seconds=parse_proc_stat(stat, self._ticks) if stat is not None else (),
            memory_available_bytes=available,
            memory_total_bytes=total,
            disks=tuple(self._disks(filesystems)),
            pressure=tuple(self._pressure()),
        )

    def _disks(self, filesystems: Mapping[str, str]) -> list[DiskFree]:
        out: list[DiskFree] = []
        for fs, path in filesystems.items():
            try:
                st = self._statvfs(path)
            except OSError:
                continue
            out.append(DiskFree(fs, st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize))
        return out

    def _pressure(self) -> list[tuple[str, str, float]]:
        out: list[tuple[str, str, float]] = []
        for resource in PRESSURE_RESOURCES:
            text = _read(self._proc / "pressure" / resource)
            if text is not None:
                out.extend((resource, kind, seconds) for kind, seconds in parse_pressure(text))
        return out

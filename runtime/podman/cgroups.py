"""Read a container's applied CPU and memory limits from its cgroup, to verify live updates.

This module exists because podman 4.3's inspect output keeps showing the limits a container was
*created* with after a live update, even when the update reached the cgroup; and on some hosts
(runc under cgroup v1) the update reports success without effect. The only trustworthy answer is
the kernel's, so ``update()`` reads it here. Both cgroup v1 (a hierarchy per controller) and v2
(the unified hierarchy) are understood. When the agent cannot see the container's cgroup (podman
on another host or in another namespace), ``read_limits`` returns None and the caller treats the
change as unverifiable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED_MEMORY_FLOOR = 1 << 62
"""cgroup v1 reports "no limit" as a huge page-rounded number; anything above this is no limit."""
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, slots=True)
class Limits:
    memory: int | None  # bytes, None = unlimited
    cpu_quota: int | None  # microseconds per period, None = unlimited
    cpu_period: int


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_limits(cgroup_path: str, root: Path = CGROUP_ROOT) -> Limits | None:
    """The limits applied to the cgroup at ``cgroup_path`` (as inspect's ``State.CgroupPath``)."""
    rel = cgroup_path.lstrip("/")
    if not rel:
        return None
    # cgroup v2: one unified hierarchy
    unified = root / rel
    mem_max = _read(unified / "memory.max")
    cpu_max = _read(unified / "cpu.max")
    if mem_max is not None and cpu_max is not None:
        memory = None if mem_max == "max" else int(mem_max)
        quota_s, _, period_s = cpu_max.partition(" ")
        period = int(period_s) if period_s else 100_000
        return Limits(memory, None if quota_s == "max" else int(quota_s), period)
    # cgroup v1: a hierarchy per controller
    mem_v1 = _read(root / "memory" / rel / "memory.limit_in_bytes")
    quota_v1 = _read(root / "cpu" / rel / "cpu.cfs_quota_us")
    if quota_v1 is None:
        quota_v1 = _read(root / "cpu,cpuacct" / rel / "cpu.cfs_quota_us")
        period_v1 = _read(root / "cpu,cpuacct" / rel / "cpu.cfs_period_us")
    else:
        period_v1 = _read(root / "cpu" / rel / "cpu.cfs_period_us")
    if mem_v1 is None or quota_v1 is None:
        return None
    mem = int(mem_v1)
    quota = int(quota_v1)
    return Limits(
        None if mem >= UNLIMITED_MEMORY_FLOOR else mem,
        None if quota < 0 else quota,
        int(period_v1) if period_v1 else 100_000,
    )


def memory_matches(applied: int | None, wanted: int | None) -> bool:
    """Equal up to the kernel's rounding of the limit down to whole pages."""
    if wanted is None or applied is None:
        return wanted is None and applied is None
    return abs(applied - wanted) < PAGE

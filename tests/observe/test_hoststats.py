"""The node's usage from an injected /proc and statvfs, and the conditions it implies."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.core.model import Condition
from reconciler.observe.hoststats import (
    CPU_MODES,
    DiskFree,
    HostStats,
    NodeUsage,
    conditions,
    parse_meminfo,
    parse_pressure,
    parse_proc_stat,
)

PROC_STAT = """\
cpu  119649 5419 50033 282550 1691 0 1281 127 0 0
cpu0 50466 2616 23893 152481 440 0 236 59 0 0
intr 1234
"""

MEMINFO = """\
MemTotal:       24684092 kB
MemFree:        20000000 kB
MemAvailable:   23495752 kB
"""

PRESSURE_CPU = """\
some avg10=11.11 avg60=24.00 avg300=26.11 total=200880334
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
"""
PRESSURE_MEMORY = """\
some avg10=0.02 avg60=1.30 avg300=1.38 total=18596680
full avg10=0.00 avg60=0.03 avg300=0.10 total=9074770
"""


def make_proc(tmp: Path, *, pressure: bool) -> Path:
    proc = tmp / "proc"
    proc.mkdir()
    (proc / "stat").write_text(PROC_STAT)
    (proc / "meminfo").write_text(MEMINFO)
    if pressure:
        (proc / "pressure").mkdir()
        (proc / "pressure" / "cpu").write_text(PRESSURE_CPU)
        (proc / "pressure" / "memory").write_text(PRESSURE_MEMORY)
        (proc / "pressure" / "io").write_text(PRESSURE_CPU.replace("200880334", "7"))
    return proc


def statvfs_of(sizes: dict[str, tuple[int, int]]) -> Callable[[str], os.statvfs_result]:
    """A statvfs that knows some paths: path -> (available blocks, total blocks) of 4 KiB."""

    def statvfs(path: str) -> os.statvfs_result:
        if path not in sizes:
            raise FileNotFoundError(path)
        avail, total = sizes[path]
        return os.statvfs_result((4096, 4096, total, avail + 10, avail, 100, 50, 50, 0, 255))

    return statvfs


def test_a_sample_reads_cpu_memory_disks_and_pressure(tmp_path: Path) -> None:
    stats = HostStats(
        proc=make_proc(tmp_path, pressure=True),
        statvfs=statvfs_of({"/var/lib/r": (500, 1000), "/var/lib/containers": (80, 1000)}),
        ticks_per_second=100,
    )
    node = stats.read({"state": "/var/lib/r", "images": "/var/lib/containers"})
    assert node.cpu_seconds == tuple(
        zip(CPU_MODES, (1196.49, 54.19, 500.33, 2825.5, 16.91, 0.0, 12.81, 1.27), strict=True)
    )
    assert node.memory_available_bytes == 23495752 * 1024
    assert node.memory_total_bytes == 24684092 * 1024
    assert node.disks == (
        DiskFree("state", 500 * 4096, 1000 * 4096),
        DiskFree("images", 80 * 4096, 1000 * 4096),
    )
    assert node.pressure == (
        ("cpu", "some", 200.880334),
        ("cpu", "full", 0.0),
        ("memory", "some", 18.59668),
        ("memory", "full", 9.07477),
        ("io", "some", 7e-6),
        ("io", "full", 0.0),
    )


def test_pressure_is_absent_where_the_kernel_lacks_it_not_zero(tmp_path: Path) -> None:
    stats = HostStats(proc=make_proc(tmp_path, pressure=False), statvfs=statvfs_of({}))
    node = stats.read({"state": "/nowhere"})
    assert node.pressure == ()
    assert node.disks == ()  # a filesystem that cannot be read is left out
    assert node.cpu_seconds  # the rest is still read


def test_an_unreadable_proc_gives_an_empty_sample(tmp_path: Path) -> None:
    node = HostStats(proc=tmp_path / "none", statvfs=statvfs_of({})).read({})
    assert node == NodeUsage()
    assert conditions(node) == (
        (Condition.DISK_PRESSURE, False),
        (Condition.MEMORY_PRESSURE, False),
    )


@pytest.mark.parametrize(
    ("disks", "available", "expected"),
    [
        ((("state", 60, 1000), ("images", 500, 1000)), 100, (False, False)),
        ((("state", 40, 1000), ("images", 500, 1000)), 100, (True, False)),
        ((("state", 500, 1000), ("images", 49, 1000)), 100, (True, False)),
        ((("state", 500, 1000),), 49, (False, True)),
        ((("state", 0, 0),), 50, (False, False)),  # a filesystem of no size raises nothing
    ],
)
def test_conditions_hold_under_five_percent_free(
    disks: tuple[tuple[str, int, int], ...], available: int, expected: tuple[bool, bool]
) -> None:
    node = NodeUsage(
        memory_available_bytes=available,
        memory_total_bytes=1000,
        disks=tuple(DiskFree(*d) for d in disks),
    )
    assert conditions(node) == (
        (Condition.DISK_PRESSURE, expected[0]),
        (Condition.MEMORY_PRESSURE, expected[1]),
    )


def test_parsers_ignore_what_they_do_not_know() -> None:
    assert parse_proc_stat("intr 1\n", 100) == ()
    assert parse_meminfo("MemTotal: 1000\n") == (None, 1000)
    assert parse_pressure("some avg10=0.00 total=x\nweird total=5\n") == ()


def test_a_condition_is_snake_case_in_metrics_and_camel_case_in_the_node_description() -> None:
    assert [(c.value, c.key) for c in Condition] == [
        ("disk_pressure", "diskPressure"),
        ("memory_pressure", "memoryPressure"),
    ]

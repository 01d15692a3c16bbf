"""Per-container usage from fixture cgroup trees: cgroup v1 (hybrid mode, as on this project's
CI host), cgroup v2, and an injected /proc. No podman, no real cgroups."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.core.executor import TaskUsage
from runtime.podman.usage import (
    CgroupLayout,
    Mount,
    Target,
    UsageReader,
    keyed,
    parse_blkio_v1,
    parse_io_stat,
    parse_mountinfo,
    parse_net_dev,
    parse_proc_cgroup,
    read_layout,
)

CID = "0e9e4e46ab873ba1f55c4bb9a5b33e7726bb3feaa673a9011f0081fc1d5f2273"
OTHER = "cb263768ca19d3ab6170ac9888498b4eb7605056711255e2cbcc02e7f304a225"
PID = 31446
CG = f"/libpod_parent/libpod-{CID}"

FIXTURES = Path(__file__).parent / "fixtures"
NET_DEV = (FIXTURES / "net_dev.txt").read_text()  # /proc/<pid>/net/dev: lo, eth0, eth1

MEMORY_STAT_V1 = """\
cache 4096
hierarchical_memory_limit {limit}
rss 114688
inactive_file 111
total_cache 40960
total_rss 114688
total_inactive_file 8192
total_active_file 4096
"""

MEMORY_STAT_V2 = """\
anon 33554432
file 8192
inactive_file 4096
active_file 4096
"""

BLKIO_V1 = """\
8:0 Read 4096
8:0 Write 8192
8:0 Sync 0
8:0 Async 12288
8:0 Discard 0
8:0 Total 12288
8:16 Read 1000
8:16 Write 24
8:16 Total 1024
Total 13312
"""

IO_STAT_V2 = """\
8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0
8:16 rbytes=1000 wbytes=24 rios=1 wios=1 dbytes=0 dios=0
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def proc_for(tmp: Path, mountinfo: str, proc_cgroup: str, *, own_netns: bool = True) -> Path:
    """An injected /proc: mountinfo, the container's cgroup file, net/dev and netns links."""
    proc = tmp / "proc"
    write(proc / "self" / "mountinfo", mountinfo)
    write(proc / str(PID) / "cgroup", proc_cgroup)
    write(proc / str(PID) / "net" / "dev", NET_DEV)
    (proc / "self" / "ns").mkdir(parents=True)
    (proc / str(PID) / "ns").mkdir(parents=True)
    os.symlink("net:[4026531840]", proc / "self" / "ns" / "net")
    os.symlink(
        "net:[4026533000]" if own_netns else "net:[4026531840]", proc / str(PID) / "ns" / "net"
    )
    return proc


def v1_host(tmp: Path, *, limit: int = 16777216) -> Path:
    """This CI host's layout: a v1 hierarchy per controller, and a unified hierarchy with
    cpu.stat and no controllers (hybrid mode)."""
    cg = tmp / "sys" / "fs" / "cgroup"
    mountinfo = "\n".join(
        [
            "22 1 0:20 / /sys rw,nosuid - sysfs sysfs rw",
            f"25 22 0:22 / {cg} rw - tmpfs tmpfs rw,mode=755",
            f"26 25 0:23 / {cg}/unified rw - cgroup2 cgroup2 rw",
            f"27 25 0:24 / {cg}/cpu rw - cgroup cgroup rw,cpu",
            f"28 25 0:25 / {cg}/cpuacct rw - cgroup cgroup rw,cpuacct",
            f"29 25 0:26 / {cg}/memory rw - cgroup cgroup rw,memory",
            f"30 25 0:27 / {cg}/blkio rw - cgroup cgroup rw,blkio",
            f"31 25 0:28 / {cg}/pids rw - cgroup cgroup rw,pids",
            f"32 25 0:29 / {cg}/systemd rw - cgroup cgroup rw,name=systemd",
        ]
    )
    proc_cgroup = "\n".join(
        [
            f"9:name=systemd:{CG}",
            f"8:pids:{CG}",
            f"7:blkio:{CG}",
            f"4:memory:{CG}",
            f"2:cpuacct:{CG}",
            f"1:cpu:{CG}",
            f"0::{CG}",
        ]
    )
    write(cg / "unified" / "cgroup.controllers", "\n")
    # the unified hierarchy has cpu.stat but no memory.*: it must not be read
    write(cg / "unified" / CG.lstrip("/") / "cpu.stat", "usage_usec 999000000\n")
    write(cg / "cpuacct" / CG.lstrip("/") / "cpuacct.usage", "65258444\n")
    write(cg / "memory" / CG.lstrip("/") / "memory.usage_in_bytes", "33890304\n")
    write(cg / "memory" / CG.lstrip("/") / "memory.stat", MEMORY_STAT_V1.format(limit=limit))
    write(cg / "blkio" / CG.lstrip("/") / "blkio.throttle.io_service_bytes_recursive", BLKIO_V1)
    write(cg / "pids" / CG.lstrip("/") / "pids.current", "3\n")
    return proc_for(tmp, mountinfo, proc_cgroup)


def v2_host(tmp: Path, *, memory_max: str = "max\n", own_netns: bool = True) -> Path:
    cg = tmp / "sys" / "fs" / "cgroup"
    scope = f"/machine.slice/libpod-{CID}.scope"
    mountinfo = f"30 22 0:26 / {cg} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"
    write(cg / "cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
    d = cg / scope.lstrip("/")
    write(d / "cpu.stat", "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    write(d / "memory.current", "33562624\n")
    write(d / "memory.stat", MEMORY_STAT_V2)
    write(d / "memory.max", memory_max)
    write(d / "io.stat", IO_STAT_V2)
    write(d / "pids.current", "2\n")
    return proc_for(tmp, mountinfo, f"0::{scope}\n", own_netns=own_netns)


def target(pid: int = PID, cid: str = CID) -> Target:
    return Target(task_id="i1", name="web", container_id=cid, pid=pid)


# ---------------------------------------------------------------------------------- hosts


def test_cgroup_v1_figures_come_from_each_controllers_hierarchy(tmp_path: Path) -> None:
    reader = UsageReader(proc=v1_host(tmp_path))
    assert reader.read([target()]) == [
        TaskUsage(
            task_id="i1",
            name="web",
            cpu_seconds=0.065258444,
            memory_working_set_bytes=33890304 - 8192,  # less total_inactive_file
            memory_limit_bytes=16777216,
            network_receive_bytes=353782 + 1000,  # lo left out
            network_transmit_bytes=936 + 100,
            block_read_bytes=4096 + 1000,
            block_write_bytes=8192 + 24,
            pids=3,
        )
    ]


def test_a_unified_hierarchy_without_controllers_is_not_taken_for_cgroup_v2(
    tmp_path: Path,
) -> None:
    layout = read_layout(v1_host(tmp_path))
    cg = tmp_path / "sys" / "fs" / "cgroup"
    assert layout.v2 == Mount(cg / "unified") and layout.v2_controllers == frozenset()
    paths = {"": CG, "cpuacct": CG, "memory": CG}
    assert layout.place("cpu", paths) == (1, cg / "cpuacct" / CG.lstrip("/"))
    assert layout.place("memory", paths) == (1, cg / "memory" / CG.lstrip("/"))


def test_cgroup_v1_without_a_memory_limit_reports_none(tmp_path: Path) -> None:
    reader = UsageReader(proc=v1_host(tmp_path, limit=9223372036854771712))
    (usage,) = reader.read([target()])
    assert usage.memory_limit_bytes is None
    assert usage.memory_working_set_bytes == 33890304 - 8192


def test_cgroup_v2_figures_come_from_the_unified_hierarchy(tmp_path: Path) -> None:
    reader = UsageReader(proc=v2_host(tmp_path, memory_max="67108864\n"))
    assert reader.read([target()]) == [
        TaskUsage(
            task_id="i1",
            name="web",
            cpu_seconds=1.5,
            memory_working_set_bytes=33562624 - 4096,  # less inactive_file
            memory_limit_bytes=67108864,
            network_receive_bytes=354782,
            network_transmit_bytes=1036,
            block_read_bytes=5096,
            block_write_bytes=8216,
            pids=2,
        )
    ]


def test_cgroup_v2_memory_max_reports_no_limit(tmp_path: Path) -> None:
    (usage,) = UsageReader(proc=v2_host(tmp_path)).read([target()])
    assert usage.memory_limit_bytes is None


def test_a_container_on_the_hosts_network_reports_no_network_figures(tmp_path: Path) -> None:
    (usage,) = UsageReader(proc=v2_host(tmp_path, own_netns=False)).read([target()])
    assert usage.network_receive_bytes is None and usage.network_transmit_bytes is None
    assert usage.cpu_seconds == 1.5


def test_a_reused_pid_outside_the_container_is_skipped(tmp_path: Path) -> None:
    reader = UsageReader(proc=v1_host(tmp_path))
    assert reader.read([target(cid=OTHER)]) == []


def test_an_exited_container_is_left_out_and_the_others_are_read(tmp_path: Path) -> None:
    proc = v1_host(tmp_path)
    reader = UsageReader(proc=proc)
    gone = Target(task_id="i2", name="job", container_id=OTHER, pid=4242)
    assert [u.task_id for u in reader.read([gone, target()])] == ["i1"]


def test_a_cgroup_removed_since_the_last_pass_leaves_the_container_out(tmp_path: Path) -> None:
    proc = v2_host(tmp_path)
    reader = UsageReader(proc=proc)
    assert len(reader.read([target()])) == 1
    scope = tmp_path / "sys" / "fs" / "cgroup" / "machine.slice" / f"libpod-{CID}.scope"
    for f in scope.iterdir():
        f.unlink()
    scope.rmdir()
    assert reader.read([target()]) == []


def test_the_cgroup_of_a_pid_is_looked_up_once(tmp_path: Path) -> None:
    proc = v1_host(tmp_path)
    reader = UsageReader(proc=proc)
    first = reader.read([target()])
    (proc / str(PID) / "cgroup").unlink()
    assert reader.read([target()]) == first
    reader.read([])  # the pid is no longer a target: its entry is dropped
    assert reader.read([target()]) == []


# -------------------------------------------------------------------------------- parsers


def test_mountinfo_gives_each_v1_controller_and_the_unified_mount() -> None:
    text = "\n".join(
        [
            "27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
            "29 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
            "26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw",
            "40 25 0:40 /ns /mnt/with\\040space rw shared:9 - cgroup cgroup rw,pids",
            "41 25 0:41 / /proc rw - proc proc rw",
        ]
    )
    v1, v2 = parse_mountinfo(text)
    assert v1["cpuacct"] == Mount(Path("/sys/fs/cgroup/cpu,cpuacct"), "/")
    assert v1["memory"] == Mount(Path("/sys/fs/cgroup/memory"), "/")
    assert v1["pids"] == Mount(Path("/mnt/with space"), "/ns")
    assert v2 == Mount(Path("/sys/fs/cgroup/unified"), "/")
    assert "blkio" not in v1


def test_a_mount_of_a_subtree_resolves_only_paths_inside_it() -> None:
    mount = Mount(Path("/c"), "/ns")
    assert mount.dir("/ns/libpod-x") == Path("/c/libpod-x")
    assert mount.dir("/ns") == Path("/c")
    assert mount.dir("/nsx/y") is None
    assert Mount(Path("/c")).dir("/a/b") == Path("/c/a/b")


def test_proc_cgroup_maps_controllers_and_the_unified_path() -> None:
    paths = parse_proc_cgroup("4:memory:/a\n2:cpu,cpuacct:/b\n1:name=systemd:/c\n0::/d\n")
    assert paths == {"memory": "/a", "cpu": "/b", "cpuacct": "/b", "name=systemd": "/c", "": "/d"}


def test_a_controller_in_neither_hierarchy_has_no_place() -> None:
    layout = CgroupLayout(v1={}, v2=None)
    assert layout.place("memory", {"memory": "/a"}) is None


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("usage_usec 15\nuser_usec 10\n", "usage_usec", 15),
        ("a 1\ntotal_inactive_file 7", "total_inactive_file", 7),
        ("total_inactive_file_x 3\n", "total_inactive_file", None),
        ("inactive_file 5\ntotal_inactive_file 9\n", "inactive_file", 5),
    ],
)
def test_keyed_reads_one_line_of_a_flat_keyed_file(text: str, key: str, value: int | None) -> None:
    assert keyed(text, key) == value


def test_net_dev_sums_every_interface_but_loopback() -> None:
    assert parse_net_dev(NET_DEV) == (354782, 1036)


def test_block_io_parsers_sum_every_device() -> None:
    assert parse_blkio_v1(BLKIO_V1) == (5096, 8216)
    assert parse_io_stat(IO_STAT_V2) == (5096, 8216)
    assert parse_blkio_v1("Total 0\n") == (0, 0)


def test_a_file_larger_than_one_read_is_read_whole(tmp_path: Path) -> None:
    proc = v2_host(tmp_path)
    many = "".join(
        f"  veth{i}:     100       1    0    0    0     0          0         0       10       1"
        "    0    0    0     0       0          0\n"
        for i in range(400)
    )
    (proc / str(PID) / "net" / "dev").write_text(NET_DEV + many)
    (usage,) = UsageReader(proc=proc).read([target()])
    assert usage.network_receive_bytes == 354782 + 400 * 100
    assert usage.network_transmit_bytes == 1036 + 400 * 10

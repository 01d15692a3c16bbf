"""What each running container uses, read straight from the kernel: no podman call per sample.

This module owns per-container usage sampling. podman's own ``stats`` costs a round trip and a
cgroup walk inside podman per call; the agent instead reads the same kernel files itself, for
every container in one pass, from the pids podman's list and inspect answers already gave:

* **The cgroup** of a container comes from ``/proc/<pid>/cgroup``, cached per pid. A pid can be
  reused once its container exits, so a cgroup path that does not name the container's id is
  not the container's, and that container is skipped.
* **cgroup v1 or v2** is decided per controller by the unified root's ``cgroup.controllers``: a
  controller listed there lives in the unified hierarchy, any other in its own v1 hierarchy.
  (A host in hybrid mode mounts a unified hierarchy that has ``cpu.stat`` and no controller at
  all, so the presence of a file proves nothing.) Mount points come from
  ``/proc/self/mountinfo``, so nothing assumes ``/sys/fs/cgroup``.
* **The network** figures come from ``/proc/<pid>/net/dev``, every interface except ``lo``,
  and only when the process has a network namespace of its own: a container on the host's
  network would otherwise report the whole host's traffic.

============================  ==========================================  =======================
figure                        cgroup v1                                   cgroup v2
============================  ==========================================  =======================
CPU seconds                   ``cpuacct.usage`` (ns)                      ``cpu.stat`` usage_usec
memory working set            ``memory.usage_in_bytes`` less              ``memory.current`` less
                              ``memory.stat`` total_inactive_file         ``memory.stat``
                                                                          inactive_file
memory limit                  ``memory.stat`` hierarchical_memory_limit   ``memory.max``
                              (2^62 up: none)
block I/O read, written       ``blkio.throttle.io_service_bytes_recursive``  ``io.stat``
PIDs                          ``pids.current``                            ``pids.current``
============================  ==========================================  =======================

The working set is what the kubelet calls it: usage less the file cache the kernel can drop
first. Block I/O is what the kernel accounts to the cgroup; cgroup v1 counts only I/O that
reaches a block device directly, so buffered writes often show 0 there, as in podman's own
``stats``.

``UsageReader.read`` does blocking file reads (a few microseconds each): run it off the event
loop. Every root it reads (``/proc``) is injectable, for tests with fixture files.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.executor import TaskUsage

PROC = Path("/proc")
_OCTAL = re.compile(r"\\([0-7]{3})")

_CHUNK = 1 << 14

UNLIMITED_V1 = 1 << 62
"""cgroup v1 reports "no limit" as a huge page-rounded number; anything from here up is none."""

#: Resource -> (its v1 controller, its v2 controller).
_CONTROLLERS = {
    "cpu": ("cpuacct", "cpu"),
    "memory": ("memory", "memory"),
    "io": ("blkio", "io"),
    "pids": ("pids", "pids"),
}


@dataclass(frozen=True, slots=True)
class Target:
    """A running container to sample: which task it runs, its id and its main process."""

    task_id: str
    name: str
    container_id: str
    pid: int


@dataclass(frozen=True, slots=True)
class Mount:
    """A mounted cgroup hierarchy: where it is mounted and which of its paths is mounted there."""

    path: Path
    root: str = "/"

    def dir(self, cgroup_path: str) -> Path | None:
        """The directory of ``cgroup_path`` under this mount; None if it lies outside it."""
        root = self.root.rstrip("/")
        if root and cgroup_path != root and not cgroup_path.startswith(root + "/"):
            return None
        rel = cgroup_path[len(root) :].strip("/")
        return self.path / rel if rel else self.path


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """Where each cgroup controller is read: its v1 hierarchy, or the unified (v2) one."""

    v1: Mapping[str, Mount]
    v2: Mount | None = None
    v2_controllers: frozenset[str] = frozenset()

    def place(self, resource: str, paths: Mapping[str, str]) -> tuple[int, Path] | None:
        """(cgroup version, directory) of ``resource`` for a process whose
        ``/proc/<pid>/cgroup`` is ``paths``; None when neither hierarchy has it."""
        c1, c2 = _CONTROLLERS[resource]
        unified = paths.get("")
        if self.v2 is not None and unified is not None and c2 in self.v2_controllers:
            found = self.v2.dir(unified)
            return (2, found) if found is not None else None
        mount = self.v1.get(c1)
        if mount is not None and c1 in paths:
            found = mount.dir(paths[c1])
            return (1, found) if found is not None else None
        if self.v2 is not None and unified is not None and resource == "cpu":
            # cgroup v2 keeps cpu.stat's usage in every cgroup, controller or not.
            found = self.v2.dir(unified)
            return (2, found) if found is not None else None
        return None


# --------------------------------------------------------------------------------- parsers


def parse_mountinfo(text: str) -> tuple[dict[str, Mount], Mount | None]:
    """The cgroup mounts of a ``/proc/<pid>/mountinfo``: v1 controller -> mount, and the
    unified mount (or None)."""
    v1: dict[str, Mount] = {}
    v2: Mount | None = None
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 5 or len(fields) < sep + 4:
            continue
        fstype, options = fields[sep + 1], fields[sep + 3]
        mount = Mount(Path(_unescape(fields[4])), _unescape(fields[3]))
        if fstype == "cgroup2" and v2 is None:
            v2 = mount
        elif fstype == "cgroup":
            for option in options.split(","):
                if option in ("cpuacct", "memory", "blkio", "pids"):
                    v1.setdefault(option, mount)
    return v1, v2


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as controller -> path; the unified hierarchy's path is under ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
        else:
            for controller in controllers.split(","):
                out[controller] = path
    return out


def keyed(text: str, key: str) -> int | None:
    """The integer after ``key`` on its own line of a flat-keyed file (``memory.stat``,
    ``cpu.stat``); None when absent."""
    prefix = key + " "
    if text.startswith(prefix):
        at = 0
    else:
        at = text.find("\n" + prefix)
        if at < 0:
            return None
        at += 1
    end = text.find("\n", at)
    try:
        return int(text[at + len(prefix) : end if end >= 0 else None])
    except ValueError:
        return None


def parse_net_dev(text: str) -> tuple[int, int]:
    """Bytes received and sent over every interface except ``lo``, from ``net/dev``."""
    rx = tx = 0
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep or name.strip() == "lo":
            continue
        fields = rest.split()
        if len(fields) >= 9:
            rx += int(fields[0])
            tx += int(fields[8])
    return rx, tx


def parse_blkio_v1(text: str) -> tuple[int, int]:
    """Bytes read and written over every device, from ``blkio.*io_service_bytes*``."""
    read = write = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        if fields[1] == "Read":
            read += int(fields[2])
        elif fields[1] == "Write":
            write += int(fields[2])
    return read, write


def parse_io_stat(text: str) -> tuple[int, int]:
    """Bytes read and written over every device, from cgroup v2's ``io.stat``."""
    read = write = 0
    for line in text.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                write += int(value)
    return read, write


def _read(path: str | Path) -> str | None:
    """A small kernel file's text, None if it cannot be read (the cgroup is gone, say)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, _CHUNK)
        if len(data) == _CHUNK:  # rare: a host with many devices or interfaces
            chunks = [data]
            while chunk := os.read(fd, _CHUNK):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data.decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _int(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


# --------------------------------------------------------------------------------- reader


@dataclass(frozen=True, slots=True)
class _Files:
    """The files one container's figures are read from, as ready-made path strings (a pass
    reads hundreds of them; building ``Path`` objects each time would cost more than the
    reads). None: that figure is not available."""

    container_id: str
    cpu: str | None
    cpu_v2: bool
    memory: str | None  # usage: memory.usage_in_bytes (v1) or memory.current (v2)
    memory_stat: str | None
    memory_max: str | None  # v2 only: v1's limit is memory.stat's hierarchical_memory_limit
    memory_v2: bool
    io: str | None
    io_v2: bool
    pids: str | None
    net_dev: str | None

    @classmethod
    def of(
        cls, container_id: str, layout: CgroupLayout, paths: Mapping[str, str], net_dev: str | None
    ) -> _Files:
        cpu = layout.place("cpu", paths)
        memory = layout.place("memory", paths)
        io = layout.place("io", paths)
        pids = layout.place("pids", paths)
        cpu_v2 = cpu is not None and cpu[0] == 2
        mem_v2 = memory is not None and memory[0] == 2
        io_v2 = io is not None and io[0] == 2

        def file(place: tuple[int, Path] | None, name: str) -> str | None:
            return None if place is None else f"{place[1]}/{name}"

        return cls(
            container_id=container_id,
            cpu=file(cpu, "cpu.stat" if cpu_v2 else "cpuacct.usage"),
            cpu_v2=cpu_v2,
            memory=file(memory, "memory.current" if mem_v2 else "memory.usage_in_bytes"),
            memory_stat=file(memory, "memory.stat"),
            memory_max=file(memory, "memory.max") if mem_v2 else None,
            memory_v2=mem_v2,
            io=file(io, "io.stat" if io_v2 else "blkio.throttle.io_service_bytes_recursive"),
            io_v2=io_v2,
            pids=file(pids, "pids.current"),
            net_dev=net_dev,
        )


class UsageReader:
    """Reads the usage of many containers in one pass; passes run one at a time (a pass left
    running by a cancelled caller finishes before the next one starts)."""

    def __init__(self, *, proc: Path = PROC, layout: CgroupLayout | None = None) -> None:
        self._proc = proc
        self._layout = layout
        self._files: dict[int, _Files] = {}
        self._host_netns: str | None = None
        self._lock = threading.Lock()

    @property
    def layout(self) -> CgroupLayout:
        """The cgroup mounts, read from ``/proc/self/mountinfo`` on first use."""
        if self._layout is None:
            self._layout = read_layout(self._proc)
        return self._layout

    def read(self, targets: Iterable[Target]) -> list[TaskUsage]:
        """The usage of each target that can be read; the others are left out."""
        with self._lock:
            return self._read_all(targets)

    def _read_all(self, targets: Iterable[Target]) -> list[TaskUsage]:
        out: list[TaskUsage] = []
        seen: set[int] = set()
        for target in targets:
            seen.add(target.pid)
            files = self._files_of(target)
            if files is None:
                continue
            usage = _usage(target, files)
            if usage is not None:
                out.append(usage)
        for pid in [p for p in self._files if p not in seen]:
            del self._files[pid]
        return out

    def _files_of(self, target: Target) -> _Files | None:
        files = self._files.get(target.pid)
        if files is not None and files.container_id == target.container_id:
            return files
        text = _read(f"{self._proc}/{target.pid}/cgroup")
        if text is None:
            return None
        paths = parse_proc_cgroup(text)
        if not target.container_id or not any(target.container_id in p for p in paths.values()):
            return None  # not (or no longer) the container's process
        net_dev = f"{self._proc}/{target.pid}/net/dev" if self._own_netns(target.pid) else None
        files = _Files.of(target.container_id, self.layout, paths, net_dev)
        self._files[target.pid] = files
        return files

    def _own_netns(self, pid: int) -> bool:
        if self._host_netns is None:
            try:
                self._host_netns = os.readlink(self._proc / "self" / "ns" / "net")
            except OSError:
                self._host_netns = ""
        try:
            return os.readlink(self._proc / str(pid) / "ns" / "net") != self._host_netns
        except OSError:
            return False


def _usage(target: Target, files: _Files) -> TaskUsage | None:
    cpu = _cpu_seconds(files)
    working_set, limit = _memory(files)
    if cpu is None and working_set is None:
        return None  # the cgroup is gone: the container exited
    read = write = None
    if files.io is not None:
        text = _read(files.io)
        if text is not None:
            read, write = parse_io_stat(text) if files.io_v2 else parse_blkio_v1(text)
    rx = tx = None
    if files.net_dev is not None:
        text = _read(files.net_dev)
        if text is not None:
            rx, tx = parse_net_dev(text)
    return TaskUsage(
        task_id=target.task_id,
        name=target.name,
        cpu_seconds=cpu,
        memory_working_set_bytes=working_set,
        memory_limit_bytes=limit,
        network_receive_bytes=rx,
        network_transmit_bytes=tx,
        block_read_bytes=read,
        block_write_bytes=write,
        pids=_int(files.pids) if files.pids is not None else None,
    )


def _cpu_seconds(files: _Files) -> float | None:
    if files.cpu is None:
        return None
    if files.cpu_v2:
        text = _read(files.cpu)
        usec = keyed(text, "usage_usec") if text is not None else None
        return usec / 1e6 if usec is not None else None
    ns = _int(files.cpu)
    return ns / 1e9 if ns is not None else None


def _memory(files: _Files) -> tuple[int | None, int | None]:
    """(working set, limit) in bytes."""
    if files.memory is None or files.memory_stat is None:
        return None, None
    usage = _int(files.memory)
    if usage is None:
        return None, None
    stat = _read(files.memory_stat) or ""
    if files.memory_v2:
        inactive = keyed(stat, "inactive_file")
        raw = _read(files.memory_max) if files.memory_max is not None else None
        limit = None if raw is None or raw.strip() == "max" else _to_int(raw)
    else:
        inactive = keyed(stat, "total_inactive_file")
        # The limit in force, the lowest of the cgroup's and its ancestors' (one file less).
        hierarchical = keyed(stat, "hierarchical_memory_limit")
        limit = hierarchical if hierarchical is not None and hierarchical < UNLIMITED_V1 else None
    return max(0, usage - (inactive or 0)), limit


def _to_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def read_layout(proc: Path = PROC) -> CgroupLayout:
    """The host's cgroup mounts as this process sees them, and the unified root's controllers."""
    try:
        text = (proc / "self" / "mountinfo").read_text()
    except OSError:
        text = ""
    v1, v2 = parse_mountinfo(text)
    controllers: frozenset[str] = frozenset()
    if v2 is not None:
        listed = _read(v2.path / "cgroup.controllers")
        controllers = frozenset(listed.split()) if listed else frozenset()
    return CgroupLayout(v1=v1, v2=v2, v2_controllers=controllers)

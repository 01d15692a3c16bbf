"""OOM kills from kernel log records: the parser, the reader on a pipe standing in for
/dev/kmsg, and the controller's verdict on an exit that follows a kill."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from reconciler.core.clock import FakeClock
from reconciler.core.errors import ExitError
from reconciler.core.executor import NullObserver
from reconciler.core.model import Task, TaskSpec
from reconciler.testing.polling import eventually
from runtime.podman.controller import PodmanController
from runtime.podman.oom import KernelLogOoms, OomKill, parse_record
from runtime.podman.shared import Runtime

CID = "0e9e4e46ab873ba1f55c4bb9a5b33e7726bb3feaa673a9011f0081fc1d5f2273"
POD = "1f0c7c2a37b0e3d3f0b9d1f3e4c2a6b8d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f"

# As this CI host's kernel (6.18, cgroup v1, podman's cgroupfs manager) wrote them.
V1_KILL = (
    "3,10741,1833516864,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),"
    f"cpuset=libpod-{CID},mems_allowed=0,oom_memcg=/libpod_parent/libpod-{CID},"
    f"task_memcg=/libpod_parent/libpod-{CID},task=tail,pid=532,uid=0"
)
V1_KILLED = (
    "3,10742,1833516892,-;Memory cgroup out of memory: Killed process 532 (tail) "
    "total-vm:67816kB, anon-rss:14720kB, file-rss:1296kB, shmem-rss:0kB, UID:0 pgtables:68kB "
    "oom_score_adj:0"
)


def test_a_memcg_kill_names_the_container_the_pid_and_the_process() -> None:
    assert parse_record(V1_KILL) == OomKill(CID, 532, "tail")


def test_the_summary_line_of_the_same_kill_is_not_counted_again() -> None:
    assert parse_record(V1_KILLED) is None


def test_a_systemd_scope_in_a_pod_names_the_container_not_the_pod() -> None:
    record = (
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0-1,"
        f"oom_memcg=/machine.slice/machine-libpod_pod_{POD}.slice/libpod-{CID}.scope,"
        f"task_memcg=/machine.slice/machine-libpod_pod_{POD}.slice/libpod-{CID}.scope/container,"
        "task=java,pid=7001,uid=1000"
    )
    assert parse_record(record) == OomKill(CID, 7001, "java")


def test_a_kill_by_the_host_wide_oom_killer_counts_for_the_container() -> None:
    record = (
        "4,99,5,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,"
        f"global_oom,task_memcg=/libpod_parent/libpod-{CID},task=dd,pid=9,uid=0"
    )
    assert parse_record(record) == OomKill(CID, 9, "dd")


@pytest.mark.parametrize(
    "record",
    [
        "6,10736,1839820639,-;veth25: entered promiscuous mode",
        "oom-kill:constraint=CONSTRAINT_NONE,global_oom,task_memcg=/user.slice,task=x,pid=1,uid=0",
        "",
        "garbage;;;",
    ],
)
def test_other_records_and_processes_outside_containers_are_no_kill(record: str) -> None:
    assert parse_record(record) is None


# --------------------------------------------------------------------------------- reader


async def test_the_reader_reports_every_kill_in_the_stream(tmp_path: Path) -> None:
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    kills: list[OomKill] = []
    reader = KernelLogOoms(kills.append, path=fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # keeps the fifo open for the reader
    try:
        assert reader.start()
        os.write(writer, f"{V1_KILL}\n SUBSYSTEM=memory\n{V1_KILLED}\n".encode())
        os.write(writer, V1_KILL.replace("pid=532", "pid=533").encode()[:40])
        await eventually(lambda: len(kills) == 1, "len(kills) == 1")
        os.write(writer, V1_KILL.replace("pid=532", "pid=533").encode()[40:] + b"\n")
        await eventually(lambda: len(kills) == 2, "len(kills) == 2")
    finally:
        reader.close()
        os.close(writer)
    assert [k.pid for k in kills] == [532, 533]
    assert not reader.reading


async def test_a_failing_handler_does_not_stop_the_reader(tmp_path: Path) -> None:
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    seen: list[int | None] = []

    def handle(kill: OomKill) -> None:
        seen.append(kill.pid)
        if len(seen) == 1:
            raise RuntimeError("boom")

    reader = KernelLogOoms(handle, path=fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        assert reader.start()
        os.write(writer, f"{V1_KILL}\n{V1_KILL.replace('pid=532', 'pid=7')}\n".encode())
        await eventually(lambda: len(seen) == 2, "len(seen) == 2")
        assert reader.reading
    finally:
        reader.close()
        os.close(writer)


async def test_an_unreadable_kernel_log_is_said_once_and_counts_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reader = KernelLogOoms(lambda kill: None, path=tmp_path / "missing")
    with caplog.at_level(logging.WARNING):
        assert not reader.start()
    assert "OOM kills are not counted" in caplog.text
    assert not reader.reading
    reader.close()  # harmless


# ------------------------------------------------------------------ the controller's verdict


def controller_with_main_pid(pid: int) -> PodmanController:
    runtime = Runtime(
        api=None,  # type: ignore[arg-type]  # judging an exit makes no call
        events=None,  # type: ignore[arg-type]
        clock=FakeClock(),
        observer=NullObserver(),
        node_id="node-a",
    )
    task = Task(id="i1", spec=TaskSpec(name="web", image="localhost/busybox:latest"))
    ctlr = PodmanController(runtime, task)
    ctlr.observe({"Id": CID, "Pid": pid})
    return ctlr


def verdict(ctlr: PodmanController, code: int) -> str:
    with pytest.raises(ExitError) as raised:
        ctlr.container.judge(code)
    assert raised.value.exit_code == code  # the exit is still judged by its code
    return str(raised.value)


def test_the_main_process_killed_for_memory_says_out_of_memory() -> None:
    ctlr = controller_with_main_pid(532)
    ctlr.oom_killed(532, "java")
    assert verdict(ctlr, 137) == "out of memory: the kernel killed the main process (exit code 137)"


def test_a_sigkill_exit_after_a_child_was_killed_names_the_child() -> None:
    ctlr = controller_with_main_pid(100)
    ctlr.oom_killed(532, "tail")
    assert (
        verdict(ctlr, 137)
        == "out of memory: the kernel killed process tail, pid 532 (exit code 137)"
    )


def test_an_ordinary_failure_after_a_child_was_killed_is_not_called_out_of_memory() -> None:
    ctlr = controller_with_main_pid(100)
    ctlr.oom_killed(532, "tail")
    assert verdict(ctlr, 1) == "task exited with code 1"
    assert verdict(controller_with_main_pid(100), 137) == "task exited with code 137"

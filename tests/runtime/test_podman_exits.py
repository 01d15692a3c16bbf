"""Exits seen from conmon's exit files: the rule that judges one early, the inotify watch on
the exit directory (a temporary directory and a fake ``/proc``), and the controller's wait
driven by a fake podman, where only a logged ``kill`` makes an exit file a verdict."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.clock import FakeClock, settle
from reconciler.core.errors import ContainerGone, ExitError, TemporaryError
from reconciler.core.executor import NullObserver
from reconciler.core.model import Task, TaskSpec
from reconciler.testing.polling import eventually
from runtime.podman.controller import PodmanController
from runtime.podman.errors import NotFound
from runtime.podman.events import ContainerEvent, EventKind, EventStream
from runtime.podman.exitrule import EarlyExit, ExitSeen, judge_exit_file
from runtime.podman.exits import (
    IN_MOVED_TO,
    ExitWatch,
    exit_dir_of,
    parse_events,
)
from runtime.podman.reach import Reachability
from runtime.podman.shared import Runtime

CID = "0e9e4e46ab873ba1f55c4bb9a5b33e7726bb3feaa673a9011f0081fc1d5f2273"
OTHER = "1f0c7c2a37b0e3d3f0b9d1f3e4c2a6b8d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f"
CONMON = 4242
STARTED = "2026-11-30T09:00:00.000000001Z"

# ------------------------------------------------------------------------------- the rule


def seen(status: str = "stopped", code: int | None = 137, **kw: bool) -> ExitSeen:
    return ExitSeen(
        status=status,
        exit_code=code,
        kill_seen=kw.get("kill_seen", True),
        agent_stopping=kw.get("agent_stopping", False),
    )


def test_a_logged_kill_and_a_stopped_container_are_judged_early_by_podmans_exit_code() -> None:
    assert judge_exit_file(seen("stopped", 137)) == EarlyExit(137)
    assert judge_exit_file(seen("exited", 0)) == EarlyExit(0)


def test_an_exit_file_without_a_kill_is_left_to_the_events_as_rm_f_and_stop_are() -> None:
    assert judge_exit_file(seen("stopped", 137, kill_seen=False)) is None
    assert judge_exit_file(seen("exited", 1, kill_seen=False)) is None


def test_the_agents_own_stop_is_never_judged_from_the_exit_file() -> None:
    assert judge_exit_file(seen("stopped", 137, agent_stopping=True)) is None


@pytest.mark.parametrize("status", ["running", "stopping", "removing", "paused", ""])
def test_a_container_podman_does_not_call_stopped_is_left_to_the_events(status: str) -> None:
    assert judge_exit_file(seen(status, 137)) is None


def test_no_exit_code_is_no_verdict() -> None:
    assert judge_exit_file(seen("stopped", None)) is None


# -------------------------------------------------------------------- finding the directory


def fake_proc(root: Path, pid: int, *args: str) -> Path:
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in args) + b"\0")
    return root


def test_the_exit_dir_is_read_from_conmons_command_line(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, CONMON, "/usr/bin/conmon", "-c", CID, "--exit-dir", "/x/exits")
    assert exit_dir_of(CONMON, proc=proc) == Path("/x/exits")
    fake_proc(tmp_path, 7, "/usr/bin/conmon", "--exit-dir=/y/exits", "--full-attach")
    assert exit_dir_of(7, proc=tmp_path) == Path("/y/exits")


def test_a_conmon_without_exit_dir_or_without_a_readable_command_line_names_none(
    tmp_path: Path,
) -> None:
    fake_proc(tmp_path, CONMON, "/usr/bin/conmon", "-c", CID)
    with pytest.raises(ValueError, match="without --exit-dir"):
        exit_dir_of(CONMON, proc=tmp_path)
    with pytest.raises(OSError):
        exit_dir_of(999, proc=tmp_path)
    with pytest.raises(ValueError, match="no conmon"):
        exit_dir_of(0, proc=tmp_path)


def test_inotify_records_parse_to_watch_name_and_mask() -> None:
    def record(wd: int, mask: int, name: bytes) -> bytes:
        padded = name + b"\0" * (16 - len(name) % 16)
        return (
            wd.to_bytes(4, "little", signed=True)
            + mask.to_bytes(4, "little")
            + (0).to_bytes(4, "little")
            + len(padded).to_bytes(4, "little")
            + padded
        )

    data = record(1, IN_MOVED_TO, CID.encode()) + record(2, 0x8000, b"")
    assert list(parse_events(data)) == [(1, IN_MOVED_TO, CID), (2, 0x8000, "")]


# ------------------------------------------------------------------------------- the watch


@pytest.fixture
def exits_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tmp" / "exits"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def proc(tmp_path: Path, exits_dir: Path) -> Path:
    return fake_proc(tmp_path / "proc", CONMON, "/usr/bin/conmon", "--exit-dir", str(exits_dir))


@pytest.fixture
def watch(proc: Path) -> Iterator[ExitWatch]:
    w = ExitWatch(proc=proc)
    yield w
    w.close()


def write_exit_file(directory: Path, cid: str, code: int = 137) -> None:
    """As conmon does: a temporary file renamed into place."""
    tmp = directory / f"{cid}.tmp"
    tmp.write_text(str(code))
    os.replace(tmp, directory / cid)


async def test_an_exit_file_renamed_into_the_directory_tells_its_subscriber_only(
    watch: ExitWatch, exits_dir: Path
) -> None:
    mine, other = asyncio.Event(), asyncio.Event()
    with (
        watch.subscribe(CID, CONMON, mine.set) as watching,
        watch.subscribe(OTHER, CONMON, other.set) as watching_other,
    ):
        assert watching and watching_other
        assert watch.directories == [str(exits_dir)]  # one watch for both containers
        write_exit_file(exits_dir, CID)
        await eventually(mine.is_set, "mine set")
        assert not other.is_set()
        write_exit_file(exits_dir, OTHER)
        await eventually(other.is_set, "other set")
    assert watch.files_seen == 2


async def test_an_exit_file_written_in_place_counts_too(watch: ExitWatch, exits_dir: Path) -> None:
    told = asyncio.Event()
    with watch.subscribe(CID, CONMON, told.set):
        (exits_dir / CID).write_text("0")
        await eventually(told.is_set, "told set")


async def test_an_exit_file_already_there_is_told_at_once(
    watch: ExitWatch, exits_dir: Path
) -> None:
    write_exit_file(exits_dir, CID)
    told = asyncio.Event()
    with watch.subscribe(CID, CONMON, told.set):
        await eventually(told.is_set, "told set")


async def test_a_subscriber_is_told_once_and_never_after_its_block(
    watch: ExitWatch, exits_dir: Path
) -> None:
    calls: list[str] = []
    with watch.subscribe(OTHER, CONMON, lambda: calls.append("left")):
        pass
    with watch.subscribe(CID, CONMON, lambda: calls.append("mine")):
        write_exit_file(exits_dir, OTHER)
        write_exit_file(exits_dir, CID)
        await eventually(lambda: bool(calls), "bool(calls)")
        write_exit_file(exits_dir, CID, code=1)  # written again: still one call
        third = asyncio.Event()
        with watch.subscribe(CID + "x", CONMON, third.set):
            write_exit_file(exits_dir, CID + "x")
            await eventually(
                third.is_set, "third set"
            )  # a later file has landed, so the rewrite has too
    assert calls == ["mine"]


async def test_an_unreadable_command_line_degrades_to_events_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = ExitWatch(proc=tmp_path / "empty-proc")
    caplog.set_level(logging.DEBUG, logger="runtime.podman.exits")
    try:
        for cid in (CID, OTHER):
            with w.subscribe(cid, CONMON, lambda: None) as watching:
                assert watching is False
        assert w.degraded is not None and "cmdline" in w.degraded
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "judged from podman's events alone" in warnings[0].getMessage()
    finally:
        w.close()


async def test_an_absent_exit_directory_degrades_to_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proc = fake_proc(tmp_path / "proc", CONMON, "conmon", "--exit-dir", str(tmp_path / "gone"))
    w = ExitWatch(proc=proc)
    try:
        with caplog.at_level(logging.WARNING), w.subscribe(CID, CONMON, lambda: None) as ok:
            assert ok is False
        assert w.directories == []
        assert str(tmp_path / "gone") in caplog.text
    finally:
        w.close()


async def test_a_directory_that_goes_away_is_watched_again_when_it_is_back(
    watch: ExitWatch, exits_dir: Path
) -> None:
    with watch.subscribe(CID, CONMON, lambda: None):
        assert watch.directories == [str(exits_dir)]
        os.rmdir(exits_dir)
        await eventually(lambda: not watch.directories, "not watch.directories")
    os.mkdir(exits_dir)
    told = asyncio.Event()
    with watch.subscribe(CID, CONMON, told.set) as watching:
        assert watching
        write_exit_file(exits_dir, CID)
        await eventually(told.is_set, "told set")


async def test_a_closed_watch_watches_nothing(watch: ExitWatch) -> None:
    watch.close()
    watch.close()  # idempotent
    with watch.subscribe(CID, CONMON, lambda: None) as watching:
        assert watching is False


# ------------------------------------------------------------------- the controller's wait


class FakeAPI:
    """podman as the controller's wait sees it: scripted inspects and a kill log."""

    def __init__(self, *states: dict[str, Any] | Exception) -> None:
        self.states = list(states)
        self.inspects = 0
        self.kill_logged = False
        self.kill_reads = 0
        self.stops = 0

    async def inspect(self, ref: str) -> dict[str, Any]:
        self.inspects += 1
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if isinstance(state, Exception):
            raise state
        return {"Id": CID, "State": state}

    async def stop(self, ref: str, *, grace: float) -> None:
        self.stops += 1

    async def killed_since(self, container_id: str, since_ns: int) -> bool:
        assert container_id == CID and since_ns > 0
        self.kill_reads += 1
        return self.kill_logged


RUNNING = {"Status": "running", "Running": True, "StartedAt": STARTED, "ConmonPid": CONMON}
STOPPED_137 = {"Status": "stopped", "Running": False, "StartedAt": STARTED, "ExitCode": 137}


class ConnectedEvents(EventStream):
    """The event stream as connected, fed by the test through ``post``."""

    @property
    def connected(self) -> bool:
        return True


class FakeExitWatch(ExitWatch):
    """An exit watch whose files the test writes by calling ``exit_file()``."""

    def __init__(self, *, watching: bool = True) -> None:
        super().__init__()
        self.watching = watching
        self.subscribers: dict[str, Callable[[], None]] = {}

    @contextlib.contextmanager
    def subscribe(self, container_id: str, conmon_pid: int, fn: Callable[[], None]) -> Any:
        assert conmon_pid == CONMON  # the inspect's conmon names the directory
        if self.watching:
            self.subscribers[container_id] = fn
        try:
            yield self.watching
        finally:
            self.subscribers.pop(container_id, None)

    def exit_file(self) -> None:
        self.subscribers.pop(CID)()


class Waiting:
    def __init__(self, api: FakeAPI, exits: FakeExitWatch) -> None:
        clock = FakeClock()
        observer = NullObserver()
        self.events = ConnectedEvents(
            url="unix:///nowhere",
            node_id="node-a",
            clock=clock,
            observer=observer,
            reachability=Reachability(observer, clock=clock),
        )
        self.api, self.exits = api, exits
        runtime = Runtime(
            api=api,  # type: ignore[arg-type]
            events=self.events,
            clock=clock,
            observer=observer,
            node_id="node-a",
            exits=exits,
        )
        task = Task(id="i1", spec=TaskSpec(name="web", image="localhost/busybox:latest"))
        self.ctlr = PodmanController(runtime, task)
        self.wait: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.wait = asyncio.create_task(self.ctlr.wait())
        await eventually(lambda: CID in self.exits.subscribers, "CID in self.exits.subscribers")

    async def result(self) -> None:
        assert self.wait is not None
        async with asyncio.timeout(10):
            await self.wait

    def post(self, kind: EventKind) -> None:
        self.events.post(self.ctlr.name, ContainerEvent(kind, self.ctlr.name, container_id=CID))


async def test_an_exit_file_after_a_logged_kill_fails_the_task_with_the_exit_code() -> None:
    api = FakeAPI(RUNNING, STOPPED_137)
    api.kill_logged = True
    w = Waiting(api, FakeExitWatch())
    await w.start()
    w.exits.exit_file()
    with pytest.raises(ExitError) as raised:
        await w.result()
    assert raised.value.exit_code == 137
    assert "killed outside the agent" in str(raised.value)
    assert w.exits.early_exits == 1


async def test_an_exit_file_without_a_kill_waits_for_the_removal_podman_reports() -> None:
    api = FakeAPI(RUNNING, STOPPED_137)  # what an inspect reads in the middle of rm -f
    w = Waiting(api, FakeExitWatch())
    await w.start()
    w.exits.exit_file()
    await eventually(lambda: api.kill_reads > 0, "api.kill_reads > 0")
    assert w.wait is not None and not w.wait.done()  # not judged as exit 137
    w.post(EventKind.REMOVE)
    with pytest.raises(ContainerGone):
        await w.result()
    assert w.exits.early_exits == 0


async def test_a_container_gone_by_the_time_of_the_inspect_is_removed() -> None:
    w = Waiting(FakeAPI(RUNNING, NotFound("no such container")), FakeExitWatch())
    await w.start()
    w.exits.exit_file()
    with pytest.raises(ContainerGone):
        await w.result()


async def test_an_inspect_that_fails_leaves_the_exit_to_the_events() -> None:
    api = FakeAPI(RUNNING, TemporaryError("container is being removed"), STOPPED_137)
    api.kill_logged = True
    w = Waiting(api, FakeExitWatch())
    await w.start()
    w.exits.exit_file()
    await eventually(lambda: api.inspects == 2, "api.inspects == 2")
    await settle()
    assert w.wait is not None and not w.wait.done()
    w.post(EventKind.KILL)  # the stream's kill: inspected again, and judged by its code
    with pytest.raises(ExitError) as raised:
        await w.result()
    assert raised.value.exit_code == 137
    assert w.exits.early_exits == 0


async def test_the_agents_own_stop_is_not_judged_from_the_exit_file() -> None:
    api = FakeAPI(RUNNING, STOPPED_137)
    api.kill_logged = True
    w = Waiting(api, FakeExitWatch())
    await w.start()
    await w.ctlr.shutdown()  # the agent stops it: podman kills it after the grace period
    assert api.stops == 1
    w.exits.exit_file()
    await settle()
    assert api.inspects == 1 and api.kill_reads == 0
    assert w.wait is not None
    w.wait.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w.wait


async def test_without_a_watched_exit_dir_the_wait_is_judged_from_events_alone() -> None:
    api = FakeAPI(RUNNING, STOPPED_137)
    w = Waiting(api, FakeExitWatch(watching=False))
    w.wait = asyncio.create_task(w.ctlr.wait())
    await eventually(lambda: api.inspects == 1, "api.inspects == 1")
    w.post(EventKind.KILL)
    with pytest.raises(ExitError) as raised:
        await w.result()
    assert raised.value.exit_code == 137
    assert "killed outside the agent" in str(raised.value)
    assert api.kill_reads == 0

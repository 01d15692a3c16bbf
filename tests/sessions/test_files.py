"""FileSession: the desired directory as a session, with real files and a real watchfiles watch.

Waits are bounded by generous timeouts; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import watchfiles
from watchfiles import Change
from watchfiles._rust_notify import WatchfilesRustInternalError

import reconciler.sessions.files as files
from reconciler.core.session import DesiredInvalid, DesiredTasks, Session, SessionMessage
from reconciler.sessions.files import FileSession, read_desired
from tests.builders import node
from tests.spec.helpers import safe_dir, task_set, write

FileChange = tuple[Change, str]
TIMEOUT = 20.0


def web(image: str = "localhost/busybox:latest") -> str:
    return task_set(f"- name: web\n  image: {image}")


@contextlib.asynccontextmanager
async def watching(session: FileSession) -> AsyncIterator[AsyncGenerator[SessionMessage, None]]:
    messages = session.messages()
    try:
        yield messages
    finally:
        await session.close()

        async def drain() -> None:
            async for _ in messages:
                pass

        await asyncio.wait_for(drain(), TIMEOUT)
        await messages.aclose()


async def next_message(messages: AsyncGenerator[SessionMessage, None]) -> SessionMessage:
    return await asyncio.wait_for(anext(messages), TIMEOUT)


def names(msg: SessionMessage) -> list[str]:
    assert isinstance(msg, DesiredTasks), msg
    assert msg.full
    return [t.name for t in msg.tasks]


async def test_initial_read_delivers_the_full_desired_set(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", web())
    write(d / "job.yaml", task_set("- name: job\n  image: x"))
    async with watching(FileSession(d)) as messages:
        assert names(await next_message(messages)) == ["job", "web"]


async def test_empty_directory_is_a_valid_empty_set(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    async with watching(FileSession(d)) as messages:
        assert await next_message(messages) == DesiredTasks(tasks=(), full=True)


async def test_a_change_is_delivered(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", web())
    async with watching(FileSession(d)) as messages:
        assert names(await next_message(messages)) == ["web"]
        write(d / "job.yaml", task_set("- name: job\n  image: x"))
        assert names(await next_message(messages)) == ["job", "web"]
        write(d / "web.yaml", web("localhost/busybox:2"))
        msg = await next_message(messages)
        assert isinstance(msg, DesiredTasks)
        assert {t.name: t.spec.image for t in msg.tasks}["web"] == "localhost/busybox:2"
        (d / "job.yaml").unlink()
        assert names(await next_message(messages)) == ["web"]


async def test_a_bad_write_is_invalid_and_a_fix_applies_again(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", web())
    async with watching(FileSession(d)) as messages:
        assert names(await next_message(messages)) == ["web"]
        write(d / "web.yaml", web() + "    pull: sometimes\n")
        msg = await next_message(messages)
        assert isinstance(msg, DesiredInvalid)
        assert msg.errors == (
            f"{d / 'web.yaml'}:6: tasks[0].pull: "
            "must be one of missing, always, never, not 'sometimes'",
        )
        write(d / "web.yaml", web("localhost/busybox:fixed"))
        msg = await next_message(messages)
        assert isinstance(msg, DesiredTasks)
        assert msg.tasks[0].spec.image == "localhost/busybox:fixed"


async def test_truncated_file_is_invalid_not_empty(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", web())
    async with watching(FileSession(d)) as messages:
        assert names(await next_message(messages)) == ["web"]
        write(d / "web.yaml", "")
        msg = await next_message(messages)
        assert msg == DesiredInvalid(errors=(f"{d / 'web.yaml'}:1: file: file is empty",))


async def test_editor_temp_files_do_not_produce_messages(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", web())
    async with watching(FileSession(d)) as messages:
        assert names(await next_message(messages)) == ["web"]
        for junk in (".web.yaml.swp", "web.yaml~", "4913", "#web.yaml#", "notes.txt"):
            write(d / junk, "not: [valid")
        write(d / "job.yaml", task_set("- name: job\n  image: x"))
        # The next message is the real change; the junk changed nothing that counts.
        assert names(await next_message(messages)) == ["job", "web"]


async def test_unsafe_permissions_are_noticed(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", web())
    async with watching(FileSession(d, rescan_interval=0.5, poll_interval=0.2)) as messages:
        assert names(await next_message(messages)) == ["web"]
        os.chmod(d / "web.yaml", 0o666)
        msg = await next_message(messages)
        assert isinstance(msg, DesiredInvalid)
        assert "writable by group or others" in msg.errors[0]
        os.chmod(d / "web.yaml", 0o644)
        assert names(await next_message(messages)) == ["web"]


async def test_missing_directory_is_invalid_until_it_appears(tmp_path: Path) -> None:
    d = tmp_path / "d"
    async with watching(FileSession(d, poll_interval=0.1)) as messages:
        msg = await next_message(messages)
        assert msg == DesiredInvalid(errors=(f"{d}:0: directory: does not exist",))
        safe_dir(tmp_path / "staging")
        write(tmp_path / "staging" / "web.yaml", web())
        os.rename(tmp_path / "staging", d)
        assert names(await next_message(messages)) == ["web"]


async def test_directory_removed_and_recreated(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", web())
    async with watching(FileSession(d, poll_interval=0.1)) as messages:
        assert names(await next_message(messages)) == ["web"]
        shutil.rmtree(d)
        msg = await next_message(messages)
        assert isinstance(msg, DesiredInvalid)
        assert msg.errors == (f"{d}:0: directory: does not exist",)
        safe_dir(tmp_path / "new")
        write(tmp_path / "new" / "job.yaml", task_set("- name: job\n  image: x"))
        os.rename(tmp_path / "new", d)
        assert names(await next_message(messages)) == ["job"]
        # The new directory is watched, not just polled once.
        write(d / "web.yaml", web())
        assert names(await next_message(messages)) == ["job", "web"]


async def test_directory_swapped_by_rename_is_followed(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", web())
    async with watching(FileSession(d, poll_interval=0.1)) as messages:
        assert names(await next_message(messages)) == ["web"]
        safe_dir(tmp_path / "next")
        write(tmp_path / "next" / "job.yaml", task_set("- name: job\n  image: x"))
        os.rename(d, tmp_path / "old")
        os.rename(tmp_path / "next", d)
        msg = await next_message(messages)
        if isinstance(msg, DesiredInvalid):  # it may see the moment between the renames
            msg = await next_message(messages)
        assert names(msg) == ["job"]
        write(d / "web.yaml", web())
        assert names(await next_message(messages)) == ["job", "web"]


@pytest.fixture
def watch_started(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once a session waits on its directory watch (the real ``awatch``, observed)."""
    started = asyncio.Event()

    def observed_awatch(*args: Any, **kwargs: Any) -> AsyncGenerator[set[FileChange], None]:
        async def watch() -> AsyncGenerator[set[FileChange], None]:
            started.set()
            async for batch in watchfiles.awatch(*args, **kwargs):
                yield batch

        return watch()

    monkeypatch.setattr(files, "awatch", observed_awatch)
    return started


async def test_close_ends_the_stream(tmp_path: Path, watch_started: asyncio.Event) -> None:
    d = safe_dir(tmp_path / "d")
    session = FileSession(d)
    messages = session.messages()
    await next_message(messages)
    waiter = asyncio.create_task(anext(messages, None))
    await asyncio.wait_for(watch_started.wait(), TIMEOUT)  # the consumer waits on the watch
    await session.close()
    await session.close()  # idempotent
    assert await asyncio.wait_for(waiter, TIMEOUT) is None
    await messages.aclose()


async def test_closing_before_iterating_still_gives_the_initial_read(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    session = FileSession(d)
    await session.close()
    got = [m async for m in session.messages()]
    assert got == [DesiredTasks(tasks=(), full=True)]


async def test_messages_can_be_iterated_once(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    session = FileSession(d)
    async with watching(session) as messages:
        await next_message(messages)
        with pytest.raises(RuntimeError):
            await anext(session.messages())


async def test_session_protocol_no_ops(tmp_path: Path) -> None:
    session: Session = FileSession(tmp_path)
    assert session.connected is True
    await session.report({})
    await session.heartbeat(node(), ready=True)
    await session.close()


def test_read_desired_sorts_tasks_by_name(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "a.yaml", task_set("- name: zeta\n  image: x", "- name: alpha\n  image: x"))
    assert names(read_desired(d)) == ["alpha", "zeta"]


async def test_cancelling_the_consumer_stops_the_watch(
    tmp_path: Path, watch_started: asyncio.Event
) -> None:
    d = safe_dir(tmp_path / "d")
    session = FileSession(d, poll_interval=0.2)
    messages = session.messages()
    await next_message(messages)
    waiter = asyncio.create_task(anext(messages))
    await asyncio.wait_for(watch_started.wait(), TIMEOUT)  # the consumer waits on the watch
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, TIMEOUT)
    await messages.aclose()
    await session.close()


async def test_a_refused_watch_falls_back_to_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    polling: list[object] = []

    def fake_awatch(*args: object, **kwargs: object) -> object:
        polling.append(kwargs.get("force_polling"))
        if not kwargs.get("force_polling"):
            raise WatchfilesRustInternalError("inotify watch limit reached")
        return watchfiles.awatch(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(files, "awatch", fake_awatch)
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", web())
    async with watching(FileSession(d, poll_interval=0.2)) as messages:
        assert names(await next_message(messages)) == ["web"]
        write(d / "job.yaml", task_set("- name: job\n  image: x"))
        assert names(await next_message(messages)) == ["job", "web"]
        (d / "job.yaml").unlink()
        assert names(await next_message(messages)) == ["web"]
    assert polling[:2] == [None, True]
    assert "polling instead" in caplog.text


HOSTILE = {
    "deep nesting": "a: " + "[" * 500 + "]" * 500 + "\n",
    "a NUL byte": web().replace("latest", "lat\0est"),
    "a 5000-digit integer": web() + "    restart: {maxAttempts: " + "9" * 5000 + "}\n",
    "an infinite restart delay": web() + "    restart: {delay: " + "9" * 400 + "h}\n",
    "a merge-key bomb": "a0: &a0 {k: v}\n"
    + "".join(f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}\n" for i in range(1, 25)),
}


async def test_hostile_files_are_invalid_messages_and_the_stream_goes_on(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", web())
    async with watching(FileSession(d)) as messages:
        assert names(await next_message(messages)) == ["web"]
        for what, text in HOSTILE.items():
            write(d / "web.yaml", text)
            msg = await next_message(messages)
            assert isinstance(msg, DesiredInvalid), what
            assert msg.errors and all(e.startswith(f"{d / 'web.yaml'}:") for e in msg.errors)
            assert all("\n" not in e and len(e) < 1000 for e in msg.errors), what
            write(d / "web.yaml", web(f"localhost/busybox:{len(what)}"))
            msg = await next_message(messages)
            assert isinstance(msg, DesiredTasks), what
            assert msg.tasks[0].spec.image == f"localhost/busybox:{len(what)}"


def test_read_desired_turns_an_unforeseen_exception_into_an_invalid_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: object) -> object:
        raise RecursionError("x" * 100_000)

    monkeypatch.setattr(files, "load_directory", broken)
    msg = read_desired(tmp_path)
    assert isinstance(msg, DesiredInvalid)
    [line] = msg.errors
    assert line.startswith(f"{tmp_path}:0: directory: could not be read (RecursionError: xxx")
    assert len(line) < 1000


async def test_the_stream_survives_a_reader_that_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = files.read_desired
    calls: list[Path] = []

    def flaky(path: Path) -> object:
        calls.append(path)
        if len(calls) == 1:
            raise MemoryError
        return real(path)

    monkeypatch.setattr(files, "read_desired", flaky)
    d = safe_dir(tmp_path / "d")
    async with watching(FileSession(d)) as messages:
        msg = await next_message(messages)
        assert msg == DesiredInvalid(errors=(f"{d}:0: directory: could not be read (MemoryError)",))
        write(d / "web.yaml", web())
        assert names(await next_message(messages)) == ["web"]


async def test_a_file_written_in_two_parts_with_a_pause_ends_as_the_full_set(
    tmp_path: Path,
) -> None:
    # A burst is read once it has been quiet for a few milliseconds, so a writer that pauses
    # mid-file may be seen half-written (reported invalid); its last write is always read.
    d = safe_dir(tmp_path / "d")
    async with watching(FileSession(d)) as messages:
        assert await next_message(messages) == DesiredTasks(tasks=(), full=True)
        text = task_set("- name: web\n  image: localhost/busybox:latest\n- name: job\n  image: x")
        half = len(text) // 2
        write(d / "set.yaml", text[:half])
        await asyncio.sleep(0.2)  # the writer's pause, longer than the quiet step: under test
        write(d / "set.yaml", text)
        msg = await next_message(messages)
        while not isinstance(msg, DesiredTasks) or not msg.tasks:
            msg = await next_message(messages)
        assert names(msg) == ["job", "web"]

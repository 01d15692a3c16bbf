"""``runtime.podman.listing``: first looks share one list call, and never an older one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.errors import TemporaryError
from runtime.podman.listing import Listed, Listing, parent_pid


def entry(name: str, state: str = "running", **more: Any) -> dict[str, Any]:
    return {"Id": f"id-{name}", "Names": [name], "State": state, **more}


class FakeList:
    """A list call whose answer the test releases; counts and records what each call saw."""

    def __init__(self, *entries: dict[str, Any]) -> None:
        self.entries = list(entries)
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()
        self.error: Exception | None = None
        self.began = asyncio.Event()

    async def __call__(self) -> list[dict[str, Any]]:
        self.calls += 1
        self.began.set()
        seen = list(self.entries)  # what podman had when the call began
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return seen


async def test_looks_asked_together_share_one_list_call() -> None:
    fake = FakeList(*(entry(f"c{i}", StartedAt=1_700_000_000, Pid=100 + i) for i in range(50)))
    listing = Listing(fake)
    looks = await asyncio.gather(*(listing.look(f"c{i}") for i in range(50)))
    assert fake.calls == 1 and listing.calls == 1
    assert [x.id if x else None for x in looks] == [f"id-c{i}" for i in range(50)]
    first = looks[0]
    assert first is not None and first.running and first.pid == 100
    assert first.started_ns == 1_700_000_000 * 1_000_000_000


async def test_a_look_asked_while_a_list_is_in_flight_waits_for_the_next_one() -> None:
    fake = FakeList(entry("a"))
    fake.release.clear()
    listing = Listing(fake)
    early = asyncio.ensure_future(listing.look("b"))
    await fake.began.wait()  # the first list call has begun, without "b"
    fake.entries.append(entry("b"))
    late = asyncio.ensure_future(listing.look("b"))
    await asyncio.sleep(0)
    fake.release.set()
    assert await early is None  # the list that began before "b" existed
    seen = await late
    assert seen is not None and seen.id == "id-b"  # a list begun after the look was asked
    assert fake.calls == 2


async def test_a_missing_container_is_none_and_an_exited_one_keeps_its_exit_code() -> None:
    listing = Listing(FakeList(entry("gone-not"), entry("x", "exited", ExitCode=137)))
    assert await listing.look("other") is None
    exited = await listing.look("x")
    assert exited is not None and not exited.running and exited.exit_code == 137


async def test_a_failed_list_fails_every_look_of_its_batch_and_the_next_batch_asks_again() -> None:
    fake = FakeList(entry("a"))
    fake.error = TemporaryError("podman does not answer")
    listing = Listing(fake)
    results = await asyncio.gather(listing.look("a"), listing.look("a"), return_exceptions=True)
    assert all(isinstance(r, TemporaryError) for r in results)
    assert fake.calls == 1
    fake.error = None
    assert await listing.look("a") is not None
    assert fake.calls == 2


async def test_cancelling_one_look_leaves_the_others_of_its_batch_answered() -> None:
    fake = FakeList(entry("a"), entry("b"))
    fake.release.clear()
    listing = Listing(fake)
    a = asyncio.ensure_future(listing.look("a"))
    b = asyncio.ensure_future(listing.look("b"))
    await fake.began.wait()
    a.cancel()
    fake.release.set()
    with pytest.raises(asyncio.CancelledError):
        await a
    seen = await b
    assert seen is not None and seen.id == "id-b"


@pytest.mark.parametrize(
    ("fields", "started_ns", "pid"),
    [
        ({"StartedAt": 0, "Pid": 0}, 0, None),
        ({"StartedAt": -62135596800}, 0, None),  # Go's zero time, never started
        ({"StartedAt": 5, "Pid": 7}, 5_000_000_000, 7),
        ({}, 0, None),
    ],
)
def test_list_fields_become_a_first_look(
    fields: dict[str, Any], started_ns: int, pid: int | None
) -> None:
    listed = Listed.from_list({"Id": "x", "State": "created", **fields})
    assert (listed.started_ns, listed.pid, listed.running) == (started_ns, pid, False)


def test_parent_pid_reads_the_parent_from_proc_even_past_a_tricky_command_name(
    tmp_path: Path,
) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "stat").write_bytes(b"42 (sh) x) (y) S 4242 42 42 0 -1 4194560 0 0\n")
    assert parent_pid(42, proc=tmp_path) == 4242
    assert parent_pid(7, proc=tmp_path) == 0  # no such process
    assert parent_pid(None, proc=tmp_path) == 0
    (tmp_path / "9").mkdir()
    (tmp_path / "9" / "stat").write_bytes(b"garbage")
    assert parent_pid(9, proc=tmp_path) == 0

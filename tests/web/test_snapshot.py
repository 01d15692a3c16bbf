"""What the snapshot adds for the status page: bounded desired-source errors and ``Changes``."""

from __future__ import annotations

import asyncio

import pytest

from reconciler.core.clock import settle
from reconciler.core.snapshot import MAX_ERROR_CHARS, MAX_ERROR_LINES, Changes, bounded_errors


def test_few_short_error_lines_are_kept_as_they_are() -> None:
    lines = ("d/a.yaml:3: tasks[0].image: required", "d/b.yaml:1: yaml: bad indent")
    assert bounded_errors(lines) == lines


def test_many_error_lines_are_cut_with_a_count_of_the_rest() -> None:
    lines = [f"d/a.yaml:{i}: x: bad" for i in range(1, 1001)]
    kept = bounded_errors(lines)
    assert len(kept) == MAX_ERROR_LINES
    assert kept[: MAX_ERROR_LINES - 1] == tuple(lines[: MAX_ERROR_LINES - 1])
    assert kept[-1] == f"... and {1000 - MAX_ERROR_LINES + 1} more problems"


def test_exactly_the_limit_keeps_every_line() -> None:
    lines = [f"d/a.yaml:{i}: x: bad" for i in range(MAX_ERROR_LINES)]
    assert bounded_errors(lines) == tuple(lines)


def test_a_long_line_is_cut_and_control_characters_become_spaces() -> None:
    (long,) = bounded_errors(["d/a.yaml:1: x: " + "y" * 100_000])
    assert len(long) == MAX_ERROR_CHARS
    assert long.endswith("...")
    (odd,) = bounded_errors(["d/a.yaml:1: x:\x1b[31m red\nnext\ttab"])
    assert odd == "d/a.yaml:1: x: [31m red next\ttab"


async def test_a_waiter_wakes_when_the_version_is_bumped() -> None:
    changes = Changes()
    seen = changes.version
    waiter = asyncio.create_task(changes.wait(seen))
    await settle()
    assert not waiter.done()
    changes.bump()
    async with asyncio.timeout(10):
        await waiter
    assert changes.version == seen + 1


async def test_waiting_on_an_old_version_returns_at_once() -> None:
    changes = Changes()
    changes.bump()
    async with asyncio.timeout(10):
        await changes.wait(0)


async def test_a_wait_can_be_bounded_and_cancelled() -> None:
    changes = Changes()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await changes.wait(changes.version)
    changes.bump()  # nobody waits any more; bumping still works
    assert changes.version == 1

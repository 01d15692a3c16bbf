"""The agent's page in a real headless Chromium outlives its event stream: the server ends each
stream after its maximum life (short here), the page's ``EventSource`` opens a new one by
itself, and the page keeps following the agent. The server runs in this test's loop; the
browser is driven from a thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from reconciler.core.model import TaskState
from reconciler.testing.polling import eventually
from reconciler.web import server as rhttp
from tests.e2e.browser_support import Browser, require_chromium
from tests.web.support import with_state
from tests.web.test_events import HANG, running

LIFE = 1.0  # seconds a stream lives in this test: several ends within the hang guard


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    require_chromium()
    b = await asyncio.to_thread(Browser)
    try:
        yield b
    finally:
        await asyncio.to_thread(b.quit)


def in_browser(check: Callable[[], Any]) -> Callable[[], Any]:
    """``check`` (which drives the browser) as an ``eventually`` probe, run in a thread."""
    return lambda: asyncio.to_thread(check)


async def test_the_page_reconnects_when_its_stream_ends_and_keeps_following(
    browser: Browser,
) -> None:
    async with running(rhttp.Limits(stream_life=LIFE, max_streams=1)) as agent:
        await asyncio.to_thread(browser.open, f"http://127.0.0.1:{agent.port}/")

        def streams_opened() -> int:
            return sum(u.endswith("/v1/events") for u in browser.requested_urls())

        await eventually(
            in_browser(lambda: streams_opened() >= 2), "a second event stream", within=HANG * 3
        )
        # only one stream may be open at once (max_streams=1): the first one has ended
        agent.source.swap(with_state(agent.source.snap, "web", TaskState.FAILED, err="exit 1"))
        await eventually(
            in_browser(lambda: (browser.row("web") or {}).get("state") == "failed"),
            "the change shown through the new stream",
            within=HANG * 3,
        )
        await eventually(in_browser(lambda: browser.text("live") == "Live"), "live again")
        assert await asyncio.to_thread(browser.console_errors) == []

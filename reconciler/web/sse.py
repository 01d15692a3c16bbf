"""Server-sent event streams: the one long-lived response of the HTTP server, for any live page.

A live page (the agent's status page, and the fleet manager's) is a ``LivePage``: it turns the
current snapshot into a model, the model into a full-state event, and two models into a delta
event. This module owns the wire and the stream's life:

* **No polling, no work without a watcher.** A stream sleeps on ``Changes.wait``, which the
  snapshot's owner bumps after each swap. No stream open, no work: the model and the delta are
  built only by a stream that was woken.
* **Coalescing.** A woken stream diffs its last sent model against the *current* snapshot, so
  any number of swaps in between cost one delta; after an event it waits at least
  ``MIN_INTERVAL`` before the next, so a storm of changes cannot keep it busy.
* **Keepalive.** A comment every ``KEEPALIVE`` seconds keeps proxies and SSH tunnels from
  closing an idle stream, and finds clients that went away silently.
* **Slow clients are dropped.** Writes go through a bounded buffer: a client that does not take
  an event within ``WRITE_TIMEOUT``, or lets more than ``MAX_BUFFER`` bytes pile up, is cut off
  (its browser reconnects and gets a fresh full state).
* **Prompt end.** A client that hangs up is noticed at once (its EOF is watched), and every
  stream ends when the server sets its ``closing`` event on shutdown.
* **A bounded life.** A stream ends after the ``life`` its server gives it, so no client holds
  a stream slot forever; a browser reconnects by itself and starts again from a full state.

The first event of every stream is the full state; a browser's ``EventSource`` reconnects by
itself after an error, and the ``retry`` field tells it how soon.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final, Protocol, TypeVar

from reconciler.core.snapshot import Changes

__all__ = ["HEAD", "LivePage", "Page", "event", "stream"]

#: Seconds between keepalive comments on an idle stream.
KEEPALIVE: Final = 15.0
#: Least seconds between two events of one stream (later changes are folded into one delta).
MIN_INTERVAL: Final = 0.05
#: A client must take each event within this many seconds ...
WRITE_TIMEOUT: Final = 10.0
#: ... and never leave more than this many unsent bytes behind.
MAX_BUFFER: Final = 4 << 20
#: What a client may send after its request before it is cut off (nothing is expected).
MAX_INPUT: Final = 64 << 10
#: How soon a browser reconnects after the stream broke, in milliseconds.
RETRY_MS: Final = 2000

#: The response head of a stream; the body ends when the connection does.
HEAD: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-store\r\n"
    b"Connection: close\r\n"
    b"X-Accel-Buffering: no\r\n"
    b"X-Content-Type-Options: nosniff\r\n"
    b"\r\n"
)
KEEPALIVE_COMMENT: Final = b": keepalive\n\n"

M = TypeVar("M")


class LivePage(Protocol[M]):
    """What a stream needs from a page; ``M`` is the page's model of one snapshot."""

    def model(self) -> M:
        """The model of the current snapshot. Cheap to call again for the same snapshot."""
        ...

    def full(self, model: M) -> bytes:
        """The whole state as one line of JSON: the first event of every stream."""
        ...

    def delta(self, old: M, new: M) -> bytes | None:
        """What changed as one line of JSON, or ``None`` when nothing the page shows did."""
        ...


class Page(LivePage[M], Protocol[M]):
    """A live page served at ``/``: its HTML, and the Content-Security-Policy that allows
    exactly the page's own inline style and script."""

    @property
    def content_security_policy(self) -> str: ...

    def html(self) -> bytes:
        """The page for the current snapshot, rendered now."""
        ...


class SlowClient(Exception):
    """The client let too much pile up, or did not take an event in time."""


def event(data: bytes) -> bytes:
    """One server-sent event carrying ``data`` (one line: JSON escapes its newlines)."""
    if b"\n" in data or b"\r" in data:
        raise ValueError("an event's data must be one line")
    return b"data: " + data + b"\n\n"


async def stream(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    page: LivePage[M],
    changes: Changes | None,
    closing: asyncio.Event,
    *,
    life: float,
) -> None:
    """Serve one event stream on a connection whose request has been read.

    Writes the head, the full state, then a delta after each change (``changes`` None: the full
    state and keepalives only). Returns when the client hangs up or sends more than it should,
    when ``closing`` is set, or after ``life`` seconds; raises ``SlowClient`` when the client
    cannot keep up and ``ConnectionError`` when the connection broke. The caller closes the writer.
    """
    sender = asyncio.create_task(_send(writer, page, changes))
    hangup = asyncio.create_task(_until_eof(reader))
    shutdown = asyncio.create_task(closing.wait())
    aged = asyncio.create_task(asyncio.sleep(life))
    tasks = (sender, hangup, shutdown, aged)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    error = None if sender.cancelled() else sender.exception()
    if error is not None:
        raise error


async def _send(writer: asyncio.StreamWriter, page: LivePage[M], changes: Changes | None) -> None:
    loop = asyncio.get_running_loop()
    version = changes.version if changes is not None else 0
    model = page.model()
    writer.write(HEAD + b"retry: %d\n\n" % RETRY_MS + event(page.full(model)))
    await _drain(writer)
    sent_at = loop.time()
    while True:
        if changes is None or not await _changed(changes, version):
            await _write(writer, KEEPALIVE_COMMENT)
            continue
        pause = sent_at + MIN_INTERVAL - loop.time()
        if pause > 0:
            await asyncio.sleep(pause)
        version = changes.version
        new = page.model()
        data = page.delta(model, new)
        model = new
        if data is not None:
            await _write(writer, event(data))
            sent_at = loop.time()


async def _changed(changes: Changes, version: int) -> bool:
    """Whether a new snapshot came within ``KEEPALIVE`` seconds."""
    try:
        async with asyncio.timeout(KEEPALIVE):
            await changes.wait(version)
    except TimeoutError:
        return False
    return True


async def _write(writer: asyncio.StreamWriter, chunk: bytes) -> None:
    transport = writer.transport
    if transport.is_closing():
        raise ConnectionResetError("connection closed")
    if transport.get_write_buffer_size() + len(chunk) > MAX_BUFFER:
        raise SlowClient("write buffer full")
    writer.write(chunk)
    await _drain(writer)


async def _drain(writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()
    except TimeoutError as e:
        raise SlowClient("event not taken in time") from e


async def _until_eof(reader: asyncio.StreamReader) -> None:
    """Return when the client hangs up, or has sent more than ``MAX_INPUT`` bytes."""
    budget = MAX_INPUT
    with contextlib.suppress(ConnectionError):
        while budget > 0:
            chunk = await reader.read(min(budget, 4096))
            if not chunk:
                return
            budget -= len(chunk)

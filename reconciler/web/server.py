"""The agent's HTTP endpoints: ``/``, ``/v1/events``, ``/metrics``, ``/healthz``, ``/readyz``,
``/v1/tasks`` and ``/v1/node``.

This module owns the agent's HTTP surface. It is a deliberately tiny HTTP/1.1 server on
``asyncio.start_server`` rather than a framework: a handful of read-only GET routes do not
justify a dependency, and a small server is easy to make robust on an edge host that anyone on
the network may poke at.

* **Read-only, from the snapshot.** Every handler reads the agent's current immutable
  ``Snapshot`` (and ``Metrics.render()``, which reads it too). Nothing here calls podman or the
  store, so ``/healthz`` answers while podman hangs, and a scrape costs the same whatever the
  runtime does.
* **Bounded.** The request line must come within a short deadline (a socket that sends
  nothing is closed) and the whole head within a longer one, capped in size and line count;
  the response must drain within a deadline; every response is ``Connection: close``: there
  is no keep-alive state to leak.
* **Slots no neighbour can take.** Connections are capped per client address and in all
  (``reconciler.web.admission.Limits``); once the ordinary slots are all held, a few more are
  kept for ``/metrics``, ``/healthz`` and ``/readyz`` alone, so scrapes and probes still answer.
* **No DNS rebinding.** The page and ``/v1/*`` answer only a ``Host`` that is an IP literal,
  ``localhost`` or a name given to the server; other requests get 421
  (``reconciler.web.admission.host_allowed``). ``/metrics`` and the probes answer any ``Host``.
* **One long-lived response.** ``/v1/events`` is a server-sent event stream that stays open
  (``reconciler.web.sse``): streams are capped apart from ordinary connections
  (``Limits.max_streams``), wake only when the agent's ``Changes`` is bumped, drop slow clients,
  end after ``Limits.stream_life`` (the browser reconnects), and end when the server is closed
  (``Server.close`` cancels them).
* **Strict.** GET (and HEAD, which probes use) only: other methods get 405, unknown paths 404,
  a malformed request 400. The query string is ignored.
* **Never env values.** ``/v1/tasks`` is ``TaskView.to_json()``, which carries no spec at all;
  the status page and its events add only each instance's image and the desired source's errors.

JSON bodies are cached per snapshot object, and a gzip body of ``/metrics`` per rendered text,
so repeated requests against an unchanged agent cost a few identity checks. The page itself is
rendered per request (it shows durations), which only a person loading it pays for.

``serve_routes`` serves a route table of the caller's with the same server and limits (the
fleet manager's ``/metrics``, ``/healthz`` and ``/readyz``), and a live page of the caller's at
``/`` and ``/v1/events`` (the manager's status page), its streams bounded as the agent's are.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any, Final

from reconciler.core.snapshot import Changes
from reconciler.web import sse
from reconciler.web.admission import (
    DEFAULT_LIMITS,
    PROBE_PATHS,
    Admission,
    Limits,
    Slots,
    host_allowed,
)

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "Response",
    "Route",
    "Server",
    "probe_routes",
    "serve_routes",
]

log = logging.getLogger(__name__)

#: Largest accepted request head (request line plus headers), and most header lines.
MAX_HEAD_BYTES: Final = 8192
MAX_HEADER_LINES: Final = 100
#: A client must send its whole request head within this many seconds (its first line sooner:
#: ``Limits.first_line_timeout``) ...
READ_TIMEOUT: Final = 10.0
#: ... and take the whole response within this many.
WRITE_TIMEOUT: Final = 10.0
#: After an error answer, unread input is discarded for at most this long, and this much.
LINGER_TIMEOUT: Final = 2.0
LINGER_BYTES: Final = 1 << 20
EVENTS_PATH: Final = "/v1/events"
#: Bodies smaller than this are never gzipped: the header would eat the gain.
GZIP_MIN_BYTES: Final = 1024

_TEXT: Final = "text/plain; charset=utf-8"
_HTML: Final = "text/html; charset=utf-8"
_EVENTS: Final = "text/event-stream; charset=utf-8"
#: Paths whose bodies are gzipped for a client that accepts it.
_GZIP_PATHS: Final = frozenset({"/metrics", "/"})
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    421: "Misdirected Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class _Request:
    __slots__ = ("headers", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.headers = headers


class _BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


Response = tuple[int, str, bytes]
"""What a route answers: (status, content type, body)."""

Route = Callable[[], Response]
"""A GET route: its answer, read from state the caller keeps (never I/O)."""


class _App:
    """The server's routes (path -> ``Route``), and a live page with its event stream."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        page: sse.Page[Any] | None = None,
        changes: Changes | None = None,
        hosts: frozenset[str] = frozenset(),
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._routes: dict[str, Route] = dict(routes)
        self._hosts = hosts
        self._limits = limits
        self._slots = Slots(limits)
        self._page = page
        self._changes = changes
        if page is not None:
            self._routes["/"] = self._get_page
            self._routes[EVENTS_PATH] = self._head_events
        self._streams: set[asyncio.Task[Any]] = set()
        self._closing = asyncio.Event()
        self._gzip_cache: dict[str, tuple[bytes | None, bytes]] = {}

    # ---------------------------------------------------------------- connection handling

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        pool = self._slots.take(client)
        streamed = False
        if pool is Admission.REFUSED:
            writer.transport.abort()  # nothing read, nothing to answer: the client is over its cap
            return
        try:
            request = await self._read(reader, writer)
            if request is None:
                pass
            elif pool is Admission.RESERVED and request.path not in PROBE_PATHS:
                body = b"busy: only /metrics, /healthz and /readyz answer now\n"
                await _write_response(writer, 503, _TEXT, body, {"Retry-After": "5"})
            elif self._is_stream(request):
                self._slots.move_to_stream()  # counted against max_streams instead
                streamed = True
                await self._stream(reader, writer)
            else:
                await self._answer(request, writer)
        except ConnectionError:
            pass  # the client went away; nothing to tell it
        except (TimeoutError, sse.SlowClient):
            writer.transport.abort()  # it does not read: drop what it never took, and the socket
        except Exception:
            log.exception("event=http_error")
        finally:
            self._slots.give(client, pool, streamed=streamed)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _read(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Request | None:
        """The request, or None when it was answered with an error (or never came)."""
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                return await _read_request(reader, self._limits.first_line_timeout)
        except TimeoutError:
            await _write_response(writer, 408, _TEXT, b"request timeout\n", {})
        except _BadRequest as e:
            await _write_response(writer, e.status, _TEXT, e.text.encode() + b"\n", {})
            await _linger(reader, writer)
        except asyncio.IncompleteReadError:
            pass  # closed before a full request; nobody to answer
        return None

    def _is_stream(self, request: _Request) -> bool:
        return (
            request.path == EVENTS_PATH
            and request.method == "GET"
            and EVENTS_PATH in self._routes
            and self._host_ok(request)
        )

    def _host_ok(self, request: _Request) -> bool:
        return request.path in PROBE_PATHS or host_allowed(request.headers.get("host"), self._hosts)

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._streams) >= self._limits.max_streams or self._closing.is_set():
            body = b"too many event streams open; try again later\n"
            await _write_response(writer, 503, _TEXT, body, {"Retry-After": "30"})
            return
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            assert self._page is not None  # EVENTS_PATH is routed only with a page
            await sse.stream(
                reader,
                writer,
                self._page,
                self._changes,
                self._closing,
                life=self._limits.stream_life,
            )
        finally:
            self._streams.discard(task)

    def end_streams(self) -> list[asyncio.Task[Any]]:
        """End every open event stream (and refuse new ones); their tasks, to wait for."""
        self._closing.set()
        return list(self._streams)

    async def _answer(self, request: _Request, writer: asyncio.StreamWriter) -> None:
        status, ctype, body, extra = self._dispatch(request)
        await _write_response(
            writer, status, ctype, body, extra, head_only=request.method == "HEAD"
        )

    def _dispatch(self, request: _Request) -> tuple[int, str, bytes, dict[str, str]]:
        if not self._host_ok(request):
            return 421, _TEXT, b"unknown Host: use an IP address or a name given --http-host\n", {}
        route = self._routes.get(request.path)
        if route is None:
            return 404, _TEXT, b"not found\n", {}
        if request.method not in ("GET", "HEAD"):
            return 405, _TEXT, b"method not allowed\n", {"Allow": "GET, HEAD"}
        try:
            status, ctype, body = route()
        except Exception:
            log.exception("event=http_handler_error path=%s", request.path)
            return 500, _TEXT, b"internal error\n", {}
        extra = _page_headers(self._page) if request.path == "/" else {}
        if request.path in _GZIP_PATHS:
            extra["Vary"] = "Accept-Encoding"
            if _accepts_gzip(request) and len(body) >= GZIP_MIN_BYTES:
                body = self._gzipped(request.path, body)
                extra["Content-Encoding"] = "gzip"
        return status, ctype, body, extra

    # ---------------------------------------------------------------- the page

    def _get_page(self) -> Response:
        assert self._page is not None  # "/" is routed to this only with a page
        return 200, _HTML, self._page.html()

    def _head_events(self) -> Response:
        return 200, _EVENTS, b""  # GET never gets here: it becomes a stream

    def _gzipped(self, path: str, body: bytes) -> bytes:
        source, compressed = self._gzip_cache.get(path, (None, b""))
        if source is not body:
            compressed = gzip.compress(body, compresslevel=1, mtime=0)
            self._gzip_cache[path] = (body, compressed)
        return compressed


class Server:
    """The listening server and the event streams it has open.

    ``close()`` stops listening and ends every stream; ``wait_closed()`` waits for both. Each is
    idempotent.
    """

    def __init__(self, server: asyncio.Server, app: _App) -> None:
        self._server = server
        self._app = app
        self._ending: list[asyncio.Task[Any]] = []

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return self._server.sockets

    def is_serving(self) -> bool:
        return self._server.is_serving()

    async def serve_forever(self) -> None:
        """Accept connections until ``close()``; as ``asyncio.Server.serve_forever``."""
        await self._server.serve_forever()

    def close(self) -> None:
        self._server.close()
        self._ending += self._app.end_streams()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._ending, return_exceptions=True)
        await self._server.wait_closed()


def _page_headers(page: sse.Page[Any] | None) -> dict[str, str]:
    """The headers of a page's HTML: its policy, and no sniffing or referrers."""
    if page is None:
        return {}
    return {
        "Content-Security-Policy": page.content_security_policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def _accepts_gzip(request: _Request) -> bool:
    accept = request.headers.get("accept-encoding", "")
    for item in accept.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


async def _read_request(reader: asyncio.StreamReader, first_line_timeout: float) -> _Request:
    """Read and parse one request head, its first line within ``first_line_timeout``. Raises
    ``_BadRequest`` for anything malformed, ``TimeoutError`` when the first line is late."""
    total = 0
    lines: list[str] = []
    first_line_by = asyncio.get_running_loop().time() + first_line_timeout
    while True:
        try:
            async with asyncio.timeout_at(None if lines else first_line_by):
                raw = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as e:
            raise _BadRequest(431, "request head too large") from e
        total += len(raw)
        if total > MAX_HEAD_BYTES or len(lines) > MAX_HEADER_LINES:
            raise _BadRequest(431, "request head too large")
        line = raw.rstrip(b"\r\n")
        if not line:
            if not lines:
                continue  # tolerate blank lines before the request line (RFC 9112 2.2)
            break
        try:
            lines.append(line.decode("ascii"))
        except UnicodeDecodeError as e:
            raise _BadRequest(400, "request head is not ASCII") from e
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1]:
        raise _BadRequest(400, "malformed request line")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for header in lines[1:]:
        name, sep, value = header.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "malformed header line")
        if name.lower() == "host" and "host" in headers:
            raise _BadRequest(400, "more than one Host header")  # RFC 9112 3.2
        headers[name.lower()] = value.strip()
    path = target.split("?", 1)[0]
    return _Request(method, path, headers)


async def _write_response(
    writer: asyncio.StreamWriter,
    status: int,
    content_type: str,
    body: bytes,
    extra: dict[str, str],
    *,
    head_only: bool = False,
) -> None:
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    head += [f"{k}: {v}" for k, v in extra.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(body)
    async with asyncio.timeout(WRITE_TIMEOUT):
        await writer.drain()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then discard what the client still sends (a bounded amount, briefly).

    Closing a socket with unread input makes the kernel send a reset, which can destroy the
    error response before the client reads it.
    """
    with contextlib.suppress(OSError, TimeoutError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_TIMEOUT):
            budget = LINGER_BYTES
            while budget > 0:
                chunk = await reader.read(min(budget, 16384))
                if not chunk:
                    break
                budget -= len(chunk)


async def serve_routes(
    host: str,
    port: int,
    routes: Mapping[str, Route],
    *,
    page: sse.Page[Any] | None = None,
    changes: Changes | None = None,
    hosts: frozenset[str] = frozenset(),
    limits: Limits = DEFAULT_LIMITS,
) -> Server:
    """Start serving ``routes`` (path -> ``Route``) on ``host:port`` (0 picks a free port),
    GET and HEAD only, with ``limits``; with a ``page``, also ``/`` and ``/v1/events``
    (streams capped by ``limits.max_streams``, woken by ``changes``: without it, a stream sends
    the state at connect and then keepalives only). Every path but ``PROBE_PATHS`` answers only
    a ``Host`` that is an IP literal, ``localhost`` or one of ``hosts`` (normalised by
    ``reconciler.web.admission.normal_host``); others get 421. Returns the server; the caller
    closes it (``close()`` then ``wait_closed()``), which also ends open event streams. Raises
    ``OSError`` when the address cannot be bound."""
    app = _App(routes, page, changes, hosts, limits)
    server = await asyncio.start_server(app.handle, host, port, limit=MAX_HEAD_BYTES)
    return Server(server, app)


def probe_routes(
    health: Callable[[], tuple[bool, str]], readiness: Callable[[], tuple[bool, str]]
) -> dict[str, Route]:
    """``/healthz`` (200 ``ok`` while every loop is alive) and ``/readyz`` (200 ``ready``),
    each 503 with the reason otherwise."""

    def healthz() -> Response:
        alive, why = health()
        return (200, _TEXT, b"ok") if alive else (503, _TEXT, why.encode())

    def readyz() -> Response:
        ready, why = readiness()
        return (200, _TEXT, b"ready") if ready else (503, _TEXT, why.encode())

    return {"/healthz": healthz, "/readyz": readyz}

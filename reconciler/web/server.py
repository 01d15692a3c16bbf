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
* **Bounded.** The request head is capped in size and line count and must arrive within a
  deadline (a slow or silent client is dropped), the response must drain within a deadline,
  concurrent connections are capped, and every response is ``Connection: close``: there is no
  keep-alive state to leak.
* **One long-lived response.** ``/v1/events`` is a server-sent event stream that stays open
  (``reconciler.web.sse``): streams are capped apart from ordinary connections
  (``MAX_STREAMS``), wake only when the agent's ``Changes`` is bumped, drop slow clients, and
  end when the server is closed (``Server.close`` cancels them).
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

from reconciler.core.codec import compact
from reconciler.core.snapshot import Changes, Snapshot
from reconciler.observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from reconciler.observe.metrics import Metrics
from reconciler.web import sse
from reconciler.web.agent_page import AgentPage
from reconciler.web.state import node_json

__all__ = ["Route", "Server", "node_json", "serve", "serve_routes"]

log = logging.getLogger(__name__)

#: Largest accepted request head (request line plus headers), and most header lines.
MAX_HEAD_BYTES: Final = 8192
MAX_HEADER_LINES: Final = 100
#: A client must send its whole request head within this many seconds ...
READ_TIMEOUT: Final = 10.0
#: ... and take the whole response within this many.
WRITE_TIMEOUT: Final = 10.0
#: After an error answer, unread input is discarded for at most this long, and this much.
LINGER_TIMEOUT: Final = 2.0
LINGER_BYTES: Final = 1 << 20
#: Connections served at once; more are closed without an answer.
MAX_CONNECTIONS: Final = 64
#: Event streams open at once, counted apart from the connections above; more get a 503.
MAX_STREAMS: Final = 16
EVENTS_PATH: Final = "/v1/events"
#: Bodies smaller than this are never gzipped: the header would eat the gain.
GZIP_MIN_BYTES: Final = 1024

_TEXT: Final = "text/plain; charset=utf-8"
_JSON: Final = "application/json"
_HTML: Final = "text/html; charset=utf-8"
_EVENTS: Final = "text/event-stream; charset=utf-8"
#: Paths whose bodies are gzipped for a client that accepts it.
_GZIP_PATHS: Final = frozenset({"/metrics", "/"})
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
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


_Response = tuple[int, str, bytes]


class _App:
    """The routes, over one snapshot source, its ``Changes`` and one ``Metrics``."""

    def __init__(
        self, snapshot: Callable[[], Snapshot], metrics: Metrics, changes: Changes | None = None
    ) -> None:
        self._snapshot = snapshot
        self._metrics = metrics
        self._changes = changes
        self._page: sse.Page[Any] | None = AgentPage(snapshot)
        self._routes: dict[str, Callable[[_Request], _Response]] = {
            "/": self._get_page,
            EVENTS_PATH: self._head_events,
            "/metrics": self._get_metrics,
            "/healthz": self._get_healthz,
            "/readyz": self._get_readyz,
            "/v1/tasks": self._get_tasks,
            "/v1/node": self._get_node,
        }
        self._connections = 0
        self._streams: set[asyncio.Task[Any]] = set()
        self._closing = asyncio.Event()
        self._tasks_cache: tuple[Snapshot | None, bytes] = (None, b"")
        self._node_cache: tuple[Snapshot | None, bytes] = (None, b"")
        self._gzip_cache: dict[str, tuple[bytes | None, bytes]] = {}

    # ---------------------------------------------------------------- connection handling

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections += 1
        counted = True
        try:
            request = await self._read(reader, writer)
            if (
                request is not None
                and request.path == EVENTS_PATH
                and request.method == "GET"
                and EVENTS_PATH in self._routes
            ):
                self._connections -= 1  # a stream counts against MAX_STREAMS instead
                counted = False
                await self._stream(reader, writer)
            elif request is not None:
                await self._answer(request, writer)
        except ConnectionError:
            pass  # the client went away; nothing to tell it
        except (TimeoutError, sse.SlowClient):
            writer.transport.abort()  # it does not read: drop what it never took, and the socket
        except Exception:
            log.exception("event=http_error")
        finally:
            if counted:
                self._connections -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _read(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Request | None:
        """The request, or None when it was answered with an error (or never came)."""
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                return await _read_request(reader)
        except TimeoutError:
            await _write_response(writer, 408, _TEXT, b"request timeout\n", {})
        except _BadRequest as e:
            await _write_response(writer, e.status, _TEXT, e.text.encode() + b"\n", {})
            await _linger(reader, writer)
        except asyncio.IncompleteReadError:
            pass  # closed before a full request; nobody to answer
        return None

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._streams) >= MAX_STREAMS or self._closing.is_set():
            body = b"too many event streams open; try again later\n"
            await _write_response(writer, 503, _TEXT, body, {"Retry-After": "30"})
            return
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            assert self._page is not None  # EVENTS_PATH is routed only with a page
            await sse.stream(reader, writer, self._page, self._changes, self._closing)
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
        route = self._routes.get(request.path)
        if route is None:
            return 404, _TEXT, b"not found\n", {}
        if request.method not in ("GET", "HEAD"):
            return 405, _TEXT, b"method not allowed\n", {"Allow": "GET, HEAD"}
        try:
            status, ctype, body = route(request)
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

    # ---------------------------------------------------------------- routes

    def _get_page(self, _: _Request) -> _Response:
        assert self._page is not None  # "/" is routed to this only with a page
        return 200, _HTML, self._page.html()

    def _head_events(self, _: _Request) -> _Response:
        return 200, _EVENTS, b""  # GET never gets here: it becomes a stream

    def _get_metrics(self, _: _Request) -> _Response:
        return 200, METRICS_CONTENT_TYPE, self._metrics.render()

    def _get_healthz(self, _: _Request) -> _Response:
        alive, why = self._snapshot().health()
        if alive:
            return 200, _TEXT, b"ok"
        return 503, _TEXT, why.encode()

    def _get_readyz(self, _: _Request) -> _Response:
        ready, reason = self._snapshot().readiness()
        if ready:
            return 200, _TEXT, b"ready"
        return 503, _TEXT, reason.encode()

    def _get_tasks(self, _: _Request) -> _Response:
        snap = self._snapshot()
        cached_snap, body = self._tasks_cache
        if cached_snap is not snap:
            body = compact([t.to_json() for t in snap.tasks])
            self._tasks_cache = (snap, body)
        return 200, _JSON, body

    def _get_node(self, _: _Request) -> _Response:
        snap = self._snapshot()
        cached_snap, body = self._node_cache
        if cached_snap is not snap:
            body = compact(node_json(snap))
            self._node_cache = (snap, body)
        return 200, _JSON, body

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


async def _read_request(reader: asyncio.StreamReader) -> _Request:
    """Read and parse one request head. Raises ``_BadRequest`` for anything malformed."""
    total = 0
    lines: list[str] = []
    while True:
        try:
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


async def serve(
    host: str,
    port: int,
    *,
    snapshot: Callable[[], Snapshot],
    metrics: Metrics,
    changes: Changes | None = None,
) -> Server:
    """Start serving the agent's endpoints on ``host:port`` (port 0 picks a free one).

    ``changes`` is bumped by the snapshot's owner after each new snapshot; without it,
    ``/v1/events`` sends the state at connect and then keepalives only. Returns the server; the
    caller closes it (``close()`` then ``wait_closed()``), which also ends open event streams.
    Raises ``OSError`` when the address cannot be bound.
    """
    app = _App(snapshot, metrics, changes)
    server = await asyncio.start_server(app.handle, host, port, limit=MAX_HEAD_BYTES)
    return Server(server, app)


# ------------------------------------------------------------------- a route table of its own

Route = Callable[[], tuple[int, str, bytes]]
"""A GET route for ``serve_routes``: returns (status, content type, body)."""


class _RouteTable(_App):
    """The same server, bounds and rules over a route table given by the caller (the fleet
    manager's endpoints); a ``/metrics`` body is gzipped as the agent's is. With a ``page``,
    ``/`` is its HTML and ``/v1/events`` its event stream, woken by ``changes``."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        page: sse.Page[Any] | None = None,
        changes: Changes | None = None,
    ) -> None:
        self._routes = {path: _without_request(route) for path, route in routes.items()}
        self._page = page
        if page is not None:
            self._routes["/"] = self._get_page
            self._routes[EVENTS_PATH] = self._head_events
        self._connections = 0
        self._streams = set()
        self._closing = asyncio.Event()
        self._changes = changes
        self._gzip_cache = {}


def _without_request(route: Route) -> Callable[[_Request], _Response]:
    return lambda _: route()


async def serve_routes(
    host: str,
    port: int,
    routes: Mapping[str, Route],
    *,
    page: sse.Page[Any] | None = None,
    changes: Changes | None = None,
) -> Server:
    """Start serving ``routes`` (path -> ``Route``) on ``host:port`` (0 picks a free port),
    GET and HEAD only, with the limits above; with a ``page``, also ``/`` and ``/v1/events``
    (streams capped by ``MAX_STREAMS``, woken by ``changes``). Returns the server; the caller
    closes it (``close()`` then ``wait_closed()``), which also ends open event streams. Raises
    ``OSError`` when the address cannot be bound."""
    app = _RouteTable(routes, page, changes)
    server = await asyncio.start_server(app.handle, host, port, limit=MAX_HEAD_BYTES)
    return Server(server, app)

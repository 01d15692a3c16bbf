"""A unix-socket proxy in front of a real podman service that injects faults on command.

The agent (or an executor) is pointed at the proxy's socket; the test switches the proxy's
``Mode`` to make podman look down, hung, slow or flaky, while the real service behind it (and its
containers) stays untouched and reachable on its own socket for the test's own checks.

Modes:

* ``PASS``: bytes flow both ways unchanged.
* ``DOWN``: every open connection is closed, and each new one is closed as soon as it is accepted
  (a podman that is not there).
* ``BLACKHOLE``: connections are accepted and requests read, but nothing is answered or
  forwarded, on new and open connections alike (a podman that hangs). Leaving the mode closes every
  connection that was open during it: they have lost bytes, as a hung podman's do when it is
  restarted.
* ``SLOW``: every chunk, either way, is held for ``delay`` seconds before it is passed on.
* ``CUT``: every open connection is dropped at once, and new ones are dropped as soon as podman
  sends anything on them (mid-response, mid-stream).

``requests`` records every request the proxy passed on to podman (time, method, path), parsed
from the request lines in the client's bytes, so tests can assert what reached podman and in
which order.

``hold(pattern)`` holds back every request whose ``METHOD /path`` matches the pattern, in any
mode: it never reaches podman, its client waits for an answer, and ``held`` records it.
``release()`` drops the held connections unanswered and stops holding: a test kills the agent
between two of its calls this way (the call it was about to make never happened).

Plain threads and blocking sockets: one acceptor, two pumps per connection. Nothing here imports
the agent.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_REQUEST_LINE = re.compile(rb"(?:^|\r\n)(GET|POST|PUT|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")


class Mode(enum.Enum):
    PASS = "pass"
    DOWN = "down"
    BLACKHOLE = "blackhole"
    SLOW = "slow"
    CUT = "cut"


@dataclass(frozen=True, slots=True)
class Request:
    """One request passed on to podman."""

    at: float  # time.monotonic()
    method: str
    path: str  # without the query string


class _Conn:
    """One accepted client connection and, unless blackholed at birth, its podman side."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.saw_blackhole = upstream is None
        self._closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for s in (self.client, self.upstream):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


class FaultProxy:
    """Listens on ``path`` and forwards to the podman socket at ``upstream``."""

    def __init__(self, upstream: Path | str, path: Path | str, *, delay: float = 0.05) -> None:
        self.upstream = str(upstream)
        self.path = str(path)
        if len(self.path) > 107:
            raise ValueError(f"socket path {self.path} is too long for a unix socket")
        self.delay = delay
        self.requests: list[Request] = []
        self.accepted = 0
        self._mode = Mode.PASS
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._closing = False
        self.held: list[Request] = []
        self._hold: re.Pattern[str] | None = None
        self._released = threading.Event()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    @property
    def mode(self) -> Mode:
        return self._mode

    # ------------------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(64)
        self._listener = listener
        self._spawn(self._accept, listener)
        return self

    def close(self) -> None:
        self._closing = True
        self._released.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        self._close_all(lambda c: True)
        for t in list(self._threads):
            t.join(timeout=10)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------- modes

    def set_mode(self, mode: Mode) -> float:
        """Switch to ``mode``; returns the moment it took effect (``time.monotonic()``)."""
        with self._lock:
            old, self._mode = self._mode, mode
            if mode is Mode.BLACKHOLE:
                for c in self._conns:
                    c.saw_blackhole = True
        if mode in (Mode.DOWN, Mode.CUT):
            self._close_all(lambda c: True)
        elif old is Mode.BLACKHOLE:
            self._close_all(lambda c: c.saw_blackhole)
        return time.monotonic()

    def hold(self, pattern: str) -> None:
        """Hold back requests whose ``METHOD /path`` matches ``pattern`` (see the module
        docstring)."""
        self._released = threading.Event()
        self._hold = re.compile(pattern)

    def release(self) -> None:
        """Stop holding; the held requests' connections are closed, never forwarded."""
        self._hold = None
        self._released.set()

    def requests_since(self, moment: float) -> list[Request]:
        return [r for r in list(self.requests) if r.at >= moment]

    def _close_all(self, which: Callable[[_Conn], bool]) -> None:
        with self._lock:
            doomed = [c for c in self._conns if which(c)]
        for c in doomed:
            c.close()

    # ------------------------------------------------------------------------- plumbing

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="faultproxy")
        self._threads = [x for x in self._threads if x.is_alive()]
        self._threads.append(t)
        t.start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closing:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            mode = self._mode
            if mode is Mode.DOWN:
                client.close()
                continue
            upstream: socket.socket | None = None
            if mode is not Mode.BLACKHOLE:
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    upstream.connect(self.upstream)
                except OSError:
                    upstream.close()
                    client.close()
                    continue
            conn = _Conn(client, upstream)
            with self._lock:
                self._conns.add(conn)
            self._spawn(self._pump, conn, True)
            if upstream is not None:
                self._spawn(self._pump, conn, False)

    def _pump(self, conn: _Conn, from_client: bool) -> None:
        src = conn.client if from_client else conn.upstream
        assert src is not None
        try:
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                mode = self._mode
                if mode is Mode.BLACKHOLE or conn.upstream is None:
                    conn.saw_blackhole = True
                    continue  # swallowed: nothing is forwarded or answered
                if mode is Mode.CUT and not from_client:
                    return  # podman said something: drop the connection mid-response
                if mode is Mode.SLOW:
                    time.sleep(self.delay)
                dst = conn.upstream if from_client else conn.client
                if from_client:
                    now = time.monotonic()
                    for m in _REQUEST_LINE.finditer(data):
                        path = m.group(2).decode().split("?", 1)[0]
                        request = Request(now, m.group(1).decode(), path)
                        hold = self._hold
                        if hold is not None and hold.search(f"{request.method} {path}"):
                            self.held.append(request)
                            self._released.wait()
                            return  # dropped unanswered: podman never sees it
                        self.requests.append(request)
                try:
                    dst.sendall(data)
                except OSError:
                    return
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)

"""HTTP to podman's unix socket: connections that never leak, and requests another thread can end.

podman-py speaks HTTP over a unix socket through requests and urllib3. This module adds two
things to that transport:

* A connection that closes its socket when connecting fails. podman-py's leaks it, which
  surfaces as a ResourceWarning on every retry while podman is down.
* ``Call``: one request in flight on one thread. Every socket the request touches registers
  itself with the thread's current call (``running(call)``), so ``Call.abort()`` from any thread
  shuts those sockets down and the blocked read returns at once. A socket timeout alone cannot
  bound a request: it restarts with every byte a slow peer trickles, and an idle event stream
  must not time out at all. Aborting is how a call's deadline is enforced (``lanes``), how every
  call in flight is ended when the liveness probe finds podman hung (``probe``), and how the
  event stream's reader is woken (``events``).

A client built here is used by one thread only (each lane thread and each event-stream attempt
has its own), so a socket an aborted call registered can never be carrying another thread's
request when it is shut down.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import threading
from collections.abc import Iterator
from typing import Any

import podman

from runtime.podman.internals import (
    UDSAdapter,
    UDSConnection,
    UDSConnectionPool,
    UDSPoolManager,
    UDSSocket,
)


class AbortReason(enum.Enum):
    """Why a call was ended from outside before podman answered it."""

    DEADLINE = "podman did not answer within the call's deadline"
    RUNTIME_DOWN = "podman stopped answering"
    MOVED = "podman's socket moved"
    CLOSING = "the podman client is closing"


class Aborted(Exception):
    """A call ended by ``Call.abort`` before podman answered it."""

    def __init__(self, reason: AbortReason, *, timeout: float | None = None) -> None:
        self.reason = reason
        self.timeout = timeout
        text = reason.value
        if reason is AbortReason.DEADLINE and timeout is not None:
            text = f"podman did not answer within {timeout:g}s"
        super().__init__(text)


_local = threading.local()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Call:
    """One request in flight on one thread, which any thread may abort.

    ``abort`` shuts down every socket the request has registered (and any it registers later),
    and is a no-op once the call has finished; both are safe from any thread.
    """

    def __init__(self, *, timeout: float | None = None) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._finished = False
        self.reason: AbortReason | None = None

    @property
    def finished(self) -> bool:
        return self._finished

    def attach(self, sock: socket.socket) -> None:
        """Register a socket the request uses (shut down at once if the call was aborted)."""
        with self._lock:
            if self._finished:
                return
            self._socks.append(sock)
            if self.reason is not None:
                _shutdown(sock)

    def abort(self, reason: AbortReason) -> bool:
        """End the request now. Returns whether it was still in flight."""
        with self._lock:
            if self._finished or self.reason is not None:
                return False
            self.reason = reason
            for sock in self._socks:
                _shutdown(sock)
            return True

    def finish(self) -> None:
        """The request is over: later aborts do nothing."""
        with self._lock:
            self._finished = True
            self._socks.clear()

    def error(self) -> Aborted | None:
        """The ``Aborted`` error this call ended with, if it was aborted."""
        if self.reason is None:
            return None
        return Aborted(self.reason, timeout=self.timeout)


@contextlib.contextmanager
def running(call: Call) -> Iterator[Call]:
    """Make ``call`` this thread's current call for the block; finish it on the way out."""
    previous = getattr(_local, "call", None)
    _local.call = call
    try:
        yield call
    finally:
        call.finish()
        _local.call = previous


def attach_socket(sock: socket.socket) -> None:
    """Register ``sock`` with this thread's current call, if there is one."""
    call: Call | None = getattr(_local, "call", None)
    if call is not None:
        call.attach(sock)


class _Connection(UDSConnection):
    """A unix-socket connection that closes its socket when connecting fails and registers
    every socket it uses with the thread's current call."""

    def connect(self) -> None:
        sock = UDSSocket(self.uds)
        sock.settimeout(self.timeout)
        attach_socket(sock)
        try:
            sock.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:  # a kept-alive connection, reused by this request
            attach_socket(self.sock)
        super().request(*args, **kwargs)


class _Pool(UDSConnectionPool):
    ConnectionCls = _Connection


class _PoolManager(UDSPoolManager):
    def __init__(self, num_pools: int = 10, headers: Any = None, **kwargs: Any) -> None:
        super().__init__(num_pools, headers, **kwargs)  # type: ignore[no-untyped-call]
        self.pool_classes_by_scheme = {"http": _Pool, "http+ssh": _Pool}


class _Adapter(UDSAdapter):
    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **kw: Any
    ) -> None:
        pool_kwargs = dict(kw)
        pool_kwargs.update(self._pool_kwargs)
        self.poolmanager = _PoolManager(
            num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )


def make_client(
    url: str, *, timeout: float | None = None, max_pool_size: int | None = None
) -> podman.PodmanClient:
    """A podman-py client whose unix-socket connections never leak and can be aborted."""
    client = podman.PodmanClient(base_url=url, timeout=timeout, max_pool_size=max_pool_size)
    api = client.api
    if api.base_url.scheme == "http+unix":
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        if max_pool_size is not None:
            kwargs["pool_maxsize"] = max_pool_size
        for prefix in ("http://", "https://"):
            old = api.adapters[prefix]
            api.mount(prefix, _Adapter(api.base_url.geturl(), **kwargs))
            old.close()
    return client

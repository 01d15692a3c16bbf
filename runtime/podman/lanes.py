"""Lanes: podman calls grouped by how long they may take, each group in its own bounded pool.

podman-py blocks, so every call runs in a thread. If all calls shared one pool, a few stops of
containers with long grace periods (or a pull) would hold every thread, and the pings and
inspects that decide whether podman is alive would queue behind them. So calls go through a
``Lane``: the executor has one for quick calls (inspect, list, create, start, kill, health
checks), one for long ones (stop, remove, pull) and one, a single thread, that only the liveness
probe uses.

Each lane:

* admits at most ``size`` calls at a time (``Slots``: first come first served within a
  priority, an ``URGENT`` call before every ``NORMAL`` one waiting), so a call never waits in
  the thread pool's queue and its deadline counts from when it starts. A start is urgent: a
  burst of tasks then runs like raw podman's create-then-start per thread (each container
  starts as soon as it is created, while other creates go on) rather than every create before
  the first start;
* runs each call with a deadline on the event loop's clock (real time: deadlines bound real I/O,
  never the injected clock of tests). At the deadline the call's sockets are shut down
  (``transport.Call``) and the call fails with ``Aborted``; nothing can hold a thread longer;
* gives each of its threads a podman-py client of its own, for the lane's current URL (set
  ``url`` to move to another socket; threads pick it up on their next call);
* can abort every call in flight at once (``abort_all``), which the executor does when the
  liveness probe finds podman hung.

A cancelled call lets its thread finish before ``CancelledError`` is re-raised, so no podman
request is left half-observed; the deadline still bounds that wait.

A few callers are not on the agent's loop and block anyway: socket discovery (at start-up, and
in a thread of its own while podman is down) and the ``reconciler logs`` command. They call
through ``direct``: the same abortable transport and the same kind of deadline, kept by a timer
thread instead of the loop's timer, in the calling thread rather than a lane's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import podman
from podman.api import APIClient

from runtime.podman.transport import Aborted, AbortReason, Call, make_client, running

T = TypeVar("T")

URGENT = 0
"""Admitted before every waiting ``NORMAL`` call (a start)."""
NORMAL = 1


class Slots:
    """At most ``size`` holders at a time; waiters are admitted by priority, then in order.

    Runs on one event loop. A waiter cancelled while it waits gives up its place (or passes on
    the slot it was just handed)."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap
        self._order = itertools.count()

    async def acquire(self, priority: int = NORMAL) -> None:
        if self._free > 0:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():  # a cancelled waiter's future is done
                fut.set_result(None)
                return
        self._free += 1


SOCKET_TIMEOUT_SLACK = 1.0
"""Seconds a request's socket timeout exceeds its call's deadline."""


class Lane:
    """A bounded pool of threads for one class of podman calls, each call with a deadline."""

    def __init__(self, name: str, *, size: int, url: str) -> None:
        if size < 1:
            raise ValueError("a lane needs at least one thread")
        self.name = name
        self.size = size
        self.url = url
        self._slots = Slots(size)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=size, thread_name_prefix=f"podman-{name}"
        )
        self._local = threading.local()
        self._clients_lock = threading.Lock()
        self._clients: list[podman.PodmanClient] = []
        self._inflight: set[Call] = set()
        self._closed = False

    @property
    def busy(self) -> int:
        """How many calls are running now."""
        return len(self._inflight)

    async def run(
        self, fn: Callable[[APIClient], T], *, deadline: float, priority: int = NORMAL
    ) -> T:
        """Run ``fn(api)`` in one of the lane's threads and return its result; among calls
        waiting for a thread, ``priority`` goes first (``URGENT`` before ``NORMAL``).

        ``api`` is the thread's own client; a request made without an explicit timeout gets a
        socket timeout just past ``deadline`` (seconds) as a fallback. Raises
        ``transport.Aborted`` when the deadline passed or the call was aborted, whatever ``fn``
        raises otherwise.
        """
        if self._closed:
            raise Aborted(AbortReason.CLOSING)
        loop = asyncio.get_running_loop()
        await self._slots.acquire(priority)
        try:
            if self._closed:
                raise Aborted(AbortReason.CLOSING)
            call = Call(timeout=deadline)
            self._inflight.add(call)
            fut = loop.run_in_executor(self._pool, self._work, call, fn, deadline)
            timer = loop.call_later(deadline, call.abort, AbortReason.DEADLINE)
            try:
                try:
                    await asyncio.wait({fut})
                except asyncio.CancelledError:
                    # Let the thread finish (the deadline bounds it) before re-raising.
                    while not fut.done():
                        with contextlib.suppress(asyncio.CancelledError):
                            await asyncio.wait({fut})
                    raise
            finally:
                timer.cancel()
                self._inflight.discard(call)
        finally:
            self._slots.release()
        if fut.cancelled():  # the pool was shut down under it
            raise Aborted(AbortReason.CLOSING)
        exc = fut.exception()
        if exc is None:
            return fut.result()
        aborted = call.error()
        if aborted is not None:
            raise aborted from exc
        raise exc

    def _work(self, call: Call, fn: Callable[[APIClient], T], timeout: float) -> T:
        with running(call):
            if call.reason is not None:
                raise RuntimeError("aborted before its thread picked it up")
            api = self._api()
            # A fallback only: the loop's timer aborts the call at its deadline, a little
            # before this socket timeout could fire and report the same thing less clearly.
            api.timeout = timeout + SOCKET_TIMEOUT_SLACK
            return fn(api)

    def _api(self) -> APIClient:
        held: tuple[str, podman.PodmanClient] | None = getattr(self._local, "held", None)
        url = self.url
        if held is not None and held[0] == url:
            return held[1].api
        if held is not None:
            self._forget(held[1])
        client = make_client(url, max_pool_size=1)
        with self._clients_lock:
            self._clients.append(client)
        self._local.held = (url, client)
        return client.api

    def _forget(self, client: podman.PodmanClient) -> None:
        with self._clients_lock:
            if client in self._clients:
                self._clients.remove(client)
        with contextlib.suppress(Exception):
            client.close()  # type: ignore[no-untyped-call]

    def abort_all(self, reason: AbortReason) -> int:
        """Abort every call in flight. Returns how many were."""
        return sum(1 for call in list(self._inflight) if call.abort(reason))

    async def close(self) -> None:
        """Abort what is in flight, wait for the threads, close the clients. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.abort_all(AbortReason.CLOSING)
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown_blocking)

    def _shutdown_blocking(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class Direct:
    """A call made through ``direct``: its client, and how to say podman has answered."""

    api: APIClient
    """A client of the call's own; requests made with it belong to the call."""
    socket_timeout: float
    """The socket timeout its requests get unless they give one: just past the deadline."""
    answered: Callable[[], None]
    """podman has answered: what is left of the call (a followed stream) has no deadline."""


@contextlib.contextmanager
def direct(url: str, *, deadline: float) -> Iterator[Direct]:
    """One call in the calling thread, outside any lane, for a caller that blocks anyway.

    The block's requests go through a client of their own for ``url``. Unless the block ends
    (or calls ``answered()``) within ``deadline`` seconds, a timer thread shuts down every socket
    they opened, and the request under way raises ``transport.Aborted``, as a lane's call would
    at its deadline. Requests without an explicit timeout get a socket timeout just past the
    deadline, as in a lane. The client is closed when the block ends.
    """
    call = Call(timeout=deadline)
    client = make_client(url, max_pool_size=1)
    socket_timeout = deadline + SOCKET_TIMEOUT_SLACK
    client.api.timeout = socket_timeout
    timer = threading.Timer(deadline, call.abort, (AbortReason.DEADLINE,))
    timer.daemon = True
    try:
        with running(call):
            timer.start()
            try:
                yield Direct(client.api, socket_timeout, timer.cancel)
            except Exception as exc:
                aborted = call.error()
                if aborted is not None:
                    raise aborted from exc
                raise
    finally:
        timer.cancel()
        with contextlib.suppress(Exception):
            client.close()  # type: ignore[no-untyped-call]

"""podman's event stream, read by one thread and fanned out on the asyncio loop.

This module owns the only long-lived podman connection the runtime keeps. It exists so that no
controller needs a thread or a poll loop of its own to learn that its container exited: one
reader thread follows ``GET /events?stream=true`` (what podman-py's
``client.events(decode=True)`` does, done here through the same ``APIClient`` so that the
response's socket can be shut down to unblock the thread on close), parses each line, and hands
it to the loop with ``loop.call_soon_threadsafe``.

Filtering is client-side: on podman 4.3 a ``label`` filter on the events API delivers nothing,
so the server is only asked for container events and the reader keeps those whose
``reconciler.node`` attribute (podman copies labels into the event's attributes) is this node's.

Watches are keyed by container *name* (``<task>.<instance id>``, unique per instance), so a
controller can start watching before it knows the container id, then inspect, without a window
in which an exit could be missed.

Robustness:

* **Reconnect.** A supervisor coroutine restarts the reader after the stream ends or fails, on
  the agent's one backoff rule (``reconciler.core.backoff``): a stream that had connected is retried
  at once (from ``initial``), one that never connected backs off, and the runtime coming back up
  ends any backoff. Every watch is told the stream was lost (its waiter raises
  ``TemporaryError`` and re-inspects when retried), because events may have been missed while it
  was down.
* **Hung podman.** podman sends nothing on an idle stream, so a read timeout would take a quiet
  host for a hung one. Instead the stream is tied to the liveness probe: when the probe finds
  podman hung, the executor calls ``interrupt()``, which shuts the stream's socket down
  (``transport.Call``); the reader wakes, the watches get "lost", and the supervisor reconnects.
  Connecting has a deadline of its own (``CONNECT_TIMEOUT``): the response headers must come.
* **Rotation.** podman's file events logger rotates its log; the open stream survives it, but
  re-reads part of the rotated file, so old events come again. Events older than the newest one
  seen on this connection are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import podman

from reconciler.core.backoff import Backoff, Retry
from reconciler.core.clock import Clock, sleep_or_wake
from reconciler.core.executor import RuntimeObserver, RuntimeOp, Supervise
from runtime.podman.reach import Reachability
from runtime.podman.spec import NODE_LABEL, TASK_ID_LABEL
from runtime.podman.transport import AbortReason, Call, make_client, running

log = logging.getLogger(__name__)

RECONNECT = Backoff(initial=0.1, factor=2.0, cap=5.0, jitter=0.2)
"""The wait before reconnecting: from ``initial`` after a stream that had connected."""

CONNECT_TIMEOUT = 5.0
"""Seconds (real time) podman has to answer the stream's request with its headers."""


class EventKind(enum.Enum):
    """What an event says: one of podman's actions, or a marker the runtime itself posts."""

    # podman's actions that a waiter cares about
    START = "start"
    DIED = "died"
    REMOVE = "remove"
    KILL = "kill"
    STOP = "stop"
    HEALTH_STATUS = "health_status"
    # markers
    LOST = "lost"  # the stream dropped: events may have been missed
    RECHECK = "recheck"  # a resync saw a disagreement: inspect again
    UNHEALTHY = "unhealthy"  # the agent's own health check failed
    EXIT_FILE = "exit_file"  # conmon wrote the container's exit file (``runtime.podman.exits``)


_MARKERS = frozenset({EventKind.LOST, EventKind.RECHECK, EventKind.UNHEALTHY, EventKind.EXIT_FILE})
PODMAN_ACTIONS = {k.value: k for k in EventKind if k not in _MARKERS}
"""podman's actions a waiter cares about; every other event is dropped in the reader thread."""


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    """One event for one of this node's containers, or a marker from the stream itself."""

    kind: EventKind
    name: str
    container_id: str = ""
    task_id: str = ""
    exit_code: int | None = None
    time_ns: int = 0
    detail: str = ""


class Watch:
    """The events of one container name, queued for one waiter."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: asyncio.Queue[ContainerEvent] = asyncio.Queue()

    def put(self, ev: ContainerEvent) -> None:
        self._queue.put_nowait(ev)

    async def get(self) -> ContainerEvent:
        return await self._queue.get()


class EventStream:
    """One reader of podman's events, feeding the watches registered on the loop."""

    def __init__(
        self,
        *,
        url: str,
        node_id: str,
        clock: Clock,
        observer: RuntimeObserver,
        reachability: Reachability,
    ) -> None:
        self._url = url
        self._node_id = node_id
        self._clock = clock
        self._observer = observer
        self._reach = reachability
        self._watches: dict[str, set[Watch]] = {}
        self._connected = False
        self._connected_event: asyncio.Event | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = threading.Event()
        self._call: Call | None = None
        self._connect_deadline: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[ContainerEvent], None]] = []
        self._interrupted = False  # interrupt() marked the stream lost before its reader did
        self.connections = 0
        """How many times the stream has connected (for tests and logs)."""

    # ------------------------------------------------------------------------ lifecycle

    async def start(self, *, supervise: Supervise | None = None) -> None:
        """Start following events in the background. Never fails if podman is down.

        With ``supervise``, the reader loop (``run``) is handed to it under the name
        ``events`` (the agent's supervisor restarts it after an unexpected error); otherwise
        it runs in a task of its own. Idempotent.
        """
        if self._connected_event is not None:
            return
        self._connected_event = asyncio.Event()
        if supervise is not None:
            supervise("events", self.run)
        else:
            self._supervisor = asyncio.create_task(self.run(), name="podman-events")

    async def close(self) -> None:
        """Stop the reader thread and the supervisor; wait for both."""
        self._closing.set()
        self._abort(AbortReason.CLOSING)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self._join_reader()

    async def _join_reader(self) -> None:
        thread = self._thread
        if thread is not None:
            self._abort(AbortReason.CLOSING)
            await asyncio.get_running_loop().run_in_executor(None, thread.join)
            self._thread = None

    @property
    def connected(self) -> bool:
        return self._connected

    async def wait_connected(self) -> None:
        """Wait until the stream is connected (returns at once if it is)."""
        if self._connected_event is None:
            raise RuntimeError("the event stream was not started")
        await self._connected_event.wait()

    @property
    def url(self) -> str:
        return self._url

    def interrupt(self) -> None:
        """podman stopped answering: drop the stream now (watchers get "lost"), reconnect.

        The stream counts as disconnected at once, before its reader thread has noticed, so a
        waiter that retries meanwhile blocks until the stream is back instead of spinning on
        calls that fail fast while podman is down."""
        self._abort(AbortReason.RUNTIME_DOWN)
        if self._connected:
            self._set_disconnected()
            self._interrupted = True

    def wake(self) -> None:
        """podman answers again: end any reconnect backoff now."""
        self._wake.set()

    def set_url(self, url: str) -> None:
        """Follow podman to another socket: drop the stream and reconnect there at once."""
        self._url = url
        self._abort(AbortReason.MOVED)
        self._wake.set()

    def _abort(self, reason: AbortReason) -> None:
        call = self._call
        if call is not None:
            call.abort(reason)

    # -------------------------------------------------------------------------- watches

    @contextlib.contextmanager
    def watch(self, name: str) -> Iterator[Watch]:
        """Queue the events of container ``name`` for the duration of the ``with`` block."""
        w = Watch(name)
        self._watches.setdefault(name, set()).add(w)
        try:
            yield w
        finally:
            ws = self._watches.get(name)
            if ws is not None:
                ws.discard(w)
                if not ws:
                    del self._watches[name]

    def watched_names(self) -> list[str]:
        return list(self._watches)

    def post(self, name: str, ev: ContainerEvent) -> None:
        """Deliver a synthetic event (a resync's ``recheck``, a health verdict) to ``name``."""
        for w in list(self._watches.get(name, ())):
            w.put(ev)

    def add_listener(self, fn: Callable[[ContainerEvent], None]) -> None:
        """Call ``fn`` on the loop for every event of this node's containers."""
        self._listeners.append(fn)

    # ------------------------------------------------------------------------ supervisor

    async def run(self) -> None:
        """The reader loop: connect, read until the stream ends, reconnect with backoff. Runs
        until ``close()``. May be started again after it failed: a reader thread left over
        from the failed run is stopped first."""
        await self._join_reader()
        retry = Retry(RECONNECT, clock=self._clock)
        loop = asyncio.get_running_loop()
        while not self._closing.is_set():
            self._wake.clear()
            call = Call(timeout=CONNECT_TIMEOUT)
            self._call = call
            done: asyncio.Future[BaseException | None] = loop.create_future()
            thread = threading.Thread(
                target=self._read,
                args=(call, self._url, loop, done),
                name="podman-events",
                daemon=True,
            )
            self._thread = thread
            self._connect_deadline = loop.call_later(
                CONNECT_TIMEOUT, call.abort, AbortReason.DEADLINE
            )
            thread.start()
            try:
                err = await asyncio.shield(done)
            finally:
                self._connect_deadline.cancel()
                if not done.done():
                    call.abort(AbortReason.CLOSING)  # cancelled by close()
            await loop.run_in_executor(None, thread.join)
            self._thread = None
            was_connected = self._connected or self._interrupted
            self._interrupted = False
            self._set_disconnected()
            if self._closing.is_set():
                return
            if err is not None:
                self._observer.runtime_error(RuntimeOp.EVENTS)
                log.warning("podman event stream failed: %s", call.error() or err)
            if was_connected:
                retry.reset()
            else:
                self._reach.suspect()
            await self._pause(retry.next_delay())

    async def _pause(self, seconds: float) -> None:
        """Sleep on the clock, or until ``wake()``."""
        await sleep_or_wake(self._clock, seconds, self._wake)

    def _set_disconnected(self) -> None:
        if not self._connected:
            return
        self._connected = False
        if self._connected_event is not None:
            self._connected_event.clear()
        for name, ws in list(self._watches.items()):
            for w in list(ws):
                w.put(ContainerEvent(EventKind.LOST, name, detail="podman's event stream was lost"))

    def _on_connected(self, call: Call) -> None:
        if call is not self._call or call.reason is not None:
            return
        if self._connect_deadline is not None:
            self._connect_deadline.cancel()
        self._connected = True
        self.connections += 1
        if self._connected_event is not None:
            self._connected_event.set()
        self._reach.answered()

    # --------------------------------------------------------------------- reader thread

    def _read(
        self,
        call: Call,
        url: str,
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future[BaseException | None],
    ) -> None:
        error: BaseException | None = None
        client: podman.PodmanClient | None = None
        resp: Any = None
        try:
            with running(call):
                if call.reason is not None or self._closing.is_set():
                    return
                # Its own client, without a read timeout: the stream is idle for as long as
                # nothing happens on the host. A hung podman is the probe's to notice.
                client = make_client(url)
                resp = client.api.get(
                    "/events",
                    params={"stream": True, "filters": json.dumps({"type": ["container"]})},
                    stream=True,
                )
                resp.raise_for_status()
                loop.call_soon_threadsafe(self._on_connected, call)
                self._follow(resp, loop)
        except BaseException as exc:  # the supervisor decides what to do with it
            if not self._closing.is_set():
                error = exc
        finally:
            if resp is not None:
                with contextlib.suppress(Exception):
                    resp.close()
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()  # type: ignore[no-untyped-call]
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(_settle, done, error)

    def _follow(self, resp: Any, loop: asyncio.AbstractEventLoop) -> None:
        newest = 0
        at_newest: set[tuple[str, EventKind]] = set()
        for line in resp.iter_lines():
            if self._closing.is_set():
                break
            if not line:
                continue
            ev = self._parse(line)
            if ev is None:
                continue
            # Log rotation replays part of the old file: drop what was already seen.
            key = (ev.container_id, ev.kind)
            if ev.time_ns < newest or (ev.time_ns == newest and key in at_newest):
                continue
            if ev.time_ns > newest:
                newest = ev.time_ns
                at_newest = set()
            at_newest.add(key)
            loop.call_soon_threadsafe(self._dispatch, ev)

    def _parse(self, line: bytes | str) -> ContainerEvent | None:
        try:
            data = json.loads(line)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("Type") != "container":
            return None
        kind = PODMAN_ACTIONS.get(str(data.get("Action") or data.get("status") or ""))
        if kind is None:
            return None
        actor = data.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        if attrs.get(NODE_LABEL) != self._node_id:
            return None
        code: int | None = None
        if kind is EventKind.DIED:
            with contextlib.suppress(TypeError, ValueError):
                code = int(str(attrs.get("containerExitCode")))
        return ContainerEvent(
            kind=kind,
            name=str(attrs.get("name", "")),
            container_id=str(actor.get("ID") or data.get("id") or ""),
            task_id=str(attrs.get(TASK_ID_LABEL, "")),
            exit_code=code,
            time_ns=int(data.get("timeNano") or 0),
            detail=str(attrs.get("health_status", "")),
        )

    def _dispatch(self, ev: ContainerEvent) -> None:
        for w in list(self._watches.get(ev.name, ())):
            w.put(ev)
        for fn in list(self._listeners):
            fn(ev)


def _settle(fut: asyncio.Future[BaseException | None], value: BaseException | None) -> None:
    if not fut.done():
        fut.set_result(value)

"""The fleet session: this node's desired tasks from a manager over NATS JetStream.

``NatsSession`` implements ``reconciler.core.session.Session``. The manager writes this node's
assignments, one key per named task, and its availability; the agent reads them, and writes its
heartbeat and the status of each named task back. Bucket names, keys and values are in
``reconciler.fleet``.

**Connection epochs.** The session holds one connection at a time (nats-py's own reconnecting
is off, see ``reconciler.fleet.connect``). For as long as it lives:

1. it watches ``reconciler_control/fleet``, ``reconciler_control/node.<node>`` and
   ``reconciler_assignments/<node>.*``, each through a consumer whose create subject carries its
   filter (``reconciler.fleet.watch``), so the node's permissions can confine it to its keys;
2. it sends the node's availability (``ManagerMessage``) and then the assignments' initial
   values as one full ``DesiredTasks``: whatever changed while the agent was away, it converges
   to what the manager wants now;
3. it forwards each later put and delete as an incremental ``DesiredTasks``, and is
   ``connected``.

Whatever ends an epoch (the connection lost, a watch that can no longer be trusted, buckets
not created yet) closes the connection; after a backoff capped at one second, the next epoch
tries the servers in order: the fleet setting ``managers`` first (when the manager published
one; it is used from the next reconnect on), then the ``--manager`` URLs.

**Offline.** Nothing in the agent waits for the session: tasks keep running, restarting and being
corrected from the local store. ``report()`` waits while disconnected (the agent's reporter keeps
the latest status per task meanwhile, and counts them as pending) and writes as soon as the next
epoch is up.

**Status writes** are compare-and-set on the key's revision: the session remembers the revision
it last wrote or read; if the key has moved on, it reads the stored status and writes only if
the new one supersedes it (``reconciler.fleet.values.status_supersedes``), so a late retry
never overwrites a newer state.

**Heartbeats.** A loop puts the node value into ``reconciler_nodes/<node>`` every heartbeat
period (the fleet setting ``heartbeatPeriod``, default 5 s; a change applies from the next
beat), at once after every (re)connect, and when readiness or availability changes.
``describe`` gives the node description and readiness (the agent's snapshot), ``conditions``
the node's conditions (a manager places nothing new on a node under pressure); a change of
either beats at once. Heartbeats stop when the session closes.

Credentials never reach a log line: URLs are logged redacted, and nats-py's errors are logged
as it words them (they carry no secrets).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from reconciler import __version__
from reconciler.core.backoff import Backoff, Retry
from reconciler.core.clock import Clock
from reconciler.core.model import NodeDescription
from reconciler.core.session import (
    ConnectionChanged,
    DesiredTasks,
    ManagerMessage,
    NamedStatus,
    SessionMessage,
)
from reconciler.fleet.buckets import (
    ASSIGNMENTS,
    CONTROL,
    FLEET_KEY,
    NODES,
    STATUS,
    check_node_id,
    key_subject,
    node_control_key,
    status_key,
    stream_name,
)
from reconciler.fleet.connect import Callback, connect_first
from reconciler.fleet.options import ConfigError, NatsOptions, parse_servers, redact
from reconciler.fleet.values import (
    Availability,
    BadValue,
    FleetSettings,
    StoredStatus,
    node_value,
    parse_fleet,
    parse_node_control,
    parse_status,
    status_supersedes,
    status_value,
)
from reconciler.fleet.watch import BucketMissing, Entry, KeyWatch
from reconciler.sessions.assignments import assignment_change, full_assignment, merge_changes

__all__ = ["Describe", "NatsSession"]

log = logging.getLogger(__name__)
T = TypeVar("T")

Describe = Callable[[], tuple[NodeDescription | None, bool]]
"""Gives the node description (None until the runtime described it) and readiness."""

RECONNECT_BACKOFF = Backoff(initial=0.05, cap=1.0)
COALESCE_GAP = 0.01
COALESCE_MAX = 0.1
"""Changes to the assignments that follow each other within ``COALESCE_GAP`` seconds (up to
``COALESCE_MAX`` in all) reach the agent as one: one stored desired set, one assignment."""
READY_POLL = 1.0
"""How often (seconds) the heartbeat loop looks for a readiness change between beats."""
_CAS_ATTEMPTS = 5

_FLEET, _NODE, _TASKS = "fleet", "node", "tasks"


class NatsSession:
    """The manager session over NATS JetStream; see the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        options: NatsOptions,
        clock: Clock,
        describe: Describe | None = None,
        conditions: Callable[[], Mapping[str, bool]] | None = None,
        labels: Sequence[tuple[str, str]] = (),
        version: str = __version__,
        backoff: Backoff = RECONNECT_BACKOFF,
        idle_heartbeat: float = 5.0,
        request_timeout: float = 5.0,
    ) -> None:
        self._node_id = check_node_id(node_id)
        self._options = replace(
            options, name=f"reconciler-agent {node_id}", inbox_prefix=f"_INBOX.{node_id}"
        )
        self._clock = clock
        self._describe = describe
        self._conditions = conditions
        self._labels = dict(labels)
        self._version = version
        self._backoff = backoff
        self._idle = idle_heartbeat
        self._timeout = request_timeout
        self._out: asyncio.Queue[SessionMessage | None] = asyncio.Queue()
        self._online = asyncio.Event()
        self._closing = asyncio.Event()
        self._epoch_over = asyncio.Event()  # set when the current connection ends
        self._beat_wake = asyncio.Event()
        self._beat_now = False
        self._settings = FleetSettings()
        self._availability = Availability.ACTIVE
        self._status_kv: KeyValue | None = None
        self._nodes_kv: KeyValue | None = None
        # per status key: the revision last written or read, and the status it holds
        self._known: dict[str, tuple[int | None, StoredStatus | None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._end_epoch: Callable[[], None] | None = None
        self._outage_logged = False
        self._last_error = ""  # the last refusal logged, so a repeated one is not

    # --------------------------------------------------------------------- the protocol

    @property
    def connected(self) -> bool:
        """True while connected and watching this node's keys."""
        return self._online.is_set()

    @property
    def settings(self) -> FleetSettings:
        """The fleet settings in force (defaults until the manager published some)."""
        return self._settings

    async def messages(self) -> AsyncGenerator[SessionMessage, None]:
        """Start the session and yield its messages until ``close()``.

        After every (re)connect: a ``ConnectionChanged(True)``, the availability, then a full
        ``DesiredTasks``; then incremental ones (a burst of changes comes merged into one);
        ``ConnectionChanged(False)`` when the connection is lost.
        Never raises for bad input or an unreachable manager. One iteration at a time; a new
        one (the agent's supervisor restarting its session loop) restarts whatever session
        loop ended and begins again with a full assignment (the connection is renewed).
        """
        if self._started:
            raise RuntimeError("NatsSession.messages() is already being iterated")
        self._started = True
        try:
            if self._tasks and all(not t.done() for t in self._tasks):
                self._renew()
            else:
                self._start_loops()
            held: list[SessionMessage | None] = []
            while True:
                message = held.pop() if held else await self._out.get()
                if isinstance(message, DesiredTasks):
                    message = await self._coalesce(message, held)
                if message is None:
                    return
                yield message
        finally:
            self._started = False

    def _start_loops(self) -> None:
        if self._closing.is_set():
            self._out.put_nowait(None)
            return
        self._tasks = [
            asyncio.create_task(self._run(), name="nats-session"),
            asyncio.create_task(self._heartbeats(), name="nats-heartbeat"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_ended)

    def _renew(self) -> None:
        """End the current connection, so the next one starts with a full assignment."""
        end = self._end_epoch
        if end is not None:
            end()

    async def _coalesce(
        self, message: DesiredTasks, held: list[SessionMessage | None]
    ) -> DesiredTasks:
        """Merge the changes that follow ``message`` closely (a burst of puts) into it.

        Waits at most ``COALESCE_GAP`` for each next change and ``COALESCE_MAX`` in all; the
        first message that cannot merge is put in ``held``, to be delivered next.
        """
        loop = asyncio.get_running_loop()
        until = loop.time() + COALESCE_MAX
        while not message.full and not message.rejected:
            wait = min(COALESCE_GAP, until - loop.time())
            if self._out.empty() and wait <= 0:
                break
            getter = asyncio.ensure_future(self._out.get())
            try:
                await asyncio.wait({getter}, timeout=max(0.0, wait))
            finally:
                if not getter.done():
                    getter.cancel()  # the item, if any, stays in the queue
            if not getter.done() or getter.cancelled():
                break
            following = getter.result()
            merged = (
                merge_changes(message, following) if isinstance(following, DesiredTasks) else None
            )
            if merged is None:
                held.append(following)
                break
            message = merged
        return message

    async def report(self, statuses: Mapping[str, NamedStatus]) -> None:
        """Write each status to ``reconciler_status/<node>.<name>``, compare-and-set.

        Waits while disconnected. A status that the stored one supersedes is dropped (that is
        success). Raises nats-py's errors when a write fails, ``ConnectionError`` when the
        session closed; the caller retries.
        """
        for name, status in statuses.items():
            kv = await self._wait_online(lambda: self._status_kv)
            await self._while_connected(self._write_status(kv, name, status))

    async def heartbeat(
        self,
        node: NodeDescription | None,
        *,
        ready: bool,
        conditions: Mapping[str, bool] | None = None,
    ) -> None:
        """Put the node value into ``reconciler_nodes/<node>`` now.

        Raises ``ConnectionError`` while disconnected and nats-py's errors when the put fails.
        """
        kv = self._nodes_kv
        if kv is None:
            raise ConnectionError("not connected to the fleet")
        value = node_value(
            node_id=self._node_id,
            node=node,
            ready=ready,
            availability=self._availability,
            labels=self._labels,
            version=self._version,
            now=self._clock.time(),
            conditions=conditions,
        )
        await self._while_connected(kv.put(self._node_id, value))

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """The session's loops end only when closed; anything else ends the session loudly."""
        if task.cancelled() or self._closing.is_set():
            return
        err = task.exception()
        log.error("fleet session loop ended loop=%s err=%r", task.get_name(), err, exc_info=err)
        self._out.put_nowait(None)  # messages() ends, so the agent sees its session loop end

    async def close(self) -> None:
        """Disconnect and stop heartbeats; ``messages()`` ends. Idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._out.put_nowait(None)

    # --------------------------------------------------------------------------- epochs

    async def _run(self) -> None:
        retry = Retry(self._backoff, clock=self._clock)
        while not self._closing.is_set():
            why: str
            try:
                await self._epoch(retry)
                why = "the connection was lost"
            except asyncio.CancelledError:
                raise
            except BucketMissing as err:
                why = f"{err}: waiting for the manager to create the fleet's buckets"
            except Exception as err:
                why = str(err) or type(err).__name__
            if not self._outage_logged:
                self._outage_logged = True
                log.warning("fleet manager unreachable, running offline: %s", why)
            else:
                log.debug("fleet manager still unreachable: %s", why)
            await retry.wait()

    async def _epoch(self, retry: Retry) -> None:
        """One connection's life; returns or raises when it ends. See the module docstring."""
        events: asyncio.Queue[tuple[str, Entry | BaseException | None]] = asyncio.Queue()

        async def lost() -> None:
            events.put_nowait(("", None))

        nc = await self._connect(lost)
        self._epoch_over = asyncio.Event()
        self._end_epoch = lambda: events.put_nowait(("", None))
        node = self._node_id
        watches = {
            _FLEET: KeyWatch(nc, CONTROL, FLEET_KEY, idle_heartbeat=self._idle),
            _NODE: KeyWatch(nc, CONTROL, node_control_key(node), idle_heartbeat=self._idle),
            _TASKS: KeyWatch(nc, ASSIGNMENTS, f"{node}.*", idle_heartbeat=self._idle),
        }
        pumps: list[asyncio.Task[None]] = []
        try:
            initial = {tag: await w.start() for tag, w in watches.items()}
            js = nc.jetstream(timeout=self._timeout)
            self._status_kv = _kv(js, STATUS)
            self._nodes_kv = _kv(js, NODES)
            self._on_fleet(_value(initial[_FLEET].get(FLEET_KEY)))
            self._on_control(_value(initial[_NODE].get(node_control_key(node))), emit=False)
            tasks = {k: e.value for k, e in initial[_TASKS].items() if e.value is not None}
            self._online.set()
            retry.reset()
            self._outage_logged = False
            log.info(
                "fleet session up tasks=%d availability=%s", len(tasks), self._availability.value
            )
            self._emit(ConnectionChanged(True))
            self._emit(ManagerMessage(availability=self._availability.value))
            self._emit(full_assignment(ASSIGNMENTS, node, tasks))
            self._beat_soon()
            pumps = [asyncio.create_task(_pump(tag, w, events)) for tag, w in watches.items()]
            while True:
                tag, item = await events.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                self._dispatch(tag, item)
        finally:
            self._end_epoch = None
            was_online = self._online.is_set()
            self._epoch_over.set()
            self._online.clear()
            self._status_kv = self._nodes_kv = None
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in watches.values():
                await w.stop()
            with contextlib.suppress(Exception):
                await nc.close()
            if was_online:
                self._emit(ConnectionChanged(False))
                self._outage_logged = True
                log.warning("lost the fleet manager, running offline until it is back")

    async def _connect(self, lost: Callback) -> Client:
        nc, url = await connect_first(
            self._options,
            self._servers(),
            error_cb=self._on_error,
            disconnected_cb=lost,
            closed_cb=lost,
        )
        log.info("connected to the fleet url=%s", redact(url))
        return nc

    def _servers(self) -> tuple[str, ...]:
        urls = [*self._settings.managers, *self._options.servers]
        return tuple(dict.fromkeys(urls))

    async def _on_error(self, err: Exception) -> None:
        text = str(err) or type(err).__name__
        refused = any(w in text.lower() for w in ("permission", "authorization", "auth"))
        if refused and text != self._last_error:
            log.error("NATS refused: %s", text)
        else:
            log.debug("NATS error: %s", text)
        self._last_error = text

    def _emit(self, message: SessionMessage) -> None:
        self._out.put_nowait(message)

    # ------------------------------------------------------------------------ dispatch

    def _dispatch(self, tag: str, entry: Entry) -> None:
        if tag == _FLEET:
            self._on_fleet(entry.value)
        elif tag == _NODE:
            self._on_control(entry.value)
        else:
            message = assignment_change(ASSIGNMENTS, self._node_id, entry.key, entry.value)
            for name in message.removed:
                self._known.pop(status_key(self._node_id, name), None)
            self._emit(message)

    def _on_fleet(self, value: bytes | None) -> None:
        try:
            settings = parse_fleet(value) if value is not None else FleetSettings()
            if settings.managers:
                parse_servers(settings.managers)
        except (BadValue, ConfigError) as err:
            log.error("%s/%s rejected, keeping the current settings: %s", CONTROL, FLEET_KEY, err)
            return
        if settings == self._settings:
            return
        if settings.heartbeat_period != self._settings.heartbeat_period:
            self._beat_wake.set()
        self._settings = settings
        log.info(
            "fleet settings heartbeat_period=%gs managers=%s",
            settings.heartbeat_period,
            ",".join(redact(m) for m in settings.managers) or "-",
        )

    def _on_control(self, value: bytes | None, *, emit: bool = True) -> None:
        """Take a new availability; ``emit``: tell the agent when it changed."""
        try:
            availability = parse_node_control(value) if value is not None else Availability.ACTIVE
        except BadValue as err:
            key = node_control_key(self._node_id)
            log.error(
                "%s/%s rejected, keeping availability %s: %s",
                CONTROL,
                key,
                self._availability.value,
                err,
            )
            return
        if availability == self._availability:
            return
        self._availability = availability
        self._beat_soon()
        if emit:
            self._emit(ManagerMessage(availability=availability.value))

    # -------------------------------------------------------------------------- status

    async def _while_connected(self, write: Awaitable[T]) -> T:
        """Run ``write``; raise ``ConnectionError`` at once if the connection ends meanwhile.

        A write in flight when the connection drops would otherwise wait for its reply until
        its timeout, and hold back the retry that the next connection could take at once.
        """
        over = self._epoch_over
        task = asyncio.ensure_future(write)
        waiter = asyncio.ensure_future(over.wait())
        try:
            done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()
                task.add_done_callback(_retrieve)
        if task not in done:
            raise ConnectionError("the connection to the fleet was lost during a write")
        return task.result()

    async def _wait_online(self, get: Callable[[], KeyValue | None]) -> KeyValue:
        while True:
            kv = get()
            if kv is not None:
                return kv
            if self._closing.is_set():
                raise ConnectionError("the fleet session is closed")
            await _first(self._online, self._closing)

    async def _write_status(self, kv: KeyValue, name: str, status: NamedStatus) -> None:
        key = status_key(self._node_id, name)
        value = status_value(status)
        revision, stored = self._known.get(key, (None, None))
        for _ in range(_CAS_ATTEMPTS):
            if not status_supersedes(status, stored):
                log.debug("status superseded name=%s id=%s", name, status.id)
                return
            try:
                if revision is None:
                    written = await kv.create(key, value)
                else:
                    written = await kv.update(key, value, last=revision)
            except KeyWrongLastSequenceError:
                stored, revision = await _read_status(kv, key)
                continue
            self._known[key] = (written, _stored(status))
            return
        raise ConnectionError(f"status key {STATUS}/{key} kept changing under the agent")

    # ----------------------------------------------------------------------- heartbeats

    def _beat_soon(self) -> None:
        self._beat_now = True
        self._beat_wake.set()

    async def _heartbeats(self) -> None:
        last_beat: float | None = None
        last_ready: bool | None = None
        last_conditions: dict[str, bool] | None = None
        while True:
            await self._online.wait()
            self._beat_wake.clear()
            node, ready = self._describe() if self._describe is not None else (None, False)
            conditions = dict(self._conditions()) if self._conditions is not None else {}
            period = self._settings.heartbeat_period
            due = last_beat is None or self._clock.monotonic() - last_beat >= period
            changed = ready != last_ready or conditions != last_conditions
            if self._beat_now or due or changed:
                self._beat_now = False
                try:
                    await self.heartbeat(node, ready=ready, conditions=conditions)
                    last_ready, last_conditions = ready, conditions
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    log.debug("heartbeat failed: %s", str(err) or type(err).__name__)
                last_beat = self._clock.monotonic()
            assert last_beat is not None
            wait = last_beat + self._settings.heartbeat_period - self._clock.monotonic()
            await self._sleep_or_wake(min(max(0.0, wait), READY_POLL))

    async def _sleep_or_wake(self, seconds: float) -> None:
        if self._beat_wake.is_set():
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waker = asyncio.ensure_future(self._beat_wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()


# ------------------------------------------------------------------------------- helpers


def _kv(js: Any, bucket: str) -> KeyValue:
    """A bucket handle that needs no stream lookup (nodes may not be allowed one)."""
    return KeyValue(
        name=bucket, stream=stream_name(bucket), pre=key_subject(bucket, ""), js=js, direct=True
    )


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Consume the outcome of an abandoned write, so that asyncio does not warn about it."""
    if not task.cancelled():
        task.exception()


def _stored(status: NamedStatus) -> StoredStatus:
    return StoredStatus(id=status.id, state=status.state, updated_at=status.updated_at)


def _value(entry: Entry | None) -> bytes | None:
    return entry.value if entry is not None else None


async def _pump(
    tag: str, watch: KeyWatch, events: asyncio.Queue[tuple[str, Entry | BaseException | None]]
) -> None:
    try:
        while True:
            events.put_nowait((tag, await watch.next()))
    except asyncio.CancelledError:
        raise
    except Exception as err:
        events.put_nowait((tag, err))


async def _read_status(kv: KeyValue, key: str) -> tuple[StoredStatus | None, int | None]:
    """The stored status (None when absent, deleted or unreadable) and its revision."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError as err:
        deleted = getattr(err, "entry", None)
        return None, (deleted.revision if deleted is not None else None)
    try:
        stored = parse_status(entry.value or b"")
    except BadValue:
        stored = None
    return stored, entry.revision


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()

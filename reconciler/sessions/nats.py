"""The fleet session: this node's desired tasks from a manager over NATS JetStream.

``NatsSession`` implements ``reconciler.core.session.Session``. The manager writes this node's
assignments, one key per named task, and its availability; the agent reads them, and writes its
heartbeat and the status of each named task back. Bucket names, keys and values are in
``reconciler.fleet``.

**Connection epochs.** The session holds one connection at a time (nats-py's own reconnecting
is off, see ``reconciler.fleet.connect``; the plumbing of one connection is
``reconciler.sessions.nats_connection``). For as long as it lives:

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
one; it is used from the next reconnect on), then the ``--manager`` URLs. An agent configured
with TLS (a CA, or a ``tls://`` URL) ignores the published ``nats://`` URLs, which would be a
downgrade (``reconciler.fleet.options.published_servers``), and says so once per value.

**Offline.** Nothing in the agent waits for the session: tasks keep running, restarting and being
corrected from the local store. ``report()`` waits while disconnected (the agent's reporter keeps
the latest status per task meanwhile, and counts them as pending) and writes as soon as the next
epoch is up.

**Bad values** (``reconciler.sessions.nats_values``): every value read is parsed as hostile
input; a bad one is skipped (the last valid spec, settings or availability kept), logged and
counted once per key and revision, and never ends the session.

**Status writes** are compare-and-set on the key's revision, so a late retry never overwrites
a newer state (``reconciler.sessions.nats_status``).

**Heartbeats.** A loop puts the node value into ``reconciler_nodes/<node>`` every heartbeat
period, after every (re)connect, and when readiness, conditions or availability change
(``reconciler.sessions.nats_heartbeat``). Heartbeats stop when the session closes.

Credentials never reach a log line: URLs are logged redacted, and nats-py's errors are logged
as it words them (they carry no secrets).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from nats.js.kv import KeyValue

from reconciler import __version__
from reconciler.core.backoff import Backoff, Retry
from reconciler.core.clock import Clock
from reconciler.core.model import Availability, NodeDescription
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
    check_node_id,
    node_control_key,
)
from reconciler.fleet.options import (
    ConfigError,
    NatsOptions,
    parse_servers,
    published_servers,
    redact,
)
from reconciler.fleet.values import (
    BadValue,
    FleetSettings,
    node_value,
    parse_fleet,
    parse_node_control,
)
from reconciler.fleet.watch import BucketMissing, Entry
from reconciler.sessions.assignments import assignment_change, full_assignment, merge_changes
from reconciler.sessions.nats_connection import FLEET, NODE, TASKS, Connection
from reconciler.sessions.nats_heartbeat import Describe, Heartbeats
from reconciler.sessions.nats_status import StatusWrites
from reconciler.sessions.nats_values import Rejections

__all__ = ["NatsSession"]

log = logging.getLogger(__name__)
T = TypeVar("T")

RECONNECT_BACKOFF = Backoff(initial=0.05, cap=1.0)
COALESCE_GAP = 0.01
COALESCE_MAX = 0.1
"""Changes to the assignments that follow each other within ``COALESCE_GAP`` seconds (up to
``COALESCE_MAX`` in all) reach the agent as one: one stored desired set, one assignment."""


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
        bad_value: Callable[[str], None] | None = None,
    ) -> None:
        self._node_id = check_node_id(node_id)
        self._options = replace(
            options, name=f"reconciler-agent {node_id}", inbox_prefix=f"_INBOX.{node_id}"
        )
        self._clock = clock
        self._labels = dict(labels)
        self._version = version
        self._backoff = backoff
        self._idle = idle_heartbeat
        self._timeout = request_timeout
        self._out: asyncio.Queue[SessionMessage | None] = asyncio.Queue()
        self._online = asyncio.Event()
        self._closing = asyncio.Event()
        self._epoch_over = asyncio.Event()  # set when the current connection ends
        self._heartbeats = Heartbeats(
            clock=clock,
            online=self._online,
            period=lambda: self._settings.heartbeat_period,
            beat=self.heartbeat,
            describe=describe,
            conditions=conditions,
        )
        self._settings = FleetSettings()
        self._availability = Availability.ACTIVE
        self._status_kv: KeyValue | None = None
        self._nodes_kv: KeyValue | None = None
        self._rejections = Rejections(self._node_id, bad_value)
        self._statuses = StatusWrites(self._node_id, bad=self._rejections.bad)
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
            asyncio.create_task(self._heartbeats.run(), name="nats-heartbeat"),
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
            await self._while_connected(self._statuses.write(kv, name, status))

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
        conn = Connection(self._node_id, idle_heartbeat=self._idle, request_timeout=self._timeout)
        await conn.connect(self._options, self._servers(), error_cb=self._on_error)
        self._epoch_over = conn.over
        self._end_epoch = conn.end
        node = self._node_id
        try:
            initial = await conn.watch()
            self._status_kv, self._nodes_kv = conn.status_kv, conn.nodes_kv
            self._on_fleet(initial[FLEET].get(FLEET_KEY))
            self._on_control(initial[NODE].get(node_control_key(node)), emit=False)
            entries = {k: e for k, e in initial[TASKS].items() if e.value is not None}
            tasks = {k: e.value for k, e in entries.items() if e.value is not None}
            self._online.set()
            retry.reset()
            self._outage_logged = False
            log.info(
                "fleet session up tasks=%d availability=%s", len(tasks), self._availability.value
            )
            self._emit(ConnectionChanged(True))
            self._emit(ManagerMessage(availability=self._availability))
            revisions = {k: e.revision for k, e in entries.items()}
            full = full_assignment(ASSIGNMENTS, node, tasks)
            self._emit(self._rejections.assignments(full, revisions))
            self._heartbeats.soon()
            conn.pump()
            while (change := await conn.next()) is not None:
                self._dispatch(*change)
        finally:
            self._end_epoch = None
            was_online = self._online.is_set()
            self._online.clear()
            self._status_kv = self._nodes_kv = None
            await conn.close()
            if was_online:
                self._emit(ConnectionChanged(False))
                self._outage_logged = True
                log.warning("lost the fleet manager, running offline until it is back")

    def _servers(self) -> tuple[str, ...]:
        published, _ = published_servers(self._options, self._settings.managers)
        return tuple(dict.fromkeys([*published, *self._options.servers]))

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
        if tag == FLEET:
            self._on_fleet(entry)
        elif tag == NODE:
            self._on_control(entry)
        else:
            message = assignment_change(ASSIGNMENTS, self._node_id, entry.key, entry.value)
            for name in message.removed:
                self._statuses.forget(name)
            self._emit(self._rejections.assignments(message, {entry.key: entry.revision}))

    def _on_fleet(self, entry: Entry | None) -> None:
        value = _value(entry)
        try:
            settings = parse_fleet(value) if value is not None else FleetSettings()
            if settings.managers:
                parse_servers(settings.managers)
        except (BadValue, ConfigError) as err:
            revision = entry.revision if entry is not None else 0
            self._rejections.bad(CONTROL, FLEET_KEY, revision, str(err), "keeping the settings")
            return
        self._rejections.good(CONTROL, FLEET_KEY)
        if settings == self._settings:
            return
        if settings.heartbeat_period != self._settings.heartbeat_period:
            self._heartbeats.wake()
        managers_changed = settings.managers != self._settings.managers
        self._settings = settings
        log.info(
            "fleet settings heartbeat_period=%gs managers=%s",
            settings.heartbeat_period,
            ",".join(redact(m) for m in settings.managers) or "-",
        )
        _, ignored = published_servers(self._options, settings.managers)
        if ignored and managers_changed:
            log.warning(
                "%s/%s: ignoring managers %s: plain nats:// where this agent uses TLS",
                CONTROL,
                FLEET_KEY,
                ",".join(redact(m) for m in ignored),
            )

    def _on_control(self, entry: Entry | None, *, emit: bool = True) -> None:
        """Take a new availability; ``emit``: tell the agent when it changed."""
        value = _value(entry)
        key = node_control_key(self._node_id)
        try:
            availability = parse_node_control(value) if value is not None else Availability.ACTIVE
        except BadValue as err:
            revision = entry.revision if entry is not None else 0
            keeping = f"keeping availability {self._availability.value}"
            self._rejections.bad(CONTROL, key, revision, str(err), keeping)
            return
        self._rejections.good(CONTROL, key)
        if availability == self._availability:
            return
        self._availability = availability
        self._heartbeats.soon()
        if emit:
            self._emit(ManagerMessage(availability=availability))

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


# ------------------------------------------------------------------------------- helpers


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Consume the outcome of an abandoned write, so that asyncio does not warn about it."""
    if not task.cancelled():
        task.exception()


def _value(entry: Entry | None) -> bytes | None:
    return entry.value if entry is not None else None


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()

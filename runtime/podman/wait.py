"""The controller's ``wait`` (``until_exit``): sleeping until one task's container ends, and
saying how it ended.

This module owns the part of a controller that runs for as long as its container does. It keeps
podman round trips off the idle path: no thread and no polling per container, only the event
stream (``runtime.podman.events``) and conmon's exit files (``runtime.podman.exits``).

* **No gap.** The wait watches the container's events *before* it looks at the container once
  (``Container.check_state``), so no exit can fall between the two. A running container is
  then slept on; an exited one is judged by its exit code; a missing one is ``ContainerGone``.
  Events older than the container's ``StartedAt`` are ignored.
* **Exit file first.** After that look, which names the container's conmon and so its exit
  directory, the wait subscribes to the container's exit file: when conmon writes it, one
  inspect and one read of podman's event log decide whether the exit can be judged before
  podman's events tell of it (``runtime.podman.exitrule``: only a logged ``kill``). Otherwise
  the events decide, as they always did.
* **Events.** ``died`` is judged by one inspect, after a short window (``REMOVAL_WINDOW``) in
  which a following ``remove`` makes an exit the agent did not cause a removal (``podman rm
  -f`` emits ``died`` first). A ``kill`` from outside is judged at once. ``RECHECK`` (the
  relist disagreed) inspects again; ``LOST`` (the stream dropped, events may be missed) fails
  the wait with ``TemporaryError`` so it is retried and looks again.
* **Health.** With a health check, ``HealthChecks.watch`` runs beside the wait and posts
  ``UNHEALTHY``, which stops the container and fails the task.
* **Stream down.** A wait begun while the event stream is not connected waits for it, up to
  ``CONNECT_GRACE``, rather than failing at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from reconciler.core.errors import ContainerGone, ReconcilerError, TemporaryError
from runtime.podman.container import Container, parse_timestamp_ns
from runtime.podman.events import ContainerEvent, EventKind, Watch
from runtime.podman.exitrule import ExitSeen, judge_exit_file
from runtime.podman.health import HealthChecks, stop_unhealthy

__all__ = ["CONNECT_GRACE", "REMOVAL_WINDOW", "until_exit"]

log = logging.getLogger(__name__)

CONNECT_GRACE = 10.0
"""How long ``wait`` waits for the event stream to (re)connect before reporting it down."""

REMOVAL_WINDOW = 0.5
"""Seconds after an unexplained exit in which a following "remove" event makes it a removal."""


async def until_exit(container: Container, *, health: HealthChecks | None, grace: float) -> None:
    """Return when the container exits with code 0; raise ``ExitError`` for another code (or
    an unhealthy verdict, after stopping it with ``grace``), ``ContainerGone`` when it is
    removed and ``TemporaryError`` when podman's event stream is lost."""
    c = container
    events = c.rt.events
    if not events.connected:
        # Block (cancellably) until the stream is back rather than failing at once: the
        # waiter then resumes as soon as podman answers again.
        try:  # asyncio.timeout: 3.11's wait_for can swallow the step's cancellation
            async with asyncio.timeout(CONNECT_GRACE):
                await events.wait_connected()
        except TimeoutError:
            raise TemporaryError("podman's event stream is not connected") from None
    with events.watch(c.name) as w, contextlib.ExitStack() as exit_file:
        checking: asyncio.Task[None] | None = None
        try:
            started = await c.check_state(first_look=True)
            if started is None:
                return
            started_ns = started
            # After the inspect, which names the container's conmon (and so its exit
            # directory); an exit before the watch begins still comes as an event.
            exit_file.enter_context(_watch_exit_file(c, w))
            if health is not None:
                checking = asyncio.create_task(health.watch(), name=f"health {c.name}")
            while True:
                ev = await w.get()
                if ev.kind is EventKind.EXIT_FILE:
                    if await _exited_early(c):
                        return
                    continue
                if ev.kind is EventKind.DIED and ev.time_ns >= started_ns:
                    # ``podman rm -f`` also emits "died" first, and "remove" some 50-100
                    # ms later. An exit the agent did not cause is therefore given a short
                    # window in which a removal wins; then one inspect confirms the exit
                    # (it answers 404 if the container went after all). ``podman kill``
                    # announces itself with a "kill" event before "died" (``rm -f`` does
                    # not), so a kill is judged at once, without the window.
                    if not c.stopping and not c.killed_outside and await _removed_soon(w):
                        c.gone()
                    if await c.check_state() is None:
                        return
                    continue
                if ev.kind is EventKind.KILL and not c.stopping:
                    c.killed_outside = True
                    # podman's "died" can trail a kill by a few hundred ms (it comes from
                    # the cleanup process conmon starts); a SIGKILLed container already
                    # inspects as exited, so look now. One that survives its signal is
                    # still running, and the wait goes on.
                    started = await c.check_state()
                    if started is None:
                        return
                    started_ns = started
                    continue
                elif ev.kind is EventKind.REMOVE:
                    c.gone()
                elif ev.kind is EventKind.RECHECK:
                    started = await c.check_state()
                    if started is None:
                        return
                    started_ns = started
                elif ev.kind is EventKind.LOST:
                    raise TemporaryError(ev.detail or "podman's event stream was lost")
                elif ev.kind is EventKind.UNHEALTHY:
                    await stop_unhealthy(c, grace=grace, detail=ev.detail)
        finally:
            if checking is not None:
                checking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checking


@contextlib.contextmanager
def _watch_exit_file(c: Container, w: Watch) -> Iterator[bool]:
    """Post ``EXIT_FILE`` to ``w`` when conmon writes this container's exit file."""
    cid = c.cid or ""

    def exited() -> None:
        w.put(ContainerEvent(EventKind.EXIT_FILE, c.name, container_id=cid))

    with c.rt.exits.subscribe(cid, c.conmon_pid, exited) as watching:
        yield watching


async def _exited_early(c: Container) -> bool:
    """The exit file appeared: judge the exit now if podman's own log agrees that the
    container was killed (``runtime.podman.exitrule``). Returns True for an exit with code
    0, raises ``ExitError`` for another code and ``ContainerGone`` when the container is
    missing; returns False to leave the verdict to podman's events."""
    if c.stopping:
        return False  # the agent's own stop or removal is judged as it always was
    try:
        # First the inspect: it waits for a kill in flight, which logs its event under
        # the container's lock, so the log read after it holds that event.
        info = await c.inspect_or_gone()
        state = info.get("State") or {}
        started_ns = parse_timestamp_ns(state.get("StartedAt"))
        killed = c.killed_outside or await c.rt.api.killed_since(
            str(info.get("Id") or c.cid or ""), started_ns
        )
    except ContainerGone:
        raise
    except ReconcilerError as err:  # a removal under way answers 500: the events decide
        log.debug("exit of %s left to podman's events: %s", c.name, err)
        return False
    code = state.get("ExitCode")
    verdict = judge_exit_file(
        ExitSeen(
            status=str(state.get("Status") or ""),
            exit_code=code if isinstance(code, int) else None,
            kill_seen=killed,
            agent_stopping=c.stopping,
        )
    )
    if verdict is None:
        return False
    c.rt.exits.count_early_exit()
    c.killed_outside = True
    c.judge(verdict.exit_code)
    return True


async def _removed_soon(w: Watch) -> bool:
    """Whether a "remove" event arrives within ``REMOVAL_WINDOW`` (real time)."""
    try:
        async with asyncio.timeout(REMOVAL_WINDOW):
            while True:
                ev = await w.get()
                if ev.kind is EventKind.REMOVE:
                    return True
                if ev.kind is EventKind.LOST:
                    return False
    except TimeoutError:
        return False

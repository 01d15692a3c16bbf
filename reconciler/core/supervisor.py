"""Supervision of the agent's long-running loops: none of them can die silently.

The agent runs a handful of loops for its whole life (the session, the resync, the runtime's
event stream, the status reporter, the HTTP server). A loop that ends with an unexpected
exception, or simply returns while the agent is running, is a bug or a hostile input that got
through; in the manner of an Erlang supervisor or systemd's ``Restart=``, it is:

* logged once, as one bounded line (the traceback only at debug level, never a 400 KB line);
* counted (``on_restart(name)``, which the agent turns into
  ``reconciler_loop_restarts_total{loop}``);
* marked down (``down``), so ``/healthz`` answers 503 naming it while it waits;
* restarted after a capped, jittered backoff (``reconciler.core.backoff``). A loop that ran for
  ``healthy_after`` seconds before it failed starts again from the shortest delay.

Cancellation is the only way a loop ends for good: ``stop()`` cancels every loop and waits,
cancelling again any that goes on running.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping

from reconciler.core.backoff import Backoff, Retry
from reconciler.core.cancel import cancel_and_wait
from reconciler.core.clock import Clock

__all__ = ["LOOPS", "Supervisor", "describe_error", "health_of"]

log = logging.getLogger(__name__)

LOOPS = ("session", "resync", "events", "reporter", "http")
"""The supervised loops, by the name the metric and ``/healthz`` use."""

MAX_MESSAGE = 300
"""Longest error text a log line or a readiness reason carries."""


def describe_error(err: BaseException) -> str:
    """One bounded line for an error: its type and the start of its text."""
    text = " ".join(str(err).split())
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + "..."
    name = type(err).__name__
    return f"{name}: {text}" if text else name


def health_of(down: Mapping[str, str], program: str) -> tuple[bool, str]:
    """Whether every loop of ``program`` ("agent", "manager") is alive, and if not, one line
    naming each loop that is down and why: the one rule behind every ``/healthz``."""
    if not down:
        return True, "ok"
    why = "; ".join(f"{program} loop {name} is down: {err}" for name, err in sorted(down.items()))
    return False, why


class Supervisor:
    """Runs named loops and restarts any that fails; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Clock,
        on_restart: Callable[[str], None] = lambda name: None,
        on_change: Callable[[], None] = lambda: None,
        backoff: Backoff | None = None,
        healthy_after: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._on_restart = on_restart
        self._on_change = on_change
        self._backoff = backoff or Backoff(initial=0.5, cap=30.0)
        self._healthy_after = healthy_after
        self._rng = rng or random.Random()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._down: dict[str, str] = {}
        self.restarts: dict[str, int] = {}

    @property
    def down(self) -> dict[str, str]:
        """The loops waiting to be restarted, with the error that stopped each."""
        return dict(self._down)

    def health(self, program: str) -> tuple[bool, str]:
        """``health_of`` this supervisor's loops."""
        return health_of(self._down, program)

    def start(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body()`` as the loop ``name``, restarting it whenever it ends. A name already
        running is left alone."""
        if name in self._tasks:
            return
        self._tasks[name] = asyncio.create_task(self._supervise(name, body), name=name)

    async def stop(self) -> None:
        """Cancel every loop and wait for them, cancelling again a loop that a library kept
        from ending (``reconciler.core.cancel``). Idempotent."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(tasks, clock=self._clock)

    async def _supervise(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        retry = Retry(self._backoff, clock=self._clock, rng=self._rng)
        while True:
            began = self._clock.monotonic()
            try:
                await body()
                reason = "the loop ended unexpectedly"
                log.error("agent loop ended loop=%s; restarting it", name)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                reason = describe_error(err)
                log.error("agent loop failed loop=%s err=%s; restarting it", name, reason)
                log.debug("agent loop failure loop=%s", name, exc_info=err)
            if self._clock.monotonic() - began >= self._healthy_after:
                retry.reset()
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self._down[name] = reason
            self._on_restart(name)
            self._on_change()
            try:
                await retry.wait()
            finally:
                self._down.pop(name, None)
                self._on_change()

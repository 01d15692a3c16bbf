"""Waiting for a condition, the one way the tests and the benchmarks do it: poll it.

Tests assert outcomes, never timings. A wait ends as soon as its condition holds; its deadline
(``DEADLINE``, a minute, unless the caller knows better) is only there so that a broken build
fails with a message instead of hanging. The message names what was awaited and the last thing
the probe gave (a value, or the exception it raised), plus whatever ``context`` adds (an agent's
log tail, say).

A probe returns something truthy when the condition holds, and that value is returned; a probe
that raises means "not yet", except ``Fatal``, which stops the wait at once (the agent under test
died: no point waiting a minute). ``eventually`` is for coroutines (the probe may be a plain
function or return an awaitable); ``wait_until`` is the same loop for synchronous code (subprocess
harnesses, benchmarks).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["DEADLINE", "Fatal", "TimedOut", "eventually", "wait_until"]

T = TypeVar("T")

DEADLINE = 60.0
"""Seconds a wait may take before it fails: generous, for a loaded 2-core machine."""
EVERY = 0.02
"""Seconds between two probes, by default."""


class Fatal(AssertionError):
    """Raised by a probe to stop waiting at once."""


class TimedOut(AssertionError):
    """The condition did not hold within the deadline."""


class _Attempts:
    """The bookkeeping both loops share: the deadline and the last thing the probe gave."""

    def __init__(self, what: str, within: float, context: Callable[[], str] | None) -> None:
        self.what = what
        self.within = within
        self.context = context
        self.deadline = time.monotonic() + within
        self.last: object = None

    def failed(self, err: Exception) -> None:
        if isinstance(err, Fatal):
            raise err
        self.last = err

    def gave(self, value: object) -> None:
        self.last = value

    def check(self) -> None:
        """Raise ``TimedOut`` once the deadline has passed."""
        if time.monotonic() < self.deadline:
            return
        extra = f"\n{self.context()}" if self.context is not None else ""
        raise TimedOut(
            f"timed out after {self.within:.0f}s waiting for {self.what}; "
            f"last: {self.last!r}{extra}"
        )


async def eventually(
    probe: Callable[[], Any],
    what: str,
    *,
    within: float = DEADLINE,
    every: float = EVERY,
    context: Callable[[], str] | None = None,
) -> Any:
    """Call ``probe`` (a function, or one that returns an awaitable) until it gives something
    truthy, and return that; see the module docstring. Raises ``TimedOut`` after ``within``
    seconds."""
    attempts = _Attempts(what, within, context)
    while True:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
        except Exception as err:
            attempts.failed(err)
        else:
            attempts.gave(value)
            if value:
                return value
        attempts.check()
        await asyncio.sleep(every)


def wait_until(
    probe: Callable[[], T | None],
    what: str,
    *,
    within: float = DEADLINE,
    every: float = EVERY,
    context: Callable[[], str] | None = None,
) -> T:
    """``eventually`` for synchronous code: the same loop, sleeping the thread between
    probes."""
    attempts = _Attempts(what, within, context)
    while True:
        try:
            value = probe()
        except Exception as err:
            attempts.failed(err)
        else:
            attempts.gave(value)
            if value:
                return value
        attempts.check()
        time.sleep(every)

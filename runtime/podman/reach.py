"""Whether podman answers: the one flag behind ``reconciler_runtime_up``.

Any answer from podman (a call's, or the event stream's) counts as up; only the liveness probe
(``probe``) turns it down. Listeners hear every change; a call that got no answer can ask the
probe to look now (``suspect``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from reconciler.core.clock import Clock
from reconciler.core.executor import RuntimeObserver

__all__ = ["Reachability"]


class Reachability:
    """Whether podman answers: the flag behind ``runtime_up``, and when podman last answered.

    ``set`` reports every change (and the first value) to the observer and the change
    listeners. ``answered`` records an answer from podman (any call's, or the event stream's) and
    sets up; ``suspect`` asks the liveness probe to look now. All of it runs on the event loop.
    """

    def __init__(self, observer: RuntimeObserver, *, clock: Clock) -> None:
        self._observer = observer
        self._clock = clock
        self._up: bool | None = None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[bool], None]] = []
        self._suspect_listeners: list[Callable[[], None]] = []
        self.answers = 0
        """How many answers podman has given (a count, so a probe can tell whether any came
        while its own ping was in flight)."""
        self.last_answer = float("-inf")
        """When podman last answered, on the clock's monotonic time."""

    @property
    def up(self) -> bool:
        return bool(self._up)

    @property
    def down(self) -> bool:
        """Known to be down (not merely not yet contacted)."""
        return self._up is False

    def add_listener(self, fn: Callable[[bool], None]) -> None:
        """Call ``fn(up)`` on every change."""
        self._listeners.append(fn)

    def add_suspect_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` whenever a call got no answer."""
        self._suspect_listeners.append(fn)

    def set(self, up: bool) -> None:
        with self._lock:
            if self._up is up:
                return
            self._up = up
        self._observer.runtime_up(up)
        for fn in list(self._listeners):
            fn(up)

    def answered(self) -> None:
        self.answers += 1
        self.last_answer = self._clock.monotonic()
        self.set(True)

    def suspect(self) -> None:
        for fn in list(self._suspect_listeners):
            fn()

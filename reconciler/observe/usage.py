"""What tasks and the node use: the sampler, the stored OOM-kill counters, the node conditions.

This module owns the agent's usage side. It keeps three things apart from the ``Snapshot`` that
carries the agent's state, on purpose:

* **Usage samples** (per-task CPU, memory, network, block I/O and PIDs, and the node's CPU,
  memory, disk and pressure figures) are taken every ``--stats-interval`` and handed to
  ``publish`` (``Metrics.set_usage``, which renders their text once per sample). They never
  rebuild the snapshot: figures that move every few seconds would otherwise flood everything
  that follows snapshot changes (the readers of ``/v1/*`` and their caches) with non-changes.
  Only current instances are kept, so an instance being replaced leaves no series behind.
* **OOM kills** are events the runtime reports (``oom_killed``). They are counted per task name
  in the store (``Store.put_oom_kills``), so a count survives the instance and the agent; the
  snapshot carries them beside the restart counters, for every name the local manager knows.
  The counter of a name the manager no longer knows is deleted (``forget``).
* **Conditions** (``disk_pressure``, ``memory_pressure``, decided by
  ``reconciler.observe.hoststats.conditions``) follow each node sample. A change is logged and calls
  ``on_change`` (the snapshot shows them in ``/v1/node``); they never make the node not ready.

**The sampler** (``run``) never calls the runtime's API: ``Executor.usage`` reads the kernel's
accounting for the containers the runtime already knows. A pass that fails is logged (once per
distinct error, then at debug level) and reported through ``on_failure``; the next pass runs on
the interval as usual, so a sampling problem never stops anything else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from reconciler.core.clock import Clock
from reconciler.core.errors import StoreError
from reconciler.core.executor import Executor, TaskUsage
from reconciler.core.model import Condition
from reconciler.core.store import Store
from reconciler.core.supervisor import describe_error
from reconciler.observe.hoststats import HostStats, NodeUsage, conditions

log = logging.getLogger(__name__)

STATE_FS = "state"
IMAGES_FS = "images"


@dataclass(frozen=True, slots=True)
class Usage:
    """One usage sample: the current task instances' and the node's. Immutable."""

    tasks: tuple[TaskUsage, ...] = ()
    node: NodeUsage | None = None


class UsageMonitor:
    """The sampler loop, the OOM-kill counters and the node conditions of one agent.

    Every method runs on the event loop.
    """

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        interval: float,
        state_dir: str | None,
        publish: Callable[[Usage], None],
        on_change: Callable[[], None] = lambda: None,
        on_failure: Callable[[], None] = lambda: None,
        host: HostStats | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self.interval = interval
        self._state_dir = state_dir
        self._publish = publish
        self._on_change = on_change
        self._on_failure = on_failure
        self.host = host or HostStats()  # injectable (tests)
        self._oom: dict[str, int] = store.oom_kills()
        self._unstored: set[str] = set()
        self._conditions: tuple[tuple[Condition, bool], ...] = ()
        self._last_error: str | None = None

    # ------------------------------------------------------------------------ OOM kills

    def oom_killed(self, name: str, task_id: str) -> None:
        """Count one OOM kill of ``name`` and store the count (kept in memory and written
        later if the store fails now)."""
        self._oom[name] = self._oom.get(name, 0) + 1
        log.warning(
            "task process killed by the kernel: out of memory name=%s id=%s oom_kills=%d",
            name,
            task_id,
            self._oom[name],
        )
        self._write(name)
        self._on_change()

    def oom_kills(self, names: Iterable[str]) -> tuple[tuple[str, int], ...]:
        """The count of every name in ``names`` (0 for a name never killed), in that order."""
        return tuple((name, self._oom.get(name, 0)) for name in names)

    def forget(self, known: Collection[str]) -> None:
        """Delete the counters of names outside ``known`` (the names the manager knows)."""
        for name in [n for n in self._oom if n not in known]:
            del self._oom[name]
            self._write(name)

    def flush(self) -> None:
        """Write the counts a failed store could not take (the store works again)."""
        for name in list(self._unstored):
            self._write(name)

    def _write(self, name: str) -> None:
        try:
            self._store.put_oom_kills(name, self._oom.get(name))
        except StoreError as err:
            self._unstored.add(name)
            log.warning("OOM-kill count not stored yet name=%s err=%s", name, describe_error(err))
        else:
            self._unstored.discard(name)

    # ----------------------------------------------------------------------- conditions

    @property
    def conditions(self) -> tuple[tuple[Condition, bool], ...]:
        """(condition, holds) for every condition, from the last node sample; empty before."""
        return self._conditions

    def _take_conditions(self, node: NodeUsage) -> None:
        now = conditions(node)
        if now == self._conditions:
            return
        before = dict(self._conditions)
        for condition, holds in now:
            if holds and not before.get(condition, False):
                log.warning("node condition holds condition=%s", condition.value)
            elif not holds and before.get(condition, False):
                log.info("node condition cleared condition=%s", condition.value)
        self._conditions = now
        self._on_change()

    # ------------------------------------------------------------------------- sampling

    async def run(self, executor: Executor, current: Callable[[], Collection[str]]) -> None:
        """Sample every ``interval`` until cancelled. ``current`` gives the ids of the current
        task instances. Never raises but ``CancelledError``."""
        while True:
            try:
                await self.sample_once(executor, current)
                self._last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as err:
                text = describe_error(err)
                level = logging.DEBUG if text == self._last_error else logging.WARNING
                log.log(level, "usage sampling failed err=%s", text)
                self._last_error = text
                self._on_failure()
            await self._clock.sleep(self.interval)

    async def sample_once(
        self, executor: Executor, current: Callable[[], Collection[str]]
    ) -> Usage:
        """Take one sample, publish it and update the conditions; returns the sample."""
        runtime = await executor.usage()
        filesystems = {}
        if self._state_dir:
            filesystems[STATE_FS] = self._state_dir
        if runtime.image_store:
            filesystems[IMAGES_FS] = runtime.image_store
        node = await asyncio.to_thread(self.host.read, filesystems)
        ids = current()
        usage = Usage(tasks=tuple(t for t in runtime.tasks if t.task_id in ids), node=node)
        self._publish(usage)
        self._take_conditions(node)
        return usage

"""The agent's Prometheus metrics: every family on one registry, and the text ``/metrics`` serves.

This module owns the ``Metrics`` object an agent exports through (docs/http-and-metrics.md
lists every name). Three kinds of metric meet here, for three kinds of truth, each rendered by
its own module and cached for as long as it holds:

* **State** (node, readiness, tasks, restarts, desired-state validity, session) comes from ONE
  immutable ``Snapshot`` at scrape time (``reconciler.observe.state_metrics``), never from
  metric objects, so a task that leaves the snapshot leaves no stale series behind and a
  scrape never calls podman or walks RocksDB.
* **Events** (runtime errors, drift corrections, rejected reloads, start latency, resync
  duration, pull decisions, images removed, loop restarts, store rebuilds, bad values the fleet
  session read) are ordinary
  ``prometheus_client`` counters and histograms, kept here, on an injected
  ``CollectorRegistry`` (never the process-global one, so tests and several agents in one
  process never share series). Every value of a fixed label set (``RuntimeOp``, ``DriftKind``,
  ``PullResult``, the supervised loops, the session's buckets) is created up front, so
  ``rate()`` and alerts see a 0 before the first event rather than no series at all.
* **Usage** arrives as one immutable sample per ``--stats-interval`` (``set_usage``), rendered
  once per sample (``reconciler.observe.usage_metrics``) and appended to every scrape.

``Metrics`` implements ``reconciler.core.executor.RuntimeObserver`` so a runtime reports straight
into it. ``render()`` caches the exposition text and re-renders only when the snapshot object
changed or an event metric moved (a version counter bumped by every event method), so a fleet
of Prometheus servers scraping an idle agent costs one dictionary compare per scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

from reconciler.core.executor import DriftKind, PullResult, RuntimeOp
from reconciler.core.snapshot import Snapshot
from reconciler.core.supervisor import LOOPS
from reconciler.fleet.buckets import ASSIGNMENTS, CONTROL, STATUS
from reconciler.observe.exposition import CONTENT_TYPE, render_families
from reconciler.observe.state_metrics import SnapshotCollector, render_snapshot
from reconciler.observe.usage import Usage
from reconciler.observe.usage_metrics import UsageCollector, render_usage

__all__ = [
    "CONTENT_TYPE",
    "LOOPS",
    "RECONCILE_BUCKETS",
    "SESSION_BUCKETS",
    "START_BUCKETS",
    "Metrics",
]

#: Assignment-to-running latency: a local create+start is ~50 ms, a pull can take minutes.
START_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

#: One full resync pass: a relist of a few containers up to a slow podman with many.
RECONCILE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


#: The buckets whose values a fleet session reads (and may find bad).
SESSION_BUCKETS: Final = (ASSIGNMENTS, CONTROL, STATUS)


class Metrics:
    """Every agent metric on one registry, and the cached ``/metrics`` text.

    Thread-safe: event methods may be called from the runtime's thread pool and from the loop.
    Implements ``reconciler.core.executor.RuntimeObserver``.
    """

    def __init__(
        self,
        *,
        snapshot: Callable[[], Snapshot],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._snapshot = snapshot
        self._render_lock = threading.Lock()
        self._version_lock = threading.Lock()
        self._version = 0
        # render() caches: the state text for one snapshot object, the event text for one
        # version, and their concatenation. Holding the snapshot keeps ``is`` comparisons sound.
        self._text_snap: Snapshot | None = None
        self._text_version = -1
        self._state_text = ""
        self._event_text = ""
        self._text: bytes | None = None
        # The last usage sample and its text, rendered once when it is set.
        self._usage: Usage | None = None
        self._usage_text = b""

        self.registry.register(SnapshotCollector(snapshot))
        self.registry.register(UsageCollector(lambda: self._usage))
        self._register_events()

    def _register_events(self) -> None:
        """The event counters and histograms, every fixed label value created at 0."""
        self._drift = self._counter(
            "reconciler_drift_corrections",
            "Corrections of changes made outside the agent, by kind.",
            "kind",
            DriftKind,
        )
        self._runtime_errors = self._counter(
            "reconciler_runtime_errors",
            "Failed container runtime calls, by operation.",
            "op",
            RuntimeOp,
        )
        self._desired_errors = self._counter(
            "reconciler_desired_state_errors", "Rejected reloads of the desired state."
        )
        self._task_start = Histogram(
            "reconciler_task_start_seconds",
            "Time from a task's assignment to its running state.",
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        self._reconcile = Histogram(
            "reconciler_reconcile_duration_seconds",
            "Duration of one full resync pass.",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self._loop_restarts = self._counter(
            "reconciler_loop_restarts",
            "Restarts of an agent loop after an unexpected error, by loop.",
            "loop",
            LOOPS,
        )
        self._store_rebuilds = self._counter(
            "reconciler_store_rebuilds",
            "Corrupt stores moved aside and rebuilt from the runtime's containers.",
        )
        self._pulls = self._counter(
            "reconciler_image_pulls",
            "Pull decisions of prepares, by result: pulled, present (no registry contacted), "
            "fallback (the local image after a failed or refused pull), failed, refused (the "
            "image store under the image GC threshold).",
            "result",
            PullResult,
        )
        self._images_removed = self._counter(
            "reconciler_images_removed", "Images removed by the image GC."
        )
        self._bad_values = self._counter(
            "reconciler_session_bad_values",
            "Values read from the fleet that broke the contract and were skipped, by bucket.",
            "bucket",
            SESSION_BUCKETS,
        )
        self._event_metrics: tuple[Counter | Histogram, ...] = (
            self._drift,
            self._runtime_errors,
            self._desired_errors,
            self._task_start,
            self._reconcile,
            self._loop_restarts,
            self._store_rebuilds,
            self._pulls,
            self._images_removed,
            self._bad_values,
        )

    def _counter(
        self, name: str, doc: str, label: str | None = None, values: Iterable[str] = ()
    ) -> Counter:
        """A counter on this registry; with ``label``, one series per value of ``values``
        created at 0."""
        counter = Counter(name, doc, [label] if label else [], registry=self.registry)
        for value in values:
            counter.labels(value)
        return counter

    # ------------------------------------------------------------------ RuntimeObserver

    def runtime_error(self, op: RuntimeOp) -> None:
        """Count a failed runtime call. Raises ``ValueError`` for an op outside ``RuntimeOp``
        (a caller that mypy does not check), so series stay bounded."""
        self._runtime_errors.labels(RuntimeOp(op)).inc()
        self._bump()

    def drift_corrected(self, kind: DriftKind) -> None:
        """Count a drift correction. Raises ``ValueError`` for a kind outside ``DriftKind``."""
        self._drift.labels(DriftKind(kind)).inc()
        self._bump()

    def runtime_up(self, up: bool) -> None:
        """Accepted and ignored: ``reconciler_runtime_up`` comes from the snapshot."""

    def oom_killed(self, name: str, task_id: str) -> None:
        """Accepted and ignored: ``reconciler_task_oom_kills_total`` comes from the snapshot."""

    def image_pulled(self, result: PullResult) -> None:
        """Count one pull decision. Raises ``ValueError`` for a result outside ``PullResult``."""
        self._pulls.labels(PullResult(result)).inc()
        self._bump()

    # ------------------------------------------------------------------ agent events

    def desired_state_error(self) -> None:
        """Count one rejected reload of the desired state."""
        self._desired_errors.inc()
        self._bump()

    def session_bad_value(self, bucket: str) -> None:
        """Count one bad value the fleet session read from ``bucket``."""
        self._bad_values.labels(bucket).inc()
        self._bump()

    def loop_restarted(self, loop: str) -> None:
        """Count one restart of a supervised loop. Raises ``ValueError`` for an unknown loop."""
        if loop not in LOOPS:
            raise ValueError(f"unknown loop {loop!r}; expected one of {LOOPS}")
        self._loop_restarts.labels(loop).inc()
        self._bump()

    def store_rebuilt(self) -> None:
        """Count one corrupt store moved aside and rebuilt."""
        self._store_rebuilds.inc()
        self._bump()

    def images_removed(self, n: int) -> None:
        """Count images the image GC removed."""
        if n > 0:
            self._images_removed.inc(n)
            self._bump()

    def observe_task_start(self, seconds: float) -> None:
        """Record one task's time from assignment to running."""
        self._task_start.observe(max(0.0, seconds))
        self._bump()

    def observe_reconcile(self, seconds: float) -> None:
        """Record the duration of one full resync pass."""
        self._reconcile.observe(max(0.0, seconds))
        self._bump()

    # ------------------------------------------------------------------ usage

    def set_usage(self, usage: Usage) -> None:
        """Take a new usage sample: its text is rendered now, once, and served by every
        scrape until the next sample."""
        text = render_usage(usage).encode()
        with self._render_lock:
            self._usage = usage
            self._usage_text = text
            self._text = None

    # ------------------------------------------------------------------ exposition

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every metric, from one snapshot.

        The state part is re-rendered only when the snapshot object changed, the event part
        only when an event metric moved, the usage part only by ``set_usage``; otherwise cached
        bytes are returned. Covers the
        metrics this class owns (collectors others add to the registry are not rendered).
        Raises whatever the snapshot source raises.
        """
        with self._render_lock:
            snap = self._snapshot()
            # Read the version before rendering: an event landing mid-render bumps it again,
            # so the next call re-renders and the event is never lost from the text.
            version = self._version
            if self._text_snap is not snap:
                self._state_text = render_snapshot(snap)
                self._text_snap = snap
                self._text = None
            if self._text_version != version:
                self._event_text = render_families(
                    family for m in self._event_metrics for family in m.collect()
                )
                self._text_version = version
                self._text = None
            if self._text is None:
                self._text = (self._state_text + self._event_text).encode() + self._usage_text
            return self._text

    def _bump(self) -> None:
        with self._version_lock:
            self._version += 1

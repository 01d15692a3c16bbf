"""The agent's Prometheus metrics: a snapshot collector plus event counters, on one registry.

This module owns every metric name an agent exports (docs/http-and-metrics.md lists them), and the
text that ``/metrics`` serves. Three kinds of metric live here, for three kinds of truth:

* **State** (node, readiness, tasks, restarts, desired-state validity, session) is not kept in
  metric objects at all. A custom ``Collector`` reads ONE immutable ``Snapshot`` at scrape time
  and turns it into metric families. A task that leaves the snapshot therefore leaves no stale
  series behind, and a scrape never calls podman or walks RocksDB: it costs the same whether
  podman is fast, slow or hung. ``reconciler_tasks`` and ``reconciler_task_state`` count current
  instances only, so a failed instance in the history never keeps an alert firing.
* **Events** (runtime errors, drift corrections, rejected reloads, start latency, resync
  duration, pull decisions, images removed) are ordinary ``prometheus_client`` counters and
  histograms on an injected ``CollectorRegistry`` (never the process-global one, so tests and
  several agents in one process never share series). Every value of a fixed label set is
  created up front, so ``rate()`` and alerts see a 0 before the first event rather than no
  series at all.
* **Usage** (per-task CPU, memory, network, block I/O and PIDs; the node's CPU, memory, disk and
  pressure) arrives as one immutable ``reconciler.observe.usage.Usage`` sample per
  ``--stats-interval``
  (``set_usage``). Its text is rendered once per sample and appended to every scrape, so a
  scrape never reads a cgroup; a figure the host does not offer is left out, never faked.
  OOM kills and node conditions are state, and come from the snapshot like the restarts.


``Metrics`` implements ``reconciler.core.executor.RuntimeObserver`` so a runtime reports straight
into
it. ``render()`` caches the exposition text and re-renders only when the snapshot object changed
or an event metric moved (a version counter bumped by every event method), so a fleet of
Prometheus servers scraping an idle agent costs one dictionary compare per scrape.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator
from operator import attrgetter
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler import __version__
from reconciler.core.executor import DRIFT_KINDS, PULL_RESULTS, RUNTIME_OPS
from reconciler.core.model import TaskState
from reconciler.core.snapshot import Snapshot
from reconciler.core.supervisor import LOOPS
from reconciler.observe.hoststats import NodeUsage
from reconciler.observe.usage import Usage

__all__ = [
    "CONTENT_TYPE",
    "DRIFT_KINDS",
    "LOOPS",
    "PULL_RESULTS",
    "RECONCILE_BUCKETS",
    "RUNTIME_OPS",
    "START_BUCKETS",
    "Metrics",
]

#: The exposition format ``render()`` produces (the classic Prometheus text format).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


#: Assignment-to-running latency: a local create+start is ~50 ms, a pull can take minutes.
START_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

#: One full resync pass: a relist of a few containers up to a slow podman with many.
RECONCILE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_STATE_LABELS: Final = tuple(s.label for s in TaskState)


class _SnapshotCollector(Collector):
    """Turns one ``Snapshot`` into the state metric families, at collect time."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        # Our series vary by snapshot; an empty describe() keeps registration from calling
        # collect() (and so the snapshot source) before the agent is wired.
        return ()

    def collect(self) -> Iterator[Metric]:
        yield from snapshot_families(self._source())


_TASK_STATE: Final = (
    "reconciler_task_state",
    "One series per current task instance, labelled with its state; always 1.",
)
_RESTARTS: Final = (
    "reconciler_task_restarts",
    "Replacements made by the restart policy, per task name, from stored counters.",
)
_ROLLBACKS: Final = (
    "reconciler_task_rollbacks",
    "Rollbacks of a failed update to the previous spec, per task name, from stored counters.",
)
_OOM_KILLS: Final = (
    "reconciler_task_oom_kills",
    "Processes of a task's containers killed by the kernel for lack of memory, per task name, "
    "from stored counters.",
)
_LABEL_OF: Final = {s: s.label for s in TaskState}


def snapshot_families(s: Snapshot) -> list[Metric]:
    """The state metric families of one snapshot (what the registry collects)."""
    counts = dict.fromkeys(_STATE_LABELS, 0)
    per_task = GaugeMetricFamily(*_TASK_STATE, labels=["name", "id", "state"])
    for t in s.tasks:
        if t.current:
            label = _LABEL_OF[t.state]
            counts[label] += 1
            per_task.add_metric([t.name, t.id, label], 1.0)
    restarts = CounterMetricFamily(*_RESTARTS, labels=["name"])
    for name, n in s.restarts:
        restarts.add_metric([name], float(n))
    rollbacks = CounterMetricFamily(*_ROLLBACKS, labels=["name"])
    for name, n in s.rollbacks:
        rollbacks.add_metric([name], float(n))
    ooms = CounterMetricFamily(*_OOM_KILLS, labels=["name"])
    for name, n in s.oom_kills:
        ooms.add_metric([name], float(n))
    return [*_node_families(s, counts), per_task, restarts, rollbacks, ooms]


def render_snapshot(s: Snapshot) -> str:
    """The text of ``snapshot_families(s)``, built without the per-sample objects.

    The per-task families are most of a scrape on a busy node, so their lines are formatted
    straight from the snapshot; tests check that the text parses to exactly what the registry
    collects.
    """
    counts = dict.fromkeys(_STATE_LABELS, 0)
    name, doc = _TASK_STATE
    lines = [f"# HELP {name} {doc}\n# TYPE {name} gauge\n"]
    for t in s.tasks:
        if t.current:
            label = _LABEL_OF[t.state]
            counts[label] += 1
            lines.append(
                f'reconciler_task_state{{name="{_escape(t.name)}",id="{_escape(t.id)}",'
                f'state="{label}"}} 1.0\n'
            )
    per_name = ((_RESTARTS, s.restarts), (_ROLLBACKS, s.rollbacks), (_OOM_KILLS, s.oom_kills))
    for (name, doc), series in per_name:
        lines.append(f"# HELP {name}_total {doc}\n# TYPE {name}_total counter\n")
        for task_name, n in series:
            value = _SMALL_INTS.get(n) or _go_float(n)
            lines.append(f'{name}_total{{name="{_escape(task_name)}"}} {value}\n')
    return _render_families(_node_families(s, counts)) + "".join(lines)


def _node_families(s: Snapshot, counts: dict[str, int]) -> list[Metric]:
    """The node-level state families; ``counts`` is current instances per state label."""
    ready = s.ready
    out: list[Metric] = []

    build = GaugeMetricFamily(
        "reconciler_build_info", "The running agent's version; always 1.", labels=["version"]
    )
    build.add_metric([__version__], 1.0)
    out.append(build)

    node = s.node
    info = GaugeMetricFamily(
        "reconciler_node_info",
        "The node as the runtime describes it; always 1. Empty labels until the runtime answered.",
        labels=["node_id", "hostname", "os", "arch", "runtime_version"],
    )
    info.add_metric(
        [
            s.node_id,
            node.hostname if node else "",
            node.os if node else "",
            node.arch if node else "",
            node.runtime_version if node else "",
        ],
        1.0,
    )
    out.append(info)

    out.append(
        _gauge(
            "reconciler_node_ready",
            "1 when the store, the loops and the runtime are all healthy (follows /readyz).",
            ready,
        )
    )
    if node is not None:
        out.append(_gauge("reconciler_node_cpus", "CPUs the node describes.", node.cpus))
        out.append(
            _gauge("reconciler_node_memory_bytes", "Memory the node describes.", node.memory_bytes)
        )
    out.append(
        _gauge("reconciler_runtime_up", "1 while the container runtime answers.", s.runtime_up)
    )

    tasks = GaugeMetricFamily(
        "reconciler_tasks",
        "Current task instances (history excluded) per state.",
        labels=["state"],
    )
    for label in _STATE_LABELS:
        tasks.add_metric([label], counts[label])
    out.append(tasks)

    out.append(
        _gauge(
            "reconciler_desired_state_valid",
            "1 when the last read of the desired state was valid.",
            s.desired_valid,
        )
    )
    out.append(
        _gauge(
            "reconciler_desired_state_applied_timestamp_seconds",
            "When a valid desired state was last applied (Unix time; 0 before the first).",
            s.desired_applied_at or 0.0,
        )
    )
    out.append(
        _gauge(
            "reconciler_status_reports_pending",
            "Task statuses not yet delivered to the manager.",
            s.reports_pending,
        )
    )
    out.append(
        _gauge(
            "reconciler_session_connected",
            "1 while the session to the manager is connected.",
            s.session_connected,
        )
    )
    if s.conditions:
        condition = GaugeMetricFamily(
            "reconciler_node_condition",
            "1 while a node condition holds (disk_pressure, memory_pressure); from the last "
            "usage sample. Conditions never make the node not ready.",
            labels=["condition"],
        )
        for c, holds in s.conditions:
            condition.add_metric([c.value], float(holds))
        out.append(condition)
    return out


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _render_families(families: Iterable[Metric]) -> str:
    """Classic text format (0.0.4), like ``generate_latest`` but faster and without the
    OpenMetrics-only ``_created`` samples, which the classic format can only carry as
    separate gauges that nobody queries."""
    out: list[str] = []
    for metric in families:
        mtype = metric.type
        name = metric.name + "_total" if mtype == "counter" else metric.name
        doc = metric.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {mtype}\n")
        created = metric.name + "_created"
        for sample in metric.samples:
            if sample.name == created:
                continue
            text = _SMALL_INTS.get(sample.value) or _go_float(sample.value)
            if sample.labels:
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
                out.append(f"{sample.name}{{{labels}}} {text}\n")
            else:
                out.append(f"{sample.name} {text}\n")
    return "".join(out)


def _go_float(value: float) -> str:
    """A float as Prometheus's Go parser reads it (``prometheus_client``'s rules)."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


#: Most values are small counts; their text (Go's float format, "1.0") is looked up, not built.
_SMALL_INTS: Final = {float(i): repr(float(i)) for i in range(64)}


def _gauge(name: str, doc: str, value: float | bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


# ------------------------------------------------------------------------------------ usage

#: The per-task usage families: (name as registered, type, help, the ``TaskUsage`` field).
#: Counters are exposed with ``_total``.
_TASK_USAGE: Final = (
    (
        "reconciler_task_cpu_seconds",
        "counter",
        "CPU time used by the task's current instance.",
        "cpu_seconds",
    ),
    (
        "reconciler_task_memory_working_set_bytes",
        "gauge",
        "Memory used by the task's current instance less inactive file cache.",
        "memory_working_set_bytes",
    ),
    (
        "reconciler_task_memory_limit_bytes",
        "gauge",
        "The memory limit of the task's current instance; absent without one.",
        "memory_limit_bytes",
    ),
    (
        "reconciler_task_network_receive_bytes",
        "counter",
        "Bytes received in the current instance's network namespace (loopback excluded).",
        "network_receive_bytes",
    ),
    (
        "reconciler_task_network_transmit_bytes",
        "counter",
        "Bytes sent from the current instance's network namespace (loopback excluded).",
        "network_transmit_bytes",
    ),
    (
        "reconciler_task_block_read_bytes",
        "counter",
        "Bytes read from block devices, as the kernel accounts them to the instance's cgroup.",
        "block_read_bytes",
    ),
    (
        "reconciler_task_block_write_bytes",
        "counter",
        "Bytes written to block devices, as the kernel accounts them to the instance's cgroup.",
        "block_write_bytes",
    ),
    (
        "reconciler_task_pids",
        "gauge",
        "Processes and threads in the task's current instance.",
        "pids",
    ),
)
_TASK_USAGE_FIELDS: Final = tuple(attrgetter(field) for *_, field in _TASK_USAGE)


class _UsageCollector(Collector):
    """Turns the last usage sample into its metric families, at collect time."""

    def __init__(self, source: Callable[[], Usage | None]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterator[Metric]:
        usage = self._source()
        if usage is not None:
            yield from usage_families(usage)


def usage_families(u: Usage) -> list[Metric]:
    """The usage metric families of one sample (what the registry collects)."""
    out: list[Metric] = []
    for (name, mtype, doc, _), field in zip(_TASK_USAGE, _TASK_USAGE_FIELDS, strict=True):
        family_type = CounterMetricFamily if mtype == "counter" else GaugeMetricFamily
        family = family_type(name, doc, labels=["name", "id"])
        for t in u.tasks:
            value = field(t)
            if value is not None:
                family.add_metric([t.name, t.task_id], float(value))
        out.append(family)
    return out + _node_usage_families(u.node)


def render_usage(u: Usage) -> str:
    """The text of ``usage_families(u)``, the per-task lines formatted straight from the
    sample (rendered once per sample, not per scrape)."""
    labels = [f'{{name="{_escape(t.name)}",id="{_escape(t.task_id)}"}} ' for t in u.tasks]
    lines: list[str] = []
    for (name, mtype, doc, _), field in zip(_TASK_USAGE, _TASK_USAGE_FIELDS, strict=True):
        exposed = name + "_total" if mtype == "counter" else name
        lines.append(f"# HELP {exposed} {doc}\n# TYPE {exposed} {mtype}\n")
        for t, label in zip(u.tasks, labels, strict=True):
            value = field(t)
            if value is not None:
                lines.append(f"{exposed}{label}{_SMALL_INTS.get(value) or _go_float(value)}\n")
    return "".join(lines) + _render_families(_node_usage_families(u.node))


def _node_usage_families(node: NodeUsage | None) -> list[Metric]:
    """The node's usage families; a figure the host does not offer is left out."""
    if node is None:
        return []
    out: list[Metric] = []
    if node.cpu_seconds:
        cpu = CounterMetricFamily(
            "reconciler_node_cpu_seconds",
            "CPU time of the whole node by mode, as /proc/stat counts it.",
            labels=["mode"],
        )
        for mode, seconds in node.cpu_seconds:
            cpu.add_metric([mode], seconds)
        out.append(cpu)
    if node.memory_available_bytes is not None:
        out.append(
            _gauge(
                "reconciler_node_memory_available_bytes",
                "Memory available for new work without swapping (MemAvailable).",
                node.memory_available_bytes,
            )
        )
    if node.disks:
        disk = GaugeMetricFamily(
            "reconciler_node_disk_free_bytes",
            "Free bytes of the state dir's (state) and the image store's (images) filesystems.",
            labels=["fs"],
        )
        for d in node.disks:
            disk.add_metric([d.fs], float(d.free_bytes))
        out.append(disk)
    if node.pressure:
        pressure = CounterMetricFamily(
            "reconciler_node_pressure_seconds",
            "Time tasks stalled waiting for a resource (pressure stall information).",
            labels=["resource", "kind"],
        )
        for resource, kind, seconds in node.pressure:
            pressure.add_metric([resource, kind], seconds)
        out.append(pressure)
    return out


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

        self._collector = _SnapshotCollector(snapshot)
        self.registry.register(self._collector)
        self.registry.register(_UsageCollector(lambda: self._usage))

        self._drift = Counter(
            "reconciler_drift_corrections",
            "Corrections of changes made outside the agent, by kind.",
            ["kind"],
            registry=self.registry,
        )
        for kind in DRIFT_KINDS:
            self._drift.labels(kind)
        self._runtime_errors = Counter(
            "reconciler_runtime_errors",
            "Failed container runtime calls, by operation.",
            ["op"],
            registry=self.registry,
        )
        for op in RUNTIME_OPS:
            self._runtime_errors.labels(op)
        self._desired_errors = Counter(
            "reconciler_desired_state_errors",
            "Rejected reloads of the desired state.",
            registry=self.registry,
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
        self._loop_restarts = Counter(
            "reconciler_loop_restarts",
            "Restarts of an agent loop after an unexpected error, by loop.",
            ["loop"],
            registry=self.registry,
        )
        for loop in LOOPS:
            self._loop_restarts.labels(loop)
        self._store_rebuilds = Counter(
            "reconciler_store_rebuilds",
            "Corrupt stores moved aside and rebuilt from the runtime's containers.",
            registry=self.registry,
        )
        self._pulls = Counter(
            "reconciler_image_pulls",
            "Pull decisions of prepares, by result: pulled, present (no registry contacted), "
            "fallback (the local image after a failed or refused pull), failed, refused (the "
            "image store under the image GC threshold).",
            ["result"],
            registry=self.registry,
        )
        for result in PULL_RESULTS:
            self._pulls.labels(result)
        self._images_removed = Counter(
            "reconciler_images_removed",
            "Images removed by the image GC.",
            registry=self.registry,
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
        )

    # ------------------------------------------------------------------ RuntimeObserver

    def runtime_error(self, op: str) -> None:
        """Count a failed runtime call. Raises ``ValueError`` for an op outside the contract."""
        if op not in RUNTIME_OPS:
            raise ValueError(f"unknown runtime op {op!r}; expected one of {RUNTIME_OPS}")
        self._runtime_errors.labels(op).inc()
        self._bump()

    def drift_corrected(self, kind: str) -> None:
        """Count a drift correction. Raises ``ValueError`` for a kind outside the contract."""
        if kind not in DRIFT_KINDS:
            raise ValueError(f"unknown drift kind {kind!r}; expected one of {DRIFT_KINDS}")
        self._drift.labels(kind).inc()
        self._bump()

    def runtime_up(self, up: bool) -> None:
        """Accepted and ignored: ``reconciler_runtime_up`` comes from the snapshot."""

    def oom_killed(self, name: str, task_id: str) -> None:
        """Accepted and ignored: ``reconciler_task_oom_kills_total`` comes from the snapshot."""

    def image_pulled(self, result: str) -> None:
        """Count one pull decision. Raises ``ValueError`` for a result outside the contract."""
        if result not in PULL_RESULTS:
            raise ValueError(f"unknown pull result {result!r}; expected one of {PULL_RESULTS}")
        self._pulls.labels(result).inc()
        self._bump()

    # ------------------------------------------------------------------ agent events

    def desired_state_error(self) -> None:
        """Count one rejected reload of the desired state."""
        self._desired_errors.inc()
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
                self._event_text = _render_families(
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

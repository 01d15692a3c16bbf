"""The agent's state metrics: one immutable ``Snapshot`` turned into metric families.

State (the node, readiness, tasks, restarts, rollbacks, OOM kills, desired-state validity, the
session) is never kept in metric objects. ``SnapshotCollector`` reads ONE snapshot at collect
time and ``snapshot_families`` turns it into families, so a task that leaves the snapshot
leaves no stale series behind, and a scrape never calls podman or walks RocksDB.
``reconciler_tasks`` and ``reconciler_task_state`` count current instances only, so a failed
instance in the history never keeps an alert firing.

``render_snapshot`` writes the same families as text without building a sample object per task
(the per-task families are most of a scrape on a busy node); ``reconciler.observe.metrics``
calls it once per snapshot object, and tests check that the text parses to exactly what the
registry collects. Kept apart from the event counters and the usage sample, which change for
other reasons and at other rates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler import __version__
from reconciler.core.model import TaskState
from reconciler.core.snapshot import Snapshot
from reconciler.observe.exposition import SMALL_INTS, escape, gauge, number, render_families

__all__ = ["SnapshotCollector", "render_snapshot", "snapshot_families"]

_STATE_LABELS: Final = tuple(s.label for s in TaskState)
_LABEL_OF: Final = {s: s.label for s in TaskState}

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

#: The agent's own unlabelled gauges, in exposition order: (name, help, value of a snapshot).
_AGENT_GAUGES: Final[tuple[tuple[str, str, Callable[[Snapshot], float | bool]], ...]] = (
    (
        "reconciler_desired_state_valid",
        "1 when the last read of the desired state was valid.",
        lambda s: s.desired_valid,
    ),
    (
        "reconciler_desired_state_applied_timestamp_seconds",
        "When a valid desired state was last applied (Unix time; 0 before the first).",
        lambda s: s.desired_applied_at or 0.0,
    ),
    (
        "reconciler_status_reports_pending",
        "Task statuses not yet delivered to the manager.",
        lambda s: s.reports_pending,
    ),
    (
        "reconciler_session_connected",
        "1 while the session to the manager is connected.",
        lambda s: s.session_connected,
    ),
)


class SnapshotCollector(Collector):
    """Turns one ``Snapshot`` into the state metric families, at collect time."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        # Our series vary by snapshot; an empty describe() keeps registration from calling
        # collect() (and so the snapshot source) before the agent is wired.
        return ()

    def collect(self) -> Iterator[Metric]:
        yield from snapshot_families(self._source())


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
    """The text of ``snapshot_families(s)``, built without the per-sample objects."""
    counts = dict.fromkeys(_STATE_LABELS, 0)
    name, doc = _TASK_STATE
    lines = [f"# HELP {name} {doc}\n# TYPE {name} gauge\n"]
    for t in s.tasks:
        if t.current:
            label = _LABEL_OF[t.state]
            counts[label] += 1
            lines.append(
                f'reconciler_task_state{{name="{escape(t.name)}",id="{escape(t.id)}",'
                f'state="{label}"}} 1.0\n'
            )
    per_name = ((_RESTARTS, s.restarts), (_ROLLBACKS, s.rollbacks), (_OOM_KILLS, s.oom_kills))
    for (name, doc), series in per_name:
        lines.append(f"# HELP {name}_total {doc}\n# TYPE {name}_total counter\n")
        for task_name, n in series:
            value = SMALL_INTS.get(n) or number(n)
            lines.append(f'{name}_total{{name="{escape(task_name)}"}} {value}\n')
    return render_families(_node_families(s, counts)) + "".join(lines)


def _node_families(s: Snapshot, counts: dict[str, int]) -> list[Metric]:
    """The node-level state families; ``counts`` is current instances per state label."""
    out: list[Metric] = [*_identity(s)]
    out.append(
        gauge(
            "reconciler_node_ready",
            "1 when the store, the loops and the runtime are all healthy (follows /readyz).",
            s.ready,
        )
    )
    node = s.node
    if node is not None:
        out.append(gauge("reconciler_node_cpus", "CPUs the node describes.", node.cpus))
        out.append(
            gauge("reconciler_node_memory_bytes", "Memory the node describes.", node.memory_bytes)
        )
    out.append(
        gauge("reconciler_runtime_up", "1 while the container runtime answers.", s.runtime_up)
    )
    tasks = GaugeMetricFamily(
        "reconciler_tasks",
        "Current task instances (history excluded) per state.",
        labels=["state"],
    )
    for label in _STATE_LABELS:
        tasks.add_metric([label], counts[label])
    out.append(tasks)
    out.extend(gauge(name, doc, value(s)) for name, doc, value in _AGENT_GAUGES)
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


def _identity(s: Snapshot) -> tuple[Metric, Metric]:
    """``reconciler_build_info`` and ``reconciler_node_info`` (empty labels until the runtime
    described the node, the node id aside)."""
    build = GaugeMetricFamily(
        "reconciler_build_info", "The running agent's version; always 1.", labels=["version"]
    )
    build.add_metric([__version__], 1.0)
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
    return build, info

"""The manager's Prometheus metrics, on its own registry, for its own ``/metrics``.

State is read at scrape time from one ``FleetCounts`` (the driver's current picture), so a
scrape never waits on NATS; events are counters and a histogram:

- ``reconciler_build_info{version}``, gauge 1;
- ``reconciler_manager_leader``, gauge 0/1;
- ``reconciler_manager_nodes{state}``: ``ready``, ``down``, ``paused``, ``draining``
  (``NodeState``; a node that is neither down nor ready, within its grace period, counts in
  none);
- ``reconciler_manager_tasks{state}``: every ``TaskState`` label, plus ``unassigned``; a task
  placed but not reported yet counts as ``assigned``;
- ``reconciler_manager_node_keys{node}``: the status keys each node holds, as the manager's
  watch of ``reconciler_status`` shows them (counted as they come, ``manager.writes.StatusKeys``);
  a node that holds none has no series;
- ``reconciler_manager_reschedules_total{reason}``: ``node_down``, ``drain``, ``constraint``;
- ``reconciler_manager_schedule_seconds``, histogram: one pass of the leader that wrote;
- ``reconciler_manager_bad_values_total{bucket}``: values read from a bucket that broke the
  contract, each key and revision counted once (``reconciler.manager.view``); one series per
  bucket the manager reads.

Every value of a fixed label set is present from the start, at 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler import __version__
from reconciler.core.model import TaskState
from reconciler.fleet.buckets import ASSIGNMENTS, CONTROL, NODES, SERVICES, STATUS
from reconciler.manager.health import NodeState
from reconciler.manager.scheduler import UNASSIGNED, Reason

__all__ = [
    "BAD_VALUE_BUCKETS",
    "NODE_STATES",
    "SCHEDULE_BUCKETS",
    "TASK_STATES",
    "UNASSIGNED",
    "FleetCounts",
    "ManagerMetrics",
]

NODE_STATES: Final = (NodeState.READY, NodeState.DOWN, NodeState.PAUSED, NodeState.DRAINING)
TASK_STATES: Final = (*(s.label for s in TaskState), UNASSIGNED)
BAD_VALUE_BUCKETS: Final = (SERVICES, NODES, CONTROL, ASSIGNMENTS, STATUS)
"""The buckets whose values the manager reads (and may find bad)."""

#: One scheduling pass: planning a few tasks takes a millisecond, writing 10,000 a few seconds.
SCHEDULE_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class FleetCounts:
    """What the manager's gauges show: leadership, nodes per state, named tasks per state (a
    task placed but not reported yet counts as ``ASSIGNED``), those no node could take, and
    the status keys of each node that holds any."""

    leader: bool = False
    nodes: Mapping[NodeState, int] = field(default_factory=dict)
    tasks: Mapping[TaskState, int] = field(default_factory=dict)
    unassigned: int = 0
    node_keys: Mapping[str, int] = field(default_factory=dict)


class _Collector(Collector):
    def __init__(self, source: Callable[[], FleetCounts]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterator[Metric]:
        counts = self._source()
        info = GaugeMetricFamily(
            "reconciler_build_info", "The version of reconciler.", labels=["version"]
        )
        info.add_metric([__version__], 1.0)
        yield info
        yield GaugeMetricFamily(
            "reconciler_manager_leader",
            "1 while this manager leads the fleet.",
            value=1.0 if counts.leader else 0.0,
        )
        nodes = GaugeMetricFamily(
            "reconciler_manager_nodes",
            "Nodes by state, as this manager judges them.",
            labels=["state"],
        )
        for node_state in NODE_STATES:
            nodes.add_metric([node_state.value], float(counts.nodes.get(node_state, 0)))
        yield nodes
        tasks = GaugeMetricFamily(
            "reconciler_manager_tasks",
            "Named tasks by reported state, and those no node could take.",
            labels=["state"],
        )
        for task_state in TaskState:
            tasks.add_metric([task_state.label], float(counts.tasks.get(task_state, 0)))
        tasks.add_metric([UNASSIGNED], float(counts.unassigned))
        yield tasks
        keys = GaugeMetricFamily(
            "reconciler_manager_node_keys",
            "On a manager: status keys each node holds.",
            labels=["node"],
        )
        for node, count in counts.node_keys.items():
            keys.add_metric([node], float(count))
        yield keys


class ManagerMetrics:
    """Every manager metric on one registry; ``render()`` is the ``/metrics`` body."""

    def __init__(
        self, *, counts: Callable[[], FleetCounts], registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(_Collector(counts))
        self._reschedules = Counter(
            "reconciler_manager_reschedules",
            "Tasks taken off a node, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in Reason:
            self._reschedules.labels(reason.value)
        self._bad_values = Counter(
            "reconciler_manager_bad_values",
            "Values read from a bucket that broke the contract and were skipped, by bucket.",
            ["bucket"],
            registry=self.registry,
        )
        for bucket in BAD_VALUE_BUCKETS:
            self._bad_values.labels(bucket)
        self._schedule = Histogram(
            "reconciler_manager_schedule_seconds",
            "One scheduling pass of the leader: the plan and its writes.",
            buckets=SCHEDULE_BUCKETS,
            registry=self.registry,
        )

    def rescheduled(self, reason: Reason, count: int = 1) -> None:
        self._reschedules.labels(reason.value).inc(count)

    def bad_values(self, bucket: str, count: int = 1) -> None:
        """Count bad values read from ``bucket``."""
        self._bad_values.labels(bucket).inc(count)

    def observe_schedule(self, seconds: float) -> None:
        self._schedule.observe(max(0.0, seconds))

    def render(self) -> bytes:
        """The text exposition (format 0.0.4), without the ``_created`` samples that only
        OpenMetrics carries well (as the agent's ``/metrics``)."""
        return generate_latest(_WithoutCreated(self.registry))


class _WithoutCreated(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            created = family.name + "_created"
            family.samples = [s for s in family.samples if s.name != created]
            yield family

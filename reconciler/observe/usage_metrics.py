"""The agent's usage metrics: one ``reconciler.observe.usage.Usage`` sample as metric families.

Per-task figures (CPU, memory, network, block I/O, PIDs) and the node's (CPU by mode, available
memory, free disk, pressure stall time) arrive as one immutable sample per ``--stats-interval``.
``render_usage`` writes a sample's text once, when it is set (``Metrics.set_usage``), and every
scrape until the next sample appends those bytes, so a scrape never reads a cgroup.
``UsageCollector`` gives the registry the same families, for tests and ``get_sample_value``.
A figure the host does not offer is left out, never faked.

The per-task families are one table (``TASK_USAGE``): name, type, help and the ``TaskUsage``
field, so the collector, the text and the docs test read the same list. Kept apart from the
snapshot's families: a sample changes every few seconds, the snapshot only when state does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from operator import attrgetter
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler.observe.exposition import SMALL_INTS, escape, gauge, number, render_families
from reconciler.observe.hoststats import NodeUsage
from reconciler.observe.usage import Usage

__all__ = ["TASK_USAGE", "UsageCollector", "render_usage", "usage_families"]

#: The per-task usage families: (name as registered, type, help, the ``TaskUsage`` field).
#: Counters are exposed with ``_total``.
TASK_USAGE: Final = (
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
_TASK_USAGE_FIELDS: Final = tuple(attrgetter(field) for *_, field in TASK_USAGE)


class UsageCollector(Collector):
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
    for (name, mtype, doc, _), field in zip(TASK_USAGE, _TASK_USAGE_FIELDS, strict=True):
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
    labels = [f'{{name="{escape(t.name)}",id="{escape(t.task_id)}"}} ' for t in u.tasks]
    lines: list[str] = []
    for (name, mtype, doc, _), field in zip(TASK_USAGE, _TASK_USAGE_FIELDS, strict=True):
        exposed = name + "_total" if mtype == "counter" else name
        lines.append(f"# HELP {exposed} {doc}\n# TYPE {exposed} {mtype}\n")
        for t, label in zip(u.tasks, labels, strict=True):
            value = field(t)
            if value is not None:
                lines.append(f"{exposed}{label}{SMALL_INTS.get(value) or number(value)}\n")
    return "".join(lines) + render_families(_node_usage_families(u.node))


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
            gauge(
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

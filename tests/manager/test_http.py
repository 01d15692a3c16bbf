"""The manager's HTTP endpoints and metrics: every series with every label value, documented."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from reconciler.core.model import TaskState
from reconciler.manager.health import NodeState
from reconciler.manager.metrics import NODE_STATES, TASK_STATES, FleetCounts, ManagerMetrics
from reconciler.manager.scheduler import Reason
from tests.contract import MANAGER_METRICS

ROOT = Path(__file__).resolve().parents[2]


def families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_every_manager_series_is_exported_with_every_label_value_from_the_start() -> None:
    counts = FleetCounts(
        leader=True,
        nodes={NodeState.READY: 2, NodeState.DOWN: 1},
        tasks={TaskState.RUNNING: 5},
        unassigned=3,
        node_keys={"node-a": 4, "node-b": 1},
    )
    metrics = ManagerMetrics(counts=lambda: counts)
    metrics.rescheduled(Reason.NODE_DOWN, 2)
    metrics.observe_schedule(0.02)
    got = families(metrics.render().decode())
    assert got["reconciler_manager_leader"] == {(): 1.0}
    assert {dict(k)["state"]: v for k, v in got["reconciler_manager_nodes"].items()} == {
        "ready": 2.0,
        "down": 1.0,
        "paused": 0.0,
        "draining": 0.0,
    }
    tasks = {dict(k)["state"]: v for k, v in got["reconciler_manager_tasks"].items()}
    assert set(tasks) == set(TASK_STATES) and tasks["running"] == 5.0
    assert tasks["unassigned"] == 3.0 and tasks["assigned"] == 0.0
    reschedules = got["reconciler_manager_reschedules_total"]
    assert {dict(k)["reason"]: v for k, v in reschedules.items()} == {
        "node_down": 2.0,
        "drain": 0.0,
        "constraint": 0.0,
    }
    assert got["reconciler_manager_node_keys"] == {
        (("node", "node-a"),): 4.0,
        (("node", "node-b"),): 1.0,
    }
    assert got["reconciler_manager_schedule_seconds_count"] == {(): 1.0}
    assert not [n for n in got if n.endswith("_created")]
    exported = {n.removesuffix("_total") for n in got} | set(got)
    for name in MANAGER_METRICS:
        assert name in exported or f"{name}_count" in exported, name


def test_the_manager_metrics_and_label_values_are_documented() -> None:
    text = (ROOT / "docs" / "http-and-metrics.md").read_text()
    spans = set(re.findall(r"`([^`\n]+)`", text))
    assert not [m for m in MANAGER_METRICS if m not in spans and f"{m}_total" not in spans]
    assert not [v for v in (*NODE_STATES, "unassigned", *Reason) if v not in spans]

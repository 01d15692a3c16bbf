"""End to end: a real Prometheus scrapes a real agent running real podman tasks.

The agent runs as a subprocess on the private podman service with a small, lively desired set:
a long-running task, a job that completes and is restarted, a task that keeps failing, and a
container killed behind the agent's back (a drift correction), with usage sampled every second
(the long-running task has a memory limit, for the memory-of-limit panel). Debian's
``prometheus`` scrapes it every second. Then every panel expression of the Grafana dashboard,
with its variables made concrete, must return data, and a few contract values are checked
through PromQL.

Without podman or prometheus this skips on a developer machine and fails under CI.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.e2e.agent_support import Harness, task
from tests.prometheus import Prometheus, concrete, dashboard_targets, has_number

pytestmark = [pytest.mark.e2e, pytest.mark.prometheus]


def value(prom: Prometheus, expr: str) -> float:
    result = prom.api("query", query=expr)["result"]
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def test_dashboard_panels_have_data_from_a_real_agent(
    harness: Harness, prometheus: Callable[[str, str], Prometheus]
) -> None:
    h = harness
    h.desired.write(
        "t.yaml",
        [
            task("web", resources={"memory": "64Mi"}),  # for the memory-of-limit panel
            task("job", command=["sh", "-c", "exit 0"], restart={"delay": "1s"}),
            task(
                "crashy",
                command=["sh", "-c", "exit 3"],
                restart={"condition": "on-failure", "delay": "1s", "maxDelay": "2s"},
            ),
        ],
    )
    agent = h.start_agent("--stats-interval", "1s", resync="2s")
    web = h.wait_state("web", "running")
    h.podman("kill", web["containerId"])  # a drift correction for the dashboard to show
    h.wait_for(
        lambda: (h.current("web") or {}).get("id") not in (None, web["id"]) or None,
        "web replaced after the kill",
    )
    prom = prometheus("reconciler", f"127.0.0.1:{h.port}")
    prom.wait_scraped(8)

    instance = f"127.0.0.1:{h.port}"
    empty = []
    for title, target in dashboard_targets():
        expr = concrete(target["expr"], instance)
        if target.get("instant"):
            data = prom.api("query", query=expr)
        else:
            end = time.time()
            data = prom.api("query_range", query=expr, start=str(end - 30), end=str(end), step="1")
        if not has_number(data["result"]):
            empty.append(f"{title}: {expr} -> {data['result']}")
    assert not empty, "panels without data:\n" + "\n".join(empty) + "\n" + agent.log_tail()

    assert value(prom, f'reconciler_node_info{{node_id="{h.node_id}"}}') == 1
    assert value(prom, "reconciler_node_ready") == 1
    assert value(prom, 'reconciler_tasks{state="running"}') >= 1
    assert value(prom, 'reconciler_drift_corrections_total{kind="container_exited"}') >= 1
    assert value(prom, 'reconciler_task_restarts_total{name="web"}') >= 1
    assert value(prom, "reconciler_task_start_seconds_count") >= 3
    assert value(prom, "reconciler_reconcile_duration_seconds_count") >= 1
    assert value(prom, 'reconciler_task_memory_limit_bytes{name="web"}') == 64 * 1024**2
    assert value(prom, 'reconciler_task_oom_kills_total{name="web"}') == 0
    assert value(prom, 'reconciler_node_condition{condition="disk_pressure"}') in (0, 1)

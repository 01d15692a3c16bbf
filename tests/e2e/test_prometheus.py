"""End to end: a real Prometheus scrapes reconciler's /metrics, and every dashboard panel has data.

Debian's ``prometheus`` binary is started on a free loopback port with a temporary config that
scrapes ``reconciler.web.server.serve`` once a second. The agent side is the real HTTP server and
the
real ``Metrics``, fed a hand-built ``Snapshot`` of realistic tasks while event metrics (start
latency, resync duration, runtime errors, drift corrections, rejected reloads) and usage samples
keep arriving, as they do on a busy host. Once Prometheus has a few scrapes, every panel
expression of the Grafana dashboard is sent to Prometheus's HTTP API, with the dashboard's
variables replaced by concrete values, and must return data. Every alert expression must at
least evaluate.

Without the binary this skips on a developer machine and fails under CI (``CI`` set).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace

import pytest
import pytest_asyncio
import yaml
from prometheus_client import CollectorRegistry

from reconciler.core.executor import TaskUsage
from reconciler.core.model import Condition, TaskState
from reconciler.core.snapshot import Snapshot, TaskView
from reconciler.observe.hoststats import CPU_MODES, DiskFree, NodeUsage
from reconciler.observe.metrics import Metrics
from reconciler.observe.usage import Usage
from reconciler.web.agent_routes import serve_agent as serve
from tests.builders import node
from tests.contract import missing
from tests.prometheus import (
    ALERTS,
    Prometheus,
    PrometheusMissing,
    concrete,
    dashboard_targets,
    has_number,
    running_prometheus,
)

# One Prometheus and one agent serve every test of this module (startup is the slow part), on
# one event loop for the module.
pytestmark = [pytest.mark.prometheus, pytest.mark.asyncio(loop_scope="module")]


# ------------------------------------------------------------------------- the agent side


def realistic_snapshot(now: float) -> Snapshot:
    def view(
        name: str,
        id: str,
        state: TaskState,
        *,
        current: bool = True,
        restarts: int = 0,
        exit_code: int | None = None,
    ) -> TaskView:
        return TaskView(
            name=name,
            id=id,
            desired_state=TaskState.RUNNING if current else TaskState.SHUTDOWN,
            state=state,
            message="started" if state == TaskState.RUNNING else None,
            err="exit status 1" if exit_code else None,
            container_id=f"{id}c0ffee" if state >= TaskState.READY else None,
            exit_code=exit_code,
            updated_at=now - 60,
            restarts=restarts,
            current=current,
        )

    tasks = [
        view("api", "api-7", TaskState.RUNNING, restarts=6),
        view("api", "api-6", TaskState.FAILED, current=False, restarts=6, exit_code=1),
        view("api", "api-5", TaskState.FAILED, current=False, restarts=6, exit_code=1),
        view("batch", "batch-2", TaskState.COMPLETE, restarts=1, exit_code=0),
        view("cache", "cache-1", TaskState.PREPARING),
        view("metrics-proxy", "mp-1", TaskState.STARTING),
        view("sensor-reader", "sr-3", TaskState.REJECTED, restarts=2),
    ]
    tasks += [view(f"web-{i}", f"web-{i}-1", TaskState.RUNNING) for i in range(20)]
    restarts = {t.name: t.restarts for t in tasks}
    return Snapshot(
        node_id="node-e2e",
        node=node(hostname="edge-e2e"),
        labels=(("site", "lab"),),
        store_open=True,
        init_done=True,
        runtime_up=True,
        desired_read=True,
        desired_valid=True,
        desired_applied_at=now - 120,
        session_connected=True,
        reports_pending=3,
        tasks=tuple(tasks),
        restarts=tuple(sorted(restarts.items())),
        oom_kills=tuple((name, 1 if name == "api" else 0) for name in sorted(restarts)),
        conditions=((Condition.DISK_PRESSURE, False), (Condition.MEMORY_PRESSURE, False)),
    )


def realistic_usage(snap: Snapshot, i: int) -> Usage:
    """A usage sample of every running current instance, its counters growing with ``i``."""
    running = [t for t in snap.tasks if t.current and t.state == TaskState.RUNNING]
    return Usage(
        tasks=tuple(
            TaskUsage(
                task_id=t.id,
                name=t.name,
                cpu_seconds=0.05 * i * (1 + n % 3),
                memory_working_set_bytes=(20 + n) * 1024**2,
                memory_limit_bytes=64 * 1024**2 if n % 2 else None,
                network_receive_bytes=1500 * i * (n + 1),
                network_transmit_bytes=700 * i,
                block_read_bytes=4096 * i,
                block_write_bytes=8192 * i,
                pids=1 + n % 4,
            )
            for n, t in enumerate(running)
        ),
        node=NodeUsage(
            cpu_seconds=tuple((mode, 0.1 * i * (k + 1)) for k, mode in enumerate(CPU_MODES)),
            memory_available_bytes=3 * 1024**3,
            memory_total_bytes=4 * 1024**3,
            disks=(
                DiskFree("state", 40 * 1024**3, 100 * 1024**3),
                DiskFree("images", 30 * 1024**3, 100 * 1024**3),
            ),
            pressure=(("cpu", "some", 0.01 * i), ("io", "full", 0.002 * i)),
        ),
    )


class Source:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def __call__(self) -> Snapshot:
        return self.snap


async def busy_agent(source: Source, metrics: Metrics) -> None:
    """Keep events arriving and the snapshot changing, as on a host with a crash-looping task."""
    ops = ("pull", "inspect", "healthcheck")
    kinds = ("container_exited", "container_missing", "orphan_removed")
    i = 0
    while True:
        i += 1
        metrics.observe_task_start(0.05 * (1 + i % 40))
        metrics.observe_reconcile(0.002 * (1 + i % 10))
        metrics.runtime_error(ops[i % len(ops)])
        metrics.drift_corrected(kinds[i % len(kinds)])
        metrics.set_usage(realistic_usage(source.snap, i))
        if i % 5 == 0:
            metrics.desired_state_error()
            restarts = dict(source.snap.restarts)
            restarts["api"] += 1
            source.snap = replace(source.snap, restarts=tuple(sorted(restarts.items())))
        await asyncio.sleep(0.2)  # the pace of a busy host's events: what is simulated


@dataclass
class Agent:
    port: int
    source: Source
    metrics: Metrics


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent() -> AsyncIterator[Agent]:
    source = Source(realistic_snapshot(time.time()))
    metrics = Metrics(snapshot=source, registry=CollectorRegistry())
    server = await serve("127.0.0.1", 0, snapshot=source, metrics=metrics)
    busy = asyncio.create_task(busy_agent(source, metrics))
    try:
        yield Agent(server.sockets[0].getsockname()[1], source, metrics)
    finally:
        busy.cancel()
        with pytest.raises(asyncio.CancelledError):
            await busy
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def prometheus(agent: Agent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """One Prometheus for the module, scraping the agent (the conftest's starts one a test)."""
    workdir = tmp_path_factory.mktemp("prometheus")
    try:
        with running_prometheus(workdir, "reconciler", [f"127.0.0.1:{agent.port}"]) as prom:
            yield prom
    except PrometheusMissing as err:
        missing(str(err))


# ------------------------------------------------------------------------- the checks


async def test_every_dashboard_panel_returns_data_from_a_real_prometheus(
    agent: Agent, prometheus: Prometheus
) -> None:
    await prometheus.scraped(8)
    instance = f"127.0.0.1:{agent.port}"
    targets = dashboard_targets()
    assert targets
    empty = []
    for title, target in targets:
        expr = concrete(target["expr"], instance)
        if target.get("instant"):
            data = await prometheus.aapi("query", query=expr)
        else:
            end = time.time()
            data = await prometheus.aapi(
                "query_range", query=expr, start=str(end - 30), end=str(end), step="1"
            )
        if not has_number(data["result"]):
            empty.append(f"{title}: {expr} -> {data['result']}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


async def test_prometheus_sees_the_snapshot_and_the_event_metrics(
    agent: Agent, prometheus: Prometheus
) -> None:
    await prometheus.scraped(3)

    async def value(expr: str) -> float:
        result = (await prometheus.aapi("query", query=expr))["result"]
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    assert await value('reconciler_node_info{node_id="node-e2e",hostname="edge-e2e"}') == 1
    assert await value('reconciler_tasks{state="running"}') == 21
    assert await value('reconciler_tasks{state="failed"}') == 0  # history is excluded
    assert await value('reconciler_task_state{name="cache",state="preparing"}') == 1
    assert await value("count(reconciler_task_state)") == 25
    assert await value("count(reconciler_tasks)") == len(TaskState)
    assert await value("count(reconciler_runtime_errors_total)") == 10
    assert await value("count(reconciler_drift_corrections_total)") == 3
    assert await value('reconciler_task_restarts_total{name="api"}') >= 6
    assert await value("reconciler_task_start_seconds_count") > 0


async def test_every_alert_expression_evaluates(agent: Agent, prometheus: Prometheus) -> None:
    await prometheus.scraped(2)
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            data = await prometheus.aapi("query", query=rule["expr"])
            assert data["resultType"] == "vector", rule["alert"]

"""bench scrape: the latency of a full GET /metrics on an agent holding 1,000 tasks.

Builds a ``Snapshot`` with 1,000 current task instances plus 5 history instances each, adds
event metrics (runtime errors, drift corrections, start and resync histograms), serves it with
``reconciler.web.agent_routes.serve_agent`` on loopback, and times complete scrapes (connect,
request, whole body)
from a client thread, as Prometheus would make them. Three cases:

* ``scrape``: the agent swaps in a new snapshot and records an event before every scrape, so
  every scrape re-renders the full text: the worst case, and the figure the goal applies to.
* ``gzip_scrape``: the same, with ``Accept-Encoding: gzip`` as Prometheus sends it.
* ``cached_scrape``: nothing changes between scrapes (an idle agent): the cached text is served.

Prints ``scrape_p50_ms=X scrape_p99_ms=Y`` first, then the other cases. Goal: p99 < 20 ms.
``BENCH_SCRAPES`` sets the number of scrapes per case (default 500).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from prometheus_client import CollectorRegistry

from reconciler import __version__
from reconciler.core.executor import DriftKind, RuntimeOp
from reconciler.core.model import NodeDescription, TaskState
from reconciler.core.snapshot import Snapshot, TaskView
from reconciler.observe.metrics import Metrics
from reconciler.web.agent_routes import serve_agent

TASKS = 1000
HISTORY = 5
SCRAPES = int(os.environ.get("BENCH_SCRAPES", "500"))
OPS = tuple(RuntimeOp)
KINDS = tuple(DriftKind)


def build_snapshot(now: float) -> Snapshot:
    states = (TaskState.RUNNING,) * 17 + (TaskState.STARTING, TaskState.PREPARING, TaskState.FAILED)
    tasks: list[TaskView] = []
    restarts: list[tuple[str, int]] = []
    for i in range(TASKS):
        name = f"svc-{i:04d}"
        n = i % 7
        tasks.append(
            TaskView(
                name=name,
                id=f"{i:08x}{n:024x}",
                desired_state=TaskState.RUNNING,
                state=states[i % len(states)],
                message="started",
                err=None,
                container_id=f"{i:064x}",
                exit_code=None,
                updated_at=now,
                restarts=n,
                current=True,
            )
        )
        for h in range(HISTORY):
            tasks.append(
                TaskView(
                    name=name,
                    id=f"{i:08x}{h:024x}",
                    desired_state=TaskState.SHUTDOWN,
                    state=TaskState.FAILED,
                    message="exited",
                    err="exit status 1",
                    container_id=f"{h:064x}",
                    exit_code=1,
                    updated_at=now - 60 * (h + 1),
                    restarts=n,
                    current=False,
                )
            )
        restarts.append((name, n))
    return Snapshot(
        node_id="bench-node",
        node=NodeDescription(
            hostname="bench",
            os="linux",
            arch="amd64",
            cpus=2,
            memory_bytes=2 * 1024**3,
            runtime_name="fake",
            runtime_version="0",
            agent_version=__version__,
        ),
        store_open=True,
        init_done=True,
        runtime_up=True,
        desired_read=True,
        desired_valid=True,
        desired_applied_at=now,
        session_connected=True,
        tasks=tuple(tasks),
        restarts=tuple(restarts),
    )


class Source:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def __call__(self) -> Snapshot:
        return self.snap


def scrape_times(port: int, before: Callable[[], None], *, gzip: bool) -> list[float]:
    """Milliseconds per full scrape, timed in this (client) thread."""
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    out: list[float] = []
    for _ in range(SCRAPES):
        before()
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", "/metrics", headers=headers)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        out.append((time.perf_counter() - t0) * 1000)
        assert response.status == 200 and body
    return out


def percentiles(ms: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return q[49], q[98]


async def main_async() -> None:
    source = Source(build_snapshot(time.time()))
    metrics = Metrics(snapshot=source, registry=CollectorRegistry())
    for i in range(200):
        metrics.runtime_error(OPS[i % len(OPS)])
        metrics.drift_corrected(KINDS[i % len(KINDS)])
        metrics.observe_task_start(0.05 * (1 + i % 50))
        metrics.observe_reconcile(0.001 * (1 + i % 30))
    server = await serve_agent("127.0.0.1", 0, snapshot=source, metrics=metrics)
    port = server.sockets[0].getsockname()[1]
    size = len(metrics.render())

    def change() -> None:
        # What the agent does after a status change: a new snapshot object (same content
        # size), and an event metric moving. Forces a full re-render on the next scrape.
        source.snap = replace(source.snap, reports_pending=source.snap.reports_pending + 1)
        metrics.observe_reconcile(0.002)

    try:
        # warm up (imports, first render, connection setup paths)
        await asyncio.to_thread(scrape_times, port, change, gzip=False)
        results = {
            "scrape": await asyncio.to_thread(scrape_times, port, change, gzip=False),
            "gzip_scrape": await asyncio.to_thread(scrape_times, port, change, gzip=True),
            "cached_scrape": await asyncio.to_thread(scrape_times, port, lambda: None, gzip=False),
        }
    finally:
        server.close()
        await server.wait_closed()

    for name, ms in results.items():
        p50, p99 = percentiles(ms)
        print(f"{name}_p50_ms={p50:.2f} {name}_p99_ms={p99:.2f}")
    current = sum(1 for t in source.snap.tasks if t.current)
    print(
        f"tasks_current={current} tasks_total={len(source.snap.tasks)} "
        f"scrapes={SCRAPES} metrics_bytes={size}"
    )


def main() -> None:
    asyncio.run(main_async())


if __name__ == "__main__":
    main()

"""bench stats: what usage sampling costs, and /metrics with usage series at 1,000 tasks.

Two parts:

* **Sampling.** 100 busybox containers run on a private podman service. One sampling pass is
  what the agent does every ``--stats-interval``: read every container's cgroup files and
  ``/proc/<pid>/net/dev`` (``runtime.podman.usage``), read the node's ``/proc`` files and
  filesystems (``reconciler.observe.hoststats``), and render the usage text once
  (``Metrics.set_usage``). The CPU time of ``BENCH_PASSES`` passes (default 200) is measured in
  this process, and printed per pass and as a share of one core at a 10 s interval. The pids
  come from one ``podman ps`` (as the agent has them from its list call): no podman call is
  timed. Goal: < 0.1% of a core.
* **Scrapes.** The snapshot of ``bench scrape`` (1,000 current tasks, 5,000 in the history) plus
  a usage sample of the 1,000 (every figure known) and the node. Complete scrapes are timed from
  a client thread, as in ``bench scrape``: ``usage_scrape`` takes a new usage sample before
  every scrape (rendered when it is set, as the sampler does, outside the timed request), so
  every scrape serves new bytes; ``state_scrape`` changes the snapshot and an event metric
  before every scrape (the state text is re-rendered, the usage text reused); ``cached_scrape``
  changes nothing. Goal: p99 < 5 ms.

``BENCH_TASKS`` (default 100) sets the number of containers sampled, ``BENCH_SCRAPES`` (default
500) the scrapes per case.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from prometheus_client import CollectorRegistry

from bench.scrape import TASKS, Source, build_snapshot, percentiles, scrape_times
from bench.support import IMAGE, podman_service
from reconciler.core.executor import TaskUsage
from reconciler.core.snapshot import Snapshot
from reconciler.observe.hoststats import CPU_MODES, HostStats, NodeUsage
from reconciler.observe.metrics import Metrics
from reconciler.observe.usage import Usage
from reconciler.web.agent_routes import serve_agent
from runtime.podman.usage import Target, UsageReader

N = int(os.environ.get("BENCH_TASKS", "100"))
PASSES = int(os.environ.get("BENCH_PASSES", "200"))
INTERVAL = 10.0


# ---------------------------------------------------------------------------------- sampling


def sampling() -> None:
    with podman_service() as svc:
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda i: svc.run(
                        "run", "-d", "--name", f"usage-{i:03d}", IMAGE, "sleep", "100000"
                    ),
                    range(N),
                )
            )
        listed = json.loads(svc.run("ps", "--format", "json"))
        targets = [
            Target(
                task_id=f"id-{i:03d}", name=str(c["Names"][0]), container_id=c["Id"], pid=c["Pid"]
            )
            for i, c in enumerate(listed)
        ]
        reader = UsageReader()
        host = HostStats()
        metrics = Metrics(snapshot=Snapshot, registry=CollectorRegistry())
        with tempfile.TemporaryDirectory() as state:
            filesystems = {"state": state, "images": str(svc.base_dir / "root")}
            usage = sample(reader, host, metrics, targets, filesystems)  # warm (cgroup paths)
            assert len(usage.tasks) == N, f"sampled {len(usage.tasks)} of {N} containers"
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(PASSES):
                sample(reader, host, metrics, targets, filesystems)
            cpu = (time.process_time() - c0) / PASSES
            wall = (time.perf_counter() - w0) / PASSES
            read_cpu = timed(lambda: reader.read(targets))
            render_cpu = timed(lambda: metrics.set_usage(usage))
    print(f"sampled_tasks={N} passes={PASSES}")
    print(f"sample_pass_cpu_ms={cpu * 1000:.2f} sample_pass_wall_ms={wall * 1000:.2f}")
    print(
        f"of_which_cgroup_read_ms={read_cpu * 1000:.2f} of_which_render_ms={render_cpu * 1000:.2f}"
    )
    print(f"sampling_cpu_percent_of_one_core_at_10s={100 * cpu / INTERVAL:.3f}")


def sample(
    reader: UsageReader,
    host: HostStats,
    metrics: Metrics,
    targets: list[Target],
    filesystems: dict[str, str],
) -> Usage:
    usage = Usage(tasks=tuple(reader.read(targets)), node=host.read(filesystems))
    metrics.set_usage(usage)
    return usage


def timed(fn: Callable[[], object]) -> float:
    """CPU seconds per call of ``fn``, over ``PASSES`` calls."""
    c0 = time.process_time()
    for _ in range(PASSES):
        fn()
    return (time.process_time() - c0) / PASSES


# ---------------------------------------------------------------------------------- scrapes


def usage_of(snap: Snapshot, i: int) -> Usage:
    """A sample of every current task, every figure known; counters grow with ``i``."""
    return Usage(
        tasks=tuple(
            TaskUsage(
                task_id=t.id,
                name=t.name,
                cpu_seconds=12.345678 + i * 0.01 + n,
                memory_working_set_bytes=33_890_304 + n * 4096,
                memory_limit_bytes=67_108_864,
                network_receive_bytes=353_782 + i * 1500 + n,
                network_transmit_bytes=936 + i * 700,
                block_read_bytes=4096 * n,
                block_write_bytes=8192 * n + i,
                pids=1 + n % 5,
            )
            for n, t in enumerate(t for t in snap.tasks if t.current)
        ),
        node=NodeUsage(
            cpu_seconds=tuple((mode, 1000.0 + i + k) for k, mode in enumerate(CPU_MODES)),
            memory_available_bytes=23_495_752 * 1024,
            memory_total_bytes=24_684_092 * 1024,
            pressure=tuple(
                (r, k, 1.5 + i) for r in ("cpu", "memory", "io") for k in ("some", "full")
            ),
        ),
    )


async def scrapes() -> None:
    source = Source(build_snapshot(time.time()))
    metrics = Metrics(snapshot=source, registry=CollectorRegistry())
    metrics.set_usage(usage_of(source.snap, 0))
    server = await serve_agent("127.0.0.1", 0, snapshot=source, metrics=metrics)
    port = server.sockets[0].getsockname()[1]
    size = len(metrics.render())
    n = 0

    def new_sample() -> None:
        nonlocal n
        n += 1
        metrics.set_usage(usage_of(source.snap, n))

    def new_state() -> None:
        source.snap = replace(source.snap, reports_pending=source.snap.reports_pending + 1)
        metrics.observe_reconcile(0.002)

    t0 = time.process_time()
    for _ in range(20):
        new_sample()
    render_ms = (time.process_time() - t0) / 20 * 1000
    try:
        await asyncio.to_thread(scrape_times, port, new_sample, gzip=False)  # warm up
        results = {
            "usage_scrape": await asyncio.to_thread(scrape_times, port, new_sample, gzip=False),
            "usage_gzip_scrape": await asyncio.to_thread(scrape_times, port, new_sample, gzip=True),
            "state_scrape": await asyncio.to_thread(scrape_times, port, new_state, gzip=False),
            "cached_scrape": await asyncio.to_thread(scrape_times, port, lambda: None, gzip=False),
        }
    finally:
        server.close()
        await server.wait_closed()
    for name, ms in results.items():
        p50, p99 = percentiles(ms)
        print(f"{name}_p50_ms={p50:.2f} {name}_p99_ms={p99:.2f}")
    print(
        f"scrape_tasks_current={TASKS} metrics_bytes={size} "
        f"usage_render_ms_per_sample_of_{TASKS}={render_ms:.2f}"
    )


def main() -> None:
    sampling()
    asyncio.run(scrapes())


if __name__ == "__main__":
    main()

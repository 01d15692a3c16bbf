"""bench core: 10,000 tasks in one full assignment, fake executor, real RocksDB store.

Measures from the assignment until every task is running (each task's latency is the time from
the assignment to the moment its ``running`` status was stored), then removes every task with an
empty full assignment. Prints tasks_per_second, the p50/p99 per-task latency and peak RSS.

On a shared machine the wall-clock rate moves with the other load; ``tasks_per_cpu_second``
(the same count over this process's CPU time for the same span) moves much less.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import tempfile
import time

from reconciler.core.clock import SystemClock
from reconciler.core.model import Assignment, Task, TaskSpec, TaskState, TaskStatus
from reconciler.core.worker import Worker
from reconciler.store.rocks import RocksStore
from reconciler.testing.fake import FakeExecutor

N = int(os.environ.get("BENCH_TASKS", "10000"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main_async() -> None:
    clock = SystemClock()
    with tempfile.TemporaryDirectory() as state:
        store = RocksStore.open(state)
        worker = Worker(store, FakeExecutor(clock=clock), clock=clock)
        await worker.init()
        tasks = [
            Task(id=f"task{i:06d}", spec=TaskSpec(name=f"svc{i}", image="localhost/busybox:latest"))
            for i in range(N)
        ]
        running_at: dict[str, float] = {}
        done = asyncio.Event()

        def listener(task_id: str, status: TaskStatus) -> None:
            if status.state == TaskState.RUNNING and task_id not in running_at:
                running_at[task_id] = time.perf_counter()
                if len(running_at) == N:
                    done.set()

        worker.listen(listener)
        t0, cpu0 = time.perf_counter(), time.process_time()
        await worker.assign(Assignment.complete(tasks))
        await done.wait()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        lat = sorted(t - t0 for t in running_at.values())
        p50 = statistics.median(lat)
        p99 = lat[int(len(lat) * 0.99) - 1]

        t1 = time.perf_counter()
        await worker.assign(Assignment.complete([]))
        await worker.wait_closed()
        removed = time.perf_counter() - t1
        assert not store.task_ids()
        await worker.close()
        store.close()

    print(f"tasks={N}")
    print(f"tasks_per_second={N / elapsed:.0f}")
    print(f"tasks_per_cpu_second={N / cpu:.0f}")
    print(f"assign_to_running_seconds={elapsed:.3f}")
    print(f"latency_p50_ms={p50 * 1000:.1f}")
    print(f"latency_p99_ms={p99 * 1000:.1f}")
    print(f"remove_all_seconds={removed:.3f}")
    print(f"peak_rss_mb={peak_rss_mb():.1f}")


def main() -> None:
    asyncio.run(main_async())


if __name__ == "__main__":
    main()

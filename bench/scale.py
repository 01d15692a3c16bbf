"""bench scale: 100 running tasks on real podman; idle CPU, RSS, and recovery after kill -9.

Prints the agent's own CPU over an idle minute (as a percentage of one core) and its RSS, first
without per-task usage sampling (``--stats-interval 0``: the idle goals), then, after a clean
restart over the same containers, with it (``*_sampling_on``); then the time from a kill -9 of
the agent to ``/readyz`` answering 200 with every task adopted, plus how many containers were
restarted (their StartedAt changed) across the kill.

BENCH_TASKS (default 100) and BENCH_IDLE_SECONDS (default 60) change the sizes;
BENCH_STATS_INTERVAL (default: the agent's own, 10s) is passed as ``--stats-interval`` to the
agent with sampling on.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from bench.support import (
    IMAGE,
    AgentProcess,
    cpu_seconds,
    podman_service,
    rss_mb,
    task_yaml,
    wait_until,
    write_desired,
)

N = int(os.environ.get("BENCH_TASKS", "100"))
IDLE = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))
STATS = os.environ.get("BENCH_STATS_INTERVAL")


def started_at(svc: object, node: str = "bench-node") -> dict[str, str]:
    out = svc.run(  # type: ignore[attr-defined]
        "ps",
        "-a",
        "--filter",
        f"label=reconciler.node={node}",
        "--format",
        "{{.ID}}",
        "--no-trunc",
    ).split()
    if not out:
        return {}
    data = json.loads(svc.run("inspect", *out))  # type: ignore[attr-defined]
    return {c["Name"]: c["State"]["StartedAt"] for c in data if c["State"]["Running"]}


def measure_idle(agent: AgentProcess, suffix: str) -> None:
    """Print the agent's CPU (percent of one core) over an idle spell, and its RSS after it."""
    time.sleep(5)  # let start-up work settle before measuring idle
    c0, w0 = cpu_seconds(agent.pid), time.monotonic()
    time.sleep(IDLE)
    c1, w1 = cpu_seconds(agent.pid), time.monotonic()
    rss, peak = rss_mb(agent.pid)
    print(f"idle_seconds{suffix}={w1 - w0:.0f}")
    print(f"idle_cpu_percent_of_one_core{suffix}={100 * (c1 - c0) / (w1 - w0):.2f}")
    print(f"rss_mb{suffix}={rss:.1f}")
    print(f"peak_rss_mb{suffix}={peak:.1f}")


def main() -> None:
    tasks = [
        {
            "name": f"svc-{i:03d}",
            "image": IMAGE,
            "command": ["sleep", "100000"],
            "stopGracePeriod": "1s",
        }
        for i in range(N)
    ]
    with podman_service() as svc, tempfile.TemporaryDirectory(prefix="rcs-", dir="/tmp") as work:
        agent = AgentProcess(svc, Path(work), args=("--stats-interval", "0"))
        write_desired(agent.desired, "scale.yaml", task_yaml(tasks))
        agent.start()
        try:
            t0 = time.monotonic()
            wait_until(
                lambda: agent.ready() and sum(t["state"] == "running" for t in agent.tasks()) == N,
                timeout=600,
                what=f"{N} tasks running",
                every=0.2,
            )
            print(f"tasks={N} stats_interval_on={STATS or 'default'}")
            print(f"all_running_seconds={time.monotonic() - t0:.2f}")
            measure_idle(agent, "")

            # The same containers under an agent with usage sampling on: a clean stop (the
            # containers keep running) and a start that finds them all again.
            agent.stop()
            agent.args = ("--stats-interval", STATS) if STATS else ()
            agent.start()
            wait_until(
                lambda: agent.ready() and sum(t["state"] == "running" for t in agent.tasks()) == N,
                timeout=120,
                what="ready again with usage sampling on",
            )
            measure_idle(agent, "_sampling_on")

            before = started_at(svc)
            agent.kill9()
            t0 = time.monotonic()
            agent.start()
            wait_until(
                lambda: agent.ready() and sum(t["state"] == "running" for t in agent.tasks()) == N,
                timeout=120,
                what="ready with every task adopted",
            )
            recovery = time.monotonic() - t0
            after = started_at(svc)
            restarted = sum(1 for name, ts in before.items() if after.get(name) != ts)
            print(f"kill9_to_ready_seconds={recovery:.2f}")
            print(f"containers_restarted={restarted}")
        finally:
            agent.stop()


if __name__ == "__main__":
    main()

"""bench reliability: the agent under a hostile world, on real podman.

Prints ``name=value`` lines:

* ``kill9_rounds``, ``containers_restarted``, ``recovery_p50_s``, ``recovery_max_s``: rounds of
  kill -9 and restart of an agent with 10 running tasks; recovery is from the restart to
  ``/readyz`` 200 with every task running again (goals: 100 rounds, 0 restarted, p50 < 0.5 s);
* ``corrupt_rebuild_ready_s``, ``corrupt_rebuild_restarted``: a store whose ``CURRENT`` is
  gone, from the restart to ready with all 10 tasks adopted (goals: < 3 s, 0 restarted);
* the podman-outage figures of ``bench/_reliability_podman.py`` (``blackhole_detect_s``,
  ``outage_recover_s``) and the hostile-input figures of ``bench/_reliability_input.py``
  (``fuzz_cases``, ``fuzz_crashes``, ``hostile_worst_ms``, ``hostile_worst_mb``), when those
  modules are present.

BENCH_KILL9_ROUNDS (default 100) and BENCH_TASKS (default 10) change the sizes.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
from pathlib import Path

from bench.scale import started_at
from bench.support import IMAGE, AgentProcess, percentile, podman_service, task_yaml, write_desired
from reconciler.testing.polling import wait_until

ROUNDS = int(os.environ.get("BENCH_KILL9_ROUNDS", "100"))
N = int(os.environ.get("BENCH_TASKS", "10"))


def all_running(agent: AgentProcess) -> bool:
    if not agent.ready():
        return False
    running = sum(1 for t in agent.tasks() if t.get("state") == "running")
    return running >= N


def restart_and_time(agent: AgentProcess) -> float:
    t0 = time.monotonic()
    agent.start()
    wait_until(lambda: all_running(agent), within=120, what="ready, every task running")
    return time.monotonic() - t0


def agent_figures() -> dict[str, float]:
    tasks = [
        {
            "name": f"svc-{i:02d}",
            "image": IMAGE,
            "command": ["sleep", "100000"],
            "stopGracePeriod": "1s",
        }
        for i in range(N)
    ]
    out: dict[str, float] = {}
    with podman_service() as svc, tempfile.TemporaryDirectory(prefix="rcr-", dir="/tmp") as work:
        agent = AgentProcess(svc, Path(work))
        write_desired(agent.desired, "tasks.yaml", task_yaml(tasks))
        agent.start()
        try:
            wait_until(lambda: all_running(agent), within=300, what=f"{N} tasks running")
            before = started_at(svc)
            times: list[float] = []
            for _ in range(ROUNDS):
                agent.kill9()
                times.append(restart_and_time(agent))
            after = started_at(svc)
            out["kill9_rounds"] = ROUNDS
            out["containers_restarted"] = sum(1 for n, ts in before.items() if after.get(n) != ts)
            out["recovery_p50_s"] = percentile(times, 0.5)
            out["recovery_max_s"] = max(times)

            agent.stop()
            (agent.state / "worker" / "tasks.db" / "CURRENT").unlink()
            out["corrupt_rebuild_ready_s"] = restart_and_time(agent)
            rebuilt = started_at(svc)
            out["corrupt_rebuild_restarted"] = sum(
                1 for n, ts in before.items() if rebuilt.get(n) != ts
            )
        finally:
            agent.stop()
    return out


def part(module: str) -> dict[str, float]:
    """The figures of one part of this bench, if that part exists."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError:
        return {}
    figures: dict[str, float] = mod.measure()
    return figures


def main() -> None:
    figures = agent_figures()
    figures.update(part("bench._reliability_podman"))
    figures.update(part("bench._reliability_input"))
    for name, value in figures.items():
        text = (
            f"{value:.3f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"
        )
        print(f"{name}={text}")


if __name__ == "__main__":
    main()

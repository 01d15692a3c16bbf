"""bench scale: 100 running tasks on real podman; idle CPU, RSS, and recovery after kill -9.

Prints the agent's own CPU over an idle minute (as a percentage of one core) and its RSS, first
without per-task usage sampling (``--stats-interval 0``: the idle goals), then, after a clean
restart over the same containers, with it (``*_sampling_on``); then the time from a kill -9 of
the agent to ``/readyz`` answering 200 with every task adopted (the median of BENCH_KILL_ROUNDS,
default 3, kills after an untimed one that compiles the agent's bytecode, as an installed agent
has it; with its spread and the start-up phases the restarted agent logged: store open, HTTP up,
podman up, node described, desired state applied), plus how many containers were restarted
(their StartedAt changed) across the kills. Goals: < 0.2% CPU and < 45 MB RSS without sampling,
< 0.5 s to ready, 0 restarted.

BENCH_TASKS (default 100) and BENCH_IDLE_SECONDS (default 60) change the sizes;
BENCH_STATS_INTERVAL (default: the agent's own, 10s) is passed as ``--stats-interval`` to the
agent with sampling on.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
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
    write_desired,
)
from reconciler.testing.polling import wait_until

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


KILL_ROUNDS = int(os.environ.get("BENCH_KILL_ROUNDS", "3"))

# Start-up lines of the agent's log (info level), in the order they come.
PHASES = (
    ("store_open", "starting version="),  # process up, imports, state-dir lock, store open
    ("http_up", "listening addr="),  # the agent's code imported, the HTTP server bound
    ("runtime_up", "runtime up"),  # podman answered
    ("node_described", "node described"),  # podman info, which readiness waits for
    ("desired_applied", "desired state applied"),  # the desired directory read and applied
)


def _phases(log: Path, offset: int, t0_wall: float) -> dict[str, float]:
    """Seconds from the restart to each start-up line the agent logged after ``offset``."""
    out: dict[str, float] = {}
    with open(log, "rb") as f:
        f.seek(offset)
        for raw in f.read().decode(errors="replace").splitlines():
            if not raw.startswith("ts="):
                continue
            for name, text in PHASES:
                if name not in out and text in raw:
                    stamp = raw.split()[0][3:].replace("Z", "+00:00")
                    out[name] = dt.datetime.fromisoformat(stamp).timestamp() - t0_wall
    return out


def recover(svc: object, agent: AgentProcess) -> None:
    """kill -9 the agent and start it again, KILL_ROUNDS times: the median time to ``/readyz``
    with every task running (and its spread), where that time went, and how many containers
    were restarted across all the kills (goal: 0)."""
    before = started_at(svc)
    os.environ["BENCH_AGENT_LOG_LEVEL"] = "info"  # the restarts log their start-up lines
    # An installed agent has its bytecode compiled (pip does it); a checkout run under
    # PYTHONDONTWRITEBYTECODE compiles some 70 modules from source at every start (~0.15 s).
    # So the restarts may write bytecode, into a cache of the bench's own outside the checkout,
    # and an untimed kill and restart first fills it.
    os.environ["PYTHONPYCACHEPREFIX"] = str(agent.work / "pycache")
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    agent.kill9()
    agent.start()
    wait_until(agent.ready, within=120, what="ready after the untimed restart")
    time.sleep(2)
    log = agent.work / "agent.log"
    times: list[float] = []
    phases: dict[str, list[float]] = {name: [] for name, _ in PHASES}
    for _ in range(KILL_ROUNDS):
        agent.kill9()
        offset = log.stat().st_size
        t0, t0_wall = time.monotonic(), time.time()
        agent.start()
        wait_until(
            lambda: agent.ready() and sum(t["state"] == "running" for t in agent.tasks()) == N,
            within=120,
            what="ready with every task adopted",
        )
        times.append(time.monotonic() - t0)
        for name, seconds in _phases(log, offset, t0_wall).items():
            phases[name].append(seconds)
        time.sleep(2)  # let the restarted agent's first resync settle before the next kill
    after = started_at(svc)
    restarted = sum(1 for name, ts in before.items() if after.get(name) != ts)
    print(f"kill9_rounds={KILL_ROUNDS}")
    print(f"kill9_to_ready_seconds={statistics.median(times):.2f}")
    print(f"kill9_to_ready_spread={min(times):.2f}..{max(times):.2f}")
    for name, values in phases.items():
        if values:
            print(f"kill9_{name}_seconds={statistics.median(values):.3f}")
    print(f"containers_restarted={restarted}")


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
                within=600,
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
                within=120,
                what="ready again with usage sampling on",
            )
            measure_idle(agent, "_sampling_on")

            recover(svc, agent)
        finally:
            agent.stop()


if __name__ == "__main__":
    main()

"""Reliability of the podman runtime: how soon the agent notices a hung podman, and how soon the
work queued during the outage runs once podman answers again.

One private podman service (its own storage; the host's containers are never touched), the
tests' fault proxy in front of it, and the real agent (``reconciler run --podman-url <proxy>``)
as a subprocess, read over HTTP as an operator would. A task ``keep`` runs (restart delay 0).
Each round:

1. the proxy starts to blackhole (accepts connections, never answers);
   ``blackhole_detect_s`` is the time until the agent's ``/metrics`` says
   ``reconciler_runtime_up 0`` (goal: under 5 s);
2. during the outage, ``keep``'s container is killed through podman's own socket (the agent
   cannot see it) and a new task ``late-N`` is added to the desired directory; the outage lasts
   ``OUTAGE`` seconds, long enough for the retry backoffs to grow;
3. the proxy passes again; ``outage_recover_s`` is the time until both ``late-N`` and a new
   instance of ``keep`` are running in the agent's ``/v1/tasks`` (goal: under 5 s).

``measure()`` returns the medians (and the worst rounds as ``*_max_s``); ``bench/reliability.py``
calls it. Run alone: ``.venv/bin/python -m bench._reliability_podman``; BENCH_RELIABILITY_ROUNDS
and BENCH_OUTAGE_SECONDS override 3 rounds and 15 s.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from typing import Any

from bench.support import AgentProcess, podman_service, task_yaml, write_desired
from reconciler.testing.faultproxy import FaultProxy, Mode
from reconciler.testing.podman import PodmanService
from reconciler.testing.polling import wait_until

IMAGE = "localhost/busybox:latest"
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
ROUNDS = int(os.environ.get("BENCH_RELIABILITY_ROUNDS", "3"))
OUTAGE = float(os.environ.get("BENCH_OUTAGE_SECONDS", "15"))
HANG_GUARD = 120.0

_RUNTIME_UP = re.compile(r"^reconciler_runtime_up (\S+)$", re.MULTILINE)


def runtime_up(agent: AgentProcess) -> float | None:
    code, body = agent.get("/metrics")
    m = _RUNTIME_UP.search(body.decode(errors="replace")) if code == 200 else None
    return float(m.group(1)) if m else None


def running_id(agent: AgentProcess, name: str, *, other_than: str = "") -> str | None:
    """The id of a running instance of task ``name`` (not ``other_than``), if there is one."""
    for t in agent.tasks():
        if t["name"] == name and t["state"] == "running" and t["id"] != other_than:
            return str(t["id"])
    return None


def task(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": IMAGE,
        "command": COMMAND,
        "stopGracePeriod": "2s",
        "restart": {"delay": "0s"},
    }


def one_round(
    agent: AgentProcess,
    proxy: FaultProxy,
    svc: PodmanService,
    tasks: list[dict[str, Any]],
    *,
    late: str,
    outage: float,
) -> tuple[float, float]:
    """One outage: (seconds to runtime_up 0, seconds from podman's return to the work running)."""
    keep = wait_until(lambda: running_id(agent, "keep"), "keep running", within=HANG_GUARD)
    wait_until(lambda: runtime_up(agent) == 1.0, "runtime_up 1", within=HANG_GUARD)

    began = proxy.set_mode(Mode.BLACKHOLE)
    wait_until(lambda: runtime_up(agent) == 0.0, "runtime_up 0", within=HANG_GUARD)
    detect = time.monotonic() - began

    svc.run("kill", f"keep.{keep}")  # through podman's own socket: the agent cannot see it
    tasks.append(task(late))
    write_desired(agent.desired, "bench.yaml", task_yaml(tasks))
    time.sleep(max(0.0, began + outage - time.monotonic()))

    ended = proxy.set_mode(Mode.PASS)
    wait_until(
        lambda: running_id(agent, late) and running_id(agent, "keep", other_than=keep),
        "the work queued during the outage running",
        within=HANG_GUARD,
    )
    return detect, time.monotonic() - ended


def measure(*, rounds: int = ROUNDS, outage: float = OUTAGE) -> dict[str, float]:
    """Run the rounds; the median and worst ``blackhole_detect_s`` and ``outage_recover_s``."""
    detect: list[float] = []
    recover: list[float] = []
    with podman_service() as svc:
        proxy = FaultProxy(svc.socket_path, svc.base_dir / "p.sock").start()
        agent = AgentProcess(svc, svc.base_dir / "agent", podman_url=proxy.url)
        tasks = [task("keep")]
        try:
            write_desired(agent.desired, "bench.yaml", task_yaml(tasks))
            agent.start()
            wait_until(agent.ready, "agent ready", within=HANG_GUARD, every=0.05)
            for r in range(rounds):
                d, rec = one_round(agent, proxy, svc, tasks, late=f"late-{r}", outage=outage)
                detect.append(d)
                recover.append(rec)
                print(
                    f"round {r + 1}: blackhole_detect_s={d:.2f} outage_recover_s={rec:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            agent.stop()
            proxy.close()
    return {
        "blackhole_detect_s": statistics.median(detect),
        "outage_recover_s": statistics.median(recover),
        "blackhole_detect_max_s": max(detect),
        "outage_recover_max_s": max(recover),
    }


def main() -> None:
    figures = measure()
    print(f"rounds={ROUNDS} outage_seconds={OUTAGE:g}")
    for name, value in figures.items():
        print(f"{name}={value:.2f}")


if __name__ == "__main__":
    main()

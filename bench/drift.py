"""bench drift: how fast the agent notices a container killed behind its back.

One running task; 20 rounds of ``podman kill`` on its container (through the API), each timing
from the kill request to the moment the agent's ``/v1/tasks`` shows that instance failed. The
restart policy then brings a new instance, which the next round kills. Prints p50 and p99.
Goal: p50 < 300 ms, p99 < 1 s. BENCH_ROUNDS changes the number of rounds.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import podman

from bench.support import (
    IMAGE,
    AgentProcess,
    percentile,
    podman_service,
    task_yaml,
    wait_until,
    write_desired,
)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))


def wait_for_running(agent: AgentProcess) -> dict[str, object]:
    found: dict[str, object] = {}

    def running() -> bool:
        for t in agent.tasks():
            if t["name"] == "victim" and t["state"] == "running" and t["containerId"]:
                found.update(t)
                return True
        return False

    wait_until(running, timeout=60, what="victim running", every=0.02)
    return found


def wait_for_failed(agent: AgentProcess, instance: str) -> None:
    def failed() -> bool:
        return any(t["id"] == instance and t["state"] == "failed" for t in agent.tasks())

    wait_until(failed, timeout=60, what="victim failed", every=0.002)


def main() -> None:
    task = {
        "name": "victim",
        "image": IMAGE,
        "command": ["sleep", "100000"],
        "restart": {"condition": "any", "delay": "100ms", "maxDelay": "100ms"},
    }
    with podman_service() as svc, tempfile.TemporaryDirectory(prefix="rcd-", dir="/tmp") as work:
        agent = AgentProcess(svc, Path(work))
        write_desired(agent.desired, "drift.yaml", task_yaml([task]))
        agent.start()
        client = podman.PodmanClient(base_url=svc.url)
        samples: list[float] = []
        kill_calls: list[float] = []  # how long podman itself takes to answer the kill
        try:
            for _ in range(ROUNDS):
                current = wait_for_running(agent)
                instance = current["id"]
                container = client.containers.get(str(current["containerId"]))
                t0 = time.perf_counter()
                container.kill(signal="SIGKILL")
                kill_calls.append(time.perf_counter() - t0)
                wait_for_failed(agent, str(instance))
                samples.append(time.perf_counter() - t0)
        finally:
            client.close()  # type: ignore[no-untyped-call]
            agent.stop()
    print(f"rounds={len(samples)}")
    print(f"drift_p50_ms={1000 * percentile(samples, 0.5):.0f}")
    print(f"drift_p99_ms={1000 * percentile(samples, 0.99):.0f}")
    print(f"drift_max_ms={1000 * max(samples):.0f}")
    print(f"podman_kill_call_p50_ms={1000 * percentile(kill_calls, 0.5):.0f}")


if __name__ == "__main__":
    main()

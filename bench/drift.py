"""bench drift: how fast the agent notices a container killed behind its back.

One running task; 20 rounds of ``podman kill`` on its container (through the API), each timing
from the kill request to the moment the agent's ``/v1/tasks`` shows that instance failed. The
restart policy then brings a new instance, which the next round kills. Prints p50 and p99.

Side by side, in the same run against the same podman, the bench follows podman's own event
stream and times, per round, when podman's ``died`` event for the killed container arrives
(``podman_died_event_*``): the agent judges a kill from conmon's exit file, so it should be
ahead of that event (``agent_ahead_of_died`` counts the rounds where it was). podman writes
``died`` as soon as it reads the exit file (``podman kill`` with SIGKILL does so before it
answers), so nearly all of the event's delay is podman's events API following its log on a
250 ms poll: a round in which that poll happens to come right after the kill sees the event
early.
Goal: p99 < 150 ms. BENCH_ROUNDS changes the number of rounds.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import podman

from bench.support import IMAGE, AgentProcess, percentile, podman_service, task_yaml, write_desired
from reconciler.testing.polling import wait_until

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))


def wait_for_running(agent: AgentProcess) -> dict[str, object]:
    found: dict[str, object] = {}

    def running() -> bool:
        for t in agent.tasks():
            if t["name"] == "victim" and t["state"] == "running" and t["containerId"]:
                found.update(t)
                return True
        return False

    wait_until(running, within=60, what="victim running", every=0.02)
    return found


def wait_for_failed(agent: AgentProcess, instance: str) -> None:
    def failed() -> bool:
        return any(t["id"] == instance and t["state"] == "failed" for t in agent.tasks())

    wait_until(failed, within=60, what="victim failed", every=0.002)


class DiedEvents:
    """podman's own ``died`` events, as a client of its event stream sees them arrive.

    Its reader is a daemon thread that ends with the podman service (closing a streaming
    response from another thread can block)."""

    def __init__(self, url: str) -> None:
        self._client = podman.PodmanClient(base_url=url)
        self._arrived: dict[str, float] = {}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._follow, name="died-events", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        filters = json.dumps({"type": ["container"], "event": ["died"]})
        resp = self._client.api.get(
            "/events", params={"stream": True, "filters": filters}, stream=True
        )
        with contextlib.suppress(Exception):  # the service stopped under it
            for line in resp.iter_lines():
                if not line:
                    continue
                ev = json.loads(line)
                cid = str((ev.get("Actor") or {}).get("ID") or ev.get("id") or "")
                with self._cond:
                    self._arrived.setdefault(cid, time.perf_counter())
                    self._cond.notify_all()

    def arrival(self, cid: str, timeout: float = 10.0) -> float | None:
        """When the ``died`` event of ``cid`` arrived (perf_counter), or None."""
        with self._cond:
            self._cond.wait_for(lambda: cid in self._arrived, timeout=timeout)
            return self._arrived.get(cid)


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
        died = DiedEvents(svc.url)
        samples: list[float] = []
        pairs: list[tuple[float, float]] = []  # (agent, podman's died event), same round
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
                arrived = died.arrival(str(container.id))
                if arrived is not None:
                    pairs.append((samples[-1], arrived - t0))
        finally:
            client.close()  # type: ignore[no-untyped-call]
            agent.stop()
    print(f"rounds={len(samples)}")
    print(f"drift_p50_ms={1000 * percentile(samples, 0.5):.0f}")
    print(f"drift_p99_ms={1000 * percentile(samples, 0.99):.0f}")
    print(f"drift_max_ms={1000 * max(samples):.0f}")
    print(f"podman_kill_call_p50_ms={1000 * percentile(kill_calls, 0.5):.0f}")
    if pairs:
        died_samples = [d for _, d in pairs]
        print(f"podman_died_event_p50_ms={1000 * percentile(died_samples, 0.5):.0f}")
        print(f"podman_died_event_p99_ms={1000 * percentile(died_samples, 0.99):.0f}")
        ahead = sum(1 for a, d in pairs if a < d)
        print(f"agent_ahead_of_died={ahead}/{len(pairs)}")


if __name__ == "__main__":
    main()

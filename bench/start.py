"""bench start: 30 tasks to running through the podman runtime, against raw podman.

In one run, on one private podman service (its own storage, so the host's containers are never
touched), for each of 3 rounds:

* **agent_yaml**: the whole agent (``reconciler run`` as a subprocess on the same service):
  timed from the write of a desired-state file holding 30 tasks until the agent reports every
  task ``running`` (its status is stored right after podman's start returned);
* **agent**: 30 tasks are driven from ``new`` to ``running`` by ``reconciler.lifecycle.do`` in a
  simple driver loop (one coroutine per task, as the task managers do) through
  ``PodmanExecutor`` with its default 8 worker threads; timed until every task is ``running``,
  i.e. every container has been started by podman;
* **raw_parallel**: podman-py ``containers.create()`` + ``start()`` of 30 containers from 8
  threads;
* **kube_play**: ``podman kube play`` of one YAML file holding 30 pods.

Every container runs the same busybox loop. Containers are removed between measurements,
outside the timed sections. Prints the medians, ``ratio agent/raw_parallel=R`` (goal:
R <= 1.15) and the whole agent's ``ratio agent_yaml/raw_parallel`` and
``ratio agent_yaml/kube_play`` (goals: <= 1.15 and <= 0.5). Run it with
``bench/run start``; BENCH_START_TASKS and BENCH_START_ROUNDS override 30 and 3.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import podman

from bench.support import AgentProcess, task_yaml, wait_until, write_desired
from reconciler.clock import SystemClock
from reconciler.errors import TaskNoop, TaskRetry
from reconciler.executor import Controller, NullObserver
from reconciler.lifecycle import do, resolve
from reconciler.model import Task, TaskSpec, TaskState, TaskStatus
from runtime.podman import PodmanExecutor
from runtime.podman.service import TEST_IMAGE, TEST_IMAGE_TARBALL, PodmanService

REPO = Path(__file__).resolve().parents[1]
N = int(os.environ.get("BENCH_START_TASKS", "30"))
ROUNDS = int(os.environ.get("BENCH_START_ROUNDS", "3"))
THREADS = 8
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


async def _to_running(task: Task, ctlr: Controller) -> None:
    while task.status.state < TaskState.RUNNING:
        try:
            status = await do(task, ctlr, now=time.time)
        except TaskNoop:
            return
        except TaskRetry as retry:
            assert isinstance(retry.status, TaskStatus)
            status = retry.status
            await asyncio.sleep(0.05)
        if status.state.terminal:
            raise RuntimeError(f"task {task.id} ended: {status.message} {status.err}")
        task = replace(task, status=status)


async def agent_round(svc: PodmanService) -> float:
    node = f"bench-{uuid.uuid4().hex[:8]}"
    clock = SystemClock()
    ex = PodmanExecutor(
        url=svc.url, node_id=node, clock=clock, observer=NullObserver(), agent_version="bench"
    )
    await ex.start()
    try:
        await ex.events.wait_connected()
        tasks = [
            Task(
                id=uuid.uuid4().hex[:12],
                spec=TaskSpec(name=f"agent{i}", image=TEST_IMAGE, command=tuple(COMMAND)),
                node_id=node,
            )
            for i in range(N)
        ]
        t0 = time.perf_counter()
        runs = []
        for task in tasks:
            ctlr, status = resolve(task, ex, now=time.time)
            assert ctlr is not None, status
            runs.append(_to_running(replace(task, status=status), ctlr))
        await asyncio.gather(*runs)
        return time.perf_counter() - t0
    finally:
        await ex.close()


def raw_round(svc: PodmanService) -> float:
    client = podman.PodmanClient(base_url=svc.url, max_pool_size=THREADS)
    tag = uuid.uuid4().hex[:6]

    def one(i: int) -> None:
        c = client.containers.create(TEST_IMAGE, command=COMMAND, name=f"raw{i}-{tag}")
        c.start()

    try:
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(one, range(N)))
        return time.perf_counter() - t0
    finally:
        client.close()  # type: ignore[no-untyped-call]


def kube_round(svc: PodmanService, workdir: Path) -> float:
    docs = []
    tag = uuid.uuid4().hex[:6]
    for i in range(N):
        docs.append(
            "apiVersion: v1\nkind: Pod\nmetadata:\n"
            f"  name: kube{i}-{tag}\n"
            "spec:\n  containers:\n  - name: c\n"
            f"    image: {TEST_IMAGE}\n"
            f"    command: {json.dumps(COMMAND)}\n"
        )
    path = workdir / f"pods-{tag}.yaml"
    path.write_text("---\n".join(docs))
    t0 = time.perf_counter()
    svc.run("kube", "play", str(path), timeout=600)
    return time.perf_counter() - t0


def agent_yaml_round(agent: AgentProcess, r: int) -> float:
    tasks = [{"name": f"y{r}-{i}", "image": TEST_IMAGE, "command": COMMAND} for i in range(N)]
    names = {t["name"] for t in tasks}

    def all_running() -> bool:
        running = {t["name"] for t in agent.tasks() if t["state"] == "running"}
        return names <= running

    t0 = time.perf_counter()
    write_desired(agent.desired, "bench.yaml", task_yaml(tasks))
    # Polled every 20 ms: finer polling would itself load the agent on 2 cores.
    wait_until(all_running, timeout=600, what=f"{N} tasks running", every=0.02)
    elapsed = time.perf_counter() - t0
    # Untimed: remove them through the agent, so it does not restart what clean() kills.
    write_desired(agent.desired, "bench.yaml", task_yaml([]))
    wait_until(lambda: not agent.tasks(), timeout=600, what="tasks removed", every=0.05)
    return elapsed


def clean(svc: PodmanService) -> None:
    # Killing first: ``pod rm --time 0`` alone takes seconds per pod here.
    svc.run("pod", "kill", "--all", check=False, timeout=600)
    svc.run("kill", "--all", check=False, timeout=600)
    svc.run("pod", "rm", "--all", "--force", "--time", "0", check=False, timeout=600)
    svc.run("rm", "--all", "--force", "--time", "0", check=False, timeout=600)


def main() -> None:
    if not TEST_IMAGE_TARBALL.is_file():
        subprocess.run(
            ["bash", str(REPO / "scripts" / "build-test-image"), "--tarball-only"], check=True
        )
    base = Path(tempfile.mkdtemp(prefix="rcp-", dir="/tmp"))
    svc = PodmanService(base, containers_conf=REPO / "deploy" / "containers.conf")
    results: dict[str, list[float]] = {
        "agent_yaml": [],
        "agent": [],
        "raw_parallel": [],
        "kube_play": [],
    }
    agent: AgentProcess | None = None
    try:
        svc.start()
        svc.import_test_image()
        agent = AgentProcess(svc, base / "agent")
        write_desired(agent.desired, "bench.yaml", task_yaml([]))
        agent.start()
        wait_until(agent.ready, timeout=120, what="agent ready", every=0.05)
        for r in range(ROUNDS):
            results["agent_yaml"].append(agent_yaml_round(agent, r))
            clean(svc)
            results["agent"].append(asyncio.run(agent_round(svc)))
            clean(svc)
            results["raw_parallel"].append(raw_round(svc))
            clean(svc)
            results["kube_play"].append(kube_round(svc, base))
            clean(svc)
            print(
                f"round {r + 1}: " + " ".join(f"{k}={v[-1]:.3f}s" for k, v in results.items()),
                file=sys.stderr,
                flush=True,
            )
    finally:
        if agent is not None:
            agent.stop()
        svc.destroy()
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"tasks={N} rounds={ROUNDS} threads={THREADS}")
    print(f"agent_yaml_seconds={med['agent_yaml']:.3f}")
    print(f"agent_seconds={med['agent']:.3f}")
    print(f"raw_parallel_seconds={med['raw_parallel']:.3f}")
    print(f"kube_play_seconds={med['kube_play']:.3f}")
    print(f"ratio agent/raw_parallel={med['agent'] / med['raw_parallel']:.2f}")
    print(f"ratio kube_play/raw_parallel={med['kube_play'] / med['raw_parallel']:.2f}")
    print(f"ratio agent_yaml/raw_parallel={med['agent_yaml'] / med['raw_parallel']:.2f}")
    print(f"ratio agent_yaml/kube_play={med['agent_yaml'] / med['kube_play']:.2f}")


if __name__ == "__main__":
    main()

"""bench start: tasks to running through the podman runtime, against raw podman.

In one run, on one private podman service (its own storage, so the host's containers are never
touched), for each of 5 interleaved rounds of 30 tasks:

* **agent_yaml**: the whole agent (``reconciler run`` as a subprocess on the same service):
  timed from the write of a desired-state file holding 30 tasks until the agent reports every
  task ``running`` (its status is stored right after podman's start returned);
* **agent**: 30 tasks are driven from ``new`` to ``running`` by ``reconciler.core.lifecycle.do`` in
a
  simple driver loop (one coroutine per task, as the task managers do) through
  ``PodmanExecutor`` with its default 8 worker threads; timed until every task is ``running``,
  i.e. every container has been started by podman;
* **raw_parallel**: podman-py ``containers.create()`` + ``start()`` of 30 containers from 8
  threads;
* **kube_play**: ``podman kube play`` of one YAML file holding 30 pods.

Then 3 interleaved rounds of 100 tasks, of agent_yaml and raw_parallel only (fewer rounds and
sides: each side takes some 10 s on 2 cores).

An untimed warm-up round of agent_yaml, raw_parallel and agent comes first. Every container
runs the same busybox loop. Containers are removed between measurements,
outside the timed sections. Prints the medians and, for each ratio to raw_parallel, both the
ratio of the medians and the median of the per-round ratios with their spread (min..max): a
round's two sides run back to back, under one load, so the per-round ratio is the steadier
figure on a shared machine. Goals: ``agent_yaml/raw_parallel`` <= 1.05 at 30 and at 100 tasks,
``agent_yaml/kube_play`` <= 0.5. Run it with ``bench/run start``; BENCH_START_TASKS,
BENCH_START_ROUNDS, BENCH_START_BIG_TASKS and BENCH_START_BIG_ROUNDS override 30, 5, 100 and 3
(0 big rounds skips the large start).
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

from bench.support import AgentProcess, TaskStream, task_yaml, write_desired
from reconciler.core.clock import SystemClock
from reconciler.core.errors import TaskNoop, TaskRetry
from reconciler.core.executor import Controller, NullObserver
from reconciler.core.lifecycle import do, resolve
from reconciler.core.model import Task, TaskSpec, TaskState, TaskStatus
from reconciler.testing.podman import TEST_IMAGE, TEST_IMAGE_TARBALL, PodmanService
from reconciler.testing.polling import wait_until
from runtime.podman import PodmanExecutor

REPO = Path(__file__).resolve().parents[1]
N = int(os.environ.get("BENCH_START_TASKS", "30"))
ROUNDS = int(os.environ.get("BENCH_START_ROUNDS", "5"))
BIG = int(os.environ.get("BENCH_START_BIG_TASKS", "100"))
BIG_ROUNDS = int(os.environ.get("BENCH_START_BIG_ROUNDS", "3"))
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
        url=svc.url,
        node_id=node,
        clock=clock,
        observer=NullObserver(),
        agent_version="bench",
        image_gc_threshold=15.0,
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


def raw_round(svc: PodmanService, n: int) -> float:
    client = podman.PodmanClient(base_url=svc.url, max_pool_size=THREADS)
    tag = uuid.uuid4().hex[:6]

    def one(i: int) -> None:
        c = client.containers.create(TEST_IMAGE, command=COMMAND, name=f"raw{i}-{tag}")
        c.start()

    try:
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(one, range(n)))
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


def agent_yaml_round(agent: AgentProcess, r: int, n: int) -> float:
    tasks = [{"name": f"y{r}-{i}", "image": TEST_IMAGE, "command": COMMAND} for i in range(n)]
    names = {f"y{r}-{i}" for i in range(n)}
    stream = TaskStream(agent.port)  # pushed changes: no polling that would load the agent
    try:
        t0 = time.perf_counter()
        write_desired(agent.desired, "bench.yaml", task_yaml(tasks))
        stream.until(lambda states: all(states.get(name) == "running" for name in names))
        elapsed = time.perf_counter() - t0
        # Untimed: remove them through the agent, so it does not restart what clean() kills.
        write_desired(agent.desired, "bench.yaml", task_yaml([]))
        stream.until(lambda states: not states)
    finally:
        stream.close()
    return elapsed


def clean(svc: PodmanService) -> None:
    # Killing first: ``pod rm --time 0`` alone takes seconds per pod here.
    svc.run("pod", "kill", "--all", check=False, timeout=600)
    svc.run("kill", "--all", check=False, timeout=600)
    svc.run("pod", "rm", "--all", "--force", "--time", "0", check=False, timeout=600)
    svc.run("rm", "--all", "--force", "--time", "0", check=False, timeout=600)


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}..{max(values):.2f}"


def _report(n: int, rounds: int, results: dict[str, list[float]]) -> None:
    """Medians, the ratio of medians, and the per-round ratios' median with their spread
    (each round's agent and raw runs are back to back, so a round's ratio sees one load)."""
    med = {k: statistics.median(v) for k, v in results.items() if v}
    raw = results["raw_parallel"]
    prefix = "" if n == N else f"tasks_{n}_"
    print(f"{prefix}tasks={n} rounds={rounds} threads={THREADS}")
    for k, v in med.items():
        print(f"{prefix}{k}_seconds={v:.3f}")
    for k in ("agent", "kube_play", "agent_yaml"):
        if k not in med:
            continue
        per_round = [a / b for a, b in zip(results[k], raw, strict=True)]
        print(f"{prefix}ratio {k}/raw_parallel={med[k] / med['raw_parallel']:.2f}")
        print(
            f"{prefix}ratio {k}/raw_parallel per-round median={statistics.median(per_round):.2f}"
            f" spread={_spread(per_round)}"
        )
    if "kube_play" in med:
        print(f"{prefix}ratio agent_yaml/kube_play={med['agent_yaml'] / med['kube_play']:.2f}")


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
    big: dict[str, list[float]] = {"agent_yaml": [], "raw_parallel": []}
    agent: AgentProcess | None = None
    try:
        svc.start()
        svc.import_test_image()
        agent = AgentProcess(svc, base / "agent")
        write_desired(agent.desired, "bench.yaml", task_yaml([]))
        agent.start()
        wait_until(agent.ready, within=120, what="agent ready", every=0.05)
        # One untimed round of each timed side first: the agent's and podman's first start
        # (imports on first use, podman's caches) would otherwise land in round 1 alone.
        agent_yaml_round(agent, -1, N)
        clean(svc)
        raw_round(svc, N)
        clean(svc)
        asyncio.run(agent_round(svc))
        clean(svc)
        for r in range(ROUNDS):
            results["agent_yaml"].append(agent_yaml_round(agent, r, N))
            clean(svc)
            results["agent"].append(asyncio.run(agent_round(svc)))
            clean(svc)
            results["raw_parallel"].append(raw_round(svc, N))
            clean(svc)
            results["kube_play"].append(kube_round(svc, base))
            clean(svc)
            print(
                f"round {r + 1}: " + " ".join(f"{k}={v[-1]:.3f}s" for k, v in results.items()),
                file=sys.stderr,
                flush=True,
            )
        # The large start: only the whole agent and raw podman-py, in fewer rounds (each
        # takes some 10 s a side on 2 cores).
        for r in range(BIG_ROUNDS):
            big["agent_yaml"].append(agent_yaml_round(agent, ROUNDS + r, BIG))
            clean(svc)
            big["raw_parallel"].append(raw_round(svc, BIG))
            clean(svc)
            print(
                f"round {r + 1} at {BIG}: " + " ".join(f"{k}={v[-1]:.3f}s" for k, v in big.items()),
                file=sys.stderr,
                flush=True,
            )
    finally:
        if agent is not None:
            agent.stop()
        svc.destroy()
    _report(N, ROUNDS, results)
    if BIG_ROUNDS:
        _report(BIG, BIG_ROUNDS, big)


if __name__ == "__main__":
    main()

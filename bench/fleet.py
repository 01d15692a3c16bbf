"""bench fleet: the fleet manager scheduling onto 200 simulated nodes over a local NATS.

The world: a local ``nats-server -js``; ``reconciler manager run`` as its own process (grace
``BENCH_FLEET_GRACE``, default 5 s; the fleet's heartbeat period 1 s); 200 agents
(``BENCH_FLEET_NODES``), each the whole agent on the fake runtime with its own store and NATS
session, hosted ``BENCH_FLEET_PER_PROCESS`` (50) to a process (``bench/_fleet_agents.py``).
This process plays the operator: it applies ServiceSets through the same code as ``reconciler
manager apply`` and watches ``reconciler_status`` and ``reconciler_nodes`` itself.

Three figures, each timed on this process's monotonic clock:

* **apply_200**: 200 single-replica services applied at once; per task, from the apply to the
  first ``running`` status of that task (p50, p99, max). Goal: p99 < 2 s.
* **replicas_10k**: the services removed, then one service of 10,000 replicas; from the apply
  to every replica ``running``. Goal: < 10 s (``replicas_10k_tasks_per_s`` says the rate;
  ``replicas_10k_assigned_s`` when the manager had written every assignment;
  ``replicas_10k_cpu_*_s`` the CPU seconds the manager, the agents' processes, nats-server
  and this process used meanwhile, which says where the time goes).
* **node_down**: then an agent that holds 50 of those replicas stops; from the last heartbeat
  of it that this process saw to every one of its tasks ``running`` on another node. Goal:
  within the grace period + 2 s.

The simulated nodes keep their stores on ``/dev/shm``: each real node syncs its own disk, and
200 nodes' syncs queued on this machine's one disk would measure that disk, not the fleet.
``BENCH_FLEET_PROFILE=DIR`` writes cProfile stats of the manager and of each agents' process
there.

Prints ``name=value`` lines. Run with ``bench/run fleet``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from bench.support import percentile
from reconciler.fleet.buckets import ASSIGNMENTS, CONTROL, NODES, STATUS
from reconciler.fleet.options import NatsOptions
from reconciler.fleet.provision import init_buckets
from reconciler.fleet.watch import KeyWatch
from reconciler.manager.admin import apply_services, remove_services
from reconciler.manager.services import parse_service_file
from reconciler.testing.natsserver import nats_server
from reconciler.testing.polling import eventually
from reconciler.testing.ports import free_port

REPO = Path(__file__).resolve().parents[1]
NODE_COUNT = int(os.environ.get("BENCH_FLEET_NODES", "200"))
PER_PROCESS = int(os.environ.get("BENCH_FLEET_PER_PROCESS", "50"))
GRACE = float(os.environ.get("BENCH_FLEET_GRACE", "5"))
REPLICAS = int(os.environ.get("BENCH_FLEET_REPLICAS", "10000"))
PROFILE = os.environ.get("BENCH_FLEET_PROFILE")
"""A directory: the manager and each agents' process write their cProfile stats there."""
SERVICES = 200
DEADLINE = 300.0
COMMAND = ["sleep", "3600"]


class Watcher:
    """What this process sees of the fleet: statuses, heartbeats, assignments."""

    def __init__(self) -> None:
        self.running_at: dict[str, dict[str, float]] = {}  # task -> node -> first seen running
        self.beat_at: dict[str, float] = {}  # node -> last heartbeat seen
        self.assignments: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, nc: Client) -> None:
        for bucket in (STATUS, NODES, ASSIGNMENTS):
            watch = KeyWatch(nc, bucket, ">", idle_heartbeat=5.0, timeout=30.0)
            for entry in (await watch.start()).values():
                self._apply(bucket, entry.key, entry.value)
            self._tasks.append(asyncio.create_task(self._pump(bucket, watch)))

    async def _pump(self, bucket: str, watch: KeyWatch) -> None:
        while True:
            entry = await watch.next()
            self._apply(bucket, entry.key, entry.value)

    def _apply(self, bucket: str, key: str, value: bytes | None) -> None:
        now = time.monotonic()
        if bucket == NODES:
            self.beat_at[key] = now
        elif bucket == ASSIGNMENTS:
            if value is None:
                self.assignments.discard(key)
            else:
                self.assignments.add(key)
        else:
            node, _, task = key.partition(".")
            on = self.running_at.setdefault(task, {})
            if value is None:
                on.pop(node, None)
            elif node not in on and b'"state":"running"' in value:
                on[node] = now

    def running_since(self, task: str, since: float, *, not_on: str | None = None) -> float | None:
        on = self.running_at.get(task, {})
        times = [t for node, t in on.items() if t >= since and node != not_on]
        return min(times) if times else None

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()


def python(name: str) -> list[str]:
    """``python -m``, under cProfile (stats in ``BENCH_FLEET_PROFILE/<name>.prof``) if asked."""
    if not PROFILE:
        return [sys.executable, "-m"]
    Path(PROFILE).mkdir(parents=True, exist_ok=True)
    return [sys.executable, "-m", "cProfile", "-o", str(Path(PROFILE) / f"{name}.prof"), "-m"]


class Workers:
    """The processes hosting the simulated nodes."""

    def __init__(self, url: str, base: Path, nodes: list[str]) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.host: dict[str, subprocess.Popen[str]] = {}
        for start in range(0, len(nodes), PER_PROCESS):
            chunk = nodes[start : start + PER_PROCESS]
            proc = subprocess.Popen(
                [
                    *python(f"agents-{start // PER_PROCESS}"),
                    "bench._fleet_agents",
                    url,
                    str(base),
                    *chunk,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            self.procs.append(proc)
            self.host.update(dict.fromkeys(chunk, proc))
        for proc in self.procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def command(self, word: str, node: str) -> None:
        proc = self.host[node]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{word} {node}\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                assert proc.stdin is not None
                proc.stdin.write("quit\n")
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def manager_process(url: str, work: Path) -> Iterator[tuple[str, int]]:
    """``reconciler manager run``; yields its /metrics URL and its pid."""
    port = free_port()
    log = open(work / "manager.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            *python("manager"),
            "reconciler.cli",
            "manager",
            "run",
            "--nats",
            url,
            "--listen",
            f"127.0.0.1:{port}",
            "--node-grace",
            f"{GRACE:g}s",
            "--log-level",
            os.environ.get("BENCH_MANAGER_LOG_LEVEL", "warning"),
        ],
        stdout=log,
        stderr=log,
        cwd=REPO,
    )
    try:
        yield f"http://127.0.0.1:{port}/metrics", proc.pid
    finally:
        began = time.monotonic()
        proc.terminate()
        try:
            code = proc.wait(60)
            print(f"manager_stop_s={time.monotonic() - began:.3f} manager_exit={code}")
        except subprocess.TimeoutExpired:
            print("manager_stop_s=timeout")
            proc.kill()
            proc.wait()
        log.close()


class Cpu:
    """CPU seconds (user + system) used by groups of processes, this one as ``bench``."""

    def __init__(self, **groups: list[int]) -> None:
        self.groups = dict(groups)
        self._mark: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        tick = os.sysconf("SC_CLK_TCK")
        out = {"bench": sum(os.times()[:2])}
        for name, pids in self.groups.items():
            total = 0.0
            for pid in pids:
                with contextlib.suppress(OSError):
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / tick
            out[name] = total
        return out

    def mark(self) -> None:
        self._mark = self._now()

    def since_mark(self) -> dict[str, float]:
        now = self._now()
        return {name: now[name] - self._mark.get(name, 0.0) for name in now}


def metric(url: str, line_start: str) -> float | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return None


async def until(probe: Callable[[], Any], what: str, within: float = DEADLINE) -> None:
    await eventually(probe, what, within=within)


def service_set(services: list[dict[str, object]]) -> bytes:
    doc = {"apiVersion": "reconciler/v1", "kind": "ServiceSet", "services": services}
    return json.dumps(doc).encode()


async def run(url: str, metrics_url: str, workers: Workers, cpu: Cpu) -> None:
    options = NatsOptions(servers=(url,))
    nc = await nats.connect(url)
    watcher = Watcher()
    await watcher.start(nc)
    ready = 'reconciler_manager_nodes{state="ready"}'
    await until(lambda: metric(metrics_url, ready) == NODE_COUNT, f"{NODE_COUNT} nodes ready", 120)

    # ---- apply_200
    names = [f"svc{i:03d}" for i in range(1, SERVICES + 1)]
    data = service_set([{"name": n, "image": "bench:1", "command": COMMAND} for n in names])
    services = parse_service_file(data, "bench.yaml")
    t0 = time.monotonic()
    await apply_services(options, services, prune=False, dry_run=False)
    tasks = [f"{n}-1" for n in names]
    await until(lambda: all(watcher.running_since(t, t0) for t in tasks), "200 tasks running", 120)
    latencies = [watcher.running_since(t, t0) - t0 for t in tasks]  # type: ignore[operator]
    print(f"apply_200_p50_s={percentile(latencies, 0.5):.3f}")
    print(f"apply_200_p99_s={percentile(latencies, 0.99):.3f}")
    print(f"apply_200_max_s={max(latencies):.3f}")
    print("apply_200_goal_p99_s=2")

    # ---- replicas_10k
    await remove_services(options, names)
    await until(lambda: not watcher.assignments, "the 200 services removed", 120)
    big = parse_service_file(
        service_set(
            [{"name": "web", "image": "bench:1", "command": COMMAND, "replicas": REPLICAS}]
        ),
        "bench.yaml",
    )
    cpu.mark()
    t0 = time.monotonic()
    await apply_services(options, big, prune=False, dry_run=False)
    wanted = {f"web-{i}" for i in range(1, REPLICAS + 1)}

    def all_running() -> bool:
        return all(watcher.running_since(t, t0) for t in wanted)

    await until(lambda: len(watcher.assignments) >= REPLICAS, "every replica assigned", 600)
    assigned = time.monotonic() - t0
    await until(all_running, f"{REPLICAS} replicas running", 600)
    took = max(watcher.running_since(t, t0) or t0 for t in wanted) - t0
    print(f"replicas_10k_assigned_s={assigned:.3f}")
    print(f"replicas_10k_s={took:.3f}")
    print(f"replicas_10k_tasks_per_s={REPLICAS / took:.0f}")
    print("replicas_10k_goal_s=10")
    for name, seconds in cpu.since_mark().items():
        print(f"replicas_10k_cpu_{name}_s={seconds:.1f}")

    # ---- node_down
    where = {k.split(".", 1)[1]: k.split(".", 1)[0] for k in watcher.assignments}
    victim = where["web-1"]
    held = [t for t, n in where.items() if n == victim]
    workers.command("stop", victim)
    await asyncio.sleep(1.0)  # anything in flight from it lands
    last_beat = watcher.beat_at[victim]
    await until(
        lambda: all(watcher.running_since(t, last_beat, not_on=victim) for t in held),
        "the stopped node's tasks running elsewhere",
        GRACE + 60,
    )
    moved = max(watcher.running_since(t, last_beat, not_on=victim) for t in held)  # type: ignore[type-var]
    print(f"node_down_tasks={len(held)}")
    print(f"node_down_s={moved - last_beat:.3f}")  # type: ignore[operator]
    print(f"node_down_goal_s={GRACE + 2:g}")

    schedule = metric(metrics_url, "reconciler_manager_schedule_seconds_sum")
    passes = metric(metrics_url, "reconciler_manager_schedule_seconds_count")
    if schedule is not None and passes:
        print(f"manager_schedule_passes={passes:.0f}")
        print(f"manager_schedule_seconds_total={schedule:.3f}")
    watcher.stop()
    await nc.close()


async def prepare(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=10)
        await init_buckets(js)
        kv = await js.key_value(CONTROL)
        await kv.put("fleet", json.dumps({"heartbeatPeriod": "1s"}).encode())
    finally:
        await nc.close()


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="rcf-", dir="/tmp"))
    shm = Path("/dev/shm")
    stores = Path(tempfile.mkdtemp(prefix="rcf-", dir=shm if shm.is_dir() else work))
    print(f"nodes={NODE_COUNT} per_process={PER_PROCESS} grace_s={GRACE:g} heartbeat_s=1")
    with nats_server(work / "nats") as server:
        asyncio.run(prepare(server.url))
        with manager_process(server.url, work) as (metrics_url, manager_pid):
            nodes = [f"node-{i:03d}" for i in range(NODE_COUNT)]
            workers = Workers(server.url, stores, nodes)
            assert server.proc is not None
            cpu = Cpu(manager=[manager_pid], agents=[p.pid for p in workers.procs])
            cpu.groups["nats"] = [server.proc.pid]
            try:
                asyncio.run(run(server.url, metrics_url, workers, cpu))
            finally:
                workers.close()
                shutil.rmtree(stores, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

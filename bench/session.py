"""bench session: the fleet session's speed, against the desired directory and across a restart.

**start** (real podman, a local ``nats-server -js``): two agents run as ``reconciler run``
subprocesses on one private podman service, one on a desired directory and one with
``--manager`` (node ids of their own, so they never touch each other's containers). Each round
times, for each agent in turn (the order alternates between rounds), 30 tasks from one write to
every task ``running`` in ``/v1/tasks``:

* ``yaml``: one desired-state file holding the 30 tasks, written atomically;
* ``nats``: the 30 keys ``reconciler_assignments/<node>.<name>`` put back to back.

Then both remove their tasks (untimed) and the containers are cleaned. Prints the median and the
spread (min..max) per path over ``BENCH_SESSION_ROUNDS`` rounds (default 9), and
``ratio_nats_yaml``, the median of the rounds' nats/yaml ratios (goal: <= 1.05), with its
spread. Each round's pair runs back to back, so the paired ratio cancels most of the drift in
load that a shared machine shows between rounds; the ratio of the two medians is printed too.

**restart** (fake runtime, in process, the real clock): an agent holds 100 tasks whose statuses
are all delivered; NATS stops; every container exits and the restart policy replaces it, so
fresh statuses queue; NATS stays down ``BENCH_SESSION_OUTAGE`` seconds (default 3, long enough
for the agent's reconnect backoff to reach its 1 s cap) and starts again on the same port and
store. Timed from the server's start to the last queued status delivered (the reporter has
nothing pending and every task's key holds its new instance). Prints the median over
``BENCH_SESSION_RESTARTS`` rounds (default 5) (goal: < 2 s) and, for context, how long the
server itself took to answer.

**agent only** (fake runtime, in process): the same two paths for 30 tasks, from the write to
every task ``running``, without podman: the agent's own share of ``start``, which a shared
machine's noise does not drown (``agent_only_*_seconds``, medians of twice as many rounds).

Run with ``bench/run session``; ``BENCH_SESSION_TASKS`` overrides 30.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import nats
from nats.js.kv import KeyValue

from bench.support import AgentProcess, task_yaml, write_desired
from reconciler.assemble.agent import assemble_agent
from reconciler.core.clock import SystemClock
from reconciler.fleet.buckets import ASSIGNMENTS, STATUS
from reconciler.fleet.provision import init_buckets
from reconciler.sessions.nats import NatsSession
from reconciler.store.rocks import RocksStore
from reconciler.testing.agents import agent_options
from reconciler.testing.fake import FakeExecutor
from reconciler.testing.natsserver import nats_server
from reconciler.testing.podman import TEST_IMAGE, TEST_IMAGE_TARBALL, PodmanService
from reconciler.testing.polling import eventually, wait_until

REPO = Path(__file__).resolve().parents[1]
N = int(os.environ.get("BENCH_SESSION_TASKS", "30"))
ROUNDS = int(os.environ.get("BENCH_SESSION_ROUNDS", "9"))
RESTART_TASKS = 100
RESTARTS = int(os.environ.get("BENCH_SESSION_RESTARTS", "5"))
OUTAGE = float(os.environ.get("BENCH_SESSION_OUTAGE", "3"))
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
FLEET_NODE = "bench-fleet"


async def _init(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await init_buckets(nc.jetstream())
    finally:
        await nc.close()


# --------------------------------------------------------------------------------- start


class FleetAgent(AgentProcess):
    """``reconciler run --manager`` as a subprocess on the private podman service."""

    def __init__(self, svc: PodmanService, work: Path, manager: str) -> None:
        super().__init__(svc, work)
        self.manager = manager

    def start(self) -> None:
        log = open(self.work / "agent.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "reconciler.cli",
                    "run",
                    "--manager",
                    self.manager,
                    "--state-dir",
                    str(self.state),
                    "--podman-url",
                    self.svc.url,
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--resync-interval",
                    self.resync,
                    "--node-id",
                    FLEET_NODE,
                    "--log-level",
                    os.environ.get("BENCH_AGENT_LOG_LEVEL", "warning"),
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=dict(self.svc.env),
            )
        finally:
            log.close()


def _specs(prefix: str) -> list[dict[str, Any]]:
    return [{"name": f"{prefix}-{i}", "image": TEST_IMAGE, "command": COMMAND} for i in range(N)]


def _all_running(agent: AgentProcess, names: set[str]) -> bool:
    running = {t["name"] for t in agent.tasks() if t["state"] == "running"}
    return names <= running


def yaml_round(agent: AgentProcess, r: int) -> float:
    tasks = _specs(f"y{r}")
    names = {t["name"] for t in tasks}
    t0 = time.perf_counter()
    write_desired(agent.desired, "bench.yaml", task_yaml(tasks))
    wait_until(lambda: _all_running(agent, names), within=600, what="yaml tasks", every=0.02)
    elapsed = time.perf_counter() - t0
    write_desired(agent.desired, "bench.yaml", task_yaml([]))
    wait_until(lambda: not agent.tasks(), within=600, what="yaml tasks removed", every=0.05)
    return elapsed


async def _put_all(kv: KeyValue, tasks: list[dict[str, Any]]) -> None:
    for t in tasks:
        await kv.put(f"{FLEET_NODE}.{t['name']}", json.dumps(t).encode())


async def _delete_all(kv: KeyValue, tasks: list[dict[str, Any]]) -> None:
    for t in tasks:
        await kv.delete(f"{FLEET_NODE}.{t['name']}")


def nats_round(agent: AgentProcess, url: str, r: int) -> float:
    tasks = _specs(f"n{r}")
    names = {t["name"] for t in tasks}

    async def connect() -> tuple[Any, KeyValue]:
        nc = await nats.connect(url)
        return nc, await nc.jetstream().key_value(ASSIGNMENTS)

    loop = asyncio.new_event_loop()
    try:
        nc, kv = loop.run_until_complete(connect())
        t0 = time.perf_counter()
        loop.run_until_complete(_put_all(kv, tasks))
        wait_until(lambda: _all_running(agent, names), within=600, what="nats tasks", every=0.02)
        elapsed = time.perf_counter() - t0
        loop.run_until_complete(_delete_all(kv, tasks))
        wait_until(lambda: not agent.tasks(), within=600, what="nats tasks removed", every=0.05)
        loop.run_until_complete(nc.close())
    finally:
        loop.close()
    return elapsed


def clean(svc: PodmanService) -> None:
    svc.run("kill", "--all", check=False, timeout=600)
    svc.run("rm", "--all", "--force", "--time", "0", check=False, timeout=600)


def bench_start(base: Path) -> dict[str, list[float]]:
    if not TEST_IMAGE_TARBALL.is_file():
        subprocess.run(
            ["bash", str(REPO / "scripts" / "build-test-image"), "--tarball-only"], check=True
        )
    svc = PodmanService(base / "podman", containers_conf=REPO / "deploy" / "containers.conf")
    results: dict[str, list[float]] = {"yaml": [], "nats": []}
    agents: list[AgentProcess] = []
    try:
        svc.start()
        svc.import_test_image()
        with nats_server(base / "nats") as server:
            asyncio.run(_init(server.url))
            files = AgentProcess(svc, base / "files")
            write_desired(files.desired, "bench.yaml", task_yaml([]))
            fleet = FleetAgent(svc, base / "fleet", server.url)
            agents = [files, fleet]
            for agent in agents:
                agent.start()
            for agent in agents:
                wait_until(agent.ready, within=120, what="agent ready", every=0.05)
            for r in range(ROUNDS):
                order = ("yaml", "nats") if r % 2 == 0 else ("nats", "yaml")
                for path in order:
                    if path == "yaml":
                        results["yaml"].append(yaml_round(files, r))
                    else:
                        results["nats"].append(nats_round(fleet, server.url, r))
                    clean(svc)
                print(
                    f"round {r + 1}: yaml={results['yaml'][-1]:.3f}s "
                    f"nats={results['nats'][-1]:.3f}s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for agent in agents:
            agent.stop()
        svc.destroy()
    return results


# ---------------------------------------------------------------------- in process (fake)


class InProcess:
    """An agent in this process on the fake runtime: a fleet session, or a desired dir."""

    def __init__(self, state: Path, node: str, manager: str | None, desired: Path | None = None):
        clock = SystemClock()
        self.store = RocksStore.open(state)
        self.executor = FakeExecutor(clock=clock, node_id=node)
        flags = ["--manager", manager] if manager is not None else ["--desired", str(desired)]
        assembled = assemble_agent(
            agent_options(state, *flags),
            store=self.store,
            node_id=node,
            clock=clock,
            runtime=lambda _: self.executor,
            boot_id="bench",
        )
        self.agent = assembled.agent
        self.session = assembled.session
        self.stop = asyncio.Event()
        self.run = asyncio.create_task(assembled.run(self.stop))

    def running(self) -> set[str]:
        return {
            v.name for v in self.agent.snapshot().tasks if v.current and v.state.label == "running"
        }

    async def close(self) -> None:
        self.stop.set()
        await self.run
        self.store.close()


async def agent_only_rounds(base: Path) -> dict[str, list[float]]:
    """The agent's own part of ``start``: the same writes, on the fake runtime, in process."""
    results: dict[str, list[float]] = {"yaml": [], "nats": []}
    desired = base / "inproc-desired"
    desired.mkdir(mode=0o755)
    os.chmod(desired, 0o755)
    write_desired(desired, "bench.yaml", task_yaml([]))
    with nats_server(base / "nats-inproc") as server:
        nc = await nats.connect(server.url)
        await init_buckets(nc.jetstream())
        kv = await nc.jetstream().key_value(ASSIGNMENTS)
        files = InProcess(base / "inproc-files", "bench-files", None, desired)
        fleet = InProcess(base / "inproc-fleet", FLEET_NODE, server.url)
        try:
            await _until(
                lambda: files.agent.snapshot().ready and fleet.agent.snapshot().ready, "ready"
            )
            for r in range(ROUNDS * 2):
                tasks = [{"name": f"i{r}-{i}", "image": TEST_IMAGE} for i in range(N)]
                names = {t["name"] for t in tasks}
                t0 = time.perf_counter()
                write_desired(desired, "bench.yaml", task_yaml(tasks))
                await _until(lambda n=names: n <= files.running(), "yaml tasks")
                results["yaml"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await _put_all(kv, tasks)
                await _until(lambda n=names: n <= fleet.running(), "nats tasks")
                results["nats"].append(time.perf_counter() - t0)
                await _delete_all(kv, tasks)
        finally:
            await files.close()
            await fleet.close()
            await nc.close()
    return results


# ------------------------------------------------------------------------------- restart


async def _statuses(kv: KeyValue, want: dict[str, str]) -> bool:
    for name, task_id in want.items():
        entry = await kv.get(f"bench-restart.{name}")
        value = json.loads(entry.value or b"{}")
        if value.get("id") != task_id or value.get("state") != "running":
            return False
    return True


async def _until(probe: Callable[..., Any], what: str, *, every: float = 0.005) -> None:
    """Polls often: the rounds it ends are timed."""
    await eventually(probe, what, within=120.0, every=every)


def _replaced(current: Callable[[], dict[str, str]], old_ids: set[str]) -> bool:
    """Every task runs a new instance (none of ``old_ids``)."""
    now = current()
    return len(now) == RESTART_TASKS and not set(now.values()) & old_ids


async def _quiet(err: Exception) -> None:
    """nats-py's own error callback prints every reconnect attempt; the bench needs none."""


async def restart_rounds(base: Path) -> tuple[list[float], list[float]]:
    delivered: list[float] = []
    answered: list[float] = []
    node = "bench-restart"
    with nats_server(base / "nats-restart") as server:
        manager = await nats.connect(
            server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, error_cb=_quiet
        )
        await init_buckets(manager.jetstream())
        js = manager.jetstream()
        assignments = await js.key_value(ASSIGNMENTS)
        status_kv = await js.key_value(STATUS)
        for i in range(RESTART_TASKS):
            spec = {"image": TEST_IMAGE, "restart": {"delay": "50ms", "maxDelay": "50ms"}}
            await assignments.put(f"{node}.t{i}", json.dumps(spec).encode())
        local = InProcess(base / "restart-state", node, server.url)
        agent, executor, session = local.agent, local.executor, local.session
        assert isinstance(session, NatsSession)
        names = {f"t{i}" for i in range(RESTART_TASKS)}

        def current() -> dict[str, str]:
            return {
                v.name: v.id
                for v in agent.snapshot().tasks
                if v.current and v.state.label == "running"
            }

        def pending() -> int:
            return agent.reporter.pending if agent.reporter is not None else -1

        try:
            await _until(lambda: set(current()) == names and pending() == 0, "all running")
            for _ in range(RESTARTS):
                before = current()
                await asyncio.to_thread(server.stop)
                await _until(lambda: not session.connected, "the agent offline")
                for task_id in before.values():
                    executor.exit(task_id, 1)
                await _until(partial(_replaced, current, set(before.values())), "replaced")
                assert pending() >= RESTART_TASKS, pending()
                await asyncio.sleep(OUTAGE)  # long enough for the reconnect backoff's cap
                want = current()
                t0 = time.perf_counter()
                server.start(wait=False)
                await _until(server.healthy, "the server healthy", every=0.01)
                answered.append(time.perf_counter() - t0)
                await _until(lambda: pending() == 0, "every status delivered")
                delivered.append(time.perf_counter() - t0)
                assert await _statuses(status_kv, want), "a status in the bucket is not the latest"
        finally:
            await local.close()
            await manager.close()
    return delivered, answered


# ---------------------------------------------------------------------------------- main


def _spread(values: list[float]) -> str:
    return f"{min(values):.3f}..{max(values):.3f}"


def main() -> None:
    logging.getLogger("reconciler").setLevel(logging.ERROR)
    base = Path(tempfile.mkdtemp(prefix="rcs-", dir="/tmp"))
    try:
        delivered, answered = asyncio.run(restart_rounds(base))
        agent_only = asyncio.run(agent_only_rounds(base))
        start = bench_start(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    yaml_med = statistics.median(start["yaml"])
    nats_med = statistics.median(start["nats"])
    ratios = [n / y for n, y in zip(start["nats"], start["yaml"], strict=True)]
    print(f"tasks={N} rounds={ROUNDS}")
    print(f"yaml_seconds={yaml_med:.3f}")
    print(f"yaml_seconds_spread={_spread(start['yaml'])}")
    print(f"nats_seconds={nats_med:.3f}")
    print(f"nats_seconds_spread={_spread(start['nats'])}")
    print(f"ratio_nats_yaml={statistics.median(ratios):.3f}")
    print(f"ratio_nats_yaml_spread={_spread(ratios)}")
    print(f"ratio_of_medians_nats_yaml={nats_med / yaml_med:.3f}")
    print(f"agent_only_yaml_seconds={statistics.median(agent_only['yaml']):.3f}")
    print(f"agent_only_nats_seconds={statistics.median(agent_only['nats']):.3f}")
    print(f"restart_tasks={RESTART_TASKS} restart_rounds={RESTARTS}")
    print(f"restart_to_delivered_seconds={statistics.median(delivered):.3f}")
    print(f"restart_to_delivered_seconds_spread={_spread(delivered)}")
    print(f"restart_server_answers_seconds={statistics.median(answered):.3f}")


if __name__ == "__main__":
    main()

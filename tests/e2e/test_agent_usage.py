"""End to end: what real tasks use, as a real agent exports it, against real podman.

One ``reconciler run`` subprocess samples every second a small set of tasks, each built to
show one figure:

* ``mem`` holds 32 MiB in ``/dev/shm`` (tmpfs pages count as the cgroup's memory, and are not
  file cache the kernel could drop), with a second process beside its main one;
* ``busy`` spins in a shell loop: close to one core;
* ``srv`` serves a 256 KiB file with busybox httpd on a published port, and ``client`` fetches
  it through the bridge's gateway address (the default network has no DNS) every second;
* ``oomchild`` runs a child that outgrows the 16 MiB limit and is killed, while the main
  process lives on; ``oommain`` is itself the process that outgrows it (exit 137).

The assertions are on outcomes (a working set of at least 32 MiB, bytes on both sides of the
download, counters that grow, messages), with generous bounds where a rate is involved; speed
is measured in ``bench/``. One test asks podman's own stats API for the same container, as a
cross-check of the figures read from the cgroup.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.testing.podman import PodmanService
from tests.e2e.agent_support import AgentProcess, Harness, free_port, task

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
BLOB = 256 * 1024
SRV_PORT = free_port()

MEM = [
    "sh",
    "-c",
    "dd if=/dev/zero bs=1M count=32 2>/dev/null | tail -c 33554432 > /dev/shm/x; "
    "sleep 100000 & exec sleep 100000",
]
BUSY = ["sh", "-c", "while :; do :; done"]
SRV = [
    "sh",
    "-c",
    f"mkdir -p /www && dd if=/dev/zero bs=1024 count={BLOB // 1024} of=/www/blob 2>/dev/null"
    " && exec httpd -f -p 8080 -h /www",
]
CLIENT = [
    "sh",
    "-c",
    "gw=$(ip route | awk '/^default/ {print $3}'); "
    f"while :; do wget -q -O /dev/null http://$gw:{SRV_PORT}/blob; sleep 1; done",
]
# The child outgrows the limit and is killed; the main process goes on.
OOM_CHILD = ["sh", "-c", "sleep 2; tail -c 67108864 /dev/zero; exec sleep 100000"]
# The main process itself outgrows the limit.
OOM_MAIN = ["sh", "-c", "sleep 2; exec tail -c 67108864 /dev/zero"]

NO_RESTART = {"condition": "none"}


@pytest.fixture(scope="module")
def world(podman_service: PodmanService) -> Iterator[Harness]:
    """One agent running every usage task, sampling every second."""
    with Harness(podman_service) as h:
        h.desired.write(
            "usage.yaml",
            [
                task("mem", command=MEM),
                task("busy", command=BUSY),
                task("srv", command=SRV, ports=[f"{SRV_PORT}:8080"]),
                task("client", command=CLIENT),
                task("oomchild", command=OOM_CHILD, resources={"memory": "16Mi"}),
                task(
                    "oommain",
                    command=OOM_MAIN,
                    resources={"memory": "16Mi"},
                    restart=NO_RESTART,
                ),
            ],
        )
        h.start_agent("--stats-interval", "1s")
        yield h


def sample(h: Harness, metric: str, **labels: str) -> float | None:
    """One sample of ``/metrics`` (``AgentProcess.metric`` cannot take a ``name`` label)."""
    return h.agent.metrics().get((metric, tuple(sorted(labels.items()))))


def usage(h: Harness, metric: str, name: str) -> float | None:
    """The named task's current-instance sample of ``metric``, if there is one."""
    current = h.current(name)
    if current is None:
        return None
    return sample(h, metric, name=name, id=current["id"])


def wait_usage(h: Harness, metric: str, name: str, at_least: float = 0.0) -> float:
    def probe() -> float | None:
        value = usage(h, metric, name)
        return value if value is not None and value >= at_least else None

    return h.wait_for(probe, f"{metric} of {name} >= {at_least}", timeout=120)


# ----------------------------------------------------------------------------------- tests


def test_a_task_holding_32_mib_shows_a_working_set_of_at_least_that(world: Harness) -> None:
    assert wait_usage(world, "reconciler_task_memory_working_set_bytes", "mem", 32 * MIB)
    assert usage(world, "reconciler_task_memory_limit_bytes", "mem") is None  # no limit
    assert wait_usage(world, "reconciler_task_pids", "mem", 2) == 2


def test_a_busy_loop_uses_close_to_one_core(world: Harness) -> None:
    first = wait_usage(world, "reconciler_task_cpu_seconds_total", "busy")
    t0 = time.monotonic()
    time.sleep(10)  # the window the CPU time is measured over: what is under test
    second = wait_usage(world, "reconciler_task_cpu_seconds_total", "busy", first + 0.1)
    cores = (second - first) / (time.monotonic() - t0)
    # One shell loop cannot use more than one core; the machine is shared, so the lower bound
    # only says it clearly ran.
    assert 0.2 <= cores <= 1.3, f"busy used {cores:.2f} cores"


def test_a_download_between_two_tasks_shows_bytes_on_both_sides(world: Harness) -> None:
    received = wait_usage(world, "reconciler_task_network_receive_bytes_total", "client", BLOB)
    sent = wait_usage(world, "reconciler_task_network_transmit_bytes_total", "srv", BLOB)
    assert received >= BLOB and sent >= BLOB
    assert usage(world, "reconciler_task_block_read_bytes_total", "srv") is not None


def test_a_child_killed_at_the_limit_is_counted_and_the_task_runs_on(world: Harness) -> None:
    h = world
    first = h.wait_state("oomchild", "running")
    h.wait_for(
        lambda: (sample(h, "reconciler_task_oom_kills_total", name="oomchild") or 0) >= 1,
        "the child's OOM kill counted",
        timeout=120,
    )
    assert wait_usage(h, "reconciler_task_memory_limit_bytes", "oomchild") == 16 * MIB
    now = h.current("oomchild")
    assert now is not None and now["id"] == first["id"] and now["state"] == "running"


def test_a_main_process_killed_at_the_limit_ends_the_task_out_of_memory(world: Harness) -> None:
    h = world
    ended = h.wait_state("oommain", "failed", timeout=120)
    assert ended["exitCode"] == 137
    assert "out of memory" in (ended["message"] or ""), ended
    # The counter belongs to the name, not the instance: it stays after the instance ended.
    assert (sample(h, "reconciler_task_oom_kills_total", name="oommain") or 0) >= 1
    assert sample(h, "reconciler_task_oom_kills_total", name="mem") == 0  # never killed


def test_the_figures_match_podmans_own_stats_for_the_same_container(world: Harness) -> None:
    h = world
    wait_usage(h, "reconciler_task_memory_working_set_bytes", "mem", 32 * MIB)
    container = (h.current("mem") or {})["containerId"]

    def compared() -> tuple[dict[str, float | None], dict[str, Any]] | None:
        """Our sample and podman's stats, once they agree (a sample taken at rest)."""
        theirs = podman_stats(h.service, container)
        ours = {
            "cpu": usage(h, "reconciler_task_cpu_seconds_total", "mem"),
            "memory": usage(h, "reconciler_task_memory_working_set_bytes", "mem"),
            "pids": usage(h, "reconciler_task_pids", "mem"),
        }
        agree = (
            ours["pids"] == theirs["PIDs"]
            and ours["memory"] == pytest.approx(theirs["MemUsage"], rel=0.1)
            and ours["cpu"] == pytest.approx(theirs["CPUNano"] / 1e9, rel=0.1)
        )
        return (ours, theirs) if agree else None

    # the sample that follows the start-up's, of a container now at rest, agrees with podman
    ours, theirs = h.wait_for(compared, "our figures to agree with podman stats")
    assert ours["pids"] == theirs["PIDs"]
    assert ours["memory"] == pytest.approx(theirs["MemUsage"], rel=0.1), (ours, theirs)
    assert ours["cpu"] == pytest.approx(theirs["CPUNano"] / 1e9, rel=0.1), (ours, theirs)


def test_the_node_figures_are_exported(world: Harness) -> None:
    agent: AgentProcess = world.agent
    samples = world.wait_for(
        lambda: agent.metrics() if agent.metric("reconciler_node_memory_available_bytes") else None,
        "node usage",
    )
    modes = {labels for (name, labels) in samples if name == "reconciler_node_cpu_seconds_total"}
    assert (("mode", "idle"),) in modes and (("mode", "user"),) in modes
    for fs in ("state", "images"):
        assert (samples.get(("reconciler_node_disk_free_bytes", (("fs", fs),))) or 0) > 0
    for condition in ("disk_pressure", "memory_pressure"):
        assert (("reconciler_node_condition", (("condition", condition),))) in samples
    status, body = agent.get("/v1/node")
    assert status == 200 and set(json.loads(body)["conditions"]) == {
        "diskPressure",
        "memoryPressure",
    }


# ------------------------------------------------------------------------------- podman


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self._path)
        self.sock = sock


def podman_stats(service: PodmanService, container: str) -> dict[str, Any]:
    """One call to podman's own stats API for one container (raw numbers, not the CLI's)."""
    conn = _UnixHTTPConnection(str(service.socket_path))
    try:
        conn.request("GET", f"/v4.0.0/libpod/containers/stats?containers={container}&stream=false")
        body = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    (stats,) = body["Stats"]
    return dict(stats)

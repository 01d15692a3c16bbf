"""End to end: the agent process dies, restarts, stops or collides, and its containers don't care.

PRODUCT.md promises that an agent restart changes nothing and replaces no container (the store
holds everything), that a replacement interrupted by a crash resumes and never leaves two
instances of a name running, that ``reconciler ps`` reads the store read-only whether or not
the agent runs, that a second agent on the same state dir exits 1 saying the dir is in use,
and that SIGTERM stops the agent cleanly (exit 0) while containers keep running.

The agent is a real ``reconciler run`` subprocess and is killed with real signals. Outcomes are
checked in podman itself: container ids and ``State.StartedAt`` prove that nothing was
restarted.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from tests.e2e.agent_support import FOREVER, Harness, cli, free_port, task

pytestmark = pytest.mark.e2e

PS_KEYS = {
    "name",
    "id",
    "desiredState",
    "state",
    "message",
    "error",
    "containerId",
    "exitCode",
    "updatedAt",
    "restarts",
}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
# Ignores SIGTERM, so stopping it takes the whole stopGracePeriod: a wide window to crash in.
STUBBORN = ["sh", "-c", "trap '' TERM; while :; do sleep 0.2; done"]


def started(h: Harness) -> dict[str, tuple[str, str]]:
    """name -> (container id, State.StartedAt) of this node's running containers."""
    out: dict[str, tuple[str, str]] = {}
    for c in h.containers(all_=False):
        name = c["Labels"]["reconciler.task.name"]
        assert name not in out, f"two running containers of {name}"
        info = h.inspect(c["Id"])
        assert info["State"]["Running"], info["State"]
        out[name] = (c["Id"], info["State"]["StartedAt"])
    return out


def all_running(h: Harness, names: list[str]) -> list[dict[str, Any]] | None:
    current = [v for v in h.ps(all_=False) if v["name"] in names]
    if len(current) == len(names) and all(v["state"] == "running" for v in current):
        return current
    return None


def resync_passes(h: Harness) -> float:
    return h.agent.metric("reconciler_reconcile_duration_seconds_count") or 0.0


def test_kill_9_and_restart_adopts_every_container_without_restarting_it(
    harness: Harness,
) -> None:
    h = harness
    names = [f"svc-{i}" for i in range(10)]
    h.desired.write("ten.yaml", [task(n) for n in names])
    first = h.start_agent()
    before_ps = h.wait_for(lambda: all_running(h, names), "10 tasks running")
    before = started(h)
    assert sorted(before) == names

    first.kill9()
    assert started(h) == before  # the containers did not notice

    second = h.start_agent()
    assert second.readyz()[0] == 200
    # let at least two full resync passes run over the adopted containers
    passes = resync_passes(h)
    h.wait_for(lambda: resync_passes(h) >= passes + 2, "two resync passes after the restart")
    after_ps = h.wait_for(lambda: all_running(h, names), "10 tasks running after the restart")
    assert started(h) == before
    assert {v["name"]: v["id"] for v in after_ps} == {v["name"]: v["id"] for v in before_ps}
    assert {v["name"]: v["containerId"] for v in after_ps} == {n: c for n, (c, _) in before.items()}
    assert all(v["restarts"] == 0 for v in after_ps)
    assert len(h.containers()) == 10  # nothing created besides them
    assert second.readyz()[0] == 200


def test_kill_9_mid_replacement_resumes_it_and_leaves_one_running(harness: Harness) -> None:
    h = harness
    spec: dict[str, Any] = task("swap", command=STUBBORN, stopGracePeriod="4s")
    h.desired.write("swap.yaml", [spec])
    first = h.start_agent()
    old = h.wait_state("swap", "running")

    spec["command"] = FOREVER
    h.desired.write("swap.yaml", [spec])

    def old_shutting_down() -> bool:
        v = next((v for v in h.instances("swap") if v["id"] == old["id"]), None)
        return v is not None and v["desiredState"] == "shutdown"

    h.wait_for(old_shutting_down, "the old instance's desired state to become shutdown")
    first.kill9()

    h.start_agent()

    def replaced() -> dict[str, Any] | None:
        v = h.current("swap")
        if v is None or v["id"] == old["id"] or v["state"] != "running":
            return None
        return v

    new = h.wait_for(replaced, "the replacement to complete after the restart")
    running = h.named("swap", running=True)
    assert [c["Id"] for c in running] == [new["containerId"]]
    assert h.inspect(new["containerId"])["Config"]["Cmd"] == FOREVER
    prior = next(v for v in h.instances("swap") if v["id"] == old["id"])
    assert prior["desiredState"] == "shutdown"
    assert prior["state"] in {"shutdown", "failed", "complete"}, prior
    h.assert_stop_first(old["containerId"], new["containerId"])
    # and it stays that way: exactly one instance of the name running, after more resyncs
    passes = resync_passes(h)
    h.wait_for(lambda: resync_passes(h) >= passes + 2, "two more resync passes")
    assert [c["Id"] for c in h.named("swap", running=True)] == [new["containerId"]]
    assert [v["id"] for v in h.instances("swap")] == [new["id"], old["id"]]


def test_ps_reads_the_store_with_the_agent_stopped(harness: Harness) -> None:
    h = harness
    h.desired.write(
        "t.yaml",
        [
            task("alive"),
            task("broken", command=["sh", "-c", "exit 3"], restart={"condition": "none"}),
        ],
    )
    agent = h.start_agent()
    h.wait_state("alive", "running")
    h.wait_state("broken", "failed")
    status, body = agent.get("/v1/tasks")
    assert status == 200
    assert json.loads(body) == h.ps()  # the same JSON as ps -a -o json
    assert agent.terminate() == 0

    views = h.ps()  # the agent is stopped
    assert [v["name"] for v in views] == ["alive", "broken"]
    for v in views:
        assert set(v) == PS_KEYS, v
        assert RFC3339_UTC.match(v["updatedAt"]), v
        assert isinstance(v["restarts"], int)
        assert len(v["id"]) > 0
    alive, broken = views
    assert alive["state"] == "running" and alive["desiredState"] == "running"
    assert alive["exitCode"] is None and alive["error"] is None
    assert isinstance(alive["containerId"], str)
    assert broken["state"] == "failed" and broken["exitCode"] == 3
    assert broken["error"] is not None

    table = cli("ps", "--state-dir", str(h.state_dir))
    assert table.returncode == 0, table.stderr
    assert "alive" in table.stdout and "broken" in table.stdout


def test_second_agent_on_the_state_dir_exits_1_and_sigterm_leaves_containers(
    harness: Harness,
) -> None:
    h = harness
    h.desired.write("t.yaml", [task("stay")])
    first = h.start_agent()
    v = h.wait_state("stay", "running")
    before = h.inspect(v["containerId"])["State"]["StartedAt"]

    second = h.start_agent(port=free_port(), wait_ready=False)
    assert second.wait_exit() == 1
    assert "in use" in second.log_path.read_text(), second.log_tail()
    assert first.alive() and first.readyz()[0] == 200

    assert first.terminate() == 0
    time.sleep(1.0)  # under test: a second after the stop, a wrongly stopped container shows
    info = h.inspect(v["containerId"])
    assert info["State"]["Running"] is True
    assert info["State"]["StartedAt"] == before

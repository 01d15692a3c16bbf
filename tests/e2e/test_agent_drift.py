"""End to end: the world changes behind a running agent, and the agent puts it right.

PRODUCT.md, "Out-of-band changes are corrected", together with "Exit codes decide" and
"Runtime loss" from the podman runtime issue, is the specification:

* ``podman kill`` of a managed container ends its instance ``failed`` with the kill's exit
  code, and the restart policy brings up a new one. ``podman rm -f`` ends it ``failed``,
  "container removed", and it is replaced too. Both count in
  ``reconciler_drift_corrections_total{kind}``.
* A container labelled for this node whose task id the store does not know is an orphan, and
  is removed within a resync interval. A container without labels, or labelled for another
  node, is never touched.
* A podman service that stops under a running agent makes ``/readyz`` answer 503 with a
  reason. When it is back, ``/readyz`` answers 200 again, no container was restarted, and a
  container killed after that is still noticed and replaced.

The agent is a real ``reconciler run`` subprocess; the changes are made with the podman CLI
against the private service.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from reconciler.testing.podman import PodmanService
from tests.e2e.agent_support import FOREVER, IMAGE, Harness, new_id, task

pytestmark = pytest.mark.e2e

DRIFT = "reconciler_drift_corrections_total"


def resync_passes(h: Harness) -> float:
    return h.agent.metric("reconciler_reconcile_duration_seconds_count") or 0.0


def instance(h: Harness, name: str, id: str) -> dict[str, Any] | None:
    return next((v for v in h.instances(name) if v["id"] == id), None)


def replacement_of(h: Harness, name: str, old_id: str) -> dict[str, Any] | None:
    v = h.current(name)
    return v if v is not None and v["id"] != old_id and v["state"] == "running" else None


def replacement(h: Harness, name: str, old_id: str) -> dict[str, Any]:
    return h.wait_for(
        lambda: replacement_of(h, name, old_id), f"a running replacement of {name} {old_id}"
    )


def test_kill_and_rm_behind_the_agents_back_fail_the_instance_and_restart_it(
    harness: Harness,
) -> None:
    h = harness
    h.desired.write("t.yaml", [task("victim", restart={"condition": "any", "delay": "1s"})])
    agent = h.start_agent()
    first = h.wait_state("victim", "running")
    exited_before = agent.metric(DRIFT, kind="container_exited")
    missing_before = agent.metric(DRIFT, kind="container_missing")
    assert exited_before is not None and missing_before is not None  # present from the start

    # podman kill: SIGKILL, exit code 137
    h.podman("kill", first["containerId"])

    def ended(id: str) -> dict[str, Any] | None:
        v = instance(h, "victim", id)
        return v if v is not None and v["state"] in ("failed", "complete") else None

    killed = h.wait_for(lambda: ended(first["id"]), "the killed instance to end")
    assert killed["state"] == "failed", killed
    assert killed["exitCode"] == 137, killed
    second = replacement(h, "victim", first["id"])
    assert second["restarts"] >= 1
    h.wait_for(
        lambda: (agent.metric(DRIFT, kind="container_exited") or 0) >= exited_before + 1,
        "drift_corrections_total{kind=container_exited} to grow",
    )

    # podman rm -f: "container removed"
    h.podman("rm", "--force", "--time", "0", second["containerId"])
    removed = h.wait_for(lambda: ended(second["id"]), "the removed instance to end")
    assert removed["state"] == "failed", removed
    assert "container removed" in (removed["message"] or ""), removed
    third = replacement(h, "victim", second["id"])
    assert third["id"] != first["id"]
    h.wait_for(
        lambda: (agent.metric(DRIFT, kind="container_missing") or 0) >= missing_before + 1,
        "drift_corrections_total{kind=container_missing} to grow",
    )
    assert [c["Id"] for c in h.named("victim", running=True)] == [third["containerId"]]


def test_orphans_are_removed_and_foreign_containers_never_touched(harness: Harness) -> None:
    h = harness
    h.desired.write("t.yaml", [task("owned")])
    agent = h.start_agent(resync="2s")
    owned = h.wait_state("owned", "running")
    removed_before = agent.metric(DRIFT, kind="orphan_removed") or 0.0

    suffix = new_id()
    orphan = f"orphan-{suffix}"
    unlabelled = f"unlabelled-{suffix}"
    other_node = f"othernode-{suffix}"
    stopped_orphan = f"orphan-stopped-{suffix}"
    h.foreign += [orphan, stopped_orphan, unlabelled, other_node]
    h.podman(
        "run", "-d", "--name", orphan,
        "--label", f"reconciler.node={h.node_id}",
        "--label", "reconciler.task.id=0123456789ab",
        "--label", "reconciler.task.name=ghost",
        IMAGE, *FOREVER,
    )  # fmt: skip
    h.podman(
        "create", "--name", stopped_orphan,
        "--label", f"reconciler.node={h.node_id}",
        "--label", "reconciler.task.id=fedcba987654",
        "--label", "reconciler.task.name=ghost",
        IMAGE, *FOREVER,
    )  # fmt: skip
    h.podman("run", "-d", "--name", unlabelled, IMAGE, *FOREVER)
    h.podman(
        "run", "-d", "--name", other_node,
        "--label", f"reconciler.node=other-{suffix}",
        "--label", "reconciler.task.id=ba9876543210",
        "--label", "reconciler.task.name=theirs",
        IMAGE, *FOREVER,
    )  # fmt: skip
    started = {n: h.inspect(n)["State"]["StartedAt"] for n in (unlabelled, other_node)}

    h.wait_for(lambda: not h.exists(orphan), "the running orphan to be removed")
    h.wait_for(lambda: not h.exists(stopped_orphan), "the never-started orphan to be removed")
    h.wait_for(
        lambda: (agent.metric(DRIFT, kind="orphan_removed") or 0) >= removed_before + 2,
        "drift_corrections_total{kind=orphan_removed} to grow",
    )
    passes = resync_passes(h)
    h.wait_for(lambda: resync_passes(h) >= passes + 2, "two more resync passes")
    for name, began in started.items():
        info = h.inspect(name)
        assert info["State"]["Running"] is True, (name, info["State"])
        assert info["State"]["StartedAt"] == began, name
    now = h.current("owned")
    assert now is not None and now["state"] == "running", now
    assert (now["id"], now["containerId"]) == (owned["id"], owned["containerId"])
    assert [c["Id"] for c in h.named("owned", running=True)] == [owned["containerId"]]


def test_podman_restart_under_the_agent_marks_it_unready_then_ready(
    private_podman_service: PodmanService,
) -> None:
    svc = private_podman_service
    with Harness(svc) as h:
        names = ["steady-a", "steady-b"]
        h.desired.write("t.yaml", [task(n) for n in names])
        agent = h.start_agent(resync="2s")
        views = {n: h.wait_state(n, "running") for n in names}
        started = {n: h.inspect(v["containerId"])["State"]["StartedAt"] for n, v in views.items()}

        svc.stop()

        def unready() -> tuple[int, str] | None:
            status, body = agent.readyz()
            return (status, body) if status == 503 else None

        _, reason = h.wait_for(unready, "/readyz 503 while podman is down")
        assert reason.strip(), "503 without a reason"
        h.wait_for(lambda: agent.metric("reconciler_runtime_up") == 0, "reconciler_runtime_up 0")
        # it stays unready (and alive) for as long as podman is down: readiness sampled over
        # three seconds of the outage, the time passing is what is under test
        seen = []
        for _ in range(12):
            time.sleep(0.25)
            seen.append(agent.readyz()[0])
        assert set(seen) == {503}, seen
        assert agent.alive()

        svc.start()
        h.wait_for(lambda: agent.readyz()[0] == 200, "/readyz 200 after podman is back")
        assert agent.metric("reconciler_runtime_up") == 1
        passes = resync_passes(h)
        h.wait_for(lambda: resync_passes(h) >= passes + 1, "a resync pass after podman is back")
        for n, v in views.items():
            now = h.current(n)
            assert now is not None and now["id"] == v["id"] and now["state"] == "running", now
            info = h.inspect(v["containerId"])
            assert info["State"]["Running"] is True, info["State"]
            assert info["State"]["StartedAt"] == started[n], n
        assert len(h.containers()) == len(names)

        # and it watches podman again: a kill behind its back is seen and corrected
        victim = views["steady-a"]
        h.podman("kill", victim["containerId"])
        h.wait_for(lambda: replacement_of(h, "steady-a", victim["id"]), "steady-a to be replaced")
        ended = next(v for v in h.instances("steady-a") if v["id"] == victim["id"])
        assert ended["state"] == "failed" and ended["exitCode"] == 137, ended

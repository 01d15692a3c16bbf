"""End to end: bad desired-state input never touches what runs, and a fix applies at once.

PRODUCT.md, "Bad input never touches what runs": the agent keeps running the last valid desired
set when a file has invalid YAML or a field fails validation. It sets
``reconciler_desired_state_valid 0`` and counts one ``reconciler_desired_state_errors_total``
per rejected reload. Fixing the files applies the new set. ``/readyz`` stays 200, because the
desired source has been read, valid or not.

The agent is a real ``reconciler run`` subprocess, and the files are written atomically, as an
editor or ``reconciler apply`` writes them.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.agent_support import Harness, task, taskset

pytestmark = pytest.mark.e2e

VALID = "reconciler_desired_state_valid"
ERRORS = "reconciler_desired_state_errors_total"
OTHER_FOREVER = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.3; done"]


def resync_passes(h: Harness) -> float:
    return h.agent.metric("reconciler_reconcile_duration_seconds_count") or 0.0


def test_invalid_file_keeps_tasks_running_and_a_fix_applies(harness: Harness) -> None:
    h = harness
    alpha: dict[str, Any] = task("alpha", resources={"memory": "32Mi"})
    beta: dict[str, Any] = task("beta")
    h.desired.write("tasks.yaml", [alpha, beta])
    agent = h.start_agent()
    before = {n: h.wait_state(n, "running") for n in ("alpha", "beta")}
    assert agent.metric(VALID) == 1
    assert agent.metric(ERRORS) == 0

    # one bad write: a field fails validation, and beta's command changes in the same file
    bad = taskset([{**alpha, "resources": {"memory": "lots"}}, {**beta, "command": OTHER_FOREVER}])
    h.desired.write_text("tasks.yaml", bad)
    h.wait_for(lambda: agent.metric(VALID) == 0, f"{VALID} 0")
    assert agent.metric(ERRORS) == 1
    passes = resync_passes(h)
    h.wait_for(lambda: resync_passes(h) >= passes + 2, "two resync passes")
    assert agent.readyz()[0] == 200
    assert agent.metric(ERRORS) == 1
    for name, v in before.items():
        now = h.current(name)
        assert now is not None and now["state"] == "running", now
        assert (now["id"], now["containerId"]) == (v["id"], v["containerId"])
        assert [c["Id"] for c in h.named(name, running=True)] == [v["containerId"]]

    # the fix applies: beta's command change replaces it, alpha is unchanged
    h.desired.write("tasks.yaml", [alpha, {**beta, "command": OTHER_FOREVER}])
    h.wait_for(lambda: agent.metric(VALID) == 1, f"{VALID} 1 after the fix")

    def beta_replaced() -> dict[str, Any] | None:
        v = h.current("beta")
        ok = v is not None and v["id"] != before["beta"]["id"] and v["state"] == "running"
        return v if ok else None

    new_beta = h.wait_for(beta_replaced, "beta to be replaced after the fix")
    assert h.inspect(new_beta["containerId"])["Config"]["Cmd"] == OTHER_FOREVER
    assert [c["Id"] for c in h.named("beta", running=True)] == [new_beta["containerId"]]
    now_alpha = h.current("alpha")
    assert now_alpha is not None and now_alpha["id"] == before["alpha"]["id"]
    assert agent.metric(ERRORS) == 1


def test_invalid_yaml_is_rejected_too(harness: Harness) -> None:
    h = harness
    h.desired.write("tasks.yaml", [task("solo")])
    agent = h.start_agent()
    solo = h.wait_state("solo", "running")
    h.desired.write_text("tasks.yaml", "apiVersion: reconciler/v1\ntasks: [\n  - {name: x\n")
    h.wait_for(lambda: agent.metric(VALID) == 0, f"{VALID} 0")
    assert agent.metric(ERRORS) == 1
    passes = resync_passes(h)
    h.wait_for(lambda: resync_passes(h) >= passes + 1, "a resync pass")
    now = h.current("solo")
    assert now is not None and (now["id"], now["containerId"], now["state"]) == (
        solo["id"],
        solo["containerId"],
        "running",
    )

"""End to end: a real agent fed every file of the hostile corpus, one after another.

One task runs. Each hostile file is dropped into the desired directory in turn (under a name of
its own, so each one is a new rejected reload) and removed again. While a bad file is there the
agent reports ``reconciler_desired_state_valid 0`` and counts the rejected reload, ``/healthz``
stays 200, and the running task is untouched: the same container, never restarted (podman's
``State.StartedAt`` is unchanged). A symlinked file whose target sits in a world-writable
directory is refused the same way. Afterwards a valid file that changes the desired set is
applied, so the session loop is still alive.

The agent is a real ``reconciler run`` subprocess against a private podman service.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from reconciler.testing.hostile import ACCEPTED, corpus
from tests.e2e.agent_support import Harness, task

pytestmark = pytest.mark.e2e

VALID = "reconciler_desired_state_valid"
ERRORS = "reconciler_desired_state_errors_total"


def test_hostile_files_never_touch_the_running_task(harness: Harness) -> None:
    h = harness
    alpha: dict[str, Any] = task("alpha")
    h.desired.write("tasks.yaml", [alpha])
    agent = h.start_agent()
    before = h.wait_state("alpha", "running")
    started = h.inspect(before["containerId"])["State"]["StartedAt"]
    assert agent.metric(VALID) == 1

    def untouched(what: str) -> None:
        assert agent.alive(), f"the agent died on {what}\n{agent.log_tail()}"
        assert agent.get("/healthz")[0] == 200, what
        now = h.current("alpha")
        assert now is not None and now["state"] == "running", (what, now)
        assert (now["id"], now["containerId"]) == (before["id"], before["containerId"]), what
        assert h.inspect(before["containerId"])["State"]["StartedAt"] == started, what

    def refused(what: str) -> None:
        errors = agent.metric(ERRORS) or 0.0
        h.wait_for(
            lambda: agent.metric(ERRORS) == errors + 1 and agent.metric(VALID) == 0,
            f"{what} to be rejected",
        )

    hostile = {name: data for name, data in corpus().items() if name not in ACCEPTED}
    for name, data in hostile.items():
        target = h.desired.path / f"{name}.yaml"
        tmp = h.desired.path / f".{name}.tmp"
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        refused(name)
        untouched(name)
        target.unlink()
        h.wait_for(lambda: agent.metric(VALID) == 1, f"{VALID} 1 after removing {name}")

    # a symlinked file whose target anyone could swap
    drop = h.base / "drop"
    drop.mkdir()
    os.chmod(drop, 0o777)
    (drop / "evil.yaml").write_text("apiVersion: reconciler/v1\nkind: TaskSet\ntasks: []\n")
    os.chmod(drop / "evil.yaml", 0o644)
    os.symlink(drop / "evil.yaml", h.desired.path / "evil.yaml")
    refused("a symlink into a world-writable directory")
    untouched("a symlink into a world-writable directory")
    (h.desired.path / "evil.yaml").unlink()

    # a later valid file that changes the desired set is applied
    h.desired.write("tasks.yaml", [alpha, task("beta")])
    h.wait_state("beta", "running")
    h.wait_for(lambda: agent.metric(VALID) == 1, f"{VALID} 1 after the fix")
    untouched("the valid change")
    assert agent.metric(ERRORS) == len(hostile) + 1

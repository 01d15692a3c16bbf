"""End to end: the agent as a subprocess, driven through desired-state YAML, against real podman.

Each test writes YAML into a desired dir, as a user does, and checks the outcome three ways:
``reconciler ps -o json``, the agent's HTTP endpoints, and podman itself (``podman --url`` on
the private service). PRODUCT.md ("Names and instances", "Task lifecycle", "Pulls") is the
specification.

Covered here: the full lifecycle of one name, which is create, a replacing command change
(stop-first), a resources change, shutdown and back, and removal. Also exit codes 0 and 3, an
image missing under ``pull: never``, and a failing health check.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.agent_support import FOREVER, Harness, task

pytestmark = pytest.mark.e2e

MI = 1024 * 1024
OTHER_FOREVER = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.3; done"]


def resync_passes(h: Harness) -> float:
    return h.agent.metric("reconciler_reconcile_duration_seconds_count") or 0.0


def running_instance(h: Harness, name: str, *, not_id: str | None = None) -> dict[str, Any]:
    """Wait until the current instance of ``name`` runs (and is not ``not_id``)."""

    def probe() -> dict[str, Any] | None:
        v = h.current(name)
        if v is None or v["state"] != "running" or v["id"] == not_id:
            return None
        return v

    return h.wait_for(probe, f"a running instance of {name} other than {not_id}")


def created(h: Harness) -> dict[str, Any]:
    """The instance of a new name runs in podman, named <name>.<id>, labelled."""
    first = running_instance(h, "app")
    c1 = h.inspect(first["containerId"])
    assert c1["State"]["Running"] is True
    assert c1["Name"] == f"app.{first['id']}"
    labels = c1["Config"]["Labels"]
    assert labels["reconciler.task.name"] == "app"
    assert labels["reconciler.task.id"] == first["id"]
    assert labels["reconciler.node"] == h.node_id
    assert c1["HostConfig"]["Memory"] == 32 * MI
    return first


def replaced_on_a_command_change(
    h: Harness, tasks: list[dict[str, Any]], first: dict[str, Any]
) -> dict[str, Any]:
    """A command change replaces the instance, stop-first."""
    tasks[-1]["command"] = OTHER_FOREVER
    h.desired.write("tasks.yaml", tasks)
    second = running_instance(h, "app", not_id=first["id"])
    running = h.named("app", running=True)
    assert [c["Id"] for c in running] == [second["containerId"]]
    assert h.inspect(second["containerId"])["Config"]["Cmd"] == OTHER_FOREVER
    old = next(v for v in h.instances("app") if v["id"] == first["id"])
    assert old["desiredState"] == "shutdown"
    assert old["state"] == "shutdown"
    old_container = h.inspect(first["containerId"])
    assert old_container["State"]["Running"] is False  # exited, and kept with the history
    h.assert_stop_first(first["containerId"], second["containerId"])
    return second


def resized(h: Harness, tasks: list[dict[str, Any]], second: dict[str, Any]) -> dict[str, Any]:
    """A resources change: updated in place if the runtime can and the change is verified,
    otherwise replaced, with a message saying so. Either way the current container ends up
    with the new limit in the kernel (podman 4.3's inspect keeps showing the limit a container
    was created with after a live update, so the cgroup is the judge; a replacement must show
    it in inspect too)."""
    tasks[-1]["resources"] = {"memory": "48Mi"}
    h.desired.write("tasks.yaml", tasks)

    def memory_applied() -> dict[str, Any] | None:
        v = h.current("app")
        if v is None or v["state"] != "running":
            return None
        limit = h.memory_limit(v["containerId"])
        return v if limit is not None and abs(limit - 48 * MI) < 4096 else None

    third = h.wait_for(memory_applied, "the current app container to have a 48Mi limit")
    if third["id"] != second["id"]:
        assert "replaced" in (third["message"] or ""), third
        assert h.inspect(third["containerId"])["HostConfig"]["Memory"] == 48 * MI
        h.assert_stop_first(second["containerId"], third["containerId"])
    else:
        assert third["containerId"] == second["containerId"]  # in place: same container
    running = h.named("app", running=True)
    assert [c["Id"] for c in running] == [third["containerId"]]
    return third


def shut_down(h: Harness, tasks: list[dict[str, Any]], third: dict[str, Any]) -> None:
    """desiredState shutdown: stopped, record and container kept; a spec change meanwhile
    starts nothing."""
    tasks[-1]["desiredState"] = "shutdown"
    h.desired.write("tasks.yaml", tasks)
    stopped = h.wait_state("app", "shutdown")
    assert stopped["id"] == third["id"]
    assert stopped["desiredState"] == "shutdown"
    assert h.inspect(third["containerId"])["State"]["Running"] is False
    assert h.named("app", running=True) == []

    # a spec change while shut down starts nothing; it takes effect with the next instance
    tasks[-1]["command"] = FOREVER
    h.desired.write("tasks.yaml", tasks)
    passes = resync_passes(h)
    h.wait_for(lambda: resync_passes(h) >= passes + 2, "two resync passes")
    still = h.current("app")
    assert still is not None and (still["id"], still["state"]) == (third["id"], "shutdown")
    assert h.named("app", running=True) == []


def running_again(
    h: Harness, tasks: list[dict[str, Any]], earlier: list[dict[str, Any]]
) -> dict[str, Any]:
    """Back to running: a new instance, with the command changed while it was shut down."""
    tasks[-1]["desiredState"] = "running"
    h.desired.write("tasks.yaml", tasks)
    third = earlier[-1]
    fourth = running_instance(h, "app", not_id=third["id"])
    assert fourth["id"] not in {v["id"] for v in earlier}
    assert [c["Id"] for c in h.named("app", running=True)] == [fourth["containerId"]]
    assert h.inspect(fourth["containerId"])["Config"]["Cmd"] == FOREVER
    assert h.exists(third["containerId"])  # the shut-down instance is kept in the history
    return fourth


def test_full_lifecycle_through_yaml(harness: Harness) -> None:
    h = harness
    keeper = task("keeper")
    app: dict[str, Any] = task("app", resources={"memory": "32Mi"}, restart={"condition": "any"})
    tasks = [keeper, app]
    h.desired.write("tasks.yaml", tasks)
    agent = h.start_agent()

    first = created(h)
    second = replaced_on_a_command_change(h, tasks, first)
    third = resized(h, tasks, second)
    shut_down(h, tasks, third)
    running_again(h, tasks, [first, second, third])

    # removed from the file: every instance and container of the name goes
    h.desired.write("tasks.yaml", [keeper])
    h.wait_for(lambda: not h.named("app") and not h.instances("app"), "app to be removed")
    assert h.current("keeper")["state"] == "running"  # type: ignore[index]
    assert agent.alive()


def test_exit_codes_decide_complete_and_failed(harness: Harness) -> None:
    h = harness
    once = {"condition": "none", "delay": "1s"}
    h.desired.write(
        "jobs.yaml",
        [
            task("ok", command=["sh", "-c", "exit 0"], restart=once),
            task("bad", command=["sh", "-c", "exit 3"], restart=once),
        ],
    )
    h.start_agent()
    ok = h.wait_state("ok", "complete", "failed")
    bad = h.wait_state("bad", "complete", "failed")
    assert ok["state"] == "complete" and ok["exitCode"] == 0, ok
    assert bad["state"] == "failed" and bad["exitCode"] == 3, bad
    # restart condition none: they stay ended, with no replacement (the delay is 1s; wait
    # for two 2s resync passes)
    passes = resync_passes(h)
    h.wait_for(lambda: resync_passes(h) >= passes + 2, "two resync passes")
    assert len(h.instances("ok")) == 1 and len(h.instances("bad")) == 1
    assert bad["restarts"] == 0
    container = h.inspect(bad["containerId"])
    assert container["State"]["ExitCode"] == 3


def test_missing_image_under_pull_never_is_rejected(harness: Harness) -> None:
    h = harness
    image = "localhost/reconciler-no-such-image:v9"
    h.desired.write(
        "t.yaml", [task("ghost", image=image, pull="never", restart={"condition": "none"})]
    )
    h.start_agent()
    v = h.wait_state("ghost", "rejected", "failed", "complete", "running")
    assert v["state"] == "rejected", v
    text = f"{v['message']} {v['error']}"
    assert "reconciler-no-such-image" in text, v
    assert h.named("ghost", running=True) == []


def test_failing_health_check_fails_the_instance(harness: Harness) -> None:
    h = harness
    h.desired.write(
        "t.yaml",
        [
            task(
                "sick",
                command=FOREVER,
                healthcheck={
                    "test": ["CMD-SHELL", "exit 1"],
                    "interval": "1s",
                    "timeout": "3s",
                    "retries": 2,
                },
                restart={"condition": "none"},
            )
        ],
    )
    h.start_agent()
    v = h.wait_state("sick", "failed", "complete", "rejected")
    assert v["state"] == "failed", v
    assert "health" in f"{v['message']} {v['error']}".lower(), v

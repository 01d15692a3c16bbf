"""Updates that never strand a host, end to end: the real agent, a real podman, a real registry.

* An image that cannot be pulled (the registry is stopped) leaves the old instance running and
  says why; once the registry is back the update goes through. ``pull: always`` falls back to
  the local image.
* A rollback after the new instance fails within its monitor (an exit, or failed health
  checks) runs the old spec pinned to the old container's image ID: moving the tag to the bad
  build brings nothing back. The failed spec is not tried again, and a job that completes is
  no failure.
* start-first overlaps the two instances, keeps the old one current until the new one is
  healthy, and is refused for a task with a host port.

One registry and one private podman service (whose registries.conf marks the registry
insecure) serve the whole module; each test has its own agent, state dir and node id.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.agent_support import FOREVER, AgentProcess, Harness, cli, podman_time, task
from tests.e2e.registry_support import RegistryWorld

pytestmark = pytest.mark.e2e

# Fails after a moment when the image is the bad build (its ENV BUILD=bad), else runs on.
BUILD_AWARE = [
    "sh",
    "-c",
    'if [ "$BUILD" = bad ]; then sleep 3; exit 1; fi; '
    "touch /tmp/ok; trap 'exit 0' TERM; while :; do sleep 0.2; done",
]


@pytest.fixture(scope="module")
def world() -> Iterator[RegistryWorld]:
    w = RegistryWorld().start()
    yield w
    w.close()


@pytest.fixture
def h(world: RegistryWorld) -> Iterator[Harness]:
    if not world.registry.running:
        world.registry.start()
    with Harness(world.podman) as harness:
        yield harness


def image_of(h: Harness, view: dict[str, Any]) -> str:
    """The image ID the instance's container runs."""
    return str(h.inspect(f"{view['name']}.{view['id']}")["Image"])


def rollbacks(agent: AgentProcess, name: str) -> float | None:
    return agent.metrics().get(("reconciler_task_rollbacks_total", (("name", name),)))


def others(h: Harness, name: str) -> list[dict[str, Any]]:
    return [v for v in h.instances(name)[1:]]


# --------------------------------------------------------------------------------- pulls


def test_an_image_that_cannot_be_pulled_leaves_the_old_instance_running_until_it_can(
    h: Harness, world: RegistryWorld
) -> None:
    v1, v2 = world.ref("pull-app", "v1"), world.ref("pull-app", "v2")
    world.build(v1, env="one")
    world.push(v1)
    v2_id = world.build(v2, env="two")
    world.push(v2)
    world.untag(v2)  # only the registry has it now
    h.desired.write("t.yaml", [task("web", image=v1)])
    agent = h.start_agent()
    old = h.wait_state("web", "running")

    world.registry.stop()
    h.desired.write("t.yaml", [task("web", image=v2)])

    def pull_failed() -> dict[str, Any] | None:
        return next(
            (v for v in others(h, "web") if v["error"] and "pulling image" in v["error"]), None
        )

    waiting = h.wait_for(pull_failed, "the new instance's failed pull")
    assert waiting["state"] == "preparing"
    assert v2 in waiting["error"]
    current = h.current("web")
    assert current is not None and current["id"] == old["id"] and current["state"] == "running"
    assert "not ready yet" in current["message"] and v2 in current["message"]  # says why
    assert h.inspect(f"web.{old['id']}")["State"]["Running"] is True
    assert (agent.metric("reconciler_image_pulls_total", result="failed") or 0) >= 1

    world.registry.start()

    def replaced() -> dict[str, Any] | None:
        v = h.current("web")
        return v if v and v["id"] != old["id"] and v["state"] == "running" else None

    new = h.wait_for(replaced, "the update once the registry is back", timeout=120)
    assert image_of(h, new) == v2_id
    assert h.inspect(f"web.{old['id']}")["State"]["Running"] is False
    assert len(h.named("web", running=True)) == 1
    assert agent.metric("reconciler_image_pulls_total", result="present") == 1  # v1, local
    assert agent.metric("reconciler_image_pulls_total", result="pulled") == 1  # v2


def test_pull_always_falls_back_to_the_local_image_when_the_registry_is_down(
    h: Harness, world: RegistryWorld
) -> None:
    ref = world.ref("always-app", "v1")
    local = world.build(ref, env="local")
    world.push(ref)
    world.registry.stop()
    h.desired.write("t.yaml", [task("web", image=ref, pull="always")])
    agent = h.start_agent()
    view = h.wait_state("web", "running")
    assert image_of(h, view) == local
    assert agent.metric("reconciler_image_pulls_total", result="fallback") == 1
    assert agent.metric("reconciler_image_pulls_total", result="pulled") == 0
    assert "using the local image" in agent.log_path.read_text()


# ------------------------------------------------------------------------------ rollbacks


def test_a_failed_update_rolls_back_to_the_old_image_and_is_not_retried(
    h: Harness, world: RegistryWorld
) -> None:
    v1, v2 = "localhost/rb-app:v1", "localhost/rb-app:v2"
    good = world.build(v1, env="good")
    bad = world.build(v2, env="bad")
    spec = {"command": BUILD_AWARE, "update": {"monitor": "30s"}, "restart": {"delay": "1s"}}
    h.desired.write("t.yaml", [task("web", image=v1, **spec)])
    agent = h.start_agent()
    old = h.wait_state("web", "running")
    assert image_of(h, old) == good

    h.desired.write("t.yaml", [task("web", image=v2, **spec)])

    def new_running() -> dict[str, Any] | None:
        v = h.current("web")
        return v if v and v["id"] != old["id"] and v["state"] == "running" else None

    failing = h.wait_for(new_running, "the bad build running")
    assert image_of(h, failing) == bad
    # The tag of the good build now names the bad one: a rollback by name would run it again.
    world.podman.run("tag", bad, v1)

    def rolled_back() -> dict[str, Any] | None:
        v = h.current("web")
        ok = v and v["id"] not in (old["id"], failing["id"]) and v["state"] == "running"
        return v if ok else None

    rollback = h.wait_for(rolled_back, "the rollback running", timeout=90)
    assert image_of(h, rollback) == good  # pinned by image ID, whatever the tag says
    assert rollback["message"] and "rolled back" in rollback["message"]
    labels = h.inspect(f"web.{rollback['id']}")["Config"]["Labels"]
    assert labels.get("reconciler.task.rolled-back-from")
    assert rollbacks(agent, "web") == 1
    failed = next(v for v in h.instances("web") if v["id"] == failing["id"])
    assert failed["state"] == "failed"

    # A restart of the rollback (its container killed) stays pinned too, and the failed spec
    # is never tried again.
    h.podman("kill", f"web.{rollback['id']}")

    def restarted() -> dict[str, Any] | None:
        v = h.current("web")
        ok = v and v["id"] not in (old["id"], failing["id"], rollback["id"])
        return v if ok and v["state"] == "running" else None

    again = h.wait_for(restarted, "the rollback restarted", timeout=90)
    assert image_of(h, again) == good
    runs_of_bad = [c for c in h.named("web") if c["ImageID"].startswith(bad[:12])]
    assert len(runs_of_bad) == 1
    assert rollbacks(agent, "web") == 1


def test_an_update_that_fails_its_health_checks_is_rolled_back(
    h: Harness, world: RegistryWorld
) -> None:
    v1, v2 = "localhost/hc-app:v1", "localhost/hc-app:v2"
    good = world.build(v1, env="good")
    world.build(v2, env="bad")
    spec = {
        "command": BUILD_AWARE,
        "healthcheck": {
            "test": ["CMD-SHELL", "test -e /tmp/ok"],
            "interval": "1s",
            "timeout": "2s",
            "retries": 2,
        },
        "update": {"monitor": "20s"},
        "restart": {"delay": "1s"},
    }
    # The bad build runs for 3 s without ever passing its check: unhealthy after 2 checks.
    h.desired.write("t.yaml", [task("web", image=v1, **spec)])
    agent = h.start_agent()
    old = h.wait_state("web", "running")
    h.desired.write("t.yaml", [task("web", image=v2, **spec)])

    def rolled_back() -> dict[str, Any] | None:
        v = h.current("web")
        ok = v and v["id"] != old["id"] and v["state"] == "running"
        return v if ok and v["message"] and "rolled back" in v["message"] else None

    rollback = h.wait_for(rolled_back, "the rollback after failed health checks", timeout=90)
    assert image_of(h, rollback) == good
    failed = h.instances("web")[1]
    assert failed["state"] == "failed"
    assert failed["error"] and "health check failed" in failed["error"]
    assert rollbacks(agent, "web") == 1


def test_a_job_that_completes_after_an_update_is_not_rolled_back(h: Harness) -> None:
    job = {"restart": {"condition": "none"}, "update": {"monitor": "30s"}}
    h.desired.write("t.yaml", [task("job", **job)])
    agent = h.start_agent()
    old = h.wait_state("job", "running")
    h.desired.write("t.yaml", [task("job", command=["sh", "-c", "sleep 1; exit 0"], **job)])

    def completed() -> dict[str, Any] | None:
        v = h.current("job")
        return v if v and v["id"] != old["id"] and v["state"] == "complete" else None

    done = h.wait_for(completed, "the new job completing")
    assert done["exitCode"] == 0
    assert rollbacks(agent, "job") is None
    assert len(h.instances("job")) == 2


# ----------------------------------------------------------------------------- start-first


def test_start_first_overlaps_and_keeps_the_old_instance_current_until_the_new_is_healthy(
    h: Harness,
) -> None:
    # Healthy once /tmp/ok exists: the old instance makes it itself, the new one waits for
    # the test to make it, so "not healthy yet" holds however slow the machine is.
    loop = "trap 'exit 0' TERM; while :; do sleep 0.2; done"
    check = {"test": ["CMD-SHELL", "test -e /tmp/ok"], "interval": "1s", "retries": 300}
    spec = {"update": {"order": "start-first"}, "healthcheck": check}
    h.desired.write("t.yaml", [task("web", command=["sh", "-c", f"touch /tmp/ok; {loop}"], **spec)])
    h.start_agent()
    old = h.wait_state("web", "running", timeout=90)
    h.desired.write("t.yaml", [task("web", command=["sh", "-c", loop], **spec)])

    def both_running() -> list[dict[str, Any]] | None:
        named = h.named("web", running=True)
        return named if len(named) == 2 else None

    started = h.wait_for(both_running, "the new instance started beside the old")
    current = h.current("web")
    assert current is not None and current["id"] == old["id"]  # the new one is not healthy yet
    fresh = [c for c in started if c["Labels"].get("reconciler.task.id") != old["id"]]
    assert len(fresh) == 1
    h.podman("exec", fresh[0]["Id"], "touch", "/tmp/ok")

    def replaced() -> dict[str, Any] | None:
        v = h.current("web")
        return v if v and v["id"] != old["id"] and v["state"] == "running" else None

    new = h.wait_for(replaced, "the new instance current")
    h.wait_for(lambda: len(h.named("web", running=True)) == 1, "the old instance stopped")

    def old_exited() -> dict[str, Any] | None:
        # "not running" includes podman's "stopping", before FinishedAt is set
        state: dict[str, Any] = h.inspect(f"web.{old['id']}")["State"]
        return state if state.get("Status") == "exited" else None

    old_state = h.wait_for(old_exited, "the old instance exited")
    new_state = h.inspect(f"web.{new['id']}")["State"]
    assert podman_time(new_state["StartedAt"]) < podman_time(old_state["FinishedAt"])


def test_start_first_is_refused_for_a_task_with_a_host_port(h: Harness) -> None:
    path = h.desired.write(
        "t.yaml",
        [task("web", command=FOREVER, ports=["18080:80"], update={"order": "start-first"})],
    )
    out = cli("validate", str(path))
    assert out.returncode == 2
    assert f"{path}:" in out.stderr and "update.order" in out.stderr
    assert "start-first" in out.stderr

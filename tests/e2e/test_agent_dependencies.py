"""Start-up order (``dependsOn``) end to end, on real podman with health-gated starts.

The chain is db <- api (``healthy``) <- web (``started``); db has a health check that passes
only while a file exists on the host (a bind mount), so a test can make it unhealthy. Checked:
the start order at the first deploy and after a host reboot (every container stopped, the agent
started with another boot id), a spec change of api held while db is unhealthy (the old api
keeps running), and a cycle rejected by ``reconciler validate`` at its file and line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_support import Harness, cli, podman_time, task

pytestmark = pytest.mark.e2e

BOOT_ID = "RECONCILER_TEST_BOOT_ID"


def chain(flag_dir: Path, *, api_env: str = "one") -> list[dict[str, Any]]:
    db = task(
        "db",
        mounts=[{"type": "bind", "source": str(flag_dir), "target": "/flag", "readOnly": True}],
        healthcheck={
            "test": ["CMD-SHELL", "test -e /flag/ok"],
            "interval": "1s",
            "timeout": "2s",
            "retries": 2,
        },
        restart={"delay": "1s", "maxDelay": "2s"},
    )
    api = task(
        "api",
        env={"VERSION": api_env},
        dependsOn=[{"task": "db", "condition": "healthy"}],
        restart={"delay": "1s"},
    )
    web = task("web", dependsOn=[{"task": "api", "condition": "started"}], restart={"delay": "1s"})
    return [web, api, db]  # written out of order on purpose


def started_at(h: Harness, view: dict[str, Any]) -> float:
    return podman_time(h.inspect(f"{view['name']}.{view['id']}")["State"]["StartedAt"])


def all_running(h: Harness, *names: str) -> dict[str, dict[str, Any]] | None:
    views = {n: h.current(n) for n in names}
    if all(v is not None and v["state"] == "running" for v in views.values()):
        return {n: v for n, v in views.items() if v is not None}
    return None


def assert_started_in_order(h: Harness, views: dict[str, dict[str, Any]]) -> None:
    db, api, web = (started_at(h, views[n]) for n in ("db", "api", "web"))
    assert db < api < web, f"db {db}, api {api}, web {web}"


@pytest.fixture
def flag(harness: Harness) -> Path:
    path = harness.base / "flag"
    path.mkdir(mode=0o755)
    (path / "ok").touch()
    return path


def test_the_chain_starts_in_order_at_first_and_after_a_host_reboot(
    harness: Harness, flag: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    monkeypatch.setenv(BOOT_ID, "boot-one")
    h.desired.write("t.yaml", chain(flag))
    agent = h.start_agent()
    first = h.wait_for(lambda: all_running(h, "db", "api", "web"), "the chain running")
    assert_started_in_order(h, first)

    # A reboot: the agent goes, every container stops, the agent comes back on a new boot id.
    assert agent.terminate() == 0
    h.podman("stop", "--time", "2", *h.container_ids(all_=False))
    monkeypatch.setenv(BOOT_ID, "boot-two")
    h.start_agent()

    def restarted() -> dict[str, dict[str, Any]] | None:
        views = all_running(h, "db", "api", "web")
        if views and all(views[n]["id"] != first[n]["id"] for n in views):
            return views
        return None

    again = h.wait_for(restarted, "the chain restarted after the reboot", timeout=90)
    assert_started_in_order(h, again)
    history = {v["id"]: v for v in h.ps()}
    for name in ("db", "api", "web"):
        assert history[first[name]["id"]]["message"] == "host rebooted"


def test_a_spec_change_waits_for_an_unhealthy_dependency_with_the_old_instance_running(
    harness: Harness, flag: Path
) -> None:
    h = harness
    h.desired.write("t.yaml", chain(flag))
    h.start_agent()
    views = h.wait_for(lambda: all_running(h, "db", "api", "web"), "the chain running")
    old_api = views["api"]["id"]

    (flag / "ok").unlink()  # db fails its checks from now on

    def db_down() -> bool:
        v = h.current("db")
        return v is not None and v["state"] != "running"

    h.wait_for(db_down, "db unhealthy")
    h.desired.write("t.yaml", chain(flag, api_env="two"))

    def held() -> dict[str, Any] | None:
        v = h.current("api")
        ok = (
            v and v["id"] == old_api and v["message"] and "waiting for db (healthy)" in v["message"]
        )
        return v if ok else None

    h.wait_for(held, "the api replacement held for db")
    # Several more health-check rounds of db: the old api keeps running, no new one starts.
    h.wait_for(lambda: len(h.named("db")) >= 3, "db restarted and failing again", timeout=90)
    current = h.current("api")
    assert current is not None and current["id"] == old_api and current["state"] == "running"
    assert h.inspect(f"api.{old_api}")["State"]["Running"] is True
    assert len(h.named("api")) == 1

    (flag / "ok").touch()

    def replaced() -> dict[str, Any] | None:
        v = h.current("api")
        return v if v and v["id"] != old_api and v["state"] == "running" else None

    new = h.wait_for(replaced, "the api replaced once db is healthy", timeout=90)
    env = h.inspect(f"api.{new['id']}")["Config"]["Env"]
    assert "VERSION=two" in env
    assert h.inspect(f"api.{old_api}")["State"]["Running"] is False


def test_a_dependency_cycle_is_rejected_at_its_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "cycle.yaml"
    path.write_text(
        "apiVersion: reconciler/v1\n"
        "kind: TaskSet\n"
        "tasks:\n"
        "  - name: a\n"
        "    image: localhost/busybox:latest\n"
        "    dependsOn: [{task: b}]\n"
        "  - name: b\n"
        "    image: localhost/busybox:latest\n"
        "    dependsOn:\n"
        "      - {task: a, condition: healthy}\n"
    )
    os.chmod(path, 0o644)
    out = cli("validate", str(path))
    assert out.returncode == 2, out
    lines = [line for line in out.stderr.splitlines() if "cycle" in line]
    assert lines, out.stderr
    assert all(re.match(rf"{re.escape(str(path))}:\d+: tasks\[\d\]\.dependsOn", ln) for ln in lines)
    assert any(re.match(rf"{re.escape(str(path))}:(6|10):", ln) for ln in lines), lines

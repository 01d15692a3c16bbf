"""A kill -9 of the agent in the middle of an update resumes it with one running instance.

The agent talks to podman through a ``FaultProxy`` that holds back one chosen request: the stop
of the old container (the agent dies after the new instance was prepared, before the old one
was stopped) or the start of the new container (after the old one stopped, before the new one
started). The held request never reaches podman, the agent is killed with SIGKILL while it
waits for the answer, and a new agent on the same state dir, straight on podman's socket,
must finish the update: the new instance running, the old one stopped, never both.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.testing.faultproxy import FaultProxy
from reconciler.testing.podman import PodmanService
from tests.e2e.agent_support import Harness, task

pytestmark = pytest.mark.e2e

V2 = ["sh", "-c", "echo v2; trap 'exit 0' TERM; while :; do sleep 0.2; done"]


@pytest.fixture
def proxy(podman_service: PodmanService) -> Iterator[FaultProxy]:
    base = Path(tempfile.mkdtemp(prefix="rcu-", dir="/tmp"))
    try:
        with FaultProxy(podman_service.socket_path, base / "p.sock") as p:
            yield p
    finally:
        shutil.rmtree(base, ignore_errors=True)


def running_web(h: Harness) -> list[dict[str, Any]]:
    return h.named("web", running=True)


def finish_after_the_crash(h: Harness, old: str) -> None:
    """A new agent on podman's own socket finishes the update: exactly one instance runs."""
    h.start_agent()

    def replaced() -> dict[str, Any] | None:
        v = h.current("web")
        return v if v and v["id"] != old and v["state"] == "running" else None

    new = h.wait_for(replaced, "the update resumed")
    h.wait_for(lambda: len(running_web(h)) == 1, "one running instance")
    (running,) = running_web(h)
    assert running["Labels"]["reconciler.task.id"] == new["id"]
    assert h.inspect(f"web.{old}")["State"]["Running"] is False
    assert "echo v2" in " ".join(h.inspect(f"web.{new['id']}")["Config"]["Cmd"])
    assert len(h.named("web")) == 2  # no third container: the prepared one was used


def test_a_kill_between_prepare_and_stop_resumes_with_one_running_instance(
    harness: Harness, proxy: FaultProxy
) -> None:
    h = harness
    h.desired.write("t.yaml", [task("web")])
    agent = h.start_agent(podman_url=proxy.url)
    old = h.wait_state("web", "running")["id"]
    proxy.hold(rf"^POST .*/containers/web\.{old}/stop$")
    h.desired.write("t.yaml", [task("web", command=V2)])
    h.wait_for(lambda: proxy.held, "the old instance's stop")
    agent.kill9()
    proxy.release()

    # The new instance was prepared, the old one still runs: podman never got the stop.
    assert len(running_web(h)) == 1
    assert h.inspect(f"web.{old}")["State"]["Running"] is True
    (new,) = [c for c in h.named("web") if c["Labels"]["reconciler.task.id"] != old]
    assert new["State"] == "created"
    finish_after_the_crash(h, old)


def test_a_kill_between_stop_and_start_resumes_with_one_running_instance(
    harness: Harness, proxy: FaultProxy
) -> None:
    h = harness
    h.desired.write("t.yaml", [task("web")])
    agent = h.start_agent(podman_url=proxy.url)
    old = h.wait_state("web", "running")["id"]
    proxy.hold(rf"^POST .*/containers/web\.(?!{old})[0-9a-f]+/start$")
    h.desired.write("t.yaml", [task("web", command=V2)])
    h.wait_for(lambda: proxy.held, "the new instance's start")
    agent.kill9()
    proxy.release()

    # The old instance stopped, the new one was never started: nothing runs.
    assert running_web(h) == []
    assert h.inspect(f"web.{old}")["State"]["Running"] is False
    finish_after_the_crash(h, old)

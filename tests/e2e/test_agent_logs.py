"""End to end: ``reconciler logs NAME|ID`` prints the container's output from real podman."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.agent_support import REPO, Harness, agent_env, cli, task

pytestmark = pytest.mark.e2e


def test_logs_by_name_and_id_with_tail(harness: Harness) -> None:
    h = harness
    script = "for i in 1 2 3; do echo line-$i; done; trap 'exit 0' TERM; while :; do sleep 1; done"
    h.desired.write("t.yaml", [task("talker", command=["sh", "-c", script])])
    h.start_agent()
    view = h.wait_state("talker", "running")
    common = ["--state-dir", str(h.state_dir), "--podman-url", h.service.url]

    def printed(*args: str) -> str:
        out = cli("logs", *args, *common)
        assert out.returncode == 0, out.stderr
        return out.stdout

    h.wait_for(lambda: "line-3" in printed("talker") or None, "talker's output")
    assert printed("talker").split() == ["line-1", "line-2", "line-3"]
    assert printed(view["id"], "--tail", "1").split() == ["line-3"]

    missing = cli("logs", "nobody", *common)
    assert missing.returncode == 1
    assert "nobody" in missing.stderr


def test_logs_follow_prints_what_the_container_writes_after_it_began(harness: Harness) -> None:
    h = harness
    script = (
        "echo before; until [ -e /tmp/go ]; do sleep 0.1; done; echo after; "
        "trap 'exit 0' TERM; while :; do sleep 1; done"
    )
    h.desired.write("t.yaml", [task("follower", command=["sh", "-c", script])])
    h.start_agent()
    view = h.wait_state("follower", "running")
    out_path = h.base / "follow.out"
    with out_path.open("wb") as out:
        follow = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "logs", "--follow", "follower",
             "--state-dir", str(h.state_dir), "--podman-url", h.service.url],
            stdout=out, stderr=subprocess.STDOUT, env=agent_env(), cwd=REPO,
        )  # fmt: skip
    try:
        h.wait_for(lambda: b"before" in out_path.read_bytes() or None, "the log so far")
        h.podman("exec", f"follower.{view['id']}", "touch", "/tmp/go")
        h.wait_for(lambda: b"after" in out_path.read_bytes() or None, "the line written later")
        assert follow.poll() is None  # still following the running container
        assert out_path.read_bytes().split() == [b"before", b"after"]
    finally:
        follow.terminate()
        follow.wait(timeout=30)

"""End to end: ``reconciler logs NAME|ID`` prints the container's output from real podman."""

from __future__ import annotations

import pytest

from tests.e2e.agent_support import Harness, cli, task

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

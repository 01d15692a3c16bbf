"""End to end: with no podman socket answering, ``reconciler run`` starts its own service.

PRODUCT.md: the default podman URL is ``$CONTAINER_HOST``, then the rootful socket, then the
rootless one, then a socket under the state dir; if none answers, the agent starts
``podman system service`` there, passing its environment on, and stops it on exit, while the
containers keep running.

The test points podman's storage (``CONTAINERS_STORAGE_CONF``) and tmp dir (``CONTAINERS_CONF``)
at a private directory, so the service the agent starts never touches the host's containers,
and gives the agent an empty ``XDG_RUNTIME_DIR`` so no rootless socket answers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.testing.podman import TEST_IMAGE_CHANGES, TEST_IMAGE_TARBALL, _unmount_under
from reconciler.testing.polling import wait_until
from reconciler.testing.ports import free_port
from runtime.podman.discovery import ROOTFUL_SOCKET, answers
from tests.contract import missing
from tests.e2e.agent_support import CONTAINERS_CONF, IMAGE, REPO, taskset
from tests.e2e.conftest import ensure_tarball, require_podman

pytestmark = pytest.mark.e2e


@pytest.fixture
def world() -> Iterator[tuple[Path, dict[str, str]]]:
    require_podman()
    ensure_tarball()
    if answers(f"unix://{ROOTFUL_SOCKET}"):
        missing(f"the host's rootful socket {ROOTFUL_SOCKET} answers, so the agent would use it")
    base = Path(tempfile.mkdtemp(prefix="rco-", dir="/tmp"))
    os.chmod(base, 0o755)
    (base / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{base}/root"\nrunroot = "{base}/run"\n'
    )
    conf = CONTAINERS_CONF.read_text().replace("[engine]", f'[engine]\ntmp_dir = "{base}/tmp"')
    (base / "containers.conf").write_text(conf)
    (base / "xdg").mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k != "CONTAINER_HOST"}
    env.update(
        CONTAINERS_STORAGE_CONF=str(base / "storage.conf"),
        CONTAINERS_CONF=str(base / "containers.conf"),
        XDG_RUNTIME_DIR=str(base / "xdg"),
        PYTHONUNBUFFERED="1",
    )
    changes = [arg for c in TEST_IMAGE_CHANGES for arg in ("--change", c)]
    subprocess.run(
        ["podman", "import", "--quiet", *changes, str(TEST_IMAGE_TARBALL), IMAGE],
        env=env,
        check=True,
        capture_output=True,
    )
    try:
        yield base, env
    finally:
        subprocess.run(["podman", "rm", "-af", "-t", "0"], env=env, capture_output=True)
        _unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)


def test_agent_starts_its_own_podman_service_and_stops_it_on_exit(world) -> None:
    base, env = world
    desired = base / "desired"
    desired.mkdir(mode=0o755)
    (desired / "t.yaml").write_text(
        taskset([{"name": "solo", "image": IMAGE, "command": ["sleep", "100000"]}])
    )
    os.chmod(desired / "t.yaml", 0o644)
    state = base / "state"
    port = free_port()
    log = base / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "run", "--desired", str(desired),
             "--state-dir", str(state), "--listen", f"127.0.0.1:{port}", "--node-id", "own"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )  # fmt: skip
    try:

        def running() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/tasks", timeout=5) as r:
                return any(t["state"] == "running" for t in json.loads(r.read()))

        wait_until(running, "the task running on the agent's own podman service",
                   every=0.25, context=lambda: log.read_text())  # fmt: skip
        own = state / "podman" / "podman.sock"
        assert answers(f"unix://{own}")
        assert "started podman service" in log.read_text()

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0
        assert not answers(f"unix://{own}")  # the agent stopped the service it started
        ps = subprocess.run(
            ["podman", "ps", "--format", "{{.Names}}"], env=env, capture_output=True, text=True
        )
        assert ps.stdout.strip().startswith("solo.")  # the container outlives both
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

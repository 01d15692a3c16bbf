"""End to end: README.md's "A fleet on one machine" block runs as written and its web service
runs.

The test takes the ```sh block under that paragraph out of README.md and runs it with bash, in a
shell environment like a user's after ``scripts/setup``: no ``CONTAINERS_CONF``, no
``CONTAINER_HOST``. Only what cannot be shared with other tests or a user is rewritten, each by
a function that fails when its target text is gone (so a README change shows up here):

* the NATS port 4222 becomes a free port (``nats-server`` gets ``-p`` for it, the block relies
  on the default);
* the agents' ``--listen`` ports ``947$n`` become two free ports;
* ``/tmp/`` becomes this test's own directory;
* ``.venv/bin/`` becomes the repository's ``.venv/bin/`` (bash runs in the test's directory, so
  the block's ``web.yaml`` lands there).

``sleep 10`` stays. The manager keeps its default ``--listen`` (127.0.0.1:9470), which the
block does not name; the test fails early when something else listens there.

The agents find no podman socket and start their own ``podman system service`` on the host's
default storage, as a user's would; that only runs tasks on hosts whose cgroups are not
v2-only when the host's containers.conf is ``deploy/containers.conf`` (``scripts/setup``
installs it), which the test checks first. The outcome is read the way the block's last line
does: ``reconciler manager ps -o json`` until web-1..web-4 run, over edge-1 and edge-2.

Bash runs in a session of its own; teardown SIGTERMs that process group (the agents stop their
podman services), SIGKILLs what is left, kills any process still naming the test's directory
(an agent's podman service runs in a session of its own), and removes the containers the
agents made (``podman rm -f``, on the default storage their services used).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.testing.polling import eventually, wait_until
from reconciler.testing.ports import free_port
from tests.contract import missing, require_nats_server
from tests.e2e.conftest import require_podman

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
INTRO = "A fleet on one machine (after `scripts/setup`)"
VENV_BIN = REPO / ".venv" / "bin"
IMAGE = "localhost/busybox:latest"
NODES = ("edge-1", "edge-2")
TASKS = ("web-1", "web-2", "web-3", "web-4")
MANAGER_LISTEN = ("127.0.0.1", 9470)  # `manager run`'s default; the block does not set it
DEADLINE = 180.0  # generous: a loaded 2-core machine, two agents and their podman services


# ------------------------------------------------------------------------- the block


def readme_block(text: str) -> str:
    """The ```sh block that follows the paragraph starting with ``INTRO``."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(INTRO)), None)
    if start is None:
        pytest.fail(f"README.md has no paragraph starting with {INTRO!r}: update this test")
    fence = None
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("#"):
            break
        if lines[i].strip() == "```sh":
            fence = i
            break
    if fence is None:
        pytest.fail(f"README.md has no ```sh block after {INTRO!r} (before the next heading)")
    end = next((i for i in range(fence + 1, len(lines)) if lines[i].strip() == "```"), None)
    if end is None:
        pytest.fail(f"README.md's ```sh block after {INTRO!r} is not closed")
    return "\n".join(lines[fence + 1 : end]) + "\n"


def replace(script: str, old: str, new: str, why: str) -> str:
    if old not in script:
        pytest.fail(f"README fleet block: {old!r} is gone ({why}); update this test")
    return script.replace(old, new)


def nats_port(script: str, port: int) -> str:
    """4222, the block's NATS port (the URLs name it; nats-server listens there by default)."""
    script = replace(script, "nats://127.0.0.1:4222", f"nats://127.0.0.1:{port}", "NATS URL")
    return replace(script, "nats-server -js", f"nats-server -p {port} -js", "nats-server's port")


def agent_ports(script: str, ports: tuple[int, int]) -> str:
    """``947$n``, the agents' ``--listen`` ports (n is 1 or 2)."""
    a, b = ports
    return replace(script, "947$n", f"$((n == 1 ? {a} : {b}))", "the agents' --listen ports")


def tmp_paths(script: str, base: Path) -> str:
    return replace(script, "/tmp/", f"{base}/", "the block's /tmp paths")


def venv_path(script: str) -> str:
    return replace(script, ".venv/bin/", f"{VENV_BIN}/", "the block's .venv/bin/reconciler")


# ------------------------------------------------------------------------- the host


def user_env() -> dict[str, str]:
    """A user's shell after scripts/setup: no CONTAINERS_CONF, no CONTAINER_HOST."""
    env = {k: v for k, v in os.environ.items() if k not in ("CONTAINERS_CONF", "CONTAINER_HOST")}
    nats = require_nats_server()
    path = env.get("PATH", "").split(os.pathsep)
    if shutil.which("nats-server", path=env.get("PATH")) is None:
        env["PATH"] = os.pathsep.join([*path, str(Path(nats).parent)])
    return env


def host_containers_confs() -> list[Path]:
    """Where a containers.conf of this host's (as podman, and scripts/setup, see it) lives."""
    confs = [Path("/etc/containers/containers.conf")]
    confs += sorted(Path("/etc/containers/containers.conf.d").glob("*.conf"))
    if os.getuid() != 0:
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        confs.append(Path(xdg) / "containers" / "containers.conf")
    return confs


def require_containers_conf() -> None:
    """Podman's defaults fail on hosts whose cgroups are not v2-only; scripts/setup installs
    deploy/containers.conf there. Without any containers.conf the block's tasks all fail."""
    kind = subprocess.run(
        ["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if kind == "cgroup2fs":
        return
    confs = host_containers_confs()
    if any(c.is_file() for c in confs):
        return
    pytest.fail(
        f"cgroups here are not v2-only ({kind}) and there is no containers.conf "
        f"({', '.join(map(str, confs))}): podman's defaults fail on such a host "
        "('error setting rlimit type 7'), and so would every task of the README's fleet. "
        "Run scripts/setup, which installs deploy/containers.conf as the host's containers.conf."
    )


def podman(*args: str, env: dict[str, str], check: bool = True) -> str:
    """The podman CLI on the host's default storage, which the agents' own services use."""
    out = subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {out.returncode}: {out.stderr}")
    return out.stdout


def fleet_containers(env: dict[str, str]) -> list[dict[str, Any]]:
    """Containers on the default storage of the block's nodes and service (web-N.<id>)."""
    found: list[dict[str, Any]] = []
    for node in NODES:
        out = podman(
            "ps", "--all", "--format", "json", "--filter", f"label=reconciler.node={node}", env=env
        ).strip()
        for c in json.loads(out) if out else []:
            if any(n.startswith("web-") for n in c.get("Names") or []):
                found.append(c)
    return found


def listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def require_host(env: dict[str, str]) -> None:
    require_podman()
    if not (VENV_BIN / "reconciler").is_file():
        missing(f"{VENV_BIN}/reconciler is missing (run scripts/setup)")
    require_containers_conf()
    if subprocess.run(["podman", "image", "exists", IMAGE], env=env).returncode != 0:
        missing(f"{IMAGE} is not in podman's default storage (run scripts/build-test-image)")
    host, port = MANAGER_LISTEN
    if listening(host, port):
        pytest.fail(f"{host}:{port}, the manager's default --listen in the block, is taken")
    leftovers = fleet_containers(env)
    if leftovers:
        names = " ".join(n for c in leftovers for n in c.get("Names") or [])
        pytest.fail(
            f"containers of edge-1/edge-2 from an earlier run are on the host: {names} "
            f"(the block's agents would take them over); remove them: podman rm -f {names}"
        )


# ----------------------------------------------------------------------------- a run


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
    return pids


def naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (this test's directory)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError, ValueError):
            if text.encode() in cmdline.read_bytes() and int(cmdline.parent.name) != os.getpid():
                pids.append(int(cmdline.parent.name))
    return pids


def tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path}: missing)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class BlockRun:
    """The block running under bash, in its own session, with its output in ``log``."""

    base: Path
    env: dict[str, str]
    nats_url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    script: str = ""

    @property
    def log(self) -> Path:
        return self.base / "block.log"

    def start(self, script: str) -> None:
        self.script = script
        (self.base / "block.sh").write_text(script)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["bash", str(self.base / "block.sh")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.base,
                start_new_session=True,
            )

    def diagnostics(self) -> str:
        parts = [f"the block as run:\n{self.script}", f"its output (tail):\n{tail(self.log)}"]
        for node in NODES:
            service_log = self.base / node / "podman" / "service.log"
            if service_log.exists() and service_log.stat().st_size:
                parts.append(f"{node}'s podman service log (tail):\n{tail(service_log, 20)}")
        return "\n\n".join(parts)

    def stop(self) -> None:
        """End everything the block started and remove the containers its agents made."""
        if self.proc is not None:
            pgid = self.proc.pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)  # the agents stop their podman services
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not group_members(pgid), "the block's processes to exit")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        for pid in naming(str(self.base)):  # a podman service an agent could not stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        ids = [c["Id"] for c in fleet_containers(self.env)]
        if ids:
            podman("rm", "--force", "--ignore", "--time", "0", *ids, env=self.env)


@pytest.fixture
def block_run() -> Iterator[BlockRun]:
    env = user_env()
    require_host(env)
    base = Path(tempfile.mkdtemp(prefix="rcm-", dir="/tmp"))
    run = BlockRun(base, env)
    try:
        yield run
    finally:
        run.stop()
        left = fleet_containers(env)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"containers left behind: {left}"
        assert not naming(str(base)), "processes of the block left running"


# ------------------------------------------------------------------------------ test


def manager_ps(run: BlockRun) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(VENV_BIN / "reconciler"), "manager", "ps", "-o", "json", "--nats", run.nats_url],
        capture_output=True,
        text=True,
        env=run.env,
        cwd=run.base,
        timeout=60,
    )
    assert out.returncode == 0, f"manager ps exited {out.returncode}: {out.stderr}"
    rows = json.loads(out.stdout)
    assert isinstance(rows, list)
    return rows


def web_running_over_both_nodes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    web = [r for r in rows if r["service"] == "web"]
    summary = [(r["task"], r["node"], r["state"], r["error"] or r["message"]) for r in web]
    running = {r["task"]: r["node"] for r in web if r["state"] == "running"}
    assert sorted(running) == sorted(TASKS), f"not all running: {summary}"
    assert set(running.values()) == set(NODES), f"not over {NODES}: {summary}"
    return web


async def test_readme_fleet_block_runs_web_over_two_agents(block_run: BlockRun) -> None:
    port = free_port()
    agents = (free_port(), free_port())
    block_run.nats_url = f"nats://127.0.0.1:{port}"
    script = readme_block(README.read_text())
    script = nats_port(script, port)
    script = agent_ports(script, agents)
    script = tmp_paths(script, block_run.base)
    script = venv_path(script)
    block_run.start(script)
    proc = block_run.proc
    assert proc is not None

    await eventually(
        lambda: proc.poll() is not None,
        "the block to finish (apply and ps)",
        within=DEADLINE,
        every=0.25,
        context=block_run.diagnostics,
    )
    assert proc.returncode == 0, f"the block exited {proc.returncode}\n{block_run.diagnostics()}"

    def last_ps() -> str:
        with contextlib.suppress(Exception):
            return "manager ps:\n" + json.dumps(manager_ps(block_run), indent=1)
        return ""

    await eventually(
        lambda: asyncio.to_thread(lambda: web_running_over_both_nodes(manager_ps(block_run))),
        "web-1..web-4 running over edge-1 and edge-2 (manager ps)",
        within=DEADLINE,
        every=0.5,
        context=lambda: block_run.diagnostics() + "\n\n" + last_ps(),
    )

    # Podman itself, on the default storage the agents' services use (and teardown cleans).
    running = [c for c in fleet_containers(block_run.env) if c["State"] == "running"]
    placed = sorted((c["Names"][0].split(".")[0], c["Labels"]["reconciler.node"]) for c in running)
    assert [task for task, _ in placed] == list(TASKS), placed
    assert {node for _, node in placed} == set(NODES), placed

"""Helpers for agent-level end-to-end tests: the real ``reconciler run`` as a subprocess.

These tests treat the agent as a user does. It runs as its own process
(``python -m reconciler.cli run``) against a private podman service. The tests write
desired-state YAML into a directory, read ``reconciler ps -o json``, scrape the HTTP endpoints
with urllib, and ask podman itself (``podman --url``) what is really running. Nothing in here
imports the agent's internals, so a test can only pass when the product behaves as PRODUCT.md
says.

What this module owns:

* :class:`Harness`: one test's world. It owns a short ``/tmp/rca-*`` directory holding the
  state dir and the desired dir, a node id of its own (tests share one podman service, and the
  ``reconciler.node`` label keeps them apart), the agent processes it started, and cleanup. On
  exit it SIGKILLs any agent still running and removes every container labelled with its node.
* :class:`AgentProcess`: one ``reconciler run`` subprocess. Its stderr goes to a log file,
  whose tail is added to failure messages.
* :func:`wait_for`: polling with a generous deadline. The tests assert outcomes, never
  timings.
* Small readers: Prometheus samples from ``/metrics``, ``podman inspect`` and ``podman ps``
  results as JSON.

Paths stay short, because unix socket paths must fit in 108 bytes. The desired dir and its
files are 0755 and 0644, because the agent refuses anything writable by group or others.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from prometheus_client.parser import text_string_to_metric_families

from reconciler.testing.podman import PodmanService
from reconciler.testing.polling import DEADLINE, Fatal, wait_until
from reconciler.testing.ports import free_port

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "deploy" / "containers.conf"
IMAGE = "localhost/busybox:latest"
# Runs until stopped and exits 0 at once on SIGTERM, so graceful stops are quick.
FOREVER = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]

T = TypeVar("T")


def new_id() -> str:
    return uuid.uuid4().hex[:10]


def podman_time(text: str) -> float:
    """A podman inspect timestamp (RFC 3339, nanoseconds) as seconds since the epoch."""
    m = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    assert m is not None, f"not an RFC 3339 time: {text!r}"
    base = dt.datetime.fromisoformat(m.group(1) + m.group(3).replace("Z", "+00:00"))
    return base.timestamp() + float("0." + (m.group(2) or "0"))


# ----------------------------------------------------------------------------- HTTP


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``url``: (status, body), for error statuses too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text into {(sample name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


# --------------------------------------------------------------------------- desired


def task(name: str, *, command: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    """A desired task: the busybox image, by default a command that runs until stopped."""
    out: dict[str, Any] = {"name": name, "image": IMAGE, "command": command or FOREVER}
    out.setdefault("stopGracePeriod", "5s")
    out.update(fields)
    return out


def taskset(tasks: Iterable[Mapping[str, Any]]) -> str:
    return yaml.safe_dump(
        {"apiVersion": "reconciler/v1", "kind": "TaskSet", "tasks": [dict(t) for t in tasks]},
        sort_keys=False,
    )


class DesiredDir:
    """The desired-state directory, written the way an editor or ``apply`` would: atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(mode=0o755, exist_ok=True)
        os.chmod(path, 0o755)

    def write_text(self, filename: str, text: str) -> Path:
        target = self.path / filename
        tmp = self.path / f".{filename}.{new_id()}.tmp"  # dotfiles are ignored by the agent
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        return target

    def write(self, filename: str, tasks: Iterable[Mapping[str, Any]]) -> Path:
        return self.write_text(filename, taskset(tasks))

    def remove(self, filename: str) -> None:
        (self.path / filename).unlink()


# ----------------------------------------------------------------------------- agent


def agent_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    env.pop("CONTAINER_HOST", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``reconciler ARGS`` (not the agent) to completion."""
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *args],
        capture_output=True,
        text=True,
        env=agent_env(),
        cwd=REPO,
        timeout=timeout,
    )


class AgentProcess:
    """One ``reconciler run`` subprocess."""

    def __init__(self, argv: list[str], *, log_path: Path, listen: str) -> None:
        self.argv = argv
        self.log_path = log_path
        self.base_url = f"http://{listen}"
        with open(log_path, "ab") as log:
            log.write(f"\n=== {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=agent_env(),
                cwd=REPO,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "agent log tail:\n" + "\n".join(text.splitlines()[-lines:])

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.base_url + path)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = self.get("/metrics")
        assert status == 200, (status, body)
        return parse_metrics(body)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, tuple(sorted(labels.items()))))

    def readyz(self) -> tuple[int, str]:
        return self.get("/readyz")

    def wait_ready(self, timeout: float = DEADLINE) -> None:
        def ready() -> bool:
            if not self.alive():
                raise Fatal(f"agent exited with {self.proc.returncode}\n{self.log_tail()}")
            return self.readyz()[0] == 200

        wait_until(ready, "/readyz 200", within=timeout, every=0.25, context=self.log_tail)

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait: the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait_exit(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)


class Harness:
    """One test's agent world: a state dir, a desired dir, a node id, agents, and cleanup."""

    def __init__(self, service: PodmanService) -> None:
        self.service = service
        self.base = Path(tempfile.mkdtemp(prefix="rca-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        self.state_dir = self.base / "state"
        self.desired = DesiredDir(self.base / "desired")
        self.node_id = f"node-{new_id()}"
        self.port = free_port()
        self.agents: list[AgentProcess] = []
        self.foreign: list[str] = []  # containers a test made itself, removed on close

    # ---------------------------------------------------------------------- lifecycle

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.kill9()
        if self.service.running:
            with contextlib.suppress(Exception):
                ids = self.container_ids(all_=True) + self.foreign
                if ids:
                    self.service.run("rm", "--force", "--ignore", "--time", "0", *ids, check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    def start_agent(
        self,
        *extra: str,
        resync: str = "2s",
        wait_ready: bool = True,
        port: int | None = None,
        podman_url: str | None = None,
    ) -> AgentProcess:
        """Start ``reconciler run`` on this harness's dirs and node id (and wait for /readyz)."""
        listen = f"127.0.0.1:{port or self.port}"
        argv = [
            sys.executable,
            "-m",
            "reconciler.cli",
            "run",
            "--desired",
            str(self.desired.path),
            "--state-dir",
            str(self.state_dir),
            "--podman-url",
            podman_url or self.service.url,
            "--listen",
            listen,
            "--node-id",
            self.node_id,
            "--resync-interval",
            resync,
            *extra,
        ]
        log_path = self.base / f"agent-{len(self.agents)}.log"
        agent = AgentProcess(argv, log_path=log_path, listen=listen)
        self.agents.append(agent)
        if wait_ready:
            agent.wait_ready()
        return agent

    @property
    def agent(self) -> AgentProcess:
        return self.agents[-1]

    def log_tail(self) -> str:
        return self.agent.log_tail() if self.agents else ""

    def wait_for(
        self,
        probe: Callable[[], T | None],
        what: str,
        *,
        timeout: float = DEADLINE,
        interval: float = 0.25,
    ) -> T:
        """``wait_until`` with this harness's diagnostics (the agent's log, ``ps``, podman's
        containers) in the failure; ``interval`` is longer than the default: probes here run
        ``reconciler ps`` or ask podman."""
        return wait_until(probe, what, within=timeout, every=interval, context=self.diagnostics)

    def diagnostics(self) -> str:
        parts = [self.log_tail()]
        with contextlib.suppress(Exception):
            parts.append("ps: " + json.dumps(self.ps(), indent=1))
        with contextlib.suppress(Exception):
            parts.append("podman: " + json.dumps(self.containers(), indent=1))
        return "\n".join(parts)

    # ------------------------------------------------------------------------- ps

    def ps(self, *, all_: bool = True) -> list[dict[str, Any]]:
        args = ["ps", "--state-dir", str(self.state_dir), "-o", "json"]
        if all_:
            args.append("-a")
        out = cli(*args)
        assert out.returncode == 0, f"reconciler ps exited {out.returncode}: {out.stderr}"
        result = json.loads(out.stdout)
        assert isinstance(result, list)
        return result

    def current(self, name: str) -> dict[str, Any] | None:
        """The current instance of ``name`` (the first entry of that name in ``ps -a``)."""
        return next((v for v in self.ps() if v["name"] == name), None)

    def instances(self, name: str) -> list[dict[str, Any]]:
        return [v for v in self.ps() if v["name"] == name]

    def wait_state(self, name: str, *states: str, timeout: float = DEADLINE) -> dict[str, Any]:
        """Wait until the current instance of ``name`` is in one of ``states``; return it."""

        def probe() -> dict[str, Any] | None:
            v = self.current(name)
            return v if v is not None and v["state"] in states else None

        return self.wait_for(probe, f"{name} in {states}", timeout=timeout)

    # --------------------------------------------------------------------- podman

    def podman(self, *args: str, check: bool = True) -> str:
        return self.service.run(*args, check=check)

    def containers(self, *, all_: bool = True, node: str | None = None) -> list[dict[str, Any]]:
        """``podman ps`` entries labelled with this (or another) node, as JSON."""
        args = [
            "ps",
            "--format",
            "json",
            "--filter",
            f"label=reconciler.node={node or self.node_id}",
        ]
        if all_:
            args.insert(1, "--all")
        out = self.podman(*args).strip()
        return list(json.loads(out)) if out else []

    def container_ids(self, *, all_: bool = True) -> list[str]:
        return [c["Id"] for c in self.containers(all_=all_)]

    def named(self, name: str, *, running: bool | None = None) -> list[dict[str, Any]]:
        """This node's containers of task ``name``, optionally only (not) running ones."""
        out = []
        for c in self.containers():
            if (c.get("Labels") or {}).get("reconciler.task.name") != name:
                continue
            if running is not None and (c.get("State") == "running") != running:
                continue
            out.append(c)
        return out

    def inspect(self, ref: str) -> dict[str, Any]:
        data = json.loads(self.podman("container", "inspect", ref))
        assert isinstance(data, list) and len(data) == 1
        return dict(data[0])

    def assert_stop_first(self, old: str, new: str) -> None:
        """Container ``new`` started only after container ``old`` had stopped."""
        old_state = self.inspect(old)["State"]
        new_state = self.inspect(new)["State"]
        assert not old_state["Running"], old_state
        stopped, started = podman_time(old_state["FinishedAt"]), podman_time(new_state["StartedAt"])
        assert started >= stopped, (
            f"{new} started at {new_state['StartedAt']}, "
            f"before {old} stopped at {old_state['FinishedAt']}"
        )

    def memory_limit(self, ref: str) -> int | None:
        """The memory limit the kernel applies to container ``ref`` (None: unlimited).

        Read from the container's cgroup on the host (v1 or v2), because podman 4.3's inspect
        keeps showing the limit a container was created with after a live update.
        """
        rel = str(self.inspect(ref)["State"]["CgroupPath"]).lstrip("/")
        assert rel, f"{ref} has no cgroup path"
        root = Path("/sys/fs/cgroup")
        for path in (root / rel / "memory.max", root / "memory" / rel / "memory.limit_in_bytes"):
            with contextlib.suppress(OSError):
                text = path.read_text().strip()
                if text == "max" or int(text) >= 1 << 62:
                    return None
                return int(text)
        raise AssertionError(f"cannot read the memory cgroup of {ref} under {root}/.../{rel}")

    def exists(self, ref: str) -> bool:
        out = subprocess.run(
            [self.service.podman, "--url", self.service.url, "container", "exists", ref],
            capture_output=True,
            env=self.service.env,
            timeout=60,
        )
        return out.returncode == 0

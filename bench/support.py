"""Shared pieces of the benchmarks that run the real agent against a private podman.

Each benchmark starts its own ``podman system service`` (own storage, short socket; never the
host's containers), imports the busybox test image, and runs the agent as a subprocess exactly
as an operator would (``python -m reconciler.cli run ...``), talking to it over HTTP.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from reconciler.testing.podman import PodmanService
from reconciler.testing.ports import free_port

REPO = Path(__file__).resolve().parents[1]
CONTAINERS_CONF = REPO / "deploy" / "containers.conf"
IMAGE = "localhost/busybox:latest"


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@contextlib.contextmanager
def podman_service() -> Iterator[PodmanService]:
    subprocess.run(
        ["bash", str(REPO / "scripts" / "build-test-image"), "--tarball-only"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    svc = PodmanService(
        tempfile.mkdtemp(prefix="rcb-", dir="/tmp"), containers_conf=CONTAINERS_CONF
    )
    try:
        svc.start()
        svc.import_test_image()
        yield svc
    finally:
        svc.destroy()


def task_yaml(tasks: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "reconciler/v1", "kind": "TaskSet", "tasks": tasks})


def write_desired(directory: Path, name: str, text: str) -> None:
    """Write a desired file atomically, as ``reconciler apply`` does."""
    tmp = directory / f".{name}.tmp"
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, directory / name)


class TaskStream:
    """The agent's tasks as its live event stream (``GET /v1/events``) tells them: the state of
    each name's current instance. The agent pushes a change when it happens, so waiting on the
    stream costs it one small event per change, where polling ``/v1/tasks`` would render every
    task again and again while the clock runs."""

    def __init__(self, port: int, *, timeout: float = 600.0) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self._conn.request("GET", "/v1/events", headers={"Accept": "text/event-stream"})
        self._resp = self._conn.getresponse()
        if self._resp.status != 200:
            raise RuntimeError(f"GET /v1/events: HTTP {self._resp.status}")
        self.states: dict[str, str | None] = {}
        self._next()  # the first event holds every task

    def _next(self) -> None:
        while True:
            line = self._resp.readline()
            if not line:
                raise ConnectionError("the agent's event stream ended")
            if line.startswith(b"data: "):
                break
        change = json.loads(line[6:])
        if change.get("full"):
            self.states = {}
        for task in change.get("tasks", ()):
            current = [i["state"] for i in task["instances"] if i.get("current")]
            self.states[task["name"]] = current[0] if current else None
        for name in change.get("removed", ()):
            self.states.pop(name, None)

    def until(self, pred: Callable[[dict[str, str | None]], bool]) -> None:
        """Read events until ``pred(states)`` holds (the stream's timeout is the hang guard)."""
        while not pred(self.states):
            self._next()

    def close(self) -> None:
        self._conn.close()


class AgentProcess:
    """The agent as a subprocess on a private podman service."""

    def __init__(
        self,
        svc: PodmanService,
        work: Path,
        *,
        resync: str = "30s",
        podman_url: str | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.svc = svc
        self.podman_url = podman_url or svc.url  # another socket in front of svc, say
        self.args = args  # further ``reconciler run`` flags
        self.work = work
        self.desired = work / "desired"
        self.state = work / "state"
        self.desired.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(self.desired, 0o755)
        self.port = free_port()
        self.resync = resync
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(self.svc.env)
        log = open(self.work / "agent.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "reconciler.cli",
                    "run",
                    "--desired",
                    str(self.desired),
                    "--state-dir",
                    str(self.state),
                    "--podman-url",
                    self.podman_url,
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--resync-interval",
                    self.resync,
                    "--node-id",
                    "bench-node",
                    "--log-level",
                    os.environ.get("BENCH_AGENT_LOG_LEVEL", "warning"),
                    *self.args,
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as err:
            return int(err.code), err.read()
        except OSError:
            return 0, b""

    def tasks(self) -> list[dict[str, Any]]:
        code, body = self.get("/v1/tasks")
        return json.loads(body) if code == 200 else []

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]

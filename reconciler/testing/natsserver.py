"""Real ``nats-server -js`` processes for the fleet tests and benchmarks: one, or a cluster.

Each server listens on free loopback ports (client, cluster route, monitoring), keeps its
JetStream store in a directory of its own, and logs to a file whose tail goes into failure
messages. ``start()`` returns once the monitoring endpoint's ``/healthz`` says the server and
its JetStream are ready, so a test never races the server's start. ``stop()`` (SIGTERM) and
``kill()`` (SIGKILL) end it; ``start()`` again brings it back on the same ports with the same
store, which is what a restart or an outage looks like to a client.

``monitoring`` reads the server's monitoring endpoints: ``clients()`` names the connected
clients and ``connections_so_far()`` counts every connection accepted, which is how a test sees
a client come, go, or keep trying.

``extra`` config text is appended (accounts and users, say); ``env`` adds environment
variables, which nats-server's config can reference as ``$NAME``. ``config_text`` replaces the
generated config altogether: the server runs that text verbatim (a shipped config, say, whose
host, ports and paths ``substitute`` rewrote; files it includes go into ``dir``). Such a server
may require TLS of its clients: ``tls_url`` is its ``tls://`` URL.

``route_ids()`` are the server ids its routes lead to (``/routez``) and ``server_id()`` its own
(``/varz``): how a test sees which servers formed a cluster and which did not get in.

When nats-server is not installed, ``NatsServer`` raises ``NatsServerMissing``; the tests'
fixtures turn that into a failure under CI and a skip elsewhere (``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from reconciler.testing.polling import Fatal, wait_until
from reconciler.testing.ports import free_port

__all__ = [
    "NatsServer",
    "NatsServerMissing",
    "nats_cluster",
    "nats_server",
    "nats_server_binary",
    "substitute",
]

START_DEADLINE = 60.0
MISSING = "nats-server is not installed (apt-get install nats-server; scripts/setup)"


class NatsServerMissing(RuntimeError):
    """The nats-server binary is not installed."""


def substitute(text: str, replacements: Mapping[str, str]) -> str:
    """``text`` with every occurrence of each key replaced by its value, in order. Raises
    ``ValueError`` naming a key that does not occur: a rewrite of a shipped config must fail
    loudly when the config changes under it, not run something else."""
    for old, new in replacements.items():
        if old not in text:
            raise ValueError(f"not found in the config, nothing to rewrite: {old!r}")
        text = text.replace(old, new)
    return text


def nats_server_binary() -> str | None:
    found = shutil.which("nats-server")
    if found:
        return found
    for candidate in ("/usr/sbin/nats-server", "/usr/bin/nats-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class NatsServer:
    """One nats-server with JetStream; see the module docstring."""

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "n1",
        extra: str = "",
        env: Mapping[str, str] | None = None,
        config_text: str | None = None,
    ) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise NatsServerMissing(MISSING)
        self.binary = binary
        self.name = name
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.http_port = free_port()
        self.cluster_port = free_port()
        self.routes: list[int] = []
        self.extra = extra
        self.env = dict(env or {})
        self.config_text = config_text
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.dir / "server.conf"

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def config(self) -> str:
        if self.config_text is not None:
            return self.config_text
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.http_port}",
            f'jetstream {{ store_dir: "{self.dir / "js"}" }}',
        ]
        if self.routes:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines.append(
                f"cluster {{ name: test, listen: 127.0.0.1:{self.cluster_port}, "
                f"routes: [{routes}] }}"
            )
        lines.append(self.extra)
        return "\n".join(lines) + "\n"

    def start(self, *, wait: bool = True) -> None:
        """Start the server (again); with ``wait``, return once it is healthy."""
        assert self.proc is None, "already running"
        self.config_path.write_text(self.config())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
        if wait:
            self.wait_healthy()

    def monitoring(self, endpoint: str) -> dict[str, Any]:
        """A monitoring endpoint's JSON (``varz``, ``connz?limit=1024``, ...). Raises
        ``OSError`` when the server does not answer."""
        url = f"http://127.0.0.1:{self.http_port}/{endpoint}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data

    def clients(self) -> list[str]:
        """The names of the clients connected now (an agent's is ``reconciler-agent <node>``)."""
        conns = self.monitoring("connz?limit=1024").get("connections") or []
        return [str(c.get("name", "")) for c in conns]

    def connections_so_far(self) -> int:
        """Client connections the server has accepted since it started."""
        return int(self.monitoring("varz").get("total_connections", 0))

    def server_id(self) -> str:
        """This server's id, as other servers' ``/routez`` name it."""
        return str(self.monitoring("varz")["server_id"])

    def route_ids(self) -> set[str]:
        """The ids of the servers this one has a route to now."""
        routes = self.monitoring("routez").get("routes") or []
        return {str(r.get("remote_id", "")) for r in routes}

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/healthz", timeout=2
            ) as resp:
                return bool(resp.status == 200 and json.loads(resp.read()).get("status") == "ok")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def wait_healthy(self, within: float = START_DEADLINE) -> None:
        """Return once ``/healthz`` says the server and its JetStream are ready. Raises
        ``AssertionError`` with the log's tail when it exits or is not ready in time."""

        def probe() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise Fatal(f"nats-server {self.name} exited\n{self.log_tail()}")
            return self.healthy()

        wait_until(probe, f"nats-server {self.name} healthy", within=within, context=self.log_tail)

    def stop(self) -> None:
        """SIGTERM and wait. Idempotent."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL and wait. Idempotent."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def nats_server(
    workdir: Path, *, extra: str = "", env: Mapping[str, str] | None = None
) -> Iterator[NatsServer]:
    """One running server, stopped on exit."""
    server = NatsServer(workdir, extra=extra, env=env)
    try:
        server.start()
        yield server
    finally:
        server.kill()


@contextlib.contextmanager
def nats_cluster(
    workdir: Path, size: int = 3, *, extra: str = ""
) -> Iterator[Sequence[NatsServer]]:
    """``size`` clustered servers, each routed to all the others, stopped on exit."""
    servers = [NatsServer(workdir, name=f"n{i + 1}", extra=extra) for i in range(size)]
    for s in servers:
        s.routes = [o.cluster_port for o in servers if o is not s]
    try:
        for s in servers:
            s.start(wait=False)
        for s in servers:
            s.wait_healthy()
        yield servers
    finally:
        for s in servers:
            s.kill()

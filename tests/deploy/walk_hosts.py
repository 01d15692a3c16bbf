"""The machines of docs/operations.md's "Production setup", each a directory on this one.

- ``Admin``: the admin machine's directory; ``run`` runs one of the page's blocks there, its
  ``tls://nats-N:4222`` URLs naming the servers' loopback ports instead.
- ``set_up_server``: a NATS server host as the page installs it (install lines, the private
  route address for a cluster config, the systemd drop-in and the check), made local
  (``InstalledServer.localise``), not started.
- ``reload_users``: the page's "install the users file and reload" block on one server, its
  ``systemctl reload`` sent as the signal it stands for, ``nats-server --signal reload=PID``.
- ``set_up_manager`` and ``ManagerRun``: a manager host from the page's block and the shipped
  unit, whose ``LoadCredential=`` is done as systemd does it (the file copied to where
  ``/run/credentials/`` has it) and whose ``ExecStart=`` runs as a process; ``metric`` reads
  its ``/metrics``.
- ``set_up_agent`` and ``docs_agent``: an edge host's config from the page's block, and an agent
  in this event loop run from that config exactly as ``reconciler run --config`` reads it (its
  node id, servers, CA and credentials), on the fake runtime instead of podman.

Every block runs ``confined`` to its host's directory (``tests/deploy/operations_doc.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from reconciler.assemble.agent import AgentOptions, AssembledAgent, assemble_agent
from reconciler.cli.agent import agent_options as checked_options
from reconciler.cli.parser import apply_config, apply_defaults, build_parser
from reconciler.core.clock import SystemClock
from reconciler.core.model import TaskState
from reconciler.fleet.options import load_credentials
from reconciler.store.rocks import RocksStore
from reconciler.testing.fake import FakeExecutor
from reconciler.testing.polling import wait_until
from reconciler.testing.ports import free_port
from reconciler.testing.tasks import ended
from tests.deploy.operations_doc import (
    BIN,
    block_with,
    environment,
    on_host,
    rewrite,
    run_sh,
    section,
    without_systemctl,
)
from tests.deploy.shipped_nats import InstalledServer

ADDRESS = "10.0.0.11"
"""nats-1's private address, which the page's ``sed`` binds its route port to."""
RELOADED = "Reloaded server configuration"


def host(base: Path, name: str) -> Path:
    """A host's filesystem under ``base``: its root, with ``/etc/systemd/system``."""
    root = base / name / "root"
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    return root


@dataclass
class Admin:
    """The admin machine's directory, and the servers its commands reach."""

    dir: Path
    servers: dict[str, InstalledServer] = field(default_factory=dict)

    def urls(self, text: str) -> str:
        """``text`` with each server's ``tls://NAME:4222`` on its loopback port; it must name
        one at least, and none that the walk does not run."""
        named = {f"tls://{n}:4222": s.tls_url for n, s in self.servers.items()}
        present = {url: local for url, local in named.items() if url in text}
        assert present, f"no server of {sorted(named)} named in:\n{text}"
        text = rewrite(text, present)
        assert "tls://nats-" not in text, f"a server the walk does not run:\n{text}"
        return text

    def run(self, block: str, *, code: int | None = 0) -> subprocess.CompletedProcess[str]:
        return run_sh(self.urls(block) if "tls://" in block else block, self.dir, code=code)


def set_up_server(admin: Admin, server: InstalledServer, part: str) -> None:
    """Install ``server`` as the page's ``part`` ("3. The NATS server" or "3. The servers")
    says, on its host, and check it with the page's ``nats-server -t``."""
    text = section(part)
    install = block_with(text, "install -d")
    if server.name != "nats-1":
        install = rewrite(install, {"nats-1": server.name})
    run_sh(on_host(install, server.root), admin.dir, allowed=[server.root])
    if "sed -i" in text:
        sed = rewrite(block_with(text, "sed -i"), {f"{ADDRESS}:6222": server.cluster_address})
        run_sh(on_host(sed, server.root), admin.dir, allowed=[server.root])
        assert f"\n  listen: {server.cluster_address}\n" in server.config(), "the sed missed"
        server.resolve_routes(server.root / "etc/nats/nats.env", admin.servers)
    server.localise()
    script, calls = without_systemctl(on_host(block_with(text, "service.d"), server.root))
    assert calls == ["systemctl daemon-reload"], calls
    run_sh(script, admin.dir, allowed=[server.root])
    command, env = server.drop_in()
    assert Path(command[0]).name == "nats-server", command
    assert command[1:] == ["-c", str(server.config_path)], command
    server.env.update(env)
    script, calls = without_systemctl(on_host(block_with(text, "nats-server -t"), server.root))
    assert calls == ["systemctl enable --now nats-server"], calls
    run_sh(script, admin.dir, allowed=[server.root])


def tls_login(server: InstalledServer, ca: Path, creds: Path) -> bytes:
    """Log in to ``server`` over TLS with the credentials file ``creds``, at the protocol's
    level: the server's first answer to ``CONNECT`` and ``PING`` (``PONG``, or ``-ERR ...``)."""
    login = load_credentials(creds)
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
        line = raw.makefile("rb").readline()  # INFO, in plaintext before the handshake
        assert line.startswith(b"INFO ") and json.loads(line[5:])["tls_required"], line
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            connect = {"verbose": False, "user": login["user"], "pass": login["password"]}
            sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
            return sock.makefile("rb").readline().strip()


def reloads(server: InstalledServer) -> int:
    return server.log_path.read_text(errors="replace").count(RELOADED)


def reload_users(admin: Admin, server: InstalledServer) -> None:
    """The page's users-file install and reload (step 5) on ``server``; returns once the
    server has reloaded."""
    block = block_with(section("5. Nodes, an operator and a viewer"), "systemctl reload")
    assert server.proc is not None
    script = rewrite(
        on_host(block, server.root),
        {"systemctl reload nats-server": f"nats-server --signal reload={server.proc.pid}"},
    )
    before = reloads(server)
    run_sh(script, admin.dir, allowed=[server.root])
    wait_until(lambda: reloads(server) > before, f"{server.name} reloaded", context=server.log_tail)


# ----------------------------------------------------------------------------- managers


class ManagerRun:
    """``reconciler manager run`` as the unit's ``ExecStart=`` runs it, in a process."""

    def __init__(self, name: str, argv: list[str], root: Path, port: int) -> None:
        self.name = name
        self.argv = argv
        self.log = root / "manager.log"
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=environment()
            )

    def metric(self, name: str, **labels: str) -> float | None:
        """A sample of its ``/metrics`` now; None when it does not answer or has none."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None

    def log_tail(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return f"{self.name}:\n" + "\n".join(lines[-20:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def unit_settings(unit: Path) -> dict[str, str]:
    """A systemd unit's ``Key=value`` lines (the last of each key)."""
    return dict(
        line.split("=", 1) for line in unit.read_text().splitlines() if re.match(r"^\w+=", line)
    )


def set_up_manager(admin: Admin, base: Path, name: str, block: str) -> ManagerRun:
    """A manager host from the page's ``block``, its process not started yet."""
    root = host(base, name)
    port = free_port()
    script = rewrite(admin.urls(block), {"0.0.0.0:9470": f"127.0.0.1:{port}"})
    script, calls = without_systemctl(on_host(script, root))
    assert calls[-1] == "systemctl enable --now reconciler-manager.service", calls
    run_sh(script, admin.dir, allowed=[root])
    unit = unit_settings(root / "etc/systemd/system/reconciler-manager.service")
    credential, source = unit["LoadCredential"].split(":", 1)
    handed = root / "run/credentials/reconciler-manager.service" / credential
    handed.parent.mkdir(parents=True)
    shutil.copy(on_host(source, root), handed)
    command = rewrite(on_host(unit["ExecStart"], root), {"/usr/local/bin/": f"{BIN}/"})
    return ManagerRun(name, command.split(), root, port)


def leading(managers: list[ManagerRun]) -> ManagerRun | None:
    """The one manager that leads while every other answers and stands by, else None."""
    values = {m.name: m.metric("reconciler_manager_leader") for m in managers}
    leaders = [m for m in managers if values[m.name] == 1.0]
    standing_by = [m for m in managers if values[m.name] == 0.0]
    return leaders[0] if len(leaders) == 1 and len(standing_by) == len(managers) - 1 else None


# ------------------------------------------------------------------------------- agents


def set_up_agent(admin: Admin, base: Path, node: str, block: str) -> tuple[Path, list[str]]:
    """An edge host from the page's ``block`` (written for edge-1): its config file, and the
    ``systemctl`` lines the block would run."""
    root = host(base, node)
    if node != "edge-1":
        block = rewrite(block, {"edge-1": node})
    script, calls = without_systemctl(on_host(admin.urls(block), root))
    run_sh(script, admin.dir, allowed=[root])
    return root / "etc/reconciler/config.yaml", calls


@dataclass
class DocsAgent:
    assembled: AssembledAgent

    def running(self) -> set[str]:
        tasks = self.assembled.agent.snapshot().tasks
        return {v.name for v in tasks if v.current and v.state is TaskState.RUNNING}

    def connected(self) -> bool:
        return bool(self.assembled.agent.snapshot().session_connected)


def run_options(state: Path, config: Path) -> AgentOptions:
    """What ``reconciler run --state-dir STATE --config CONFIG`` runs with, read and checked as
    the command reads and checks it (the node id against the credentials' user included)."""
    args = build_parser().parse_args(["run", "--state-dir", str(state), "--config", str(config)])
    apply_config(args, args.spec)
    apply_defaults(args, args.spec)
    return checked_options(args)


@contextlib.asynccontextmanager
async def docs_agent(config: Path, state: Path) -> AsyncIterator[DocsAgent]:
    """The agent ``reconciler run --config CONFIG`` would run, here, on the fake runtime."""
    options = run_options(state, config)
    assert options.node_id is not None and options.manager is not None, options
    clock = SystemClock()
    store = RocksStore.open(state)
    executor = FakeExecutor(clock=clock, node_id=options.node_id)
    assembled = assemble_agent(
        options, store=store, node_id=options.node_id, clock=clock, runtime=lambda _: executor
    )
    stop = asyncio.Event()
    task = asyncio.create_task(assembled.run(stop))
    try:
        yield DocsAgent(assembled)
    finally:
        stop.set()
        await ended(task, f"the agent {options.node_id}")
        store.close()

"""docs/operations.md's "Production setup", walked on one machine, so the page cannot drift.

The page's blocks run as written, in ``sh``, each on the machine it names: the admin machine's
in a directory of its own, every other host's under a directory that stands for its filesystem
(``tests/deploy/walk_hosts.py``). Only what one machine needs is rewritten, each rewrite failing
when its target left the page (``tests/deploy/operations_doc.py``): the servers' names become
loopback ports, ``/etc``, ``/var/lib`` and ``/run`` a host's directory, ``install`` loses its
owners, and what would talk to systemd is done the way the unit says it (a reload is a
SIGHUP, a credential a copied file, a service its ``ExecStart=``). A block that would still
touch the machine's own system is refused before it runs.

**One host.** The CA and nats-1's certificate, the bootstrapped first manager, the single-server
config installed with its users file and checked, ``manager init``, the nodes, the operator and
the viewer added and the users file reloaded; then the manager from its unit leads, and edge-1's
agent, from the config the page writes, joins it.

**Three servers.** The same with the cluster configs and the route password: three servers
route to each other over verified TLS and ``manager init`` replicates every bucket three times;
a second manager is added and both run from the unit, one leading; alice (an operator) applies
the page's service and edge-1's agent (a node's own credentials) runs it; carol (a viewer) sees
it and may not apply; ``node rm edge-1`` and a reload cut edge-1 off, and its task moves to
edge-2.

The agents run in this event loop, on the fake runtime: the walk is about what the page
installs and the identities it issues, not about podman.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from reconciler.fleet.buckets import buckets, stream_name
from reconciler.fleet.options import load_credentials
from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually, wait_until
from tests.contract import require_nats_server
from tests.deploy.operations_doc import (
    block_with,
    inline_command,
    rewrite,
    run_sh,
    section,
    sh_blocks,
)
from tests.deploy.shipped_nats import CLUSTER, NAMES, InstalledServer
from tests.deploy.walk_hosts import (
    Admin,
    DocsAgent,
    ManagerRun,
    docs_agent,
    host,
    leading,
    reload_users,
    set_up_agent,
    set_up_manager,
    set_up_server,
    tls_login,
)

IDENTITIES = "5. Nodes, an operator and a viewer"
SERVICE = "7. A first service"
MODES = {
    "tls/ca.pem": 0o644,
    "tls/server.pem": 0o644,
    "tls/server-key.pem": 0o640,
    "nats.env": 0o600,
    "nats-server.conf": 0o640,
    "fleet.conf": 0o640,
    "fleet-users.conf": 0o640,
}
"""The files under a server's /etc/nats that the page installs, with their modes."""
CAROL_APPLIES = "reconciler manager apply -f web.yaml --config fleet.yaml --creds carol.creds"


def make_admin(base: Path, *, three: bool) -> Admin:
    """The admin machine after the page's CA, certificate (and, for three servers, route
    password) blocks, in one shell as the page means them, and the bootstrapped manager."""
    admin = Admin(base / "admin")
    admin.dir.mkdir()
    blocks = sh_blocks(section("1. The CA and the server's certificate"))
    if three:
        blocks += sh_blocks(section("1. Certificates for all three"))
        blocks += sh_blocks(section("2. The route password"))
    run_sh("\n".join(blocks), admin.dir)
    admin.run(block_with(section("2. The first manager"), "--bootstrap"))
    return admin


def start(servers: list[InstalledServer]) -> None:
    for server in servers:
        server.start(wait=False)
    for server in servers:
        server.wait_healthy()


def issue_identities(admin: Admin, *extra: str) -> None:
    """The page's node adds, ``extra`` blocks after them, then the users file on every
    server, reloaded."""
    admin.run(block_with(section(IDENTITIES), "node add edge-1"))
    for block in extra:
        admin.run(block)
    for server in admin.servers.values():
        reload_users(admin, server)


def tls(admin: Admin) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(admin.dir / "ca.pem"))


def replicas(admin: Admin, server: NatsServer) -> list[int]:
    """Every bucket's replicas, read with manager-1's credentials over TLS."""
    creds = load_credentials(admin.dir / "manager-1.creds")

    async def read() -> list[int]:
        nc = await nats.connect(
            server.tls_url, tls=tls(admin), user=creds["user"], password=creds["password"]
        )
        try:
            js = nc.jetstream(timeout=20)
            return [
                (await js.stream_info(stream_name(b.name))).config.num_replicas or 1
                for b in buckets()
            ]
        finally:
            await nc.close()

    return asyncio.run(read())


# ------------------------------------------------------------------------------ one host


def test_one_host_the_pages_server_manager_and_agent(tmp_path: Path) -> None:
    require_nats_server()
    admin = make_admin(tmp_path, three=False)
    server = InstalledServer(tmp_path, "nats-1", host(tmp_path, "nats-1"))
    admin.servers["nats-1"] = server
    manager: ManagerRun | None = None
    try:
        set_up_server(admin, server, "3. The NATS server")
        start([server])
        assert server.monitoring("varz")["tls_required"] is True
        init = admin.run(block_with(section("4. The buckets"), "manager init"))
        assert init.stdout.count("created ") == len(buckets()), init.stdout
        assert replicas(admin, server) == [1] * len(buckets())
        issue_identities(admin)
        step6 = section("6. The manager and the agents")
        block = block_with(step6, "manager.yaml")
        manager = set_up_manager(admin, tmp_path, "nats-1-manager", block)
        manager.start()
        config, calls = set_up_agent(admin, tmp_path, "edge-1", block_with(step6, "node-id"))
        assert calls[-1] == "systemctl enable --now podman.socket reconciler.service", calls
        asyncio.run(joins(manager, config, tmp_path / "edge-1-state"))
    finally:
        if manager is not None:
            manager.stop()
        server.kill()


async def joins(manager: ManagerRun, config: Path, state: Path) -> None:
    """edge-1's agent, from the page's config, joins the fleet the manager leads."""
    async with docs_agent(config, state) as agent:
        await eventually(lambda: agent.connected(), "edge-1 connected")
        await eventually(
            lambda: manager.metric("reconciler_manager_leader") == 1.0,
            "the manager leading",
            context=manager.log_tail,
        )
        await eventually(
            lambda: manager.metric("reconciler_manager_nodes", state="ready") == 1.0,
            "edge-1 ready, as the manager sees it",
            context=manager.log_tail,
        )


# -------------------------------------------------------------------------- three servers


@dataclass
class Walk:
    admin: Admin
    init: subprocess.CompletedProcess[str]
    managers: list[ManagerRun]
    base: Path

    @property
    def servers(self) -> list[InstalledServer]:
        return list(self.admin.servers.values())


def start_cluster(admin: Admin, base: Path) -> None:
    """The three servers as the page's "3. The servers" installs them, started and routed."""
    for name in NAMES:
        admin.servers[name] = InstalledServer(base, name, host(base, name))
    servers = list(admin.servers.values())
    for server in servers:
        set_up_server(admin, server, "3. The servers")
    start(servers)
    wait_until(
        lambda: all(routed(s, servers) for s in servers),
        "every server routed to the other two",
        context=lambda: "\n".join(s.log_tail() for s in servers),
    )


def routed(server: NatsServer, servers: list[InstalledServer]) -> bool:
    return server.route_ids() == {o.server_id() for o in servers if o is not server}


def start_managers(admin: Admin, base: Path) -> list[ManagerRun]:
    """The page's second manager host, and the first, which uses manager-1's credentials."""
    block = block_with(section("6. Two managers"), "manager-2.creds")
    first = block.replace("manager-2.creds", "manager-1.creds")
    assert first != block
    managers = [
        set_up_manager(admin, base, "manager-host-1", first),
        set_up_manager(admin, base, "manager-host-2", block),
    ]
    for manager in managers:
        manager.start()
    return managers


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    """The three-server part of the page, walked: servers, identities and two managers."""
    require_nats_server()
    base = tmp_path_factory.mktemp("three")
    admin = make_admin(base, three=True)
    managers: list[ManagerRun] = []
    try:
        start_cluster(admin, base)
        init = admin.run(block_with(section("4. The buckets, three times over"), "init"))
        second = block_with(section("5. The identities, and a second manager"), "manager-2")
        issue_identities(admin, second)
        managers = start_managers(admin, base)
        yield Walk(admin, init, managers, base)
    finally:
        for manager in managers:
            manager.stop()
        for server in admin.servers.values():
            server.kill()


def test_the_pages_openssl_steps_make_a_ca_and_verified_server_certificates(walk: Walk) -> None:
    pki = walk.admin.dir
    for name in ("ca", *NAMES):
        assert stat.S_IMODE((pki / f"{name}-key.pem").stat().st_mode) == 0o600, name
    for name in NAMES:
        check = subprocess.run(
            ["openssl", "verify", "-CAfile", "ca.pem", f"{name}.pem"],
            cwd=pki,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        text = subprocess.run(
            ["openssl", "x509", "-in", f"{name}.pem", "-noout", "-text"],
            cwd=pki,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert f"DNS:{name}" in text and "IP Address:127.0.0.1" in text
        assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert stat.S_IMODE((pki / "nats.env").stat().st_mode) == 0o600


def test_the_install_lines_put_the_files_where_the_configs_read_them(walk: Walk) -> None:
    users = (walk.admin.dir / "fleet-users.conf").read_text()
    for server in walk.servers:
        etc = server.root / "etc" / "nats"
        shipped = (CLUSTER / f"{server.name}.conf").read_text()
        assert set(re.findall(r"/etc/nats/(\S+\.pem)", shipped)) == {
            path for path in MODES if path.endswith(".pem")
        }
        assert (
            "include fleet.conf" in shipped
            and "include fleet-users.conf" in (etc / "fleet.conf").read_text()
        )
        assert (etc / "fleet-users.conf").read_text() == users  # the last one reloaded
        for path, mode in MODES.items():
            assert stat.S_IMODE((etc / path).stat().st_mode) == mode, (server.name, path)
        assert (server.root / "var/lib/nats/jetstream").is_dir()  # the store went there


def test_the_servers_route_over_verified_tls_and_init_replicates_three_times(
    walk: Walk,
) -> None:
    for server in walk.servers:
        cluster = server.monitoring("varz")["cluster"]
        assert cluster["tls_required"] is True and cluster["tls_verify"] is True
        assert server.monitoring("varz")["tls_required"] is True
    assert walk.init.stdout.count("created ") == len(buckets()), walk.init.stdout
    assert replicas(walk.admin, walk.servers[0]) == [3] * len(buckets())


def test_one_of_the_two_managers_leads_and_the_other_stands_by(walk: Walk) -> None:
    wait_until(
        lambda: leading(walk.managers),
        "one manager leading, the other standing by",
        context=lambda: "\n".join(m.log_tail() for m in walk.managers),
    )


# --------------------------------------------------------------- a service, and a removal


def table(text: str, header: str) -> list[list[str]]:
    """The rows of the table in ``text`` whose header line starts with ``header``, up to the
    next header line (a line that starts with capitals)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 1 :]:
        if not line or line.split()[0].isupper():
            break
        rows.append(line.split())
    return rows


async def carol_sees(walk: Walk, node: str) -> bool:
    """Whether carol's commands of step 7 show web-1 running on ``node``."""
    out = await asyncio.to_thread(walk.admin.run, block_with(section(SERVICE), "carol.creds"))
    tasks = {row[1]: (row[2], row[3]) for row in table(out.stdout, "SERVICE ")}
    return tasks.get("web-1") == (node, "running")


async def carol_may_not_apply(walk: Walk, step7: str) -> None:
    """carol's apply of a changed ``web.yaml`` (the page's "replicas: 2") is refused."""
    assert "With `replicas: 2` in `web.yaml`" in step7
    web = walk.admin.dir / "web.yaml"
    applied = web.read_text()
    web.write_text(rewrite(applied, {"replicas: 1": "replicas: 2"}))
    try:
        carol = inline_command(step7, CAROL_APPLIES)
        refused = await asyncio.to_thread(lambda: walk.admin.run(carol, code=1))
    finally:
        web.write_text(applied)
    assert "writing reconciler_services/web: NATS refused it" in refused.stderr, refused.stderr


async def cut_off(walk: Walk, edge1: DocsAgent) -> None:
    """``node rm edge-1`` while its agent runs, the users file reloaded: its connection is
    closed and its credentials refused; ``node rm`` again forgets what it wrote meanwhile."""
    rm = block_with(section("Removing a node"), "node rm edge-1")
    out = await asyncio.to_thread(walk.admin.run, rm)
    assert out.stdout.startswith("removed node edge-1\n"), out.stdout
    for server in walk.servers:
        await asyncio.to_thread(reload_users, walk.admin, server)

    def listed() -> list[str]:
        return [c for s in walk.servers for c in s.clients() if c == "reconciler-agent edge-1"]

    await eventually(lambda: not edge1.connected() and not listed(), "edge-1 cut off")
    ca, creds = walk.admin.dir / "ca.pem", walk.admin.dir / "edge-1.creds"
    for server in walk.servers:
        answer = await asyncio.to_thread(tls_login, server, ca, creds)
        assert answer == b"-ERR 'Authorization Violation'", (server.name, answer)
    edge2 = walk.admin.dir / "edge-2.creds"
    answer = await asyncio.to_thread(tls_login, walk.servers[0], ca, edge2)
    assert answer == b"PONG", answer  # the check itself can log in
    again = await asyncio.to_thread(lambda: walk.admin.run(rm, code=None))
    if again.returncode == 0:  # its heartbeat came back before the reload
        assert "edge-1 was not an identity" in again.stdout, again.stdout
        assert "forgot node edge-1's keys: reconciler_nodes 1" in again.stdout, again.stdout
    else:
        assert "no identity named edge-1, and no keys" in again.stderr, again.stderr


async def test_alices_service_runs_carol_sees_it_and_a_removed_node_is_cut_off(
    walk: Walk,
) -> None:
    base = walk.base / "agents"
    block = block_with(section("7. The agents"), "node-id")
    configs = {n: set_up_agent(walk.admin, base, n, block)[0] for n in ("edge-1", "edge-2")}
    step7 = section(SERVICE)
    context = lambda: "\n".join(m.log_tail() for m in walk.managers)  # noqa: E731
    async with docs_agent(configs["edge-1"], base / "edge-1-state") as edge1:
        leader = await eventually(lambda: leading(walk.managers), "a leader", context=context)
        await eventually(
            lambda: leader.metric("reconciler_manager_nodes", state="ready") == 1.0,
            "edge-1 ready",
            context=context,
        )
        applied = await asyncio.to_thread(walk.admin.run, block_with(step7, "alice.creds"))
        assert applied.stdout.startswith("create service web"), applied.stdout
        await eventually(lambda: edge1.running() == {"web-1"}, "edge-1 runs web-1")
        await eventually(lambda: carol_sees(walk, "edge-1"), "carol sees web-1 on edge-1")
        await carol_may_not_apply(walk, step7)
        async with docs_agent(configs["edge-2"], base / "edge-2-state") as edge2:
            await eventually(
                lambda: leader.metric("reconciler_manager_nodes", state="ready") == 2.0,
                "edge-2 ready",
                context=context,
            )
            await cut_off(walk, edge1)
            await eventually(lambda: edge2.running() == {"web-1"}, "web-1 moved to edge-2")
            await eventually(lambda: carol_sees(walk, "edge-2"), "carol sees web-1 on edge-2")
            nodes = await asyncio.to_thread(walk.admin.run, block_with(step7, "carol.creds"))
            assert [row[0] for row in table(nodes.stdout, "NODE ")] == ["edge-2"]

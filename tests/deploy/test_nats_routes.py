"""The shipped NATS configs keep strangers out: TLS for clients, and routes that authenticate.

Two real nats-servers run from the shipped ``deploy/nats/cluster/nats-1.conf`` and
``nats-2.conf`` (only hosts, ports and paths rewritten, ``tests/deploy/shipped_nats.py``). They
form a cluster over TLS routes. A third, rogue server that knows the cluster's name and both
route addresses tries to route in without TLS, with a certificate from another CA, and with a
certificate from the fleet's CA but no or the wrong route credentials: the servers refuse it
each time. A friend configured like the rogue, with everything right, gets in: the refusals
come from what each rogue lacks, not from a rogue that could never have worked.

A client on plain ``nats://`` is refused too, by the cluster configs and by the single-server
``deploy/nats/nats-server.conf``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from reconciler.testing.natsserver import NatsServer, substitute
from reconciler.testing.polling import Fatal, eventually, wait_until
from reconciler.testing.tlscerts import CertPair, TestCA
from tests.contract import REPO, require_nats_server
from tests.deploy.shipped_nats import (
    MANAGER_PASSWORD,
    STAND_IN_FLEET_CONF,
    ShippedCluster,
)

ROUTE_PASSWORD = "r-secret"
SINGLE = REPO / "deploy" / "nats" / "nats-server.conf"


@dataclass
class Fleet:
    """The two legitimate servers, the fleet's CA, and a stranger CA."""

    cluster: ShippedCluster
    ca: TestCA
    stranger: TestCA
    workdir: Path

    @property
    def servers(self) -> list[NatsServer]:
        return list(self.cluster.servers.values())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_nats_server()
    workdir = tmp_path_factory.mktemp("routes")
    ca = TestCA(workdir / "pki", "fleet")
    stranger = TestCA(workdir / "pki", "stranger")
    names = ("nats-1", "nats-2")
    cluster = ShippedCluster(
        workdir,
        names,
        certs={n: ca.issue(n) for n in names},
        ca=ca.cert,
        route_password=ROUTE_PASSWORD,
        env={"RECONCILER_MANAGER_PASSWORD": MANAGER_PASSWORD},
    )
    try:
        cluster.start()
        one, two = cluster["nats-1"], cluster["nats-2"]
        wait_until(
            lambda: two.server_id() in one.route_ids() and one.server_id() in two.route_ids(),
            "nats-1 and nats-2 routed to each other",
            context=lambda: f"{one.log_tail()}\n{two.log_tail()}",
        )
        yield Fleet(cluster, ca, stranger, workdir)
    finally:
        cluster.kill()


def test_the_shipped_servers_form_a_cluster_over_verified_tls_routes(fleet: Fleet) -> None:
    one, two = fleet.servers
    assert one.route_ids() == {two.server_id()}
    assert two.route_ids() == {one.server_id()}
    for server in fleet.servers:
        cluster = server.monitoring("varz")["cluster"]
        assert cluster["name"] == "reconciler"
        assert cluster["tls_required"] is True and cluster["tls_verify"] is True, cluster


def test_the_route_carries_messages_between_tls_clients(fleet: Fleet) -> None:
    one, two = fleet.servers
    context = ssl.create_default_context(cafile=str(fleet.ca.cert))

    async def roundtrip() -> bytes:
        sub_nc = await nats.connect(
            two.tls_url, tls=context, user="manager", password=MANAGER_PASSWORD
        )
        pub_nc = await nats.connect(
            one.tls_url, tls=context, user="manager", password=MANAGER_PASSWORD
        )
        try:
            sub = await sub_nc.subscribe("routes.check")
            await sub_nc.flush()

            async def delivered() -> bytes:
                await pub_nc.publish("routes.check", b"over the route")
                msg = await sub.next_msg(timeout=1)
                return msg.data

            data: bytes = await eventually(delivered, "a message from nats-1 on nats-2")
            return data
        finally:
            await pub_nc.close()
            await sub_nc.close()

    assert asyncio.run(roundtrip()) == b"over the route"


# ---------------------------------------------------------------------------- the rogue


@dataclass(frozen=True)
class Rogue:
    """How a third server tries to route in, and what the cluster's servers log refusing it."""

    name: str
    tls: str  # "none", "stranger" (another CA's certificate) or "fleet"
    userinfo: str  # the route URLs' credentials
    refusal: str  # what each legitimate server logs, once per attempt ("" for the friend)


ROGUES = [
    Rogue("no-tls", "none", f"route:{ROUTE_PASSWORD}@", "TLS route handshake error"),
    Rogue("another-ca", "stranger", f"route:{ROUTE_PASSWORD}@", "TLS route handshake error"),
    Rogue("no-credentials", "fleet", "", 'authentication error - User ""'),
    Rogue("wrong-password", "fleet", "route:guessed@", 'authentication error - User "route"'),
]
FRIEND = Rogue("friend", "fleet", f"route:{ROUTE_PASSWORD}@", "")


def tls_block(cert: CertPair, ca: Path) -> str:
    return (
        f'  tls {{\n    cert_file: "{cert.cert}"\n    key_file: "{cert.key}"\n'
        f'    ca_file: "{ca}"\n    verify: true\n  }}\n'
    )


def rogue_server(fleet: Fleet, rogue: Rogue) -> NatsServer:
    """A server of its own, with an account of its own, routed at both cluster servers."""
    server = NatsServer(fleet.workdir, name=rogue.name)
    tls = ""
    if rogue.tls == "stranger":
        # It trusts the fleet's CA (so its own side of the handshake would pass) but its
        # certificate is the stranger's.
        both = fleet.workdir / "pki" / "fleet-and-stranger.pem"
        both.write_text(fleet.ca.cert.read_text() + fleet.stranger.cert.read_text())
        tls = tls_block(fleet.stranger.issue(rogue.name), both)
    elif rogue.tls == "fleet":
        tls = tls_block(fleet.ca.issue(rogue.name), fleet.ca.cert)
    routes = "\n".join(
        f"    nats-route://{rogue.userinfo}127.0.0.1:{s.cluster_port}" for s in fleet.servers
    )
    server.config_text = (
        f"server_name: {rogue.name}\n"
        f"listen: 127.0.0.1:{server.port}\n"
        f"http: 127.0.0.1:{server.http_port}\n"
        f"cluster {{\n  name: reconciler\n  listen: 127.0.0.1:{server.cluster_port}\n"
        f"{tls}  routes: [\n{routes}\n  ]\n}}\n"
        "accounts { ROGUE { users: [ { user: rogue, password: rogue } ] } }\n"
    )
    return server


def log_size(server: NatsServer) -> int:
    return server.log_path.stat().st_size


def logged_since(server: NatsServer, offset: int) -> str:
    with open(server.log_path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


@pytest.mark.parametrize("rogue", ROGUES, ids=[r.name for r in ROGUES])
def test_a_rogue_server_is_refused_as_a_route(fleet: Fleet, rogue: Rogue) -> None:
    offsets = {s.name: log_size(s) for s in fleet.servers}
    server = rogue_server(fleet, rogue)
    try:
        server.start(wait=False)
        rogue_id = wait_until(server.server_id, "the rogue's /varz", context=server.log_tail)

        def refused_twice() -> bool:
            if server.proc is not None and server.proc.poll() is not None:
                raise Fatal(f"the rogue exited\n{server.log_tail()}")
            for s in fleet.servers:
                if rogue_id in s.route_ids():
                    raise Fatal(f"{s.name} took the {rogue.name} rogue's route")
            # Two refusals by each server: the rogue tried, was turned away, and tried again.
            return all(
                logged_since(s, offsets[s.name]).count(rogue.refusal) >= 2 for s in fleet.servers
            )

        wait_until(
            refused_twice,
            f"both servers refusing the {rogue.name} rogue twice",
            context=lambda: "\n".join(logged_since(s, offsets[s.name]) for s in fleet.servers),
        )
        one, two = fleet.servers
        assert one.route_ids() == {two.server_id()}, "nats-1 took a route it should not"
        assert two.route_ids() == {one.server_id()}, "nats-2 took a route it should not"
        assert rogue_id not in one.route_ids() | two.route_ids()
        assert server.route_ids() == set(), "the rogue holds a route"
        assert server.monitoring("varz")["routes"] == 0
        assert "Router connection closed" in server.log_tail(200)
    finally:
        server.kill()


def test_a_friend_configured_like_the_rogues_gets_in(fleet: Fleet) -> None:
    server = rogue_server(fleet, FRIEND)
    try:
        server.start(wait=False)
        friend_id = wait_until(server.server_id, "the friend's /varz", context=server.log_tail)
        wait_until(
            lambda: all(friend_id in s.route_ids() for s in fleet.servers),
            "nats-1 and nats-2 routed to the friend",
            context=server.log_tail,
        )
        assert {s.server_id() for s in fleet.servers} <= server.route_ids()
    finally:
        server.kill()
    one, two = fleet.servers
    wait_until(
        lambda: one.route_ids() == {two.server_id()} and two.route_ids() == {one.server_id()},
        "the friend's routes gone once it stopped",
    )


# ---------------------------------------------------------------------------- clients


def plain_client(port: int) -> tuple[dict[str, object], bytes]:
    """Connect without TLS: the server's INFO, and everything it sends after a plaintext
    CONNECT and PING until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        stream = sock.makefile("rb")
        line = stream.readline()
        assert line.startswith(b"INFO "), line
        info = json.loads(line[5:])
        connect = {"verbose": False, "user": "manager", "pass": MANAGER_PASSWORD}
        sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        return info, stream.read()


def assert_plain_client_refused(server: NatsServer) -> None:
    offset = log_size(server)
    info, rest = plain_client(server.port)
    assert info["tls_required"] is True, info
    assert b"PONG" not in rest and b"+OK" not in rest, rest
    wait_until(
        lambda: "TLS handshake error" in logged_since(server, offset),
        "the server logging the plain client's failed handshake",
        context=server.log_tail,
    )


def test_a_plain_client_is_refused_by_the_cluster_configs(fleet: Fleet) -> None:
    for server in fleet.servers:
        assert_plain_client_refused(server)


def test_the_single_server_config_requires_tls_of_its_clients(tmp_path: Path) -> None:
    require_nats_server()
    ca = TestCA(tmp_path / "pki", "fleet")
    cert = ca.issue("fleet-1")
    server = NatsServer(tmp_path, name="fleet-1", env={"RECONCILER_MANAGER_PASSWORD": "m"})
    server.config_text = substitute(
        SINGLE.read_text(),
        {
            "listen: 0.0.0.0:4222": f"listen: 127.0.0.1:{server.port}",
            "http: 127.0.0.1:8222": f"http: 127.0.0.1:{server.http_port}",
            "/var/lib/nats/jetstream": str(server.dir / "js"),
            "/etc/nats/tls/server.pem": str(cert.cert),
            "/etc/nats/tls/server-key.pem": str(cert.key),
        },
    )
    assert "\ninclude fleet.conf\n" in server.config_text
    (server.dir / "fleet.conf").write_text(STAND_IN_FLEET_CONF)
    try:
        server.start()
        assert_plain_client_refused(server)

        async def tls_client() -> bool:
            context = ssl.create_default_context(cafile=str(ca.cert))
            nc = await nats.connect(server.tls_url, tls=context, user="manager", password="m")
            try:
                return bool(nc.connected_server_version.major == 2)
            finally:
                await nc.close()

        assert asyncio.run(tls_client())
    finally:
        server.kill()

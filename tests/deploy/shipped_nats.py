"""The shipped cluster configs (``deploy/nats/cluster/``) run on one machine, for the deploy tests.

``ShippedCluster`` makes real nats-servers from ``nats-1.conf``, ``nats-2.conf``, ... as they
ship. Only what ties a config to its host is rewritten, each rewrite failing loudly when the
shipped text it expects is gone (``reconciler.testing.natsserver.substitute``): the client,
cluster and monitoring ports move to loopback, the JetStream store and the TLS files into the
test's directory. TLS, verification, the route authorization and ``include fleet.conf`` stay as
shipped. The route URLs come from the environment, as the shipped configs take them: ``route_env``
writes them the way the configs' comments say, with ``127.0.0.1:PORT`` for a server's name.

``fleet.conf`` beside each config is ``STAND_IN_FLEET_CONF`` (see its comment), not the shipped
one: these tests are about TLS and routes, not about the fleet's users.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from reconciler.testing.natsserver import NatsServer, substitute
from reconciler.testing.ports import free_port
from reconciler.testing.tlscerts import CertPair
from tests.contract import REPO

CLUSTER = REPO / "deploy" / "nats" / "cluster"
NAMES = ("nats-1", "nats-2", "nats-3")
MANAGER_PASSWORD = "m-secret"

# STAND-IN for deploy/nats/fleet.conf: that file is being rewritten to include a generated
# users file (`reconciler manager node add`). Until that lands, the servers get this minimal
# account with one manager user. After the merge, switch to the shipped fleet.conf and the
# users file that `reconciler manager node add` writes.
STAND_IN_FLEET_CONF = """\
accounts {
  FLEET {
    jetstream: enabled
    users: [ { user: manager, password: $RECONCILER_MANAGER_PASSWORD } ]
  }
}
"""


def route_variable(name: str) -> str:
    """The environment variable a shipped config reads the route to ``name`` from."""
    return "RECONCILER_ROUTE_" + name.upper().replace("-", "_")


def route_env(password: str, addresses: Mapping[str, str]) -> dict[str, str]:
    """The route password and the route URL of every server in ``addresses`` (name to
    ``HOST:PORT``), written as the configs' comments say."""
    env = {"RECONCILER_ROUTE_PASSWORD": password}
    for name, address in addresses.items():
        env[route_variable(name)] = f"nats-route://route:{password}@{address}"
    return env


def shipped_text(name: str, server: NatsServer, cert: CertPair, ca: Path) -> str:
    """``deploy/nats/cluster/<name>.conf`` with its host, ports and paths rewritten for
    ``server``, and ``cert`` and ``ca`` as its TLS files."""
    text = (CLUSTER / f"{name}.conf").read_text()
    return substitute(
        text,
        {
            "listen: 0.0.0.0:4222": f"listen: 127.0.0.1:{server.port}",
            "http: 127.0.0.1:8222": f"http: 127.0.0.1:{server.http_port}",
            "listen: 0.0.0.0:6222": f"listen: 127.0.0.1:{server.cluster_port}",
            "/var/lib/nats/jetstream": str(server.dir / "js"),
            "/etc/nats/tls/server.pem": str(cert.cert),
            "/etc/nats/tls/server-key.pem": str(cert.key),
            "/etc/nats/tls/ca.pem": str(ca),
        },
    )


class ShippedCluster:
    """Servers made from the shipped configs ``names``, with ``certs[name]`` as each one's
    certificate and ``ca`` as the fleet's CA. Their environment has ``env`` and the route
    variables of every server in ``NAMES`` (``route_env`` with ``route_password``; a server not
    in ``names`` gets a port nothing listens on) unless ``env`` has them already."""

    def __init__(
        self,
        workdir: Path,
        names: Iterable[str],
        *,
        certs: Mapping[str, CertPair],
        ca: Path,
        route_password: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.servers = {name: NatsServer(workdir, name=name) for name in names}
        ports = {name: free_port() for name in NAMES}
        ports.update({name: s.cluster_port for name, s in self.servers.items()})
        addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        self.env = {**route_env(route_password, addresses), **(env or {})}
        for name, server in self.servers.items():
            server.env.update(self.env)
            server.config_text = shipped_text(name, server, certs[name], ca)
            (server.dir / "fleet.conf").write_text(STAND_IN_FLEET_CONF)

    def __getitem__(self, name: str) -> NatsServer:
        return self.servers[name]

    def use_env(self, env: Mapping[str, str]) -> None:
        """Add ``env`` to every server's environment (route URLs written for the cluster ports
        the servers got, say), over what is there."""
        self.env.update(env)
        for server in self.servers.values():
            server.env.update(env)

    def start(self) -> None:
        """Start every server, without waiting for any."""
        for server in self.servers.values():
            server.start(wait=False)

    def kill(self) -> None:
        for server in self.servers.values():
            server.kill()

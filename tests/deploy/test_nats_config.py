"""The shipped fleet deployment files: the 3-server NATS cluster configs and the manager's unit."""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
from pathlib import Path

import nats
import pytest

from reconciler.fleet.buckets import buckets, stream_name
from reconciler.fleet.provision import default_replicas, init_buckets
from reconciler.testing.natsserver import NatsServer, substitute
from reconciler.testing.ports import free_port
from reconciler.testing.tlscerts import TestCA
from tests.contract import REPO, missing, require_nats_server
from tests.deploy.shipped_nats import route_env

CLUSTER = REPO / "deploy" / "nats" / "cluster"
FLEET_CONF = REPO / "deploy" / "nats" / "fleet.conf"
UNIT = REPO / "deploy" / "systemd" / "reconciler-manager.service"
PASSWORDS = {
    "RECONCILER_MANAGER_PASSWORD": "m-secret",
    "RECONCILER_NODE_A_PASSWORD": "a-secret",
    "RECONCILER_NODE_B_PASSWORD": "b-secret",
}


def configs() -> list[Path]:
    return sorted(CLUSTER.glob("nats-*.conf"))


# TLS is on in the shipped configs: certificates made for the test, and the route URLs (which
# the configs read from the environment) with loopback ports.
ROUTE_PASSWORD = "r-secret"


def with_certs(text: str, ca: TestCA, name: str) -> str:
    """``text`` with its TLS files replaced by a certificate ``ca`` makes for ``name``."""
    cert = ca.issue(name)
    return substitute(
        text,
        {
            "/etc/nats/tls/server.pem": str(cert.cert),
            "/etc/nats/tls/server-key.pem": str(cert.key),
            "/etc/nats/tls/ca.pem": str(ca.cert),
        },
    )


def test_three_servers_each_routed_to_the_other_two_in_one_cluster() -> None:
    texts = {p.stem: p.read_text() for p in configs()}
    assert sorted(texts) == ["nats-1", "nats-2", "nats-3"]
    for name, text in texts.items():
        assert f"server_name: {name}\n" in text
        routes = {f"nats-{n}" for n in re.findall(r"\$RECONCILER_ROUTE_NATS_(\d)\n", text)}
        assert routes == set(texts) - {name}, name
        assert "name: reconciler" in text and "jetstream {" in text
        assert "include fleet.conf" in text


def test_each_cluster_config_is_accepted_by_nats_server(tmp_path: Path) -> None:
    binary = require_nats_server()
    shutil.copy(FLEET_CONF, tmp_path / "fleet.conf")
    ca = TestCA(tmp_path / "pki", "fleet")
    routes = route_env(ROUTE_PASSWORD, {p.stem: f"{p.stem}:6222" for p in configs()})
    for config in configs():
        (tmp_path / config.name).write_text(with_certs(config.read_text(), ca, config.stem))
        result = subprocess.run(
            [binary, "-t", "-c", str(tmp_path / config.name)],
            capture_output=True,
            text=True,
            env={**PASSWORDS, **routes},
            timeout=60,
        )
        assert result.returncode == 0, f"{config.name}:\n{result.stdout}\n{result.stderr}"


class ShippedServer(NatsServer):
    """One of the shipped configs, on loopback ports and a store of its own."""

    def __init__(
        self, workdir: Path, config: Path, ports: dict[str, tuple[int, int, int]], ca: TestCA
    ):
        routes = route_env(ROUTE_PASSWORD, {n: f"127.0.0.1:{p[2]}" for n, p in ports.items()})
        super().__init__(workdir, name=config.stem, env={**PASSWORDS, **routes})
        self.port, self.http_port, self.cluster_port = ports[config.stem]
        text = config.read_text()
        text = text.replace("0.0.0.0:4222", f"127.0.0.1:{self.port}")
        text = text.replace("127.0.0.1:8222", f"127.0.0.1:{self.http_port}")
        text = text.replace("0.0.0.0:6222", f"127.0.0.1:{self.cluster_port}")
        text = text.replace("/var/lib/nats/jetstream", str(self.dir / "js"))
        self.shipped = with_certs(text, ca, config.stem)
        shutil.copy(FLEET_CONF, self.dir / "fleet.conf")

    def config(self) -> str:
        return self.shipped


def test_the_shipped_cluster_forms_and_replicates_the_buckets_three_times(tmp_path: Path) -> None:
    require_nats_server()
    ports = {p.stem: (free_port(), free_port(), free_port()) for p in configs()}
    ca = TestCA(tmp_path / "pki", "fleet")
    servers = [ShippedServer(tmp_path, p, ports, ca) for p in configs()]
    try:
        for s in servers:
            s.start(wait=False)
        for s in servers:
            s.wait_healthy()

        async def init() -> list[int]:
            url = servers[0].tls_url
            tls = ssl.create_default_context(cafile=str(ca.cert))
            nc = await nats.connect(url, tls=tls, user="manager", password="m-secret")
            try:
                js = nc.jetstream(timeout=20)
                await init_buckets(js, replicas=default_replicas(nc))
                return [
                    (await js.stream_info(stream_name(b.name))).config.num_replicas or 1
                    for b in buckets()
                ]
            finally:
                await nc.close()

        assert asyncio.run(init()) == [3] * len(buckets())
    finally:
        for s in servers:
            s.kill()


def test_the_managers_unit_is_hardened_and_verifies() -> None:
    text = UNIT.read_text()
    for line in (
        "ExecStart=/usr/local/bin/reconciler manager run --config /etc/reconciler/manager.yaml",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=~@privileged",
        "Restart=always",
        "LoadCredential=nats.creds:/etc/reconciler/manager.creds",
    ):
        assert f"\n{line}\n" in text, line


def test_systemd_accepts_the_managers_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing("systemd-analyze is not installed (Debian package: systemd)")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/reconciler", "/bin/true"))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    if result.stderr.strip():
        pytest.fail(f"systemd-analyze warns: {result.stderr}")

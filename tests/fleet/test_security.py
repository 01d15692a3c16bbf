"""The shipped NATS permissions (deploy/nats/fleet.conf): a node reaches its own keys only."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from reconciler.core.clock import SystemClock
from reconciler.fleet.options import NatsOptions
from reconciler.fleet.provision import init_buckets
from reconciler.fleet.watch import KeyWatch, WatchLost
from reconciler.sessions.nats import NatsSession
from reconciler.testing.natsserver import NatsServer, substitute
from reconciler.testing.polling import eventually
from reconciler.testing.tlscerts import TestCA
from tests.contract import REPO, require_nats_server
from tests.fleet.support import Manager, running_agent, spec

FLEET_CONF = REPO / "deploy" / "nats" / "fleet.conf"
PASSWORDS = {"manager": "m-secret", "node-a": "a-secret", "node-b": "b-secret"}


# every test's server runs the shipped permissions, with the passwords above
pytestmark = pytest.mark.nats_config(
    extra="include fleet.conf",
    env={
        "RECONCILER_MANAGER_PASSWORD": PASSWORDS["manager"],
        "RECONCILER_NODE_A_PASSWORD": PASSWORDS["node-a"],
        "RECONCILER_NODE_B_PASSWORD": PASSWORDS["node-b"],
    },
    files={"fleet.conf": FLEET_CONF},
)


@pytest.fixture
async def manager(nats_server: NatsServer) -> AsyncIterator[Manager]:
    m = await Manager.connect(nats_server.url, user="manager", password=PASSWORDS["manager"])
    await m.init()
    await m.assign("node-a", "web", spec("web"))
    await m.assign("node-b", "secret", spec("secret", env={"TOKEN": "b-only"}))
    yield m
    await m.close()


class NodeClient:
    """A raw connection with a node's credentials, recording what the server refused."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def connect(self, nats_server: NatsServer, user: str) -> Client:
        async def on_error(err: Exception) -> None:
            self.errors.append(str(err))

        self.nc = await nats.connect(
            nats_server.url,
            user=user,
            password=PASSWORDS[user],
            inbox_prefix=f"_INBOX.{user}",
            error_cb=on_error,
        )
        return self.nc

    def refused(self, subject: str) -> bool:
        return any("permissions violation" in e and subject.lower() in e for e in self.errors)


@pytest.fixture
async def node_a(nats_server: NatsServer, manager: Manager) -> AsyncIterator[NodeClient]:
    client = NodeClient()
    await client.connect(nats_server, "node-a")
    yield client
    assert client.nc is not None
    await client.nc.close()


def creds(tmp_path: Path, user: str) -> Path:
    path = tmp_path / f"{user}.creds"
    path.write_text(f"user: {user}\npassword: {PASSWORDS[user]}\n")
    path.chmod(0o600)
    return path


async def test_a_node_with_its_own_credentials_runs_its_assignments(
    tmp_path: Path, nats_server: NatsServer, manager: Manager
) -> None:
    async with running_agent(
        tmp_path / "state", [nats_server.url], creds=creds(tmp_path, "node-a")
    ) as r:
        await eventually(lambda: r.running("web"), "web running")
        await eventually(lambda: manager.status("node-a", "web"), "web's status written")
        beat = await eventually(lambda: manager.node("node-a"), "a heartbeat written")
        assert beat[0]["nodeId"] == "node-a"
        assert set(r.states()) == {"web"}


async def test_node_a_cannot_watch_node_b_assignments(node_a: NodeClient) -> None:
    assert node_a.nc is not None
    own = KeyWatch(node_a.nc, "reconciler_assignments", "node-a.*", timeout=2)
    assert set(await own.start()) == {"node-a.web"}
    await own.stop()
    other = KeyWatch(node_a.nc, "reconciler_assignments", "node-b.*", timeout=2)
    with pytest.raises(WatchLost):
        await other.start()
    await other.stop()
    await eventually(
        lambda: node_a.refused("$kv.reconciler_assignments.node-b.*"), "the refusal reported"
    )


async def test_node_a_cannot_watch_through_the_bare_create_subject(node_a: NodeClient) -> None:
    assert node_a.nc is not None
    inbox = node_a.nc.new_inbox()
    body = {
        "stream_name": "KV_reconciler_assignments",
        "config": {"deliver_subject": inbox, "ack_policy": "none"},
    }
    subject = "$JS.API.CONSUMER.CREATE.KV_reconciler_assignments"
    with pytest.raises(nats.errors.TimeoutError):
        await node_a.nc.request(subject, json.dumps(body).encode(), timeout=1)
    await eventually(lambda: node_a.refused(subject.lower()), "the refusal reported")


async def test_node_a_cannot_write_node_b_keys_or_read_its_status(
    node_a: NodeClient, manager: Manager
) -> None:
    assert node_a.nc is not None
    js = node_a.nc.jetstream(timeout=1)
    for subject in ("$KV.reconciler_status.node-b.secret", "$KV.reconciler_nodes.node-b"):
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish(subject, b'{"state":"running"}')
        await eventually(lambda s=subject: node_a.refused(s.lower()), f"{subject} refused")
    assert await manager.status("node-b", "secret") is None
    assert await manager.node("node-b") is None
    # its own keys are writable
    await js.publish("$KV.reconciler_nodes.node-a", b"{}")
    assert await manager.node("node-a") is not None
    read = "$JS.API.DIRECT.GET.KV_reconciler_status.$KV.reconciler_status.node-b.secret"
    with pytest.raises(nats.errors.TimeoutError):
        await node_a.nc.request(read, b"", timeout=1)
    await eventually(lambda: node_a.refused(read.lower()), "the read refused")


async def test_node_a_cannot_listen_on_node_b_inbox(node_a: NodeClient) -> None:
    assert node_a.nc is not None
    await node_a.nc.subscribe("_INBOX.node-b.>")
    await node_a.nc.flush()
    await eventually(lambda: node_a.refused("_inbox.node-b.>"), "the subscription refused")


async def test_a_node_cannot_create_buckets(nats_server: NatsServer) -> None:
    client = NodeClient()
    nc = await client.connect(nats_server, "node-a")
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await init_buckets(nc.jetstream(timeout=1))
        await eventually(lambda: client.refused("$js.api.stream"), "the refusal reported")
    finally:
        await nc.close()


async def test_node_a_credentials_under_node_b_id_never_get_node_b_tasks(
    tmp_path: Path, nats_server: NatsServer, manager: Manager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    session = NatsSession(
        node_id="node-b",
        options=NatsOptions(servers=(nats_server.url,), creds=creds(tmp_path, "node-a")),
        clock=SystemClock(),
        request_timeout=1.0,
    )
    messages: list[object] = []

    async def collect() -> None:
        async for m in session.messages():
            messages.append(m)

    task = asyncio.create_task(collect())
    try:
        await eventually(
            lambda: any("permissions violation" in r.getMessage() for r in caplog.records),
            "the refusal logged",
        )
        assert not session.connected
        assert messages == []
        assert all(PASSWORDS["node-a"] not in r.getMessage() for r in caplog.records)
    finally:
        await session.close()
        await task


def test_the_shipped_server_config_parses(tmp_path: Path) -> None:
    binary = require_nats_server()
    shutil.copy(REPO / "deploy" / "nats" / "fleet.conf", tmp_path / "fleet.conf")
    # TLS is on: the config's certificate files, made for the test
    cert = TestCA(tmp_path / "pki").issue("fleet-1")
    text = (REPO / "deploy" / "nats" / "nats-server.conf").read_text()
    text = substitute(
        text,
        {"/etc/nats/tls/server.pem": str(cert.cert), "/etc/nats/tls/server-key.pem": str(cert.key)},
    )
    (tmp_path / "nats-server.conf").write_text(text)
    env = {
        "RECONCILER_MANAGER_PASSWORD": "m",
        "RECONCILER_NODE_A_PASSWORD": "a",
        "RECONCILER_NODE_B_PASSWORD": "b",
    }
    check = subprocess.run(
        [binary, "-t", "-c", str(tmp_path / "nats-server.conf")],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "is valid" in check.stdout + check.stderr

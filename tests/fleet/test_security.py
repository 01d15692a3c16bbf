"""The shipped NATS permissions: deploy/nats/fleet.conf with a users file generated from the one
template (reconciler.fleet.identity): a node reaches its own keys only, for every subject kind
the code uses, and the template allows what the code does."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from reconciler.core.clock import SystemClock
from reconciler.fleet.buckets import ASSIGNMENTS, CONTROL, FLEET_KEY, STATUS, node_control_key
from reconciler.fleet.identity import USERS_KEY
from reconciler.fleet.options import NatsOptions
from reconciler.fleet.provision import init_buckets
from reconciler.fleet.watch import KeyWatch, WatchLost
from reconciler.manager.writes import kv
from reconciler.sessions.nats import NatsSession
from reconciler.testing.natsserver import NatsServer, substitute
from reconciler.testing.polling import eventually
from reconciler.testing.tlscerts import TestCA
from tests.contract import REPO, require_nats_server
from tests.fleet.identities import PASSWORDS, Peer, fleet_server, install
from tests.fleet.identities import creds as creds_file
from tests.fleet.support import Manager, running_agent, spec


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """Every test's server runs the shipped account with the generated users."""
    with fleet_server(tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def manager(nats_server: NatsServer) -> AsyncIterator[Manager]:
    m = await Manager.connect(nats_server.url, user="manager", password=PASSWORDS["manager"])
    await m.init()
    await m.assign("node-a", "web", spec("web"))
    await m.assign("node-b", "secret", spec("secret", env={"TOKEN": "b-only"}))
    await (await m.kv(CONTROL)).put(USERS_KEY, b"[]")
    yield m
    await m.close()


@pytest.fixture
async def node_a(nats_server: NatsServer, manager: Manager) -> AsyncIterator[Peer]:
    peer = Peer("node-a")
    await peer.connect(nats_server.url)
    yield peer
    await peer.close()


def creds(tmp_path: Path, user: str) -> Path:
    return creds_file(tmp_path, user)


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


async def test_node_a_watches_its_own_keys_and_no_other(node_a: Peer) -> None:
    own = [(ASSIGNMENTS, "node-a.*"), (CONTROL, node_control_key("node-a")), (CONTROL, FLEET_KEY)]
    for bucket, keys in own:
        watch = KeyWatch(node_a.nc, bucket, keys, timeout=2)
        await watch.start()
        await watch.stop()
    others = [
        (ASSIGNMENTS, "node-b.*"),
        (ASSIGNMENTS, ">"),
        (CONTROL, node_control_key("node-b")),
        (CONTROL, USERS_KEY),
        (CONTROL, ">"),
        (STATUS, "node-a.*"),
    ]
    for bucket, keys in others:
        watch = KeyWatch(node_a.nc, bucket, keys, timeout=1)
        with pytest.raises(WatchLost):
            await watch.start()
        await watch.stop()
        await eventually(lambda b=bucket, k=keys: node_a.refused_watch(b, k), f"{bucket}/{keys}")
    assert node_a.errors and all("permissions violation" in e.lower() for e in node_a.errors)


async def test_node_a_cannot_reach_any_key_through_the_api_subjects_that_read_any(
    node_a: Peer,
) -> None:
    bare = {
        "stream_name": "KV_reconciler_assignments",
        "config": {"deliver_subject": node_a.nc.new_inbox(), "ack_policy": "none"},
    }
    await node_a.refuses(
        [
            ("$JS.API.CONSUMER.CREATE.KV_reconciler_assignments", json.dumps(bare).encode()),
            ("$JS.API.CONSUMER.DURABLE.CREATE.KV_reconciler_assignments.d", b"{}"),
            ("$JS.API.DIRECT.GET.KV_reconciler_status", b'{"seq": 1}'),
            ("$JS.API.DIRECT.GET.KV_reconciler_control.$KV.reconciler_control.users", b""),
            ("$JS.API.STREAM.MSG.GET.KV_reconciler_status", b'{"seq": 1}'),
            ("$JS.API.STREAM.INFO.KV_reconciler_status", b""),
            ("$JS.API.STREAM.DELETE.KV_reconciler_status", b""),
            ("$JS.API.CONSUMER.LIST.KV_reconciler_status", b""),
        ]
    )


async def test_node_a_writes_and_reads_back_its_own_keys_only(
    node_a: Peer, manager: Manager
) -> None:
    js = node_a.nc.jetstream(timeout=1)
    await js.publish("$KV.reconciler_nodes.node-a", b"{}")
    assert await manager.node("node-a") is not None
    status = kv(js, STATUS)  # nats-py's direct get by subject, as the agent's CAS reads
    revision = await status.put("node-a.web", b'{"state": "running"}')
    assert (await status.get("node-a.web")).revision == revision
    await node_a.refuses(
        [
            ("$KV.reconciler_status.node-b.secret", b'{"state":"running"}'),
            ("$KV.reconciler_nodes.node-b", b"{}"),
            ("$KV.reconciler_assignments.node-a.web", b"{}"),
            ("$KV.reconciler_assignments.node-b.secret", b"{}"),
            ("$KV.reconciler_services.web", b"{}"),
            ("$KV.reconciler_leader.leader", b"node-a"),
            ("$KV.reconciler_control.node.node-a", b'{"availability":"active"}'),
            ("$KV.reconciler_control.fleet", b"{}"),
            ("$KV.reconciler_control.users", b"[]"),
            ("$JS.API.DIRECT.GET.KV_reconciler_status.$KV.reconciler_status.node-b.secret", b""),
        ]
    )
    assert await manager.status("node-b", "secret") is None
    assert await manager.node("node-b") is None


async def test_node_a_cannot_listen_on_node_b_inbox(node_a: Peer) -> None:
    await node_a.nc.subscribe("_INBOX.node-b.>")
    await node_a.nc.flush()
    await eventually(lambda: node_a.refused("_INBOX.node-b.>"), "the subscription refused")


async def test_a_node_cannot_create_buckets(nats_server: NatsServer) -> None:
    peer = Peer("node-a")
    nc = await peer.connect(nats_server.url)
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await init_buckets(nc.jetstream(timeout=1))
        await eventually(
            lambda: any(r.startswith("$js.api.stream") for r in peer.refusals),
            "the refusal reported",
        )
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


def test_the_shipped_server_config_parses_with_a_generated_users_file(tmp_path: Path) -> None:
    binary = require_nats_server()
    install(tmp_path)
    # TLS is on: the config's certificate files, made for the test
    cert = TestCA(tmp_path / "pki").issue("fleet-1")
    text = (REPO / "deploy" / "nats" / "nats-server.conf").read_text()
    text = substitute(
        text,
        {"/etc/nats/tls/server.pem": str(cert.cert), "/etc/nats/tls/server-key.pem": str(cert.key)},
    )
    (tmp_path / "nats-server.conf").write_text(text)
    check = subprocess.run(
        [binary, "-t", "-c", str(tmp_path / "nats-server.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "is valid" in check.stdout + check.stderr

"""Quotas keep the manager leading: a node that floods its own status keys fills only the status
bucket, and the manager still leads, places tasks and cleans up after it.

The server runs the fleet account's limits as they are meant for the shipped config
(``FLEET_ACCOUNT_LIMITS``, checked here with ``nats-server -t`` and live), and the buckets get a
small status quota through the same init code as ``reconciler manager init``. The users are a
manager and two nodes with the shipped node permissions (``users()``, kept apart: the users
file's format is the deploy config's business).
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import APIError, KeyNotFoundError

from reconciler.core.model import TaskState
from reconciler.fleet.buckets import LEADER, MAX_BYTES, STATUS, key_subject, stream_name
from reconciler.testing.natsserver import NatsServer, nats_server_binary
from reconciler.testing.polling import eventually
from tests.contract import require_nats_server
from tests.manager.harness import Fleet, FleetAgent, ManagerProcess, service_set

KI = 1 << 10
STATUS_QUOTA = {"max_bytes": {"status": 256 * KI}, "max_value_size": {"status": 4 * KI}}

FLEET_ACCOUNT_LIMITS = """\
    # nats-server 2.9 has no per-user quota: these hold for the whole account, nodes and
    # managers together (docs/fleet.md#quotas)
    jetstream {
      # the buckets' max_bytes are reserved against it, once per replica: their defaults
      # (149 MiB) three times, with room to raise some
      max_file: 1GB
      # the buckets are on disk; the watches' consumers take no account memory
      max_mem: 0
      # six buckets
      max_streams: 16
      # counted per stream by nats-server 2.9: two watches per node on reconciler_control,
      # one on reconciler_assignments, a few per manager; for 1,000 nodes twice over
      max_consumers: 4096
    }
    limits {
      # a connection per node and manager, and per command; an agent that reconnects may
      # hold its old one until the server notices: 1,000 nodes twice over
      max_connections: 2048
      # per connection, and a client past it is disconnected: a manager uses 6, an agent 4
      max_subscriptions: 100
      # the largest value (1 MiB, an assignment or a service) fits; larger ones disconnect
      max_payload: 1MB
    }
"""
"""The FLEET account's limits, as deploy/nats/fleet.conf should carry them."""

PASSWORDS = {"manager": "m-secret", "node-a": "a-secret", "node-b": "b-secret"}


def users() -> str:
    """The manager, and node-a and node-b with the shipped node permissions."""

    def node(name: str) -> str:
        allow = [
            f"$JS.API.CONSUMER.CREATE.KV_reconciler_assignments.*.$KV.reconciler_assignments.{name}.*",
            f"$JS.API.CONSUMER.CREATE.KV_reconciler_control.*.$KV.reconciler_control.node.{name}",
            "$JS.API.CONSUMER.CREATE.KV_reconciler_control.*.$KV.reconciler_control.fleet",
            f"$KV.reconciler_nodes.{name}",
            f"$KV.reconciler_status.{name}.*",
            f"$JS.API.DIRECT.GET.KV_reconciler_status.$KV.reconciler_status.{name}.*",
        ]
        subjects = "\n".join(f'            "{s}"' for s in allow)
        return f"""\
      {{
        user: {name}
        password: {PASSWORDS[name]}
        permissions: {{
          publish: {{ allow: [
{subjects}
          ] }}
          subscribe: {{ allow: ["_INBOX.{name}.>"] }}
        }}
      }}
"""

    manager = f"      {{ user: manager, password: {PASSWORDS['manager']} }}\n"
    return f"    users: [\n{manager}{node('node-a')}{node('node-b')}    ]\n"


ACCOUNTS = f"accounts {{\n  FLEET {{\n{FLEET_ACCOUNT_LIMITS}{users()}  }}\n}}\n"

pytestmark = pytest.mark.nats_config(extra=ACCOUNTS)


def creds(tmp_path: Path, user: str) -> Path:
    path = tmp_path / f"{user}.creds"
    path.write_text(f"user: {user}\npassword: {PASSWORDS[user]}\n")
    path.chmod(0o600)
    return path


async def connect(server: NatsServer, user: str) -> Client:
    return await nats.connect(
        server.url, user=user, password=PASSWORDS[user], inbox_prefix=f"_INBOX.{user}"
    )


@pytest.fixture
async def fleet(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Fleet]:
    nc = await connect(nats_server, "manager")
    f = Fleet([nats_server.url], creds=creds(tmp_path, "manager"))
    await f.init(nc, **STATUS_QUOTA)
    await nc.close()
    yield f


def test_the_account_limits_are_a_valid_nats_server_2_9_config(tmp_path: Path) -> None:
    require_nats_server()
    binary = nats_server_binary()
    assert binary is not None
    config = tmp_path / "server.conf"
    config.write_text(f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n{ACCOUNTS}')
    done = subprocess.run([binary, "-t", "-c", str(config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    config.write_text(ACCOUNTS.replace("max_mem: 0", "max_mem: 0\n      max_memory_store: 1"))
    bad = subprocess.run([binary, "-t", "-c", str(config)], capture_output=True, text=True)
    assert bad.returncode != 0  # the check does read the block


async def test_the_account_holds_three_replicas_of_the_default_buckets(
    nats_server: NatsServer, fleet: Fleet
) -> None:
    nc = await connect(nats_server, "manager")
    try:
        limits = (await nc.jetstream().account_info()).limits
    finally:
        await nc.close()
    assert limits.max_storage == 1 << 30 and limits.max_memory == 0
    assert (limits.max_streams, limits.max_consumers) == (16, 4096)
    assert 3 * sum(MAX_BYTES.values()) <= limits.max_storage


async def flood(nc: Client, node: str) -> int:
    """Write 3 KiB values to new status keys of ``node`` until JetStream refuses one because
    the bucket is full; returns how many it took. A write refused for another reason fails."""
    js = nc.jetstream(timeout=10)
    for i in range(1000):
        try:
            await js.publish(key_subject(STATUS, f"{node}.flood-{i}"), b"f" * (3 * KI))
        except APIError as err:
            assert err.err_code == 10077, err  # maximum bytes exceeded
            return i
    raise AssertionError("1000 writes of 3 KiB and the 256 KiB status bucket is not full")


async def leader_revision(nc: Client) -> int:
    entry = await (await nc.jetstream().key_value(LEADER)).get("leader")
    return int(entry.revision or 0)


async def test_a_node_flooding_its_status_keys_cannot_stop_the_manager_leading_or_placing(
    tmp_path: Path, nats_server: NatsServer, fleet: Fleet
) -> None:
    url = nats_server.url
    manager = ManagerProcess([url], "manager-1", creds=creds(tmp_path, "manager"), **STATUS_QUOTA)
    manager.start()
    agent = FleetAgent(tmp_path / "node-b", [url], "node-b", creds=creds(tmp_path, "node-b"))
    await agent.start()
    flooder = await connect(nats_server, "node-a")
    admin = await connect(nats_server, "manager")
    try:
        await eventually(lambda: manager.leading, "the manager leads")
        await eventually(
            lambda: manager.metric("reconciler_manager_nodes", state="ready") == 1.0, "node-b"
        )
        js = flooder.jetstream(timeout=10)
        with pytest.raises(APIError, match="message size exceeds maximum allowed"):
            await js.publish(key_subject(STATUS, "node-a.big"), b"x" * (4 * KI + 1))
        written = await flood(flooder, "node-a")
        assert 256 // 4 < written < 256 // 3  # as many as 3 KiB values and their keys fit
        state = (await admin.jetstream().stream_info(stream_name(STATUS))).state
        assert 256 * KI - 4 * KI < state.bytes <= 256 * KI

        # the manager still leads (its key is refreshed), and writes a new service's task
        before = await leader_revision(admin)

        async def refreshed() -> bool:
            return await leader_revision(admin) > before

        await eventually(refreshed, "the lease refreshed")
        assert manager.leading
        await fleet.apply(service_set({"name": "web", "replicas": 1}))
        assert await eventually(fleet.placement, "web-1 assigned") == {"web-1": ["node-b"]}
        await eventually(lambda: agent.running() == {"web-1"}, "node-b runs web-1")
        assert manager.metric("reconciler_manager_node_keys", node="node-a") == float(written)

        # the flood matches no assignment: the leader deletes it, and node-b's status lands
        await eventually(
            lambda: manager.metric("reconciler_manager_node_keys", node="node-a") is None,
            "node-a's keys deleted",
        )
        await eventually(lambda: running(fleet, "node-b.web-1"), "web-1's status running")
        assert manager.metric("reconciler_manager_node_keys", node="node-b") == 1.0
        with pytest.raises(KeyNotFoundError):
            await (await admin.jetstream().key_value(STATUS)).get("node-a.flood-0")
        assert manager.leading
    finally:
        await flooder.close()
        await admin.close()
        await manager.stop()
        await agent.stop()
        agent.close()


async def running(fleet: Fleet, key: str) -> bool:
    reported = (await fleet.read()).statuses.get(key)
    return reported is not None and reported.state is TaskState.RUNNING

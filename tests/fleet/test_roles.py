"""Operators and viewers on the shipped account with generated users: what the manager commands
need, and nothing more; and a removed identity is cut off by a reload with the regenerated file."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from reconciler.core.model import Availability
from reconciler.fleet.buckets import ASSIGNMENTS, CONTROL, LEADER, node_control_key
from reconciler.fleet.identity import USERS_KEY, inbox_prefix, removed
from reconciler.fleet.options import NatsOptions, checked_options
from reconciler.fleet.watch import KeyWatch, WatchLost
from reconciler.manager.admin import (
    FleetError,
    apply_services,
    read_fleet,
    remove_services,
)
from reconciler.manager.control import set_availability, set_labels
from reconciler.manager.identities import read_identities
from reconciler.manager.services import parse_service_file
from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually
from tests.fleet.identities import (
    PASSWORDS,
    Peer,
    creds,
    fleet_server,
    identities,
    install,
    logs_in,
)
from tests.fleet.support import IMAGE, Manager, spec

SERVICES_FILE = f"""
apiVersion: reconciler/v1
kind: ServiceSet
services:
  - name: web
    image: {IMAGE}
    replicas: 2
"""


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    with fleet_server(tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def manager(nats_server: NatsServer) -> AsyncIterator[Manager]:
    m = await Manager.connect(nats_server.url, user="manager", password=PASSWORDS["manager"])
    await m.init()
    await m.assign("node-a", "web-1", spec("web-1"))
    await (await m.kv(CONTROL)).put(USERS_KEY, b"[]")
    yield m
    await m.close()


def options(url: str, tmp_path: Path, user: str) -> NatsOptions:
    """The connection options the command line builds from ``--creds``: the user's inbox."""
    return checked_options(url, creds=str(creds(tmp_path, user)))


async def test_an_operator_applies_drains_and_reads_the_fleet(
    tmp_path: Path, nats_server: NatsServer, manager: Manager
) -> None:
    op = options(nats_server.url, tmp_path, "op")
    assert op.inbox_prefix == "_INBOX.op"
    services = parse_service_file(SERVICES_FILE.encode(), "web.yaml")
    lines, placement = await apply_services(op, services, prune=False, dry_run=True)
    assert lines == ["create service web (2 replicas)"] and placement
    lines, _ = await apply_services(op, services, prune=False, dry_run=False)
    assert lines == ["create service web (2 replicas)"]
    await set_availability(op, "node-a", Availability.DRAIN)
    labelled = await set_labels(op, "node-a", {"site": "secure"}, [])
    assert dict(labelled.labels) == {"site": "secure"}
    view = await read_fleet(op)
    assert set(view.services) == {"web"}
    assert view.availability == {"node-a": Availability.DRAIN}
    assert view.operator_labels == {"node-a": {"site": "secure"}}
    assert set(view.assignments) == {"node-a.web-1"}
    assert await remove_services(op, ["web"]) == ["remove service web"]


async def test_an_operator_reads_no_identities_and_writes_no_assignments_or_leader(
    tmp_path: Path, nats_server: NatsServer, manager: Manager
) -> None:
    with pytest.raises(FleetError, match=r"NATS refused it: .*reconciler_control\.users"):
        await read_identities(options(nats_server.url, tmp_path, "op"), users_file=None)
    peer = Peer("op")
    await peer.connect(nats_server.url)
    try:
        for bucket, keys in ((CONTROL, USERS_KEY), (CONTROL, ">"), (LEADER, ">")):
            watch = KeyWatch(peer.nc, bucket, keys, timeout=1)
            with pytest.raises(WatchLost):
                await watch.start()
            await watch.stop()
            await eventually(lambda b=bucket, k=keys: peer.refused_watch(b, k), f"{bucket} {keys}")
        await peer.refuses(
            [
                ("$KV.reconciler_assignments.node-a.web-1", b"{}"),
                ("$KV.reconciler_leader.leader", b"op"),
                ("$KV.reconciler_control.users", b"[]"),
                ("$KV.reconciler_control.fleet", b"{}"),
                ("$KV.reconciler_status.node-a.web-1", b"{}"),
                ("$KV.reconciler_nodes.node-a", b"{}"),
                ("$JS.API.DIRECT.GET.KV_reconciler_control.$KV.reconciler_control.users", b""),
                ("$JS.API.DIRECT.GET.KV_reconciler_control", b'{"seq": 1}'),
                ("$JS.API.STREAM.MSG.GET.KV_reconciler_control", b'{"seq": 1}'),
                ("$JS.API.CONSUMER.CREATE.KV_reconciler_control", b"{}"),
                ("$JS.API.STREAM.CREATE.KV_reconciler_evil", b"{}"),
                ("$JS.API.STREAM.DELETE.KV_reconciler_services", b""),
                ("$JS.API.STREAM.PURGE.KV_reconciler_services", b""),
                ("$JS.API.CONSUMER.DELETE.KV_reconciler_services.x", b""),
            ]
        )
    finally:
        await peer.close()
    assert await manager.status("node-a", "web-1") is None
    assert (await (await manager.kv(CONTROL)).get(USERS_KEY)).value == b"[]"


async def test_a_viewer_reads_the_fleet_and_writes_nothing(
    tmp_path: Path, nats_server: NatsServer, manager: Manager
) -> None:
    viewer = options(nats_server.url, tmp_path, "viewer")
    view = await read_fleet(viewer)
    assert set(view.assignments) == {"node-a.web-1"}
    services = parse_service_file(SERVICES_FILE.encode(), "web.yaml")
    _, placement = await apply_services(viewer, services, prune=False, dry_run=True)
    assert placement  # a dry run only reads
    with pytest.raises(FleetError, match=r"writing reconciler_services/web: NATS refused it"):
        await apply_services(viewer, services, prune=False, dry_run=False)
    with pytest.raises(FleetError, match=r"writing reconciler_control/node.node-a: NATS refused"):
        await set_availability(viewer, "node-a", Availability.DRAIN)
    with pytest.raises(FleetError, match=r"writing reconciler_control/node.node-a: NATS refused"):
        await set_labels(viewer, "node-a", {"site": "secure"}, [])
    view = await read_fleet(viewer)
    assert view.services == {} and view.availability == {}
    assert node_control_key("node-a") not in await (await manager.kv(CONTROL)).keys()
    with pytest.raises(FleetError, match="NATS refused it"):
        await read_identities(viewer, users_file=None)


async def test_a_removed_node_is_cut_off_by_a_reload_with_the_regenerated_file(
    tmp_path: Path, nats_server: NatsServer, manager: Manager
) -> None:
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    async def quiet(err: Exception) -> None:
        pass

    def connect(user: str) -> asyncio.Future[nats.NATS]:
        return asyncio.ensure_future(
            nats.connect(
                nats_server.url,
                user=user,
                password=PASSWORDS[user],
                inbox_prefix=inbox_prefix(user),
                allow_reconnect=False,
                closed_cb=on_closed if user == "node-b" else None,
                error_cb=quiet,
            )
        )

    node_b, node_a = await connect("node-b"), await connect("node-a")
    try:
        watch = KeyWatch(node_a, ASSIGNMENTS, "node-a.*", timeout=2)
        assert set(await watch.start()) == {"node-a.web-1"}
        await watch.stop()
        install(nats_server.dir, removed(identities(), "node-b"))
        assert nats_server.proc is not None
        nats_server.proc.send_signal(signal.SIGHUP)
        await asyncio.wait_for(closed.wait(), timeout=60)  # a deadline, not a synchronisation
        assert node_b.is_closed
        assert not await logs_in(nats_server.url, "node-b", PASSWORDS["node-b"])
        assert await logs_in(nats_server.url, "node-a", PASSWORDS["node-a"])
        # the others keep their connections and their permissions (JetStream answers the
        # account again once the reload is done)
        assert node_a.is_connected

        async def watched() -> set[str]:
            watch = KeyWatch(node_a, ASSIGNMENTS, "node-a.*", timeout=2)
            try:
                return set(await watch.start())
            finally:
                await watch.stop()

        assert await eventually(watched, "node-a watching after the reload") == {"node-a.web-1"}
    finally:
        await node_a.close()
        await node_b.close()

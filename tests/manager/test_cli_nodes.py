"""``reconciler manager node add|rm|ls|users-file``: the identities from the command line, end to
end (a real nats-server running the shipped account with the users file the commands write), and
how the manager forgets a removed node."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import bcrypt
import nats
import pytest

from reconciler.core.model import Availability
from reconciler.fleet.buckets import ASSIGNMENTS, CONTROL, NODES, STATUS, node_control_key
from reconciler.fleet.identity import Identity, Role, added, users_in_file
from reconciler.fleet.options import NatsOptions, checked_options
from reconciler.fleet.watch import Entry
from reconciler.manager.admin import connected
from reconciler.manager.health import Health
from reconciler.manager.identities import (
    add_identity,
    change_users,
    forget_node,
    read_identities,
)
from reconciler.manager.view import FleetView
from reconciler.testing.natsserver import NatsServer, NatsServerMissing
from reconciler.testing.polling import eventually, wait_until
from tests.contract import missing
from tests.fleet.identities import FLEET_CONF, logs_in
from tests.fleet.support import Manager
from tests.manager.harness import Fleet, FleetAgent, ManagerProcess, service_set

USERS_FILE = "fleet-users.conf"


def entry(key: str, value: dict[str, Any] | None, revision: int) -> Entry:
    return Entry(key, None if value is None else json.dumps(value).encode(), revision)


def test_the_manager_forgets_a_node_whose_key_and_assignments_are_deleted() -> None:
    view = FleetView(grace=10.0)
    view.health.watching(0.0)
    view.apply(NODES, entry("gone", {"ready": True}, 1), 1.0)
    view.apply(NODES, entry("stays", {"ready": True}, 2), 1.0)
    view.apply(ASSIGNMENTS, entry("gone.web-1", {"image": "x"}, 3), 1.0)
    view.apply(ASSIGNMENTS, entry("gone.web-2", {"image": "x"}, 4), 1.0)
    assert view.apply(NODES, entry("gone", None, 5), 2.0)
    # it holds assignments: judged as a node that stopped beating, so that they move
    assert view.node_views(20.0)["gone"].health is Health.DOWN
    assert view.apply(ASSIGNMENTS, entry("gone.web-1", None, 6), 20.0)
    assert "gone" in view.node_views(20.0)
    assert view.apply(ASSIGNMENTS, entry("gone.web-2", None, 7), 20.0)
    assert set(view.node_views(20.0)) == {"stays"}  # not shown down for ever
    # a node that beats again is a node again
    view.apply(NODES, entry("gone", {"ready": True}, 8), 21.0)
    assert view.node_views(21.0)["gone"].health is Health.READY


def test_a_node_without_a_key_is_still_forgotten_when_the_assignments_are_read_afresh() -> None:
    view = FleetView(grace=10.0)
    view.apply(ASSIGNMENTS, entry("gone.web-1", {"image": "x"}, 1), 0.0)
    view.apply(NODES, entry("gone", {"ready": True}, 2), 0.0)
    view.apply(NODES, entry("gone", None, 3), 0.0)
    assert "gone" in view.node_views(0.0)
    view.load(ASSIGNMENTS, {}, 1.0)
    assert view.node_views(1.0) == {}


# ------------------------------------------------------------------------ end to end


def cli(cwd: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """``reconciler ARGS`` as a subprocess in ``cwd``; its exit code must be ``code``."""
    done = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == code, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Server:
    """A nats-server of the fleet whose users file is the one the commands in ``cwd`` write."""

    def __init__(self, workdir: Path, cwd: Path) -> None:
        try:
            self.nats = NatsServer(workdir, extra="include fleet.conf")
        except NatsServerMissing as err:
            missing(str(err))
        self.cwd = cwd
        (self.nats.dir / "fleet.conf").write_text(FLEET_CONF.read_text())
        self.install()

    def install(self) -> None:
        (self.nats.dir / USERS_FILE).write_text((self.cwd / USERS_FILE).read_text())

    def reload(self) -> None:
        """Install the users file the commands wrote last, and reload the server with it."""
        self.install()
        assert self.nats.proc is not None
        before = self.nats.log_path.read_text().count("Reloaded server configuration")
        self.nats.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: self.nats.log_path.read_text().count("Reloaded server configuration") > before,
            "the server reloaded",
            context=self.nats.log_tail,
        )


@pytest.fixture
def fleet(tmp_path: Path) -> Any:
    cwd = tmp_path / "admin"
    cwd.mkdir()
    cli(cwd, "manager", "node", "add", "boss", "--role", "manager", "--bootstrap")
    server = Server(tmp_path / "nats", cwd)
    server.nats.start()
    try:
        yield server
    finally:
        server.nats.kill()


def test_bootstrap_writes_a_private_manager_and_a_users_file_holding_it_alone(
    tmp_path: Path,
) -> None:
    out = cli(tmp_path, "manager", "node", "add", "boss", "--role", "manager", "--bootstrap")
    assert "added manager boss: credentials in boss.creds (mode 0600)" in out.stdout
    assert "install -m 0640 -g nats fleet-users.conf /etc/nats/fleet-users.conf" in out.stdout
    assert mode(tmp_path / "boss.creds") == 0o600
    assert mode(tmp_path / USERS_FILE) == 0o640
    text = (tmp_path / USERS_FILE).read_text()
    assert "generated by `reconciler manager node add boss --role manager`" in text
    assert [(i.name, i.role) for i in users_in_file(text)] == [("boss", Role.MANAGER)]
    # neither file is overwritten without --force
    again = cli(
        tmp_path, "manager", "node", "add", "boss", "--role", "manager", "--bootstrap", code=1
    )
    assert f"{USERS_FILE} exists" in again.stderr
    refused = cli(tmp_path, "manager", "node", "add", "boss", "--bootstrap", code=2)
    assert "--role manager" in refused.stderr


def test_add_seeds_the_list_then_rm_revokes_and_ls_lists_names_and_roles(
    fleet: Server,
) -> None:
    cwd, url = fleet.cwd, fleet.nats.url
    boss = ("--nats", url, "--creds", "boss.creds")
    out = cli(cwd, "manager", "init", *boss)
    assert "created reconciler_control" in out.stdout
    out = cli(cwd, "manager", "node", "add", "node-a", *boss)
    assert "started it with boss (manager)" in out.stderr  # the bootstrap manager kept
    assert "added node node-a: credentials in node-a.creds (mode 0600)" in out.stdout
    assert mode(cwd / "node-a.creds") == 0o600
    cli(cwd, "manager", "node", "add", "alice", "--role", "operator", "--out", "op.creds", *boss)
    assert mode(cwd / "op.creds") == 0o600
    listed = json.loads(cli(cwd, "manager", "node", "ls", "-o", "json", *boss).stdout)
    assert listed == [
        {"name": "alice", "role": "operator"},
        {"name": "boss", "role": "manager"},
        {"name": "node-a", "role": "node"},
    ]
    table = cli(cwd, "manager", "node", "ls", *boss).stdout
    assert "$2a$" not in table and "alice   operator" in table
    text = (cwd / USERS_FILE).read_text()
    assert [i.name for i in users_in_file(text)] == ["alice", "boss", "node-a"]

    again = cli(cwd, "manager", "node", "add", "node-a", "--out", "x.creds", *boss, code=1)
    assert "pass --rotate" in again.stderr and not (cwd / "x.creds").exists()
    kept = cli(cwd, "manager", "node", "add", "node-a", "--rotate", *boss, code=1)
    assert "node-a.creds exists: pass --force" in kept.stderr
    old = (cwd / "node-a.creds").read_text()
    cli(cwd, "manager", "node", "add", "node-a", "--rotate", "--force", *boss)
    assert (cwd / "node-a.creds").read_text() != old and mode(cwd / "node-a.creds") == 0o600

    fleet.reload()
    assert asyncio.run(connects(url, cwd / "node-a.creds"))
    elsewhere = cwd.parent / "other-host"
    elsewhere.mkdir()
    (elsewhere / "boss.creds").write_text((cwd / "boss.creds").read_text())
    cli(elsewhere, "manager", "node", "users-file", "--users-file", "u.conf", *boss)
    assert users_in_file((elsewhere / "u.conf").read_text()) == users_in_file(
        (cwd / USERS_FILE).read_text()
    )

    out = cli(cwd, "manager", "node", "rm", "node-a", *boss)
    assert out.stdout.startswith("removed node node-a\n")
    assert [i.name for i in users_in_file((cwd / USERS_FILE).read_text())] == ["alice", "boss"]
    fleet.reload()
    assert not asyncio.run(connects(url, cwd / "node-a.creds"))
    gone = cli(cwd, "manager", "node", "rm", "node-a", *boss, code=1)
    assert "no identity named node-a" in gone.stderr
    last = cli(cwd, "manager", "node", "rm", "boss", *boss, code=1)
    assert "boss is the last manager" in last.stderr


def test_rm_forgets_the_nodes_keys(fleet: Server) -> None:
    cwd, url = fleet.cwd, fleet.nats.url
    boss = ("--nats", url, "--creds", "boss.creds")
    cli(cwd, "manager", "init", *boss)
    cli(cwd, "manager", "node", "add", "node-a", *boss)
    cli(cwd, "manager", "node", "add", "node-b", *boss)

    async def put_keys() -> None:
        m = await Manager.connect(url, user="boss", password=_password(cwd / "boss.creds"))
        try:
            for node in ("node-a", "node-b"):
                await m.assign(node, "web-1", {"name": "web-1", "image": "x"})
                await (await m.kv(NODES)).put(node, b'{"ready": true}')
                await (await m.kv(STATUS)).put(f"{node}.web-1", b'{"state": "running"}')
                await m.availability(node, Availability.DRAIN.value)
        finally:
            await m.close()

    async def keys(bucket: str) -> list[str]:
        m = await Manager.connect(url, user="boss", password=_password(cwd / "boss.creds"))
        try:
            return sorted(await (await m.kv(bucket)).keys())
        except Exception:
            return []
        finally:
            await m.close()

    asyncio.run(put_keys())
    out = cli(cwd, "manager", "node", "rm", "node-b", *boss)
    assert "forgot node node-b's keys: reconciler_nodes 1, reconciler_control 1" in out.stdout
    assert asyncio.run(keys(NODES)) == ["node-a"]
    assert asyncio.run(keys(ASSIGNMENTS)) == ["node-a.web-1"]
    assert asyncio.run(keys(STATUS)) == ["node-a.web-1"]
    assert node_control_key("node-b") not in asyncio.run(keys(CONTROL))
    assert node_control_key("node-a") in asyncio.run(keys(CONTROL))


async def connects(url: str, creds: Path) -> bool:
    """Whether the server takes these credentials."""
    return await logs_in(url, "node-a", _password(creds))


def _password(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("password: "):
            return str(json.loads(line.removeprefix("password: ")))
    raise AssertionError(f"no password in {path}")


def test_the_credentials_are_never_readable_by_others_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        cli(tmp_path, "manager", "node", "add", "boss", "--role", "manager", "--bootstrap")
    finally:
        os.umask(old)
    assert mode(tmp_path / "boss.creds") == 0o600
    assert mode(tmp_path / USERS_FILE) == 0o640
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------ on a live fleet


async def test_a_forgotten_nodes_tasks_move_and_it_is_not_shown_down(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    fleet = Fleet([nats_server.url])
    nc = await nats.connect(nats_server.url)
    await fleet.init(nc)
    await nc.close()
    manager = ManagerProcess([nats_server.url], "manager-1")
    manager.start()
    nodes = [FleetAgent(tmp_path / n, [nats_server.url], n) for n in ("node-a", "node-b")]
    try:
        for node in nodes:
            await node.start()
        await eventually(
            lambda: manager.metric("reconciler_manager_nodes", state="ready") == 2.0, "2 ready"
        )
        await fleet.apply(service_set({"name": "web", "replicas": 2}))
        where = await eventually(lambda: fleet.settled({"web-1", "web-2"}, nodes), "web runs")
        assert sorted(where.values()) == ["node-a", "node-b"]
        await nodes[1].stop()  # its agent is stopped first, as docs/fleet.md says
        async with connected(fleet.options) as link:
            forgotten = await forget_node(link, "node-b")
        assert forgotten.keys[NODES] == 1 and forgotten.keys[ASSIGNMENTS] == 1
        moved = await eventually(
            lambda: fleet.settled({"web-1", "web-2"}, nodes[:1]), "its task moved"
        )
        assert set(moved.values()) == {"node-a"}
        await eventually(
            lambda: "node-b" not in manager.manager.view.node_views(0.0), "node-b forgotten"
        )
        assert manager.metric("reconciler_manager_nodes", state="down") in (None, 0.0)
        view = await fleet.read()
        assert "node-b" not in set(view.health.nodes())
    finally:
        await manager.stop()
        for node in nodes:
            await node.stop()
            node.close()


async def test_two_hosts_adding_at_once_lose_no_add(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    await Fleet([nats_server.url]).init(nc)
    await nc.close()
    options = NatsOptions(servers=(nats_server.url,))
    boss = Identity.issue("boss", Role.MANAGER, "pw")
    other = Identity.issue("node-y", Role.NODE, "pw")

    def seed() -> tuple[Identity, ...]:
        return (boss,)

    def elsewhere() -> None:
        """Another manager host adds node-y, between this one's read and its write."""
        asyncio.run(add_identity(options, other, rotate=False, users_file=None))

    calls: list[tuple[str, ...]] = []
    mine = Identity.issue("node-x", Role.NODE, "pw")

    def change(current: tuple[Identity, ...]) -> tuple[Identity, ...]:
        calls.append(tuple(i.name for i in current))
        if len(calls) == 1:
            thread = threading.Thread(target=elsewhere)
            thread.start()
            thread.join()
        return added(current, mine, rotate=False)

    async with connected(options) as link:
        started = await change_users(link, lambda current: current, seed)
        assert started.seeded == (boss,)
        users = await change_users(link, change, seed)
    assert calls == [("boss",), ("boss", "node-y")]  # read again after the conflict
    assert [i.name for i in users.identities] == ["boss", "node-x", "node-y"]


async def test_a_list_absent_from_nats_starts_with_the_connecting_manager(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    nc = await nats.connect(nats_server.url)
    await Fleet([nats_server.url]).init(nc)
    await nc.close()
    creds = tmp_path / "first.creds"
    creds.write_text('user: "first"\npassword: "its-password"\n')
    options = checked_options(nats_server.url, creds=str(creds))
    users = await read_identities(options, users_file=tmp_path / "no-such-file.conf")
    assert users.seeded == users.identities and [i.name for i in users.identities] == ["first"]
    (first,) = users.identities
    assert first.role is Role.MANAGER
    assert bcrypt.checkpw(b"its-password", first.hash.encode())
    again = await read_identities(options, users_file=None)
    assert again.identities == users.identities and again.seeded == ()  # stored, not seeded
    anonymous = NatsOptions(servers=(nats_server.url,))
    assert (await read_identities(anonymous, users_file=None)).identities == users.identities

"""``init_buckets`` and ``reconciler manager init`` against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.fleet.buckets import buckets, check_node_id
from reconciler.fleet.provision import InitResult, init_buckets
from reconciler.testing.natsserver import NatsServer
from tests.fleet.support import Manager


@pytest.fixture
async def manager(nats_server: NatsServer) -> AsyncIterator[Manager]:
    m = await Manager.connect(nats_server.url)
    yield m
    await m.close()


async def test_init_creates_the_contract_buckets_with_their_settings(manager: Manager) -> None:
    results = await init_buckets(manager.js, lease=7.0)
    assert results == [(b.name, InitResult.CREATED) for b in buckets()]
    for name, max_age in [
        ("reconciler_nodes", 24 * 3600.0),
        ("reconciler_assignments", 0.0),
        ("reconciler_status", 0.0),
        ("reconciler_services", 0.0),
        ("reconciler_control", 0.0),
        ("reconciler_leader", 7.0),
    ]:
        config = (await manager.js.stream_info(f"KV_{name}")).config
        assert (config.max_age or 0.0) == max_age, name
        assert config.max_msgs_per_subject == 1 and config.allow_direct, name


async def test_init_is_idempotent_and_restores_changed_settings(manager: Manager) -> None:
    await init_buckets(manager.js)
    assert {r for _, r in await init_buckets(manager.js)} == {InitResult.UNCHANGED}
    await manager.assign("n1", "web", {"image": "x"})
    results = dict(await init_buckets(manager.js, lease=30.0))
    assert results["reconciler_leader"] is InitResult.UPDATED
    assert results["reconciler_assignments"] is InitResult.UNCHANGED
    config = (await manager.js.stream_info("KV_reconciler_leader")).config
    assert config.max_age == 30.0
    entry = await (await manager.kv("reconciler_assignments")).get("n1.web")
    assert entry.value == b'{"image": "x"}'  # nothing lost


def test_manager_init_command_creates_buckets_and_says_what_it_did(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["manager", "init", "--nats", nats_server.url]) == 0
    assert capsys.readouterr().out.splitlines() == [f"created {b.name}" for b in buckets()]
    assert main(["manager", "init", "--nats", f"nats://127.0.0.1:1,{nats_server.url}"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"unchanged {b.name}" for b in buckets()]


def test_manager_init_without_a_server_fails_with_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["manager", "init", "--nats", "nats://127.0.0.1:1"]) == 1
    assert "no NATS server answers" in capsys.readouterr().err


def test_manager_init_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["manager", "init"]) == 2
    assert main(["manager", "init", "--nats", "http://x:1"]) == 2
    assert main(["manager", "init", "--nats", "nats://x:1", "--creds", str(tmp_path / "no")]) == 2
    assert "--nats" in capsys.readouterr().err


def test_node_ids_must_be_one_subject_token() -> None:
    assert check_node_id("edge-01_a") == "edge-01_a"
    for bad in ("", "a.b", "a*", "a b", "x" * 129):
        with pytest.raises(ValueError, match="cannot name fleet keys"):
            check_node_id(bad)


def test_the_lease_must_be_positive() -> None:
    with pytest.raises(ValueError):
        asyncio.run(init_buckets(None, lease=0))

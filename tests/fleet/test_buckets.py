"""``init_buckets`` and ``reconciler manager init`` against a real nats-server: the buckets'
settings and quotas, on creation and on existing buckets."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError

from reconciler.cli import main
from reconciler.cli.manager import run_options
from reconciler.cli.parser import apply_config, apply_defaults, build_parser
from reconciler.fleet.buckets import (
    MAX_BYTES,
    MAX_VALUE_CEILING,
    MAX_VALUE_SIZE,
    NAMES,
    STATUS,
    bucket_name,
    buckets,
    check_node_id,
)
from reconciler.fleet.provision import InitResult, init_buckets
from reconciler.fleet.values import MAX_VALUE_BYTES
from reconciler.testing.natsserver import NatsServer
from tests.fleet.support import Manager

KI = 1 << 10


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
        assert config.max_bytes == MAX_BYTES[name], name
        assert config.max_msg_size == MAX_VALUE_SIZE[name], name
        assert config.discard == "new", name
        assert not config.allow_rollup_hdrs, name


async def test_a_rollup_that_would_purge_a_bucket_is_refused(manager: Manager) -> None:
    # a node may write its own status keys; with a rollup header one write would purge every
    # node's (permissions cannot look at headers), so the buckets take none
    await init_buckets(manager.js)
    await manager.js.publish("$KV.reconciler_status.node-b.web", b"{}")
    with pytest.raises(APIError):
        await manager.js.publish(
            "$KV.reconciler_status.node-a.web", b"{}", headers={"Nats-Rollup": "all"}
        )
    entry = await (await manager.kv("reconciler_status")).get("node-b.web")
    assert entry.value == b"{}"


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


# ------------------------------------------------------------------------------ quotas


async def quotas(manager: Manager, bucket: str) -> tuple[int | None, int | None]:
    config = (await manager.js.stream_info(f"KV_{bucket}")).config
    return config.max_bytes, config.max_msg_size


async def test_buckets_made_before_quotas_get_them_and_keep_their_values(
    manager: Manager,
) -> None:
    for name in NAMES:  # as an earlier version made them: no quotas
        await manager.js.create_key_value(
            KeyValueConfig(bucket=name, history=1, storage=StorageType.FILE, direct=True)
        )
    assert await quotas(manager, STATUS) == (-1, -1)
    await manager.assign("n1", "web", {"image": "x"})
    results = dict(await init_buckets(manager.js))
    assert results["reconciler_status"] is InitResult.UPDATED
    assert results["reconciler_assignments"] is InitResult.UPDATED
    for name in NAMES:
        assert await quotas(manager, name) == (MAX_BYTES[name], MAX_VALUE_SIZE[name]), name
    entry = await (await manager.kv("reconciler_assignments")).get("n1.web")
    assert entry.value == b'{"image": "x"}'
    assert {r for _, r in await init_buckets(manager.js)} == {InitResult.UNCHANGED}


async def test_overrides_set_a_buckets_quotas_and_jetstream_holds_them(manager: Manager) -> None:
    await init_buckets(manager.js, max_bytes={"status": 64 * KI}, max_value_size={"status": 4 * KI})
    assert await quotas(manager, STATUS) == (64 * KI, 4 * KI)
    assert await quotas(manager, "reconciler_nodes") == (
        MAX_BYTES["reconciler_nodes"],
        MAX_VALUE_SIZE["reconciler_nodes"],
    )
    status = await manager.kv(STATUS)
    with pytest.raises(APIError, match="message size exceeds maximum"):
        await status.put("n1.big", b"x" * (4 * KI + 1))
    # raised again by name, both ways of spelling it
    results = dict(
        await init_buckets(
            manager.js, max_bytes={STATUS: 128 * KI}, max_value_size={"status": 8 * KI}
        )
    )
    assert results[STATUS] is InitResult.UPDATED
    assert await quotas(manager, STATUS) == (128 * KI, 8 * KI)
    await status.put("n1.big", b"x" * (4 * KI + 1))


async def test_a_limit_below_what_a_bucket_holds_is_not_applied_so_no_value_is_dropped(
    manager: Manager, caplog: pytest.LogCaptureFixture
) -> None:
    await init_buckets(manager.js, max_bytes={"status": 64 * KI})
    status = await manager.kv(STATUS)
    for i in range(20):
        await status.put(f"n1.t{i}", b"s" * 1000)
    held = (await manager.js.stream_info(f"KV_{STATUS}")).state.bytes
    assert 16 * KI < held < 64 * KI
    with caplog.at_level(logging.WARNING, logger="reconciler.fleet.provision"):
        results = dict(
            await init_buckets(
                manager.js, max_bytes={"status": 16 * KI}, max_value_size={"status": 2 * KI}
            )
        )
    assert results[STATUS] is InitResult.UPDATED  # the value limit was applied
    assert await quotas(manager, STATUS) == (64 * KI, 2 * KI)
    assert len(await status.keys()) == 20  # nothing dropped
    assert f"bucket {STATUS} holds {held} bytes" in caplog.text
    assert "keeping 65536 bytes" in caplog.text
    # once it holds less, the same limit is applied
    for i in range(15):
        await manager.js.purge_stream(f"KV_{STATUS}", subject=f"$KV.{STATUS}.n1.t{i}")
    lowered = dict(await init_buckets(manager.js, max_bytes={"status": 16 * KI}))
    assert lowered[STATUS] is InitResult.UPDATED
    assert (await quotas(manager, STATUS))[0] == 16 * KI
    assert len(await status.keys()) == 5


def test_the_default_quotas_fit_their_own_rules() -> None:
    assert MAX_VALUE_CEILING == MAX_VALUE_BYTES
    for bucket in buckets():
        assert 0 < bucket.max_value_size <= min(bucket.max_bytes, MAX_VALUE_CEILING)
    assert sum(MAX_BYTES.values()) == 149 << 20  # docs/fleet.md's total


def test_quota_overrides_name_a_bucket_by_name_or_short_form_and_are_checked() -> None:
    by_name = {b.name: b for b in buckets(max_bytes={"status": 1 << 20, STATUS: 2 << 20})}
    assert by_name[STATUS].max_bytes == 2 << 20  # the later of the two spellings
    assert bucket_name("leader") == "reconciler_leader"
    with pytest.raises(ValueError, match="no bucket 'statuses': the buckets are nodes, "):
        buckets(max_bytes={"statuses": 1 << 20})
    with pytest.raises(ValueError, match="reconciler_status: its value limit"):
        buckets(max_bytes={"status": 8 * KI})  # below its 16 KiB value limit
    with pytest.raises(ValueError, match="2Mi is over 1Mi"):
        buckets(max_value_size={"assignments": 2 << 20})
    with pytest.raises(ValueError, match="more than 0 bytes"):
        buckets(max_bytes={"nodes": 0})


# ------------------------------------------------------------------------------- flags


def parsed(*argv: str) -> argparse.Namespace:
    args = build_parser().parse_args(list(argv))
    apply_config(args, args.spec)
    apply_defaults(args, args.spec)
    return args


def test_manager_init_takes_a_buckets_quotas_from_its_flags(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--bucket-max-bytes", "status=256Ki", "--bucket-max-value", "reconciler_status=4Ki"]
    assert main(["manager", "init", "--nats", nats_server.url, *flags]) == 0
    assert capsys.readouterr().out.splitlines() == [f"created {b.name}" for b in buckets()]

    async def status_quotas() -> tuple[int | None, int | None]:
        m = await Manager.connect(nats_server.url)
        try:
            return await quotas(m, STATUS)
        finally:
            await m.close()

    assert asyncio.run(status_quotas()) == (256 * KI, 4 * KI)
    assert main(["manager", "init", "--nats", nats_server.url]) == 0  # back to the defaults
    assert "updated reconciler_status" in capsys.readouterr().out.splitlines()
    assert asyncio.run(status_quotas()) == (MAX_BYTES[STATUS], MAX_VALUE_SIZE[STATUS])


def test_manager_run_takes_the_quota_flags_and_its_config_file_too(tmp_path: Path) -> None:
    base = ("manager", "run", "--nats", "nats://127.0.0.1:4222")
    assert run_options(parsed(*base)).max_bytes == {}
    opts = run_options(
        parsed(*base, "--bucket-max-bytes", "status=1Gi", "--bucket-max-bytes", "nodes=1.5Mi")
    )
    assert opts.max_bytes == {STATUS: 1 << 30, "reconciler_nodes": 3 << 19}
    assert opts.max_value_size == {}
    config = tmp_path / "manager.yaml"
    config.write_text("bucket-max-value: [leader=512]\nbucket-max-bytes: services=1G\n")
    opts = run_options(parsed(*base, "--config", str(config)))
    assert opts.max_value_size == {"reconciler_leader": 512}
    assert opts.max_bytes == {"reconciler_services": 10**9}


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--bucket-max-bytes", "status"], "--bucket-max-bytes: expected BUCKET=SIZE"),
        (["--bucket-max-bytes", "=1Mi"], "--bucket-max-bytes: expected BUCKET=SIZE"),
        (["--bucket-max-value", "status="], "--bucket-max-value: expected BUCKET=SIZE"),
        (["--bucket-max-bytes", "stat=1Mi"], "--bucket-max-bytes stat=1Mi: no bucket 'stat'"),
        (["--bucket-max-bytes", "status=64MB"], "--bucket-max-bytes status=64MB: invalid size"),
        (["--bucket-max-value", "status=-1"], "--bucket-max-value status=-1: invalid size"),
        (["--bucket-max-bytes", "status=0"], "reconciler_status: a quota must be more than 0"),
        (["--bucket-max-bytes", "leader=512"], "reconciler_leader: its value limit (1Ki)"),
        (["--bucket-max-value", "services=2Mi"], "reconciler_services: a value limit of 2Mi"),
    ],
)
def test_a_bad_quota_exits_2_naming_the_flag_before_connecting(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("init", "run"):
        assert main(["manager", command, "--nats", "nats://127.0.0.1:1", *flags]) == 2
        assert says in capsys.readouterr().err

"""Leader election on ``reconciler_leader/leader``: real nats-server, and a store that hangs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from reconciler.core.clock import SystemClock
from reconciler.fleet.buckets import LEADER
from reconciler.fleet.provision import init_buckets
from reconciler.manager.leader import HOLD, LEADER_KEY, Elector
from tests.fleet.support import eventually
from tests.natsserver import NatsServer, nats_server

LEASE = 1.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with nats_server(tmp_path) as s:
        yield s


@pytest.fixture
async def kv(server: NatsServer) -> AsyncIterator[KeyValue]:
    nc: Client = await nats.connect(server.url)
    js = nc.jetstream(timeout=5)
    await init_buckets(js, lease=LEASE)
    yield await js.key_value(LEADER)
    await nc.close()


class Campaign:
    """An elector running against a bucket, with the changes it announced."""

    def __init__(self, manager_id: str, kv: Any) -> None:
        self.changes: list[bool] = []
        self.elector = Elector(
            manager_id=manager_id, lease=LEASE, clock=SystemClock(), on_change=self.changes.append
        )
        self.task = asyncio.create_task(self.elector.run(kv))

    async def crash(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def holder(kv: KeyValue) -> str | None:
    try:
        entry = await kv.get(LEADER_KEY)
    except Exception:
        return None
    return str(json.loads(entry.value or b"{}").get("id"))


async def test_one_of_two_managers_leads_and_the_other_takes_over_when_it_dies(
    kv: KeyValue,
) -> None:
    first = Campaign("m1", kv)
    await eventually(lambda: first.elector.leading, "m1 leads")
    second = Campaign("m2", kv)
    await asyncio.sleep(LEASE)  # m1 keeps refreshing: m2 cannot take the key meanwhile
    assert first.elector.leading and not second.elector.leading
    assert await holder(kv) == "m1" and second.elector.holder == "m1"

    await first.crash()  # no resignation: the key ages out
    assert not first.elector.leading and first.changes == [True, False]
    await eventually(lambda: second.elector.leading, "m2 takes over", within=10 * LEASE)
    assert await holder(kv) == "m2"
    await second.crash()


async def test_a_resigning_leader_deletes_the_key_so_the_standby_needs_no_wait(
    kv: KeyValue,
) -> None:
    first = Campaign("m1", kv)
    await eventually(lambda: first.elector.leading, "m1 leads")
    second = Campaign("m2", kv)
    await first.elector.resign(kv)
    assert not first.elector.leading
    await eventually(lambda: second.elector.leading, "m2 takes over")
    await first.crash()
    await second.crash()


async def test_a_leader_whose_key_is_taken_stops_at_its_next_refresh(kv: KeyValue) -> None:
    first = Campaign("m1", kv)
    await eventually(lambda: first.elector.leading, "m1 leads")
    await kv.put(LEADER_KEY, b'{"id":"intruder"}')
    await eventually(lambda: not first.elector.leading, "m1 stops leading")
    assert first.changes == [True, False]
    await first.crash()


async def test_a_manager_takes_back_its_own_key_after_a_reconnect(kv: KeyValue) -> None:
    first = Campaign("m1", kv)
    await eventually(lambda: first.elector.leading, "m1 leads")
    await first.crash()  # its connection ended; the key still names it
    again = Campaign("m1", kv)
    await eventually(lambda: again.elector.leading, "m1 leads again at once")
    await again.crash()


class Hanging:
    """A lease store that grants the key, then never answers again."""

    def __init__(self) -> None:
        self.updates = 0
        self.granted = False

    async def create(self, key: str, value: bytes) -> int:
        if self.granted:
            await asyncio.Event().wait()
        self.granted = True
        return 1

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        self.updates += 1
        await asyncio.Event().wait()
        return 0

    async def get(self, key: str) -> Any:
        raise AssertionError("not called")

    async def delete(self, key: str, last: int | None = None) -> bool:
        return True


async def test_a_leader_that_cannot_refresh_stops_acting_when_its_hold_runs_out() -> None:
    store = Hanging()
    changes: list[bool] = []
    clock = SystemClock()
    elector = Elector(manager_id="m1", lease=0.5, clock=clock, on_change=changes.append)
    task = asyncio.create_task(elector.run(store))
    await eventually(lambda: elector.leading, "it leads")
    began = clock.monotonic()
    await eventually(lambda: not elector.leading, "it stops leading")
    assert clock.monotonic() - began <= HOLD * 0.5 + 0.05
    await eventually(lambda: changes == [True, False], "it says so")
    assert store.updates >= 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_managers_may_shorten_the_lease_of_an_existing_leader_bucket(
    server: NatsServer,
) -> None:
    nc: Client = await nats.connect(server.url)
    try:
        js = nc.jetstream(timeout=5)
        await init_buckets(js, lease=10.0)
        results = dict(await init_buckets(js, lease=2.0))
        assert results[LEADER].value == "updated"
        info = await js.stream_info(f"KV_{LEADER}")
        assert info.config.max_age == 2.0
        kv = await js.key_value(LEADER)
        assert await kv.create(LEADER_KEY, b'{"id":"m1"}') > 0
    finally:
        await nc.close()

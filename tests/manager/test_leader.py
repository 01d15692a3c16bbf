"""Leader election on ``reconciler_leader/leader``: real nats-server, and fake lease stores (one
that hangs, one that answers as nats-py does, through ``asyncio.wait_for``) on a fake clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from reconciler.core.clock import FakeClock, SystemClock, settle
from reconciler.fleet.buckets import LEADER
from reconciler.fleet.provision import init_buckets
from reconciler.manager.leader import HOLD, LEADER_KEY, Elector
from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually
from reconciler.testing.tasks import ended, stopped

LEASE = 1.0


@pytest.fixture
async def kv(nats_server: NatsServer) -> AsyncIterator[KeyValue]:
    nc: Client = await nats.connect(nats_server.url)
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
        await stopped(self.task, f"the elector of {self.elector.manager_id}")


async def revision_after(kv: KeyValue, began: int, writes: int) -> bool:
    return ((await kv.get(LEADER_KEY)).revision or 0) >= began + writes


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
    began = (await kv.get(LEADER_KEY)).revision or 0
    second = Campaign("m2", kv)
    # m1 refreshes every third of a lease: four refreshes span more than a lease, and m2 has
    # tried to take the key meanwhile (it names m1 as the holder), in vain
    await eventually(
        lambda: revision_after(kv, began, 4), "m1 refreshing the key for a whole lease"
    )
    await eventually(lambda: second.elector.holder == "m1", "m2 campaigning")
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


async def test_a_leader_that_cannot_refresh_stops_acting_when_its_hold_runs_out(
    clock: FakeClock,
) -> None:
    store = Hanging()
    changes: list[bool] = []
    elector = Elector(manager_id="m1", lease=0.5, clock=clock, on_change=changes.append)
    task = asyncio.create_task(elector.run(store))
    await eventually(lambda: elector.leading, "it leads")  # granted at 0 on the fake clock
    hold = HOLD * 0.5
    await clock.advance(hold * 0.9)
    assert elector.leading and store.updates >= 1  # its refreshes hang, its hold runs on
    await clock.advance(hold * 0.1)
    assert clock.monotonic() >= hold and not elector.leading  # and not a moment longer
    await eventually(lambda: changes == [True, False], "it says so")
    await stopped(task, "the elector")


class AnsweredLikeNatsPy:
    """A lease store whose answers the test delivers, awaited through ``asyncio.wait_for`` as
    nats-py awaits every reply (Python 3.11's drops a cancellation that comes with the reply)."""

    def __init__(self) -> None:
        self.pending: asyncio.Future[int] | None = None

    async def _answer(self) -> int:
        self.pending = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(self.pending, 60)

    async def create(self, key: str, value: bytes) -> int:
        return await self._answer()

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        return await self._answer()

    async def get(self, key: str) -> Any:
        raise AssertionError("not called")

    async def delete(self, key: str, last: int | None = None) -> bool:
        return True


@pytest.mark.parametrize("answered", ["campaign", "refresh"])
async def test_an_elector_cancelled_as_the_lease_store_answers_ends(
    clock: FakeClock, answered: str
) -> None:
    # the hang of a manager's shutdown: its elector went on renewing the lease for ever
    store = AnsweredLikeNatsPy()
    # a long lease: its calls' deadlines (a third of it, in real time) never pass in a test
    elector = Elector(manager_id="m1", lease=60.0, clock=clock)
    task = asyncio.create_task(elector.run(store))
    await settle()
    if answered == "refresh":
        assert store.pending is not None
        store.pending.set_result(1)  # the key is granted
        await settle()
        await clock.advance(elector.renew_every)  # and it refreshes it
        assert elector.leading
    assert store.pending is not None and not store.pending.done()
    store.pending.set_result(2)  # the answer and the cancellation in the same turn
    task.cancel()
    await ended(task, f"the elector cancelled during its {answered}")
    assert task.cancelled()


async def test_managers_may_shorten_the_lease_of_an_existing_leader_bucket(
    nats_server: NatsServer,
) -> None:
    nc: Client = await nats.connect(nats_server.url)
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

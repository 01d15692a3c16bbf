"""Hostile values in every bucket stop nothing: a real nats-server, a real manager that leads
and a real agent (on the fake runtime) while 10,000 hostile values are written into each bucket
they read (``reconciler.testing.hostile.values``: NaN, Infinity, huge integers, deep nesting,
bad UTF-8, control characters, wrong types, oversized).

What must hold: the manager never ends its connection epoch and keeps leading, the agent's
loops never restart and its session stays up, every bad value is counted at most once per key
and revision, and the good keys are still acted on: a service applied before keeps running,
one applied after is placed and run, and a status key a node flooded is overwritten by the
agent's next status.

The values go to 100 keys per bucket (100 revisions each), so the manager does not also face
10,000 phantom nodes, and are published in pipelined batches.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from pathlib import Path

import nats
import pytest
from nats.js.client import JetStreamContext

from reconciler.core.model import TaskState
from reconciler.core.supervisor import LOOPS
from reconciler.fleet.buckets import (
    ASSIGNMENTS,
    CONTROL,
    FLEET_KEY,
    MAX_VALUE_SIZE,
    NODES,
    SERVICES,
    STATUS,
    key_subject,
)
from reconciler.testing.hostile.values import hostile_values
from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually
from tests.manager.harness import Fleet, FleetAgent, ManagerProcess, service_set

PER_BUCKET = 10_000
KEYS = 100
BATCH = 500
NODE = "node-a"


def keys(bucket: str) -> list[str]:
    """The keys a bucket's hostile values go to: the agent's own where it reads them."""
    names = [f"h{i}" for i in range(KEYS)]
    if bucket == NODES:
        return [f"ghost-{i}" for i in range(KEYS)]
    if bucket == CONTROL:
        return [FLEET_KEY, f"node.{NODE}", *(f"node.ghost-{i}" for i in range(KEYS - 2))]
    if bucket == ASSIGNMENTS:
        return [f"{NODE}.{n}" for n in names]
    if bucket == STATUS:  # the good task's own status key too: the agent overwrites it
        return [f"{NODE}.good-1", *(f"{NODE}.{n}" for n in names[1:])]
    return names


async def flood(js: JetStreamContext, bucket: str) -> int:
    """Publish ``PER_BUCKET`` hostile values over the bucket's keys; how many it took (the
    others were over its value size, refused)."""
    targets = keys(bucket)
    values = hostile_values(zlib.crc32(bucket.encode()), PER_BUCKET, MAX_VALUE_SIZE[bucket])
    pending = [
        js.publish(key_subject(bucket, targets[i % len(targets)]), value)
        for i, value in enumerate(values)
    ]
    taken = 0
    for start in range(0, len(pending), BATCH):
        results = await asyncio.gather(*pending[start : start + BATCH], return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                assert "exceed" in str(result).lower() or "payload" in str(result).lower(), result
            else:
                taken += 1
    return taken


def restarts(agent: FleetAgent) -> list[float | None]:
    assert agent.agent is not None
    registry = agent.agent.metrics.registry
    return [registry.get_sample_value("reconciler_loop_restarts_total", {"loop": x}) for x in LOOPS]


def session_bad(agent: FleetAgent, bucket: str) -> float:
    assert agent.agent is not None
    value = agent.agent.metrics.registry.get_sample_value(
        "reconciler_session_bad_values_total", {"bucket": bucket}
    )
    return value or 0.0


async def test_hostile_values_in_every_bucket_stop_nothing_and_good_keys_still_act(
    tmp_path: Path, nats_server: NatsServer, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    url = nats_server.url
    manager = ManagerProcess([url], "manager-1")
    manager.start()
    agent = FleetAgent(tmp_path / NODE, [url], NODE)
    await agent.start()
    nc = await nats.connect(url)
    try:
        await eventually(lambda: manager.leading, "the manager leads")
        await fleet.apply(service_set({"name": "good", "replicas": 1}))
        await eventually(lambda: agent.running() == {"good-1"}, "the good service runs")
        js = nc.jetstream(timeout=60)
        taken = {}
        for bucket in (SERVICES, NODES, CONTROL, ASSIGNMENTS, STATUS):
            taken[bucket] = await flood(js, bucket)
            assert taken[bucket] >= PER_BUCKET * 0.99  # only the oversized ones refused
        for bucket in (SERVICES, NODES, CONTROL, ASSIGNMENTS, STATUS):
            await eventually(
                lambda b=bucket: (manager.metric("reconciler_manager_bad_values_total", bucket=b)
                                  or 0) >= KEYS - 1,
                f"the manager counts the bad values of {bucket}",
                within=180,
            )  # fmt: skip
        await eventually(lambda: session_bad(agent, ASSIGNMENTS) >= KEYS, "the agent counts them")
        assert session_bad(agent, CONTROL) >= 2  # the fleet settings and its own availability
        # the good keys are still acted on
        await fleet.apply(
            service_set({"name": "good", "replicas": 1, "env": {"V": "2"}}, {"name": "after"})
        )
        await eventually(
            lambda: agent.running() == {"good-1", "after-1"} and agent.env("good-1") == {"V": "2"},
            "the updated service and the new one run",
            within=180,
        )
        await eventually(lambda: session_bad(agent, STATUS) >= 1, "the agent met its bad status")

        async def good_status_running() -> bool:
            reported = (await fleet.read()).statuses.get(f"{NODE}.good-1")
            return (
                reported is not None
                and reported.state is TaskState.RUNNING
                and (reported.id == agent.current_id("good-1"))
            )

        await eventually(good_status_running, "the agent overwrote the flooded status key")
        # nothing stopped, restarted or lost leadership; each value counted at most once
        assert restarts(agent) == [0.0] * len(LOOPS)
        assert agent.agent is not None and agent.agent.snapshot().session_connected
        assert manager.leading and manager.metric("reconciler_manager_leader") == 1.0
        for bucket, count in taken.items():
            counted = manager.metric("reconciler_manager_bad_values_total", bucket=bucket)
            assert counted is not None and counted <= count, bucket
        assert session_bad(agent, ASSIGNMENTS) <= taken[ASSIGNMENTS]
        ended = [r.getMessage() for r in caplog.records if "connection ended" in r.getMessage()]
        lost = [r.getMessage() for r in caplog.records if "no longer leading" in r.getMessage()]
        assert (ended, lost) == ([], [])
    finally:
        await nc.close()
        await agent.stop()
        agent.close()
        await manager.stop()

"""Status keys that match no assignment: counted per node, deleted by the leader a grace period
after they stopped changing, and ``reconciler_manager_node_keys``.

``StatusKeys`` is pure, tested with made-up watch entries and times; the rest runs the real
manager and an agent (``tests.manager.harness``) on a real nats-server.
"""

from __future__ import annotations

from pathlib import Path

import nats
from nats.js.errors import NoKeysError

from reconciler.fleet.buckets import ASSIGNMENTS, STATUS
from reconciler.fleet.watch import Entry
from reconciler.manager.writes import StatusKeys
from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually
from tests.manager.harness import Fleet, FleetAgent, ManagerProcess, service_set

STATUS_VALUE = b'{"id": "x", "state": "running"}'


def entry(key: str, revision: int, value: bytes | None = STATUS_VALUE) -> Entry:
    return Entry(key=key, value=value, revision=revision)


# ------------------------------------------------------------------------------ pure


def test_keys_are_counted_per_node_whatever_they_hold_and_a_node_without_keys_drops_out() -> None:
    keys = StatusKeys()
    assigned = {"a.web-1"}
    keys.load(
        STATUS,
        {"a.web-1": entry("a.web-1", 1), "a.junk": entry("a.junk", 2, b"\x00")},
        assigned,
        0.0,
    )
    keys.seen(STATUS, entry("b.web-2", 3), assigned, 1.0)
    keys.seen(STATUS, entry("b.web-2", 4), assigned, 2.0)  # the same key again
    assert keys.per_node == {"a": 2, "b": 1}
    keys.seen(STATUS, entry("b.web-2", 5, None), assigned, 3.0)
    keys.gone("b.web-2")  # the manager's own delete, then its echo: counted once
    assert keys.per_node == {"a": 2}
    keys.load(STATUS, {}, assigned, 4.0)
    assert keys.per_node == {} and keys.orphans == {}


def test_an_orphan_is_due_a_grace_period_after_it_last_changed() -> None:
    keys = StatusKeys()
    assigned = {"a.web-1", "a.web-2"}
    keys.load(STATUS, {k: entry(k, 1) for k in assigned}, assigned, 0.0)
    assert keys.orphans == {}
    assigned.discard("a.web-2")  # its assignment deleted at 10
    keys.seen(ASSIGNMENTS, entry("a.web-2", 7, None), assigned, 10.0)
    keys.seen(ASSIGNMENTS, entry("a.web-2", 7, None), assigned, 11.0)  # an echo: no new start
    assert keys.next_due(5.0) == 15.0
    keys.seen(STATUS, entry("a.web-2", 8), assigned, 12.0)  # its agent reports the stop
    assert keys.due(16.0, 5.0) == []  # unchanged for 4 s only
    assert keys.next_due(5.0) == 17.0
    keys.seen(STATUS, entry("x.other", 9), assigned, 13.0)
    assert keys.due(17.5, 5.0) == ["a.web-2"]
    assert keys.due(18.5, 5.0) == ["a.web-2", "x.other"]
    keys.retry("a.web-2", 18.5)  # its delete failed: a grace period again
    assert keys.due(18.5, 5.0) == ["x.other"] and keys.next_due(5.0) == 18.0
    assigned.add("x.other")  # assigned again: no orphan any more
    keys.seen(ASSIGNMENTS, entry("x.other", 10, b"{}"), assigned, 19.0)
    assert list(keys.orphans) == ["a.web-2"]


def test_a_watch_started_again_keeps_the_wait_of_keys_that_did_not_change() -> None:
    keys = StatusKeys()
    keys.load(STATUS, {"a.t1": entry("a.t1", 1), "a.t2": entry("a.t2", 2)}, set(), 0.0)
    keys.load(ASSIGNMENTS, {}, set(), 5.0)  # the assignments read afresh
    assert keys.orphans == {"a.t1": 0.0, "a.t2": 0.0}
    # the status watch again: a.t2 changed while it was away, a.t3 is new
    fresh = {"a.t1": entry("a.t1", 1), "a.t2": entry("a.t2", 4), "a.t3": entry("a.t3", 5)}
    keys.load(STATUS, fresh, set(), 6.0)
    assert keys.orphans == {"a.t1": 0.0, "a.t2": 6.0, "a.t3": 6.0}
    keys.load(ASSIGNMENTS, {}, {"a.t1"}, 7.0)
    assert list(keys.orphans) == ["a.t2", "a.t3"]
    assert keys.per_node == {"a": 3}


# ------------------------------------------------------------------------------ live


async def status_keys(url: str) -> set[str]:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(STATUS)
        try:
            return set(await kv.keys())
        except NoKeysError:
            return set()
    finally:
        await nc.close()


async def put(url: str, bucket: str, key: str, value: bytes) -> None:
    nc = await nats.connect(url)
    try:
        await (await nc.jetstream().key_value(bucket)).put(key, value)
    finally:
        await nc.close()


async def test_the_leader_deletes_status_keys_without_an_assignment_and_counts_each_nodes(
    tmp_path: Path, nats_server: NatsServer, fleet: Fleet
) -> None:
    url = nats_server.url
    manager = ManagerProcess([url], "manager-1")
    manager.start()
    agent = FleetAgent(tmp_path / "node-a", [url], "node-a")
    await agent.start()
    try:
        await eventually(lambda: manager.leading, "the manager leads")
        await eventually(
            lambda: manager.metric("reconciler_manager_nodes", state="ready") == 1.0, "node-a"
        )
        await fleet.apply(service_set({"name": "web", "replicas": 3}))
        await eventually(lambda: agent.running() == {"web-1", "web-2", "web-3"}, "3 running")
        await eventually(
            lambda: manager.metric("reconciler_manager_node_keys", node="node-a") == 3.0,
            "3 keys counted",
        )

        # keys no assignment matches: one that holds no status at all, one of a node unknown
        await put(url, STATUS, "node-a.junk", b"not json")
        await put(url, STATUS, "ghost.web-1", STATUS_VALUE)
        await eventually(
            lambda: (
                manager.metric("reconciler_manager_node_keys", node="ghost") == 1.0
                and manager.metric("reconciler_manager_node_keys", node="node-a") == 4.0
            ),
            "the keys without assignments counted too",
        )
        # scaled down: web-3 stops on node-a, which reports it; then its key goes
        await fleet.apply(service_set({"name": "web", "replicas": 2}))
        await eventually(lambda: "web-3" not in agent.states(), "web-3 removed from node-a")
        assigned = {"node-a.web-1", "node-a.web-2"}

        async def only_assigned_left() -> bool:
            return await status_keys(url) == assigned

        await eventually(only_assigned_left, "only the assigned tasks' status keys left")
        await eventually(
            lambda: manager.metric("reconciler_manager_node_keys", node="node-a") == 2.0,
            "2 keys counted",
        )
        assert manager.metric("reconciler_manager_node_keys", node="ghost") is None  # no series
        # the agent does not write the key back: the task is gone from it, and nothing of it
        # waits to be reported
        assert agent.agent is not None
        pending = agent.agent.metrics.registry.get_sample_value("reconciler_status_reports_pending")
        assert pending == 0.0
        assert await status_keys(url) == assigned
    finally:
        await manager.stop()
        await agent.stop()
        agent.close()

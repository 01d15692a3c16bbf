"""The local manager on the real Worker, a real store and the fake runtime, on a fake clock: what
it does with names (create, update in place, replace, shut down, remove) and what it shows of
them (history, views).

Every test drives names through ``LocalManager.set_desired`` and the fake runtime's exits, and
checks what an operator would see: instance ids, containers, history and restart counts. After
every settle the invariant "at most one running container per name" is checked
(``tests/local/support.py``).
"""

from __future__ import annotations

import re

from reconciler.local.manager import RESOURCES_REPLACED, views_from_store
from reconciler.store.rocks import RocksStore
from tests.local.support import IMAGE, NODE, Agent, S, spec

# ------------------------------------------------------------------------------ create


async def test_new_name_creates_one_running_instance(agent: Agent) -> None:
    await agent.apply(spec("web"))
    view = agent.current("web")
    assert re.fullmatch(r"[0-9a-f]{12}", view.id)
    assert view.state == S.RUNNING and view.desired_state == S.RUNNING
    assert view.restarts == 0
    task = agent.store.get_task(view.id)
    assert task.node_id == NODE and task.spec.name == "web"
    assert agent.container(view.id) == "running"
    assert agent.history("web") == []


async def test_name_created_as_shutdown_runs_nothing(agent: Agent) -> None:
    await agent.apply(spec("web"), shutdown=("web",))
    view = agent.current("web")
    assert view.desired_state == S.SHUTDOWN and view.state == S.SHUTDOWN
    assert agent.executor.calls[(view.id, "prepare")] == 0


async def test_equal_desired_set_changes_nothing(agent: Agent) -> None:
    await agent.apply(spec("web"))
    before, n = agent.manager.views(), agent.assignments
    await agent.apply(spec("web"))
    assert agent.manager.views() == before
    assert agent.assignments == n


# ---------------------------------------------------------------------- in-place update


async def test_resources_change_updates_instance_in_place(agent: Agent) -> None:
    await agent.apply(spec("web", memory=64 << 20))
    old = agent.current("web").id
    await agent.apply(spec("web", memory=128 << 20))
    view = agent.current("web")
    assert view.id == old
    assert agent.executor.calls[(old, "update")] == 1
    assert agent.executor.containers[old].memory == 128 << 20
    assert agent.executor.calls[(old, "prepare")] == 1
    assert agent.store.get_task(old).spec.resources.memory == 128 << 20
    assert view.state == S.RUNNING and agent.history("web") == []


async def test_unsupported_resources_update_replaces_instance_and_says_so(agent: Agent) -> None:
    agent.executor.update_unsupported = True
    await agent.apply(spec("web", memory=64 << 20))
    old = agent.current("web").id
    await agent.apply(spec("web", memory=128 << 20))
    new = agent.current("web")
    assert new.id != old
    assert new.state == S.RUNNING
    assert new.message == RESOURCES_REPLACED
    assert agent.executor.containers[new.id].memory == 128 << 20
    (hist,) = agent.history("web")
    assert hist.id == old and hist.state == S.SHUTDOWN and hist.message == RESOURCES_REPLACED
    assert agent.container(old) == "exited"  # kept, stopped, for logs
    assert new.restarts == 0


# ------------------------------------------------------------------------- replacement


async def test_other_change_prepares_the_new_instance_before_it_stops_the_old(
    agent: Agent,
) -> None:
    await agent.apply(spec("web"))
    old = agent.current("web").id
    agent.executor.delay("shutdown", 3.0, name="web")  # the old container takes 3 s to stop
    await agent.apply(spec("web", image="localhost/busybox:v2"))
    view = agent.current("web")
    assert view.id == old and view.desired_state == S.SHUTDOWN  # stopping, once prepared
    assert agent.container(old) == "running"
    (new_id,) = [t for t in agent.executor.containers if t != old]
    assert agent.container(new_id) == "created"  # prepared while the old one ran
    assert [v.id for v in agent.manager.views() if not v.current] == [new_id]
    await agent.advance(3.0)
    new = agent.current("web")
    assert new.id == new_id and new.state == S.RUNNING
    assert agent.store.get_task(new.id).spec.image == "localhost/busybox:v2"
    (hist,) = agent.history("web")
    assert hist.id == old and hist.state == S.SHUTDOWN and hist.desired_state == S.SHUTDOWN
    assert agent.container(old) == "exited"


async def test_change_of_an_ended_instance_replaces_at_once_and_is_no_restart(
    agent: Agent,
) -> None:
    await agent.apply(spec("job", condition="none"))
    old = agent.current("job").id
    agent.executor.exit(old, 0)
    await agent.settle()
    assert agent.current("job").state == S.COMPLETE
    await agent.apply(spec("job", condition="none", image="localhost/busybox:v2"))
    new = agent.current("job")
    assert new.id != old and new.state == S.RUNNING and new.restarts == 0


async def test_removed_name_loses_every_instance_and_container(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0), spec("db"))
    first = agent.current("web").id
    agent.executor.exit(first, 1)
    await agent.advance(1.0)
    second = agent.current("web").id
    assert {first, second} <= set(agent.executor.containers)
    await agent.apply(spec("db"))
    assert [v.name for v in agent.manager.views()] == ["db"]
    assert first not in agent.executor.containers and second not in agent.executor.containers
    assert first not in agent.store and second not in agent.store
    assert agent.manager.restarts() == {"db": 0}


# ---------------------------------------------------------------------------- shutdown


async def test_shutdown_keeps_instance_and_running_again_starts_a_new_one(agent: Agent) -> None:
    await agent.apply(spec("web"))
    old = agent.current("web").id
    await agent.apply(spec("web"), shutdown=("web",))
    view = agent.current("web")
    assert view.id == old and view.state == S.SHUTDOWN and view.desired_state == S.SHUTDOWN
    assert agent.container(old) == "exited"  # record and container kept
    await agent.advance(60.0)  # no restart policy for an instance we stopped
    assert agent.current("web").id == old

    # A spec change while shut down waits for the next instance.
    await agent.apply(spec("web", image="localhost/busybox:v2"), shutdown=("web",))
    assert agent.current("web").id == old
    assert agent.store.get_task(old).spec.image == IMAGE

    await agent.apply(spec("web", image="localhost/busybox:v2"))
    new = agent.current("web")
    assert new.id != old and new.state == S.RUNNING
    assert agent.store.get_task(new.id).spec.image == "localhost/busybox:v2"
    assert [h.id for h in agent.history("web")] == [old]
    assert new.restarts == 0


# ----------------------------------------------------------------------------- history


async def test_history_keeps_the_last_five_and_deletes_older_ones(agent: Agent) -> None:
    agent.executor.exit_after_start("job", 0)
    await agent.apply(spec("job", delay=1.0))
    ids = [agent.current("job").id]
    for _ in range(8):
        await agent.advance(1.0)
        ids.append(agent.current("job").id)
    assert len(set(ids)) == 9
    history = agent.history("job")
    assert [h.id for h in history] == ids[-2:-7:-1]  # newest first
    assert all(h.desired_state == S.SHUTDOWN and h.state == S.COMPLETE for h in history)
    kept = set(ids[-6:])
    assert set(agent.executor.containers) == kept
    assert agent.store.task_ids() == kept
    for dropped in ids[:3]:
        assert agent.executor.calls[(dropped, "remove")] == 1
    assert agent.current("job").restarts == 8


# ------------------------------------------------------------------------------- views


async def test_views_are_sorted_with_current_first_and_history_newest_first(
    agent: Agent,
) -> None:
    await agent.apply(spec("b"), spec("a", delay=1.0))
    a1 = agent.current("a").id
    agent.executor.exit(a1, 1)
    await agent.advance(1.0)
    a2 = agent.current("a").id
    agent.executor.exit(a2, 1)
    await agent.advance(2.0)
    a3 = agent.current("a").id
    views = agent.manager.views()
    assert [(v.name, v.id, v.current) for v in views] == [
        ("a", a3, True),
        ("a", a2, False),
        ("a", a1, False),
        ("b", agent.current("b").id, True),
    ]
    assert [v.restarts for v in views] == [2, 2, 2, 0]
    assert agent.manager.restarts() == {"a": 2, "b": 0}
    assert views[1].state == S.FAILED and views[1].exit_code == 1
    assert views[0].to_json()["state"] == "running"


async def test_views_from_read_only_store_equal_views(agent: Agent) -> None:
    await agent.apply(spec("b"), spec("a", delay=1.0), spec("c"), shutdown=("c",))
    agent.executor.exit(agent.current("a").id, 1)
    await agent.advance(1.0)
    expected = agent.manager.views()
    ro = RocksStore.open(agent.state_dir, read_only=True)
    try:
        assert views_from_store(ro) == expected
    finally:
        ro.close()
    await agent.stop()
    ro = RocksStore.open(agent.state_dir, read_only=True)
    try:
        assert views_from_store(ro) == expected
    finally:
        ro.close()
    await agent.start()  # for the fixture's teardown

"""The local manager across agent restarts and crashes, on the real Worker, a real store and the
fake runtime: a restart changes nothing, a pending restart keeps its wall-clock deadline, a host
reboot's failures get the restart policy, status replays change nothing, and a crash between the
steps of a replacement resumes it."""

from __future__ import annotations

from collections import Counter

import pytest

from reconciler.core.model import TaskStatus
from reconciler.store.rocks import RocksStore
from tests.local.support import Agent, Crash, S, desired, spec

# ---------------------------------------------------------------------- agent restarts


async def test_agent_restart_changes_nothing(agent: Agent) -> None:
    await agent.apply(spec("web", memory=64 << 20), spec("job", delay=1.0), spec("off"))
    agent.executor.exit(agent.current("job").id, 0)
    await agent.advance(1.0)
    await agent.apply(
        spec("web", memory=96 << 20), spec("job", delay=1.0), spec("off"), shutdown=("off",)
    )
    before = agent.manager.views()
    calls = Counter(agent.executor.calls)
    containers = {tid: c.id for tid, c in agent.executor.containers.items()}
    await agent.stop()

    await agent.start()
    await agent.advance(30.0, step=5.0)
    assert agent.manager.views() == before
    assert {tid: c.id for tid, c in agent.executor.containers.items()} == containers
    for op in ("prepare", "start", "update", "shutdown", "remove"):
        assert {k: n for k, n in agent.executor.calls.items() if k[1] == op} == {
            k: n for k, n in calls.items() if k[1] == op
        }, op
    assert agent.manager.restarts() == {"job": 1, "off": 0, "web": 0}


async def test_pending_restart_survives_agent_restart_on_its_wall_clock_deadline(
    agent: Agent,
) -> None:
    await agent.apply(spec("web", delay=10.0))
    first = agent.current("web").id
    agent.executor.exit(first, 1)
    await agent.advance(4.0)
    await agent.stop()
    await agent.start()
    await agent.advance(5.5)
    assert agent.current("web").id == first
    await agent.advance(0.5)
    assert agent.current("web").id != first
    assert agent.current("web").restarts == 1


async def test_host_reboot_failures_get_the_restart_policy(agent: Agent) -> None:
    await agent.apply(spec("web", condition="on-failure", delay=2.0), spec("job", condition="none"))
    web, job = agent.current("web").id, agent.current("job").id
    await agent.stop()
    # What the agent does at boot, before the worker starts: the containers died with the host.
    for tid in (web, job):
        agent.executor.containers.pop(tid)
        agent.store = RocksStore.open(agent.state_dir)
        status = agent.store.get_status(tid)
        assert status is not None
        agent.store.put_status(
            tid,
            TaskStatus(
                S.FAILED, agent.clock.time(), "host rebooted", container_id=status.container_id
            ),
        )
        agent.store.close()
    await agent.start()
    assert agent.current("web").message == "host rebooted"
    await agent.advance(2.0)
    assert agent.current("web").id != web and agent.current("web").state == S.RUNNING
    assert agent.current("job").id == job and agent.current("job").state == S.FAILED


async def test_status_replays_change_nothing(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0), spec("job", condition="none"))
    agent.executor.exit(agent.current("job").id, 1)
    await agent.settle()
    before, n = agent.manager.views(), agent.assignments
    for _ in range(3):
        agent.worker.listen(agent.manager.on_status)
        await agent.settle()
    assert agent.manager.views() == before
    assert agent.assignments == n


async def test_crash_while_old_instance_stops_resumes_the_replacement(agent: Agent) -> None:
    await agent.apply(spec("web"))
    old = agent.current("web").id
    agent.executor.delay("shutdown", 100.0, name="web")  # step 1 hangs
    await agent.apply(spec("web", image="localhost/busybox:v2"))
    assert agent.current("web").desired_state == S.SHUTDOWN
    await agent.stop()  # "kill -9" between the steps: the old container still runs
    assert agent.container(old) == "running"

    agent.executor.delay("shutdown", 0.0, name="web")
    await agent.start()
    await agent.advance(1.0)
    new = agent.current("web")
    assert new.id != old and new.state == S.RUNNING
    assert agent.store.get_task(new.id).spec.image == "localhost/busybox:v2"
    assert [h.id for h in agent.history("web")] == [old]
    assert agent.container(old) == "exited"
    assert len(agent.executor.running()) == 1


async def test_crash_before_step_one_was_assigned_resumes_the_replacement(agent: Agent) -> None:
    await agent.apply(spec("web"))
    old = agent.current("web").id
    agent.crash_next_assign = True
    with pytest.raises(Crash):
        await agent.manager.set_desired(desired(spec("web", image="localhost/busybox:v2")))
    await agent.settle()
    assert agent.container(old) == "running"  # the worker never heard of step 1
    await agent.stop()

    await agent.start()
    new = agent.current("web")
    assert new.id != old and new.state == S.RUNNING
    assert agent.store.get_task(new.id).spec.image == "localhost/busybox:v2"
    assert agent.container(old) == "exited"
    assert len(agent.executor.running()) == 1


async def test_crash_after_step_two_was_stored_assigns_the_new_instance(agent: Agent) -> None:
    await agent.apply(spec("web"))
    old = agent.current("web").id
    agent.executor.delay("shutdown", 2.0, name="web")
    await agent.apply(spec("web", image="localhost/busybox:v2"))
    agent.crash_next_assign = True  # the swap is stored, then its assignment "crashes"
    await agent.advance(2.0)
    assert old in agent.store and len(agent.store.task_ids()) == 2  # old, and the prepared one
    assert agent.executor.containers[old].state == "exited"
    await agent.stop()

    await agent.start()
    new = agent.current("web")
    assert new.id != old and new.state == S.RUNNING
    assert [h.id for h in agent.history("web")] == [old]


async def test_a_failed_round_is_retried(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0))
    first = agent.current("web").id
    agent.executor.exit(first, 1)
    await agent.settle()
    agent.crash_next_assign = True  # the restart's assignment fails once
    await agent.advance(1.0)
    assert agent.current("web").id != first  # decided and stored...
    assert first in agent.store and len(agent.store.task_ids()) == 1  # ...not yet assigned
    await agent.advance(1.0)
    assert agent.current("web").state == S.RUNNING
    assert len(agent.store.task_ids()) == 2


async def test_simultaneous_restarts_share_one_assignment(agent: Agent) -> None:
    names = [f"t{i}" for i in range(10)]
    await agent.apply(*(spec(n, delay=2.0) for n in names))
    old = {n: agent.current(n).id for n in names}
    n = agent.assignments
    for name in names:
        agent.executor.exit(old[name], 1)
    await agent.settle()
    assert agent.assignments == n  # an end alone assigns nothing
    await agent.advance(2.0)
    assert all(agent.current(name).id != old[name] for name in names)
    assert agent.assignments == n + 1

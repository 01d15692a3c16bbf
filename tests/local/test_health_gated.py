"""Health-gated starts on the fake runtime, with the real worker and local manager: a task with
a health check is ``running`` only once healthy, and what the local manager builds on that
(start-first, the update monitor, rollbacks, ``dependsOn: healthy``) behaves as operators
expect. Failed pulls during an update keep the old instance running."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.core.clock import FakeClock, settle
from reconciler.core.model import (
    Dependency,
    DependencyCondition,
    HealthCheck,
    PullPolicy,
    TaskSpec,
    TaskState,
    UpdateOrder,
    UpdatePolicy,
)
from reconciler.testing.fake import FakeExecutor
from tests.local.support import Agent

S = TaskState
CHECK = HealthCheck(
    test=("CMD", "/bin/check"), interval=2.0, timeout=1.0, retries=3, start_period=10.0
)
"""podman's verdict is unhealthy ``startPeriod + interval x retries`` (16 s) after a start
without a passing check."""


class Updates(Agent):
    """The manager test's agent; ``start_first`` allows the one case of two running instances."""

    start_first = False

    async def settle(self) -> None:
        if not self.start_first:
            await super().settle()
            return
        await settle()
        await self.worker.wait_closed()
        await settle()


def spec(name: str, **fields: object) -> TaskSpec:
    return replace(TaskSpec(name=name, image="localhost/app:v1"), **fields)  # type: ignore[arg-type]


@pytest.fixture
async def agent(tmp_path: Path, executor: FakeExecutor, clock: FakeClock) -> AsyncIterator[Updates]:
    a = Updates(tmp_path / "state", executor, clock)
    await a.start()
    yield a
    await a.stop()


# -------------------------------------------------------------------------- the start


async def test_a_checked_task_is_starting_until_healthy(agent: Updates) -> None:
    agent.executor.health("db", healthy_after=10.0)
    await agent.apply(spec("db", healthcheck=CHECK))
    assert agent.current("db").state == S.STARTING
    await agent.advance(9.5)
    assert agent.current("db").state == S.STARTING
    await agent.advance(0.5)
    assert agent.current("db").state == S.RUNNING


async def test_a_check_that_never_passes_fails_the_instance_with_a_health_message(
    agent: Updates,
) -> None:
    agent.executor.health("db", healthy_after=None)
    await agent.apply(spec("db", healthcheck=CHECK))
    first = agent.current("db").id
    await agent.advance(CHECK.start_period + CHECK.interval * CHECK.retries)
    failed = next(v for v in agent.manager.views() if v.id == first)
    assert failed.state == S.FAILED
    assert failed.message is not None and "health check failed" in failed.message
    assert agent.container(first) == "exited"


# ----------------------------------------------------------------------------- updates


async def test_start_first_keeps_the_old_instance_current_until_the_new_one_is_healthy(
    agent: Updates,
) -> None:
    agent.start_first = True
    first_first = UpdatePolicy(order=UpdateOrder.START_FIRST, monitor=5.0)
    await agent.apply(spec("web", healthcheck=CHECK, update=first_first))
    old = agent.current("web").id
    agent.executor.health("web", healthy_after=6.0)
    await agent.apply(spec("web", healthcheck=CHECK, update=first_first, command=("v2",)))
    (new,) = [t for t in agent.executor.containers if t != old]
    assert agent.current("web").id == old
    assert agent.container(old) == "running" and agent.container(new) == "running"
    await agent.advance(5.5)
    assert agent.current("web").id == old  # the new one is running but not healthy yet
    await agent.advance(0.5)
    assert agent.current("web").id == new
    assert agent.current("web").state == S.RUNNING
    assert agent.container(old) == "exited"


async def test_an_update_that_never_gets_healthy_is_rolled_back_to_the_old_image(
    agent: Updates,
) -> None:
    good = agent.executor.add_image("localhost/app:v1")
    agent.executor.add_image("localhost/app:v2")
    await agent.apply(spec("web", healthcheck=CHECK))
    old = agent.current("web").id
    agent.executor.add_image("localhost/app:v1")  # the tag moves to another build meanwhile
    agent.executor.health("web", healthy_after=None)
    await agent.apply(spec("web", healthcheck=CHECK, image="localhost/app:v2"))
    agent.executor.health("web", healthy_after=0.0)
    await agent.advance(CHECK.start_period + CHECK.interval * CHECK.retries + 1.0)
    current = agent.current("web")
    assert current.state == S.RUNNING
    assert current.image == "localhost/app:v1"
    assert current.id != old
    assert agent.executor.containers[current.id].image_id == good  # pinned, not the new tag
    assert agent.manager.rollbacks() == {"web": 1}
    await agent.advance(60.0)
    assert agent.manager.rollbacks() == {"web": 1}  # the failed spec is not tried again
    assert agent.current("web").id == current.id


async def test_a_failed_pull_during_an_update_keeps_the_old_instance_running(
    agent: Updates,
) -> None:
    agent.executor.add_image("localhost/app:v1")
    agent.executor.add_image("localhost/app:v2", local=False)
    await agent.apply(spec("web"))
    old = agent.current("web").id
    agent.executor.registry_up = False
    await agent.apply(spec("web", image="localhost/app:v2", pull=PullPolicy.MISSING))
    await agent.advance(5.0)
    assert agent.current("web").id == old
    assert agent.container(old) == "running"
    (pending,) = [v for v in agent.manager.views() if not v.current]
    assert pending.state == S.PREPARING
    assert pending.err is not None and "cannot be reached" in pending.err
    agent.executor.registry_up = True
    await agent.advance(60.0)
    new = agent.current("web")
    assert new.id != old and new.state == S.RUNNING and new.image == "localhost/app:v2"
    assert agent.container(old) == "exited"


# ------------------------------------------------------------------------ dependencies


async def test_depends_on_healthy_waits_for_the_health_verdict(agent: Updates) -> None:
    agent.executor.health("db", healthy_after=8.0)
    healthy_db = Dependency("db", DependencyCondition.HEALTHY)
    await agent.apply(spec("db", healthcheck=CHECK), spec("api", depends_on=(healthy_db,)))
    api = agent.current("api")
    assert api.state == S.PENDING
    assert api.message is not None and "db (healthy)" in api.message
    assert agent.executor.calls[(api.id, "prepare")] == 0
    await agent.advance(7.5)
    assert agent.current("api").state == S.PENDING
    await agent.advance(0.5)
    assert agent.current("db").state == S.RUNNING
    assert agent.current("api").state == S.RUNNING

"""The local manager's restart policy, on the real Worker and the fake runtime, on a fake clock:
which ends are replaced, after which delay (doubling up to ``maxDelay``, reset by a completion
or ten minutes of running), how ``maxAttempts`` counts within its window, and what a spec change
or a shutdown does to a pending restart."""

from __future__ import annotations

from tests.local.support import Agent, S, spec

# ----------------------------------------------------------------------- restart policy


async def test_restart_any_replaces_a_completed_instance_after_delay(agent: Agent) -> None:
    await agent.apply(spec("job", delay=5.0))
    first = agent.current("job").id
    agent.executor.exit(first, 0)
    await agent.settle()
    assert agent.current("job").state == S.COMPLETE
    await agent.advance(4.5)
    assert agent.current("job").id == first
    await agent.advance(0.5)
    view = agent.current("job")
    assert view.id != first and view.state == S.RUNNING and view.restarts == 1
    assert agent.manager.restarts() == {"job": 1}
    assert [h.id for h in agent.history("job")] == [first]


async def test_restart_on_failure_skips_complete_and_replaces_failed(agent: Agent) -> None:
    await agent.apply(
        spec("a", condition="on-failure", delay=1.0),
        spec("b", condition="on-failure", delay=1.0),
    )
    a, b = agent.current("a").id, agent.current("b").id
    agent.executor.exit(a, 0)
    agent.executor.exit(b, 3)
    await agent.settle()
    await agent.advance(10.0)
    assert agent.current("a").id == a and agent.current("a").state == S.COMPLETE
    assert agent.current("b").id != b and agent.current("b").state == S.RUNNING
    assert agent.manager.restarts() == {"a": 0, "b": 1}


async def test_restart_none_never_replaces(agent: Agent) -> None:
    await agent.apply(spec("web", condition="none", delay=1.0))
    first = agent.current("web").id
    agent.executor.exit(first, 1)
    await agent.advance(100.0, step=10.0)
    view = agent.current("web")
    assert view.id == first and view.state == S.FAILED and view.exit_code == 1
    assert view.restarts == 0


async def test_vanished_container_counts_as_a_failure(agent: Agent) -> None:
    await agent.apply(spec("web", condition="on-failure", delay=1.0))
    first = agent.current("web").id
    agent.executor.vanish(first)
    await agent.settle()
    assert agent.current("web").state == S.FAILED
    assert agent.current("web").message == "container removed"
    await agent.advance(1.0)
    assert agent.current("web").id != first


async def _time_to_next_instance(agent: Agent, name: str, limit: float, step: float) -> float:
    """Advance in ``step``s until ``name`` has a new current instance; return the time taken."""
    first = agent.current(name).id
    waited = 0.0
    while agent.current(name).id == first:
        assert waited < limit, f"no replacement within {limit}s"
        await agent.advance(step, step=step)
        waited += step
    return round(waited, 6)


async def test_failures_double_the_delay_up_to_max_delay(agent: Agent) -> None:
    agent.executor.exit_after_start("web", 1)
    await agent.apply(spec("web", delay=1.0, max_delay=6.0))
    assert agent.current("web").state == S.FAILED
    delays = [await _time_to_next_instance(agent, "web", 20.0, 0.25) for _ in range(5)]
    assert delays == [1.0, 2.0, 4.0, 6.0, 6.0]
    assert agent.current("web").restarts == 5


async def test_complete_resets_backoff_to_exactly_delay(agent: Agent) -> None:
    await agent.apply(spec("job", delay=1.0, max_delay=100.0))
    for expected, code in [(1.0, 1), (2.0, 1), (4.0, 1), (1.0, 0), (1.0, 1), (2.0, 1)]:
        agent.executor.exit(agent.current("job").id, code)
        await agent.settle()
        assert await _time_to_next_instance(agent, "job", 20.0, 0.25) == expected


async def test_ten_minutes_of_running_resets_backoff(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0, max_delay=100.0))
    for expected in (1.0, 2.0, 4.0):
        agent.executor.exit(agent.current("web").id, 1)
        await agent.settle()
        assert await _time_to_next_instance(agent, "web", 20.0, 0.25) == expected
    await agent.advance(599.0, step=60.0)
    agent.executor.exit(agent.current("web").id, 1)  # ran 9m59s: no reset
    await agent.settle()
    assert await _time_to_next_instance(agent, "web", 20.0, 0.25) == 8.0
    await agent.advance(600.0, step=60.0)
    agent.executor.exit(agent.current("web").id, 1)  # ran 10 minutes: reset
    await agent.settle()
    assert await _time_to_next_instance(agent, "web", 20.0, 0.25) == 1.0


async def test_max_attempts_caps_restarts_within_window(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0, max_delay=1.0, max_attempts=2, window=60.0))
    for _ in range(2):
        agent.executor.exit(agent.current("web").id, 1)
        await agent.settle()
        await _time_to_next_instance(agent, "web", 5.0, 0.5)
    last = agent.current("web").id
    agent.executor.exit(last, 1)  # a third failure within 60 s: no more attempts
    await agent.advance(120.0, step=10.0)
    view = agent.current("web")
    assert view.id == last and view.state == S.FAILED and view.restarts == 2


async def test_max_attempts_forgets_attempts_outside_window(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0, max_delay=1.0, max_attempts=1, window=30.0))
    for _ in range(3):  # each failure comes 40 s after the last attempt: always allowed
        await agent.advance(40.0, step=10.0)
        agent.executor.exit(agent.current("web").id, 1)
        await agent.settle()
        await _time_to_next_instance(agent, "web", 5.0, 0.5)
    assert agent.current("web").restarts == 3
    agent.executor.exit(agent.current("web").id, 1)  # 1 s after the last attempt
    await agent.advance(60.0, step=10.0)
    assert agent.current("web").state == S.FAILED and agent.current("web").restarts == 3


async def test_max_attempts_with_zero_window_counts_the_whole_life(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0, max_attempts=1, window=0.0))
    agent.executor.exit(agent.current("web").id, 1)
    await agent.settle()
    await _time_to_next_instance(agent, "web", 5.0, 0.5)
    await agent.advance(3600.0, step=600.0)
    last = agent.current("web").id
    agent.executor.exit(last, 1)
    await agent.advance(60.0, step=10.0)
    assert agent.current("web").id == last and agent.current("web").restarts == 1


async def test_spec_change_starts_a_fresh_restart_policy(agent: Agent) -> None:
    await agent.apply(spec("web", delay=1.0, max_attempts=1))
    agent.executor.exit(agent.current("web").id, 1)
    await agent.settle()
    await _time_to_next_instance(agent, "web", 5.0, 0.5)
    agent.executor.exit(agent.current("web").id, 1)
    await agent.advance(10.0)
    assert agent.current("web").state == S.FAILED  # limit reached
    await agent.apply(spec("web", image="localhost/busybox:v2", delay=1.0, max_attempts=1))
    assert agent.current("web").state == S.RUNNING
    agent.executor.exit(agent.current("web").id, 1)
    await agent.settle()
    assert await _time_to_next_instance(agent, "web", 5.0, 0.5) == 1.0


async def test_shutdown_cancels_a_pending_restart(agent: Agent) -> None:
    await agent.apply(spec("web", delay=5.0))
    first = agent.current("web").id
    agent.executor.exit(first, 1)
    await agent.advance(2.0)
    await agent.apply(spec("web", delay=5.0), shutdown=("web",))
    await agent.advance(20.0)
    view = agent.current("web")
    assert view.id == first and view.desired_state == S.SHUTDOWN and view.restarts == 0

"""The agent when its runtime comes back after an outage: nothing waits out a stale backoff.

On the fake runtime and the fake clock, the clock never moves in these tests: whatever runs after
the runtime is reported up again runs because it came back, not because a wait ran out.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.core.clock import FakeClock, settle
from reconciler.core.errors import TemporaryError
from reconciler.core.model import TaskState
from reconciler.testing.fake import FakeExecutor
from tests.agent.test_agent import desired, metric, running_agent, states

S = TaskState


async def test_work_due_during_an_outage_runs_as_soon_as_the_runtime_is_back(
    tmp_path: Path, clock: FakeClock
) -> None:
    executor = FakeExecutor(clock=clock)
    executor.fail("prepare", TemporaryError("podman is not answering"), times=1)
    async with running_agent(tmp_path, clock, executor) as r:
        r.agent.runtime_up(False)
        r.session.send(desired("web"))
        await settle()
        assert states(r.agent) == {"web": S.PREPARING}  # failed once, now backing off
        assert metric(r.agent, "reconciler_runtime_up") == 0
        resyncs = executor.calls[("*", "resync")]

        r.agent.runtime_up(True)
        await settle()

        assert states(r.agent) == {"web": S.RUNNING}
        assert executor.calls[("*", "resync")] == resyncs + 1  # the resync ran at once, too
        assert metric(r.agent, "reconciler_runtime_up") == 1


async def test_a_runtime_that_stays_up_triggers_no_extra_retry_or_resync(
    tmp_path: Path, clock: FakeClock
) -> None:
    executor = FakeExecutor(clock=clock)
    executor.fail("prepare", TemporaryError("pull failed"), times=1)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired("web"))
        await settle()
        resyncs = executor.calls[("*", "resync")]
        r.agent.runtime_up(True)  # no change: it was up
        await settle()
        assert states(r.agent) == {"web": S.PREPARING}
        assert executor.calls[("*", "resync")] == resyncs
        await clock.advance(1.0)  # the ordinary backoff still retries
        assert states(r.agent) == {"web": S.RUNNING}

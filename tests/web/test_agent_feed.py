"""What the agent puts in its snapshot for the status page, on the fake runtime and clock."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from reconciler.core.clock import FakeClock, settle
from reconciler.core.model import TaskSpec
from reconciler.core.session import DesiredInvalid, DesiredTask, DesiredTasks, RejectedTask
from reconciler.core.snapshot import MAX_ERROR_LINES
from reconciler.testing.fake import FakeExecutor
from reconciler.web.agent_page import AgentPage
from tests.agent.test_agent import desired, running_agent


async def test_the_snapshot_carries_the_start_time_and_each_instances_image(
    tmp_path: Path, clock: FakeClock
) -> None:
    started = clock.time()
    async with running_agent(tmp_path, clock, FakeExecutor(clock=clock)) as r:
        r.session.send(desired("web", image="localhost/web:1"))
        await settle()
        snap = r.agent.snapshot()
        assert snap.started_at == started
        assert [(v.name, v.image) for v in snap.tasks] == [("web", "localhost/web:1")]


async def test_a_rejected_read_puts_its_errors_in_the_snapshot_until_a_valid_one(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with running_agent(tmp_path, clock, FakeExecutor(clock=clock)) as r:
        r.session.send(desired("web"))
        await settle()
        assert r.agent.snapshot().desired_errors == ()
        lines = tuple(f"d/web.yaml:{i}: tasks[0].image: required" for i in range(1, 501))
        r.session.send(DesiredInvalid(errors=lines))
        await settle()
        snap = r.agent.snapshot()
        assert len(snap.desired_errors) == MAX_ERROR_LINES
        assert snap.desired_errors[0] == lines[0]
        assert snap.desired_errors_at == clock.time()
        assert snap.desired_applied_at is not None and not snap.desired_valid
        r.session.send(desired("web"))
        await settle()
        snap = r.agent.snapshot()
        assert snap.desired_valid
        assert snap.desired_errors == () and snap.desired_errors_at is None


async def test_every_new_snapshot_bumps_the_changes_version(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with running_agent(tmp_path, clock, FakeExecutor(clock=clock)) as r:
        before, snap = r.agent.changes.version, r.agent.snapshot()
        r.session.send(desired("web"))
        await settle()
        assert r.agent.snapshot() is not snap
        assert r.agent.changes.version > before


async def test_env_values_never_reach_the_page_or_its_events(
    tmp_path: Path, clock: FakeClock
) -> None:
    secret = "s3cr3t-value-4711"
    spec = TaskSpec(name="web", image="localhost/busybox:latest", env=(("TOKEN", secret),))
    async with running_agent(tmp_path, clock, FakeExecutor(clock=clock)) as r:
        r.session.send(DesiredTasks(tasks=(DesiredTask(spec),), full=True))
        await settle()
        page = AgentPage(r.agent.snapshot, clock=clock.time)
        html = page.html().decode()
        assert "web" in html
        assert secret not in html and "TOKEN" not in html
        assert secret.encode() not in page.full(page.model())


async def test_a_rejected_task_of_an_assignment_shows_its_problems_until_none_is_rejected(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with running_agent(tmp_path, clock, FakeExecutor(clock=clock)) as r:
        r.session.send(desired("web", "db"))
        await settle()
        problem = "fleet:web: image: must be a non-empty string"
        rejected = replace(desired("db"), rejected=(RejectedTask("web", (problem,)),))
        r.session.send(rejected)
        await settle()
        snap = r.agent.snapshot()
        assert not snap.desired_valid
        assert snap.desired_errors == (problem,)
        assert snap.desired_errors_at == clock.time()
        r.session.send(desired("web", "db"))
        await settle()
        snap = r.agent.snapshot()
        assert snap.desired_valid and snap.desired_errors == ()

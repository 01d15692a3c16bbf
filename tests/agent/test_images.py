"""The agent's images on the fake runtime: pull decisions and removed images in the metrics, and
the image GC run from the resync pass, keeping what kept instances and desired tasks need."""

from __future__ import annotations

from pathlib import Path

from reconciler.agent.imagegc import RECORD_EVERY
from reconciler.core.clock import FakeClock, settle
from reconciler.core.codec import spec_hash
from reconciler.core.model import TaskSpec
from reconciler.core.session import DesiredTask, DesiredTasks
from reconciler.store.opening import db_path
from reconciler.testing.fake import FakeExecutor
from tests.agent.test_agent import metric, running_agent

MB = 1_000_000


def tasks(*specs: TaskSpec) -> DesiredTasks:
    return DesiredTasks(tasks=tuple(DesiredTask(s) for s in specs), full=True)


async def test_pull_decisions_and_removed_images_are_counted(
    tmp_path: Path, clock: FakeClock, executor: FakeExecutor
) -> None:
    for n in (1, 2, 3):
        executor.add_image(f"app:{n}", size=10 * MB, local=False)
    executor.add_image("operator/tool:1", size=10 * MB)
    async with running_agent(tmp_path / "state", clock, executor) as r:
        executor.observer = r.agent.events
        for n in (1, 2, 3):  # one image after another: app:1 and app:2 end up unused
            r.session.send(tasks(TaskSpec(name="web", image=f"app:{n}")))
            await settle()
            await clock.advance(RECORD_EVERY)
            await settle()
        assert metric(r.agent, "reconciler_image_pulls_total", result="pulled") == 3
        assert metric(r.agent, "reconciler_image_pulls_total", result="present") == 0
        assert metric(r.agent, "reconciler_images_removed_total") == 0

        # The history keeps the old instances and their containers: their images stay.
        executor.set_disk(100 * MB, other=60 * MB)  # 0% free of what is left: under 15%
        await clock.advance(30.0)  # a resync pass
        await settle()
        assert metric(r.agent, "reconciler_images_removed_total") == 0
        assert executor.image_named("app:1") is not None

        # Once no kept instance names them (the name is gone from the desired set, with its
        # history), they are the agent's to remove; the image the desired set names and the
        # operator's image stay.
        r.session.send(tasks(TaskSpec(name="api", image="app:3")))
        await settle()
        await clock.advance(30.0)
        await settle()
        assert metric(r.agent, "reconciler_images_removed_total") == 2
        assert executor.image_named("app:1") is None and executor.image_named("app:2") is None
        assert executor.image_named("app:3") is not None
        assert executor.image_named("operator/tool:1") is not None


async def test_an_image_of_a_desired_task_that_does_not_run_is_kept(
    tmp_path: Path, clock: FakeClock, executor: FakeExecutor
) -> None:
    executor.add_image("app:1", size=10 * MB)
    executor.add_image("job:1", size=10 * MB)
    async with running_agent(tmp_path / "state", clock, executor) as r:
        executor.observer = r.agent.events
        r.session.send(tasks(TaskSpec(name="job", image="job:1")))
        await settle()
        await clock.advance(30.0)
        await settle()
        # The job's containers vanish, but the task is still desired: an offline host must be
        # able to start it again.
        executor.containers.clear()
        executor.set_disk(100 * MB, other=79 * MB)  # 1% free
        await clock.advance(30.0)
        await settle()
        assert executor.image_named("job:1") is not None
        assert executor.image_named("app:1") is not None  # never the agent's
        assert metric(r.agent, "reconciler_images_removed_total") == 0


async def test_a_rebuilt_store_adopts_a_rollback_and_does_not_retry_the_failed_spec(
    tmp_path: Path, clock: FakeClock, executor: FakeExecutor
) -> None:
    state = tmp_path / "state"
    v1 = TaskSpec(name="web", image="localhost/busybox:v1")
    v2 = TaskSpec(name="web", image="localhost/busybox:v2")
    async with running_agent(state, clock, executor) as r:
        r.session.send(tasks(v1))
        await settle()
        (first,) = [v.id for v in r.agent.snapshot().current()]
        await clock.advance(1.0)  # containers made later are newer, as podman dates them
        r.session.send(tasks(v2))
        await settle()
        (failing,) = [v.id for v in r.agent.snapshot().current()]
        assert failing != first
        await clock.advance(1.0)
        executor.exit(failing, 1)  # within the monitor: rolled back
        await settle()
        await clock.advance(1.0)
        (rollback,) = r.agent.snapshot().current()
        assert rollback.id not in (first, failing) and rollback.image == "localhost/busybox:v1"
        assert executor.containers[rollback.id].rolled_back_from == spec_hash(v2)
    (db_path(state) / "CURRENT").unlink()  # corrupt: rebuilt from the runtime's containers

    async with running_agent(state, clock, executor) as r:
        r.session.send(tasks(v2))
        await settle()
        await clock.advance(60.0)
        await settle()
        (adopted,) = r.agent.snapshot().current()
        assert adopted.id == rollback.id
        assert executor.containers[rollback.id].state == "running"
        tried_v2 = [c for c in executor.containers.values() if c.image_ref.endswith(":v2")]
        assert len(tried_v2) <= 1  # never a new instance of the failed spec

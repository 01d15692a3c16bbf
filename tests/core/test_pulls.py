"""The pull rule (``reconciler.core.pulls``) through the fake runtime's prepare: every policy, the
local image standing in, refusals while the image store is short of space, rollbacks pinned by
image ID, and the result each decision counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest

from reconciler.core.errors import PermanentError, TemporaryError
from reconciler.core.executor import DiskSpace
from reconciler.core.model import PullPolicy, Rollback, Task, TaskSpec
from reconciler.core.pulls import PullResult, pull_refusal, short_of_space
from reconciler.testing.fake import FakeExecutor

APP = "registry.local:5000/app:v1"
MB = 1_000_000


@dataclass
class Pulls:
    """An observer that counts pull results (the rest of the port is ignored)."""

    results: Counter[str] = field(default_factory=Counter)

    def runtime_error(self, op: str) -> None:
        pass

    def drift_corrected(self, kind: str) -> None:
        pass

    def runtime_up(self, up: bool) -> None:
        pass

    def oom_killed(self, name: str, task_id: str) -> None:
        pass

    def image_pulled(self, result: str) -> None:
        self.results[result] += 1


@pytest.fixture
def pulls(executor: FakeExecutor) -> Pulls:
    p = Pulls()
    executor.observer = p
    return p


def task(
    task_id: str = "t1",
    *,
    image: str = APP,
    pull: PullPolicy = PullPolicy.MISSING,
    rollback: Rollback | None = None,
) -> Task:
    return Task(id=task_id, spec=TaskSpec(name="app", image=image, pull=pull), rollback=rollback)


async def prepare(executor: FakeExecutor, t: Task) -> str | None:
    return await executor.controller(t).prepare()


def image_of(executor: FakeExecutor, t: Task) -> str:
    return executor.containers[t.id].image_id


# ------------------------------------------------------------------------------- missing


async def test_missing_with_the_image_present_never_contacts_the_registry(
    executor: FakeExecutor, pulls: Pulls
) -> None:
    local = executor.add_image(APP, registry=False)
    executor.registry_up = False  # any contact would fail
    assert await prepare(executor, task()) is None
    assert pulls.results == {PullResult.PRESENT: 1}
    assert image_of(executor, task()) == local


async def test_missing_pulls_an_absent_image(executor: FakeExecutor, pulls: Pulls) -> None:
    remote = executor.add_image(APP, local=False)
    assert await prepare(executor, task()) is None
    assert pulls.results == {PullResult.PULLED: 1}
    assert image_of(executor, task()) == remote
    assert executor.used_images()[remote] == APP


async def test_a_failed_pull_of_an_absent_image_is_temporary_and_says_why(
    executor: FakeExecutor, pulls: Pulls
) -> None:
    executor.add_image(APP, local=False)
    executor.registry_up = False
    with pytest.raises(TemporaryError, match=f"pulling image {APP} failed"):
        await prepare(executor, task())
    assert pulls.results == {PullResult.FAILED: 1}
    assert not executor.containers


# -------------------------------------------------------------------------------- always


async def test_always_pulls_even_a_present_image(executor: FakeExecutor, pulls: Pulls) -> None:
    executor.add_image(APP, registry=False)
    newer = executor.add_image(APP, local=False)  # the registry has moved on
    assert await prepare(executor, task(pull=PullPolicy.ALWAYS)) is None
    assert pulls.results == {PullResult.PULLED: 1}
    assert image_of(executor, task()) == newer


async def test_always_falls_back_to_the_local_image_when_the_registry_is_down(
    executor: FakeExecutor, pulls: Pulls
) -> None:
    local = executor.add_image(APP)
    executor.registry_up = False
    note = await prepare(executor, task(pull=PullPolicy.ALWAYS))
    assert note is not None
    assert "using the local image" in note and "cannot be reached" in note
    assert pulls.results == {PullResult.FALLBACK: 1}
    assert image_of(executor, task()) == local


async def test_always_without_a_local_image_fails_when_the_registry_is_down(
    executor: FakeExecutor, pulls: Pulls
) -> None:
    executor.add_image(APP, local=False)
    executor.registry_up = False
    with pytest.raises(TemporaryError, match="cannot be reached"):
        await prepare(executor, task(pull=PullPolicy.ALWAYS))
    assert pulls.results == {PullResult.FAILED: 1}


# --------------------------------------------------------------------------------- never


async def test_never_uses_the_present_image_and_rejects_an_absent_one(
    executor: FakeExecutor, pulls: Pulls
) -> None:
    executor.add_image(APP, local=False)
    with pytest.raises(PermanentError, match=f"image {APP} is not present"):
        await prepare(executor, task("t1", pull=PullPolicy.NEVER))
    executor.add_image("other:1")
    await prepare(executor, task("t2", image="other:1", pull=PullPolicy.NEVER))
    assert pulls.results == {PullResult.PRESENT: 1}


# ------------------------------------------------------------------------------ refusals


async def test_no_pull_while_the_image_store_is_short_of_space(
    executor: FakeExecutor, pulls: Pulls
) -> None:
    executor.add_image(APP, local=False, size=MB)
    executor.set_disk(100 * MB, other=90 * MB)  # 10% free, under the default 15%
    with pytest.raises(TemporaryError) as info:
        await prepare(executor, task())
    assert "is not pulled now" in str(info.value)
    assert "10.0% free, under the image GC threshold of 15%" in str(info.value)
    assert pulls.results == {PullResult.REFUSED: 1}
    executor.set_disk(100 * MB, other=10 * MB)  # space came back
    await prepare(executor, task())
    assert pulls.results[PullResult.PULLED] == 1


async def test_always_uses_the_local_image_while_pulls_are_refused(
    executor: FakeExecutor, pulls: Pulls
) -> None:
    local = executor.add_image(APP, size=MB)
    executor.add_image(APP, local=False, size=MB)
    executor.set_disk(100 * MB, other=95 * MB)
    note = await prepare(executor, task(pull=PullPolicy.ALWAYS))
    assert note is not None and "not pulled" in note and "threshold" in note
    assert pulls.results == {PullResult.FALLBACK: 1}
    assert image_of(executor, task()) == local


async def test_a_present_image_is_used_whatever_the_space(
    executor: FakeExecutor, pulls: Pulls
) -> None:
    executor.add_image(APP, size=MB)
    executor.set_disk(100 * MB, other=99 * MB)
    await prepare(executor, task())
    assert pulls.results == {PullResult.PRESENT: 1}


async def test_a_zero_threshold_never_refuses(executor: FakeExecutor, pulls: Pulls) -> None:
    executor.image_gc_threshold = 0
    executor.add_image(APP, local=False, size=MB)
    executor.set_disk(100 * MB, other=98 * MB)
    await prepare(executor, task())
    assert pulls.results == {PullResult.PULLED: 1}


def test_short_of_space_is_strictly_under_the_threshold() -> None:
    assert short_of_space(DiskSpace(14, 100), 15)
    assert not short_of_space(DiskSpace(15, 100), 15)
    assert not short_of_space(DiskSpace(0, 100), 0)  # 0 turns the rule off
    assert not short_of_space(None, 15)  # unknown space never counts as short
    assert pull_refusal(DiskSpace(20, 100), 15) is None
    why = pull_refusal(DiskSpace(5, 100), 15)
    assert why is not None and "5.0% free" in why and "15%" in why


# ------------------------------------------------------------------------------ rollbacks


async def test_a_rollback_is_created_from_the_image_of_the_container_it_names(
    executor: FakeExecutor, pulls: Pulls
) -> None:
    good = executor.add_image(APP)
    old = task("old")
    await prepare(executor, old)
    bad = executor.add_image(APP)  # the tag now names another build
    assert executor.image_named(APP) is not None
    assert executor.image_named(APP).id == bad  # type: ignore[union-attr]
    rollback = task("rb", rollback=Rollback(image_from="app.old", failed_hash="f00d"))
    assert await prepare(executor, rollback) is None
    assert image_of(executor, rollback) == good
    assert executor.containers["rb"].rolled_back_from == "f00d"
    assert pulls.results == {PullResult.PRESENT: 2}
    (listed,) = [c for c in await executor.list_containers() if c.task_id == "rb"]
    assert listed.rolled_back_from == "f00d"


async def test_a_rollback_whose_container_is_gone_uses_the_spec_image_and_says_so(
    executor: FakeExecutor, pulls: Pulls
) -> None:
    current = executor.add_image(APP)
    rollback = task("rb", rollback=Rollback(image_from="app.gone", failed_hash="f00d"))
    note = await prepare(executor, rollback)
    assert note is not None and "app.gone is gone" in note
    assert image_of(executor, rollback) == current
    assert pulls.results == {PullResult.PRESENT: 1}

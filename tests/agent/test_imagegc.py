"""The image GC: the pure choice (``select``, ``matches``), and the collector's passes on the
fake runtime and a real store: what is recorded, what goes, in which order, and when it stops."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.agent.imagegc import RECORD_EVERY, ImageCollector, ImageRecord, matches, select
from reconciler.core.clock import FakeClock
from reconciler.core.executor import RuntimeImage
from reconciler.core.model import Task, TaskSpec
from reconciler.store.rocks import RocksStore
from reconciler.testing.fake import FakeExecutor

MB = 1_000_000


def image(image_id: str, *names: str, containers: int = 0, size: int = MB) -> RuntimeImage:
    return RuntimeImage(image_id, names, size, containers)


def rec(last_used: float, *names: str) -> ImageRecord:
    return ImageRecord(last_used, names)


# -------------------------------------------------------------------------------- matches


@pytest.mark.parametrize(
    ("ref", "names", "expected"),
    [
        ("registry.local:5000/app:v1", ("registry.local:5000/app:v1",), True),
        ("registry.local:5000/app:v1", ("registry.local:5000/app:v2",), False),
        ("busybox", ("docker.io/library/busybox:latest",), True),  # a short name
        ("library/busybox:1.36", ("docker.io/library/busybox:1.36",), True),
        ("localhost/app", ("localhost/app:latest",), True),
        ("app", ("localhost/myapp:latest",), False),  # no partial names
        ("registry.local:5000/app", ("registry.local:5000/app:latest",), True),
    ],
)
def test_a_reference_matches_the_names_it_may_denote(
    ref: str, names: tuple[str, ...], expected: bool
) -> None:
    assert matches(ref, image("a" * 64, *names)) is expected


def test_a_reference_by_id_or_id_prefix_matches_the_image() -> None:
    img = image("0123456789ab" + "c" * 52)
    assert matches("0123456789ab", img)
    assert matches("sha256:0123456789ab" + "c" * 52, img)
    assert not matches("0123456789ac", img)


# --------------------------------------------------------------------------------- select


def test_select_orders_the_agents_unneeded_images_least_recently_used_first() -> None:
    images = [image("b", "app:2"), image("a", "app:1"), image("c", "app:3")]
    records = {"a": rec(30.0, "app:1"), "b": rec(10.0, "app:2"), "c": rec(20.0, "app:3")}
    order = select(images, records, in_use=(), needed=())
    assert [r.image.id for r in order] == ["b", "c", "a"]
    assert [r.refs for r in order] == [("app:2",), ("app:3",), ("app:1",)]


def test_select_keeps_what_is_needed_used_or_not_the_agents() -> None:
    images = [
        image("needed", "app:1"),  # a desired task names it
        image("short", "docker.io/library/redis:7"),  # named by a short reference
        image("ours", "app:2"),  # the only candidate
        image("running", "app:3", containers=1),  # a container (of anyone) uses it
        image("inuse", "app:4"),  # this node's containers use it
        image("foreign", "operator/tool:1"),  # never recorded
        image("shared", "app:5", "operator/copy:1"),  # someone else's name is on it too
    ]
    records = {
        i.id: rec(1.0, *(n for n in i.names if not n.startswith("operator/")))
        for i in images
        if i.id != "foreign"
    }
    order = select(images, records, in_use={"inuse"}, needed={"app:1", "redis:7"})
    assert [r.image.id for r in order] == ["ours"]


def test_an_image_without_names_is_removed_by_id() -> None:
    (removal,) = select([image("d" * 64)], {"d" * 64: rec(1.0, "app:1")}, in_use=(), needed=())
    assert removal.refs == ("d" * 64,)


def test_an_image_with_several_of_the_agents_names_loses_them_all() -> None:
    records = {"a": rec(1.0, "app:1", "app:latest")}
    (removal,) = select([image("a", "app:1", "app:latest")], records, in_use=(), needed=())
    assert removal.refs == ("app:1", "app:latest")


# ------------------------------------------------------------------------------ collector


@pytest.fixture
def collector(store: RocksStore, clock: FakeClock) -> ImageCollector:
    removed: list[int] = []
    c = ImageCollector(store=store, clock=clock, on_removed=removed.append, threshold_percent=15.0)
    c.removed = removed  # type: ignore[attr-defined]
    return c


async def use(executor: FakeExecutor, task_id: str, ref: str) -> None:
    """A container of this node created from ``ref`` (the image is pulled if absent)."""
    await executor.controller(Task(task_id, TaskSpec(name=f"n{task_id}", image=ref))).prepare()


async def test_used_images_are_recorded_with_their_last_use(
    collector: ImageCollector, executor: FakeExecutor, store: RocksStore, clock: FakeClock
) -> None:
    app = executor.add_image("app:1")
    executor.add_image("operator/tool:1")
    await use(executor, "t1", "app:1")
    await collector.run(executor, needed=())
    assert set(store.image_records()) == {app}
    assert ImageRecord.from_json(store.image_records()[app]) == ImageRecord(
        clock.time(), ("app:1",)
    )

    first = clock.time()
    await clock.advance(RECORD_EVERY / 2)
    await collector.run(executor, needed=())
    assert ImageRecord.from_json(store.image_records()[app]).last_used == first  # not yet
    await clock.advance(RECORD_EVERY)
    await collector.run(executor, needed=())
    assert ImageRecord.from_json(store.image_records()[app]).last_used == clock.time()


async def test_nothing_is_removed_above_the_threshold(
    collector: ImageCollector, executor: FakeExecutor
) -> None:
    executor.add_image("app:1", size=10 * MB)
    await use(executor, "t1", "app:1")
    await collector.run(executor, needed=())
    await remove_container(executor, "t1")
    executor.set_disk(100 * MB, other=70 * MB)  # 20% free
    assert await collector.run(executor, needed=()) == 0
    assert executor.calls[("*", "list_images")] == 0  # cheap: no listing at all
    assert executor.image_named("app:1") is not None


async def test_under_the_threshold_unneeded_images_go_oldest_first_until_it_is_met(
    collector: ImageCollector, executor: FakeExecutor, clock: FakeClock, store: RocksStore
) -> None:
    for n in (1, 2, 3, 4):
        executor.add_image(f"app:{n}", size=5 * MB)
    executor.add_image("operator/tool:1", size=5 * MB)
    for n in (1, 2, 3, 4):  # used in this order: app:1 least recently
        await use(executor, f"t{n}", f"app:{n}")
        await collector.run(executor, needed=())
        await clock.advance(RECORD_EVERY)
    for n in (1, 2, 3, 4):
        await remove_container(executor, f"t{n}")
    # 25 MB of images on 100 MB, 66 MB of other files: 9% free. Removing two images (10 MB)
    # brings it back to 19%, over the 15% threshold.
    executor.set_disk(100 * MB, other=66 * MB)
    removed = await collector.run(executor, needed={"app:4"})
    assert removed == 2
    assert executor.image_named("app:1") is None and executor.image_named("app:2") is None
    assert executor.image_named("app:3") is not None
    assert executor.image_named("app:4") is not None  # needed
    assert executor.image_named("operator/tool:1") is not None  # not the agent's
    assert collector.removed == [1, 1]  # type: ignore[attr-defined]
    assert len(store.image_records()) == 2  # the removed images' records went with them


async def test_needed_and_in_use_images_stay_even_when_nothing_else_can_go(
    collector: ImageCollector, executor: FakeExecutor
) -> None:
    executor.add_image("app:1", size=5 * MB)
    executor.add_image("app:2", size=5 * MB)
    await use(executor, "t1", "app:1")  # its container exists (a kept instance)
    await use(executor, "t2", "app:2")
    await collector.run(executor, needed=())
    await remove_container(executor, "t2")
    executor.set_disk(100 * MB, other=95 * MB)
    assert await collector.run(executor, needed={"app:2"}) == 0
    assert executor.image_named("app:1") is not None
    assert executor.image_named("app:2") is not None


async def test_a_zero_threshold_turns_the_gc_off(store: RocksStore, clock: FakeClock) -> None:
    executor = FakeExecutor(clock=clock)
    collector = ImageCollector(store=store, clock=clock, threshold_percent=0)
    executor.add_image("app:1", size=5 * MB)
    await use(executor, "t1", "app:1")
    await collector.run(executor, needed=())
    await remove_container(executor, "t1")
    executor.set_disk(100 * MB, other=95 * MB)
    assert await collector.run(executor, needed=()) == 0
    assert executor.image_named("app:1") is not None
    assert store.image_records()  # recorded all the same


async def test_records_survive_a_restart_of_the_agent(
    tmp_path: Path, executor: FakeExecutor, clock: FakeClock
) -> None:
    state = tmp_path / "state"
    store = RocksStore.open(state)
    executor.add_image("app:1", size=5 * MB)
    await use(executor, "t1", "app:1")
    await ImageCollector(store=store, clock=clock, threshold_percent=15.0).run(executor, needed=())
    store.close()
    await remove_container(executor, "t1")
    executor.set_disk(100 * MB, other=95 * MB)
    store = RocksStore.open(state)
    try:
        assert (
            await ImageCollector(store=store, clock=clock, threshold_percent=15.0).run(
                executor, needed=()
            )
            == 1
        )
        assert store.image_records() == {}
    finally:
        store.close()


async def remove_container(executor: FakeExecutor, task_id: str) -> None:
    executor.containers.pop(task_id)

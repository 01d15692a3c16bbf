"""Usage in the agent: the sampler on the fake runtime and clock, the usage series and their
cached text, the stored OOM-kill counters, and the node conditions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.agent.agent import Agent
from reconciler.assemble.agent import assemble_agent
from reconciler.core.clock import FakeClock, settle
from reconciler.core.executor import RuntimeUsage, TaskUsage
from reconciler.core.model import Condition, RestartPolicy, TaskSpec, TaskState
from reconciler.core.session import DesiredTask, DesiredTasks
from reconciler.core.snapshot import Snapshot
from reconciler.local.manager import check_records
from reconciler.observe.hoststats import DiskFree, HostStats, NodeUsage
from reconciler.observe.metrics import Metrics
from reconciler.observe.usage import Usage, UsageMonitor
from reconciler.sessions.memory import MemorySession
from reconciler.store.recovery import open_store
from reconciler.store.rocks import RocksStore
from reconciler.testing.agents import agent_options
from reconciler.testing.fake import FakeExecutor
from reconciler.testing.polling import eventually
from reconciler.testing.tasks import ended
from reconciler.web.state import node_json

S = TaskState
GIB = 1024**3


def desired(*names: str) -> DesiredTasks:
    policy = RestartPolicy(condition="none")
    return DesiredTasks(
        tasks=tuple(
            DesiredTask(TaskSpec(name=n, image="localhost/busybox:latest", restart=policy))
            for n in names
        ),
        full=True,
    )


class FakeHost(HostStats):
    """A host whose figures a test sets."""

    def __init__(self, node: NodeUsage | None = None) -> None:
        super().__init__(ticks_per_second=100)
        self.node = node or NodeUsage(memory_available_bytes=GIB, memory_total_bytes=4 * GIB)
        self.reads: list[dict[str, str]] = []

    def read(self, filesystems: object) -> NodeUsage:
        assert isinstance(filesystems, dict)
        self.reads.append(dict(filesystems))
        return self.node


@dataclass
class Running:
    agent: Agent
    session: MemorySession
    executor: FakeExecutor
    store: RocksStore
    host: FakeHost


@asynccontextmanager
async def running_agent(
    state: Path, clock: FakeClock, executor: FakeExecutor, *, stats: float = 10.0
) -> AsyncIterator[Running]:
    opened = open_store(state, verify=check_records)
    store = opened.store
    session = MemorySession()
    assembled = assemble_agent(
        agent_options(state, "--stats-interval", f"{stats}s"),
        store=store,
        origin=opened.origin,
        node_id="node-a",
        clock=clock,
        runtime=lambda _: executor,
        session=session,
        boot_id="b",
    )
    agent = assembled.agent
    host = FakeHost()
    agent.usage.host = host
    executor.observer = agent.events
    stop = asyncio.Event()
    task = asyncio.create_task(assembled.run(stop))
    await settle()
    try:
        yield Running(agent, session, executor, store, host)
    finally:
        stop.set()
        await ended(task, "the agent")
        store.close()


def metric(agent: Agent, metric_name: str, **labels: str) -> float | None:
    return agent.metrics.registry.get_sample_value(metric_name, labels)


def current_id(agent: Agent, name: str) -> str:
    return next(v.id for v in agent.snapshot().tasks if v.current and v.name == name)


# -------------------------------------------------------------------------------- sampler


async def test_usage_is_sampled_every_interval_for_current_instances(
    tmp_path: Path, clock: FakeClock
) -> None:
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired("web"))
        await settle()
        web = current_id(r.agent, "web")
        executor.set_usage(web, cpu_seconds=1.5, memory_working_set_bytes=1000, pids=3)
        first = executor.calls[("*", "usage")]
        await clock.advance(10.0)
        await eventually(
            lambda: metric(r.agent, "reconciler_task_pids", name="web", id=web) == 3,
            "the sample in the metrics",
        )
        assert executor.calls[("*", "usage")] == first + 1
        labels = {"name": "web", "id": web}
        assert metric(r.agent, "reconciler_task_cpu_seconds_total", **labels) == 1.5
        assert metric(r.agent, "reconciler_task_memory_working_set_bytes", **labels) == 1000
        assert metric(r.agent, "reconciler_task_memory_limit_bytes", **labels) is None
        assert r.host.reads[-1] == {"state": str(tmp_path)}
        executor.image_store = "/var/lib/containers/storage"
        await clock.advance(10.0)
        await eventually(lambda: "images" in r.host.reads[-1], "the image store read")


async def test_a_sample_never_rebuilds_the_snapshot(tmp_path: Path, clock: FakeClock) -> None:
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired("web"))
        await settle()
        await clock.advance(10.0)
        await eventually(
            lambda: bool(r.host.reads) and bool(r.agent.snapshot().conditions), "a first sample"
        )
        before = r.agent.snapshot()
        reads = len(r.host.reads)
        executor.set_usage(current_id(r.agent, "web"), cpu_seconds=9.0)
        await clock.advance(10.0)
        await eventually(lambda: len(r.host.reads) > reads, "the next sample")
        assert r.agent.snapshot() is before


async def test_an_interval_of_zero_turns_sampling_off(tmp_path: Path, clock: FakeClock) -> None:
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor, stats=0.0) as r:
        r.session.send(desired("web"))
        await settle()
        await clock.advance(60.0)
        assert executor.calls[("*", "usage")] == 0
        assert r.host.reads == []
        text = r.agent.metrics.render().decode()
        assert "reconciler_task_cpu_seconds_total" not in text
        assert "reconciler_node_condition" not in text


class FixedExecutor(FakeExecutor):
    """Reports two running instances of one name: the current one and one being replaced."""

    async def usage(self) -> RuntimeUsage:
        return RuntimeUsage(
            tasks=(TaskUsage("new", "web", pids=1), TaskUsage("old", "web", pids=2)),
            image_store="/images",
        )


async def test_only_current_instances_are_published(tmp_path: Path, clock: FakeClock) -> None:
    published: list[Usage] = []
    store = RocksStore.open(tmp_path)
    try:
        monitor = UsageMonitor(
            store=store,
            clock=clock,
            interval=10.0,
            state_dir=str(tmp_path),
            publish=published.append,
            host=FakeHost(),
        )
        usage = await monitor.sample_once(FixedExecutor(clock=clock), lambda: {"new"})
    finally:
        store.close()
    assert published == [usage]
    assert [t.task_id for t in usage.tasks] == ["new"]
    assert monitor.conditions == (
        (Condition.DISK_PRESSURE, False),
        (Condition.MEMORY_PRESSURE, False),
    )


class BrokenExecutor(FakeExecutor):
    async def usage(self) -> RuntimeUsage:
        raise OSError("cgroup root vanished")


async def test_a_failed_sampling_pass_is_counted_under_resync_and_harms_nothing(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    executor = BrokenExecutor(clock=clock)
    with caplog.at_level(logging.WARNING):
        async with running_agent(tmp_path, clock, executor) as r:
            r.session.send(desired("web"))
            await settle()
            await clock.advance(10.0)
            assert metric(r.agent, "reconciler_loop_restarts_total", loop="resync") == 2
            snap = r.agent.snapshot()
            assert snap.ready and snap.health() == (True, "ok")
            assert executor.calls[("*", "resync")] >= 1
    assert caplog.text.count("usage sampling failed") == 1  # the same error is said once


# ------------------------------------------------------------------------------ conditions


async def test_conditions_follow_the_node_and_never_make_it_unready(
    tmp_path: Path, clock: FakeClock
) -> None:
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired("web"))
        await settle()
        await eventually(lambda: bool(r.agent.snapshot().conditions), "the conditions")
        assert node_json(r.agent.snapshot())["conditions"] == {
            "diskPressure": False,
            "memoryPressure": False,
        }
        r.host.node = NodeUsage(
            memory_available_bytes=GIB // 100,
            memory_total_bytes=4 * GIB,
            disks=(DiskFree("state", 1, 1000),),
        )
        await clock.advance(10.0)
        await eventually(
            lambda: dict(r.agent.snapshot().conditions)[Condition.MEMORY_PRESSURE],
            "memory pressure",
        )
        snap = r.agent.snapshot()
        assert node_json(snap)["conditions"] == {
            "diskPressure": True,
            "memoryPressure": True,
        }
        assert snap.ready
        for condition in ("disk_pressure", "memory_pressure"):
            assert metric(r.agent, "reconciler_node_condition", condition=condition) == 1
        assert metric(r.agent, "reconciler_node_memory_available_bytes") == GIB // 100
        assert metric(r.agent, "reconciler_node_disk_free_bytes", fs="state") == 1


# ------------------------------------------------------------------------------- OOM kills


async def test_oom_kills_are_counted_per_name_and_survive_the_instance_and_the_agent(
    tmp_path: Path, clock: FakeClock
) -> None:
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired("web", "db"))
        await settle()
        assert metric(r.agent, "reconciler_task_oom_kills_total", name="web") == 0
        first = current_id(r.agent, "web")
        executor.oom_kill(first, main=False)  # a child process: the task runs on
        await settle()
        assert current_id(r.agent, "web") == first
        assert metric(r.agent, "reconciler_task_oom_kills_total", name="web") == 1
        executor.oom_kill(first)  # the main process: the instance ends with 137
        await settle()
        ended = next(v for v in r.agent.snapshot().tasks if v.id == first)
        assert ended.state == S.FAILED and ended.exit_code == 137
        assert ended.message is not None and "out of memory" in ended.message
        assert metric(r.agent, "reconciler_task_oom_kills_total", name="web") == 2
        assert metric(r.agent, "reconciler_task_oom_kills_total", name="db") == 0
    assert r.store.closed
    async with running_agent(tmp_path, clock, executor) as r:
        assert metric(r.agent, "reconciler_task_oom_kills_total", name="web") == 2


async def test_the_counter_of_a_name_no_longer_known_is_deleted(
    tmp_path: Path, clock: FakeClock
) -> None:
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired("web", "db"))
        await settle()
        executor.oom_kill(current_id(r.agent, "db"), main=False)
        await settle()
        assert r.store.oom_kills() == {"db": 1}
        r.session.send(desired("web"))
        await settle()
        await clock.advance(60.0)
        assert all(v.name != "db" for v in r.agent.snapshot().tasks)
        assert r.store.oom_kills() == {}
        assert metric(r.agent, "reconciler_task_oom_kills_total", name="db") is None


def test_the_store_keeps_oom_counts_under_their_own_keys(tmp_path: Path) -> None:
    store = RocksStore.open(tmp_path)
    try:
        store.put_oom_kills("web", 3)
        store.put_oom_kills("w/eb", 1)
        store.put_meta("other", 5)
        assert store.oom_kills() == {"web": 3, "w/eb": 1}
        store.put_oom_kills("web", None)
        assert store.oom_kills() == {"w/eb": 1}
    finally:
        store.close()
    reopened = RocksStore.open(tmp_path)
    try:
        assert reopened.oom_kills() == {"w/eb": 1}
    finally:
        reopened.close()


# --------------------------------------------------------------------------------- metrics


def sample(n: int = 3) -> Usage:
    tasks = tuple(
        TaskUsage(
            task_id=f"id-{i}",
            name=f"svc-{i}" if i else 'we"ird\\name',
            cpu_seconds=0.25 * i,
            memory_working_set_bytes=33_890_304 + i,
            memory_limit_bytes=64 * 1024**2 if i % 2 else None,
            network_receive_bytes=353_782 * i,
            network_transmit_bytes=936,
            block_read_bytes=0,
            block_write_bytes=8192,
            pids=i + 1,
        )
        for i in range(n)
    )
    node = NodeUsage(
        cpu_seconds=(("user", 1196.49), ("idle", 2825.5)),
        memory_available_bytes=23_495_752 * 1024,
        memory_total_bytes=24_684_092 * 1024,
        disks=(DiskFree("state", 10 * GIB, 100 * GIB), DiskFree("images", 5 * GIB, 100 * GIB)),
        pressure=(("cpu", "some", 200.880334), ("memory", "full", 9.07477)),
    )
    return Usage(tasks=tasks, node=node)


def parsed(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if not s.name.endswith("_created")
    }


def test_the_usage_text_is_exactly_what_the_registry_collects() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(snapshot=Snapshot, registry=registry)
    metrics.set_usage(sample())
    rendered = parsed(metrics.render().decode())
    collected = parsed(generate_latest(registry).decode())
    assert rendered == collected
    web = frozenset({("name", "svc-1"), ("id", "id-1")})
    assert rendered[("reconciler_task_memory_limit_bytes", web)] == 64 * 1024**2
    assert ("reconciler_task_memory_limit_bytes", web | {("name", "svc-2")}) not in rendered
    weird = frozenset({("name", 'we"ird\\name'), ("id", "id-0")})
    assert rendered[("reconciler_task_network_receive_bytes_total", weird)] == 0
    assert (
        rendered[
            (
                "reconciler_node_pressure_seconds_total",
                frozenset({("resource", "cpu"), ("kind", "some")}),
            )
        ]
        == 200.880334
    )
    assert rendered[("reconciler_node_disk_free_bytes", frozenset({("fs", "images")}))] == 5 * GIB


def test_a_limit_only_where_there_is_one_and_no_pressure_where_the_host_has_none() -> None:
    usage = sample()
    assert usage.node is not None
    bare = Usage(tasks=usage.tasks, node=NodeUsage(cpu_seconds=usage.node.cpu_seconds))
    metrics = Metrics(snapshot=Snapshot, registry=CollectorRegistry())
    metrics.set_usage(bare)
    text = metrics.render().decode()
    assert "reconciler_node_pressure_seconds_total" not in text
    assert "reconciler_node_memory_available_bytes" not in text
    limits = [line for line in text.splitlines() if line.startswith("reconciler_task_memory_limit")]
    assert len(limits) == 1 and 'id="id-1"' in limits[0]


def test_usage_text_is_rendered_once_per_sample_not_per_scrape() -> None:
    snap = Snapshot(node_id="n")
    metrics = Metrics(snapshot=lambda: snap, registry=CollectorRegistry())
    metrics.set_usage(sample())
    first = metrics.render()
    assert metrics.render() is first  # nothing changed: the cached bytes
    metrics.set_usage(sample(4))
    second = metrics.render()
    assert second is not first and b'id="id-3"' in second
    metrics.drift_corrected("container_exited")  # an event re-renders, the usage text stays
    third = metrics.render()
    assert third.endswith(second[second.index(b"# HELP reconciler_task_cpu_seconds_total") :])


def test_oom_kills_and_conditions_come_from_the_snapshot() -> None:
    snap = Snapshot(
        node_id="n",
        restarts=(("db", 0), ("web", 2)),
        oom_kills=(("db", 0), ("web", 3)),
        conditions=((Condition.DISK_PRESSURE, False), (Condition.MEMORY_PRESSURE, True)),
    )
    registry = CollectorRegistry()
    metrics = Metrics(snapshot=lambda: snap, registry=registry)
    assert registry.get_sample_value("reconciler_task_oom_kills_total", {"name": "web"}) == 3
    assert registry.get_sample_value("reconciler_task_oom_kills_total", {"name": "db"}) == 0
    cond = "reconciler_node_condition"
    assert registry.get_sample_value(cond, {"condition": "memory_pressure"}) == 1
    assert registry.get_sample_value(cond, {"condition": "disk_pressure"}) == 0
    assert parsed(metrics.render().decode()) == parsed(generate_latest(registry).decode())

"""The fleet manager with real nats-server and whole agents on the fake runtime, in one loop.

Each test runs a manager (or two) and a few agents with short timings (``tests.manager.harness``)
and asserts what an operator would see: where tasks are assigned, what each agent runs, and the
manager's metrics. Never timings: every wait is a generous deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.core.model import Availability, TaskState
from reconciler.manager.admin import node_rows, ps_rows, unassigned_reasons
from reconciler.manager.control import set_labels
from reconciler.spec.problems import DesiredStateError
from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually
from tests.manager.harness import Fleet, FleetAgent, ManagerProcess, service_set, spread


class Agents:
    """The agents a test started; all stopped and closed at the end."""

    def __init__(self, tmp: Path, servers: list[str]) -> None:
        self.tmp = tmp
        self.servers = servers
        self.all: list[FleetAgent] = []

    async def start(self, node_id: str, **kw: object) -> FleetAgent:
        agent = FleetAgent(self.tmp / node_id, self.servers, node_id, **kw)  # type: ignore[arg-type]
        await agent.start()
        self.all.append(agent)
        return agent

    async def close(self) -> None:
        for agent in self.all:
            await agent.stop()
            agent.close()


@pytest.fixture
async def agents(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Agents]:
    a = Agents(tmp_path / "agents", [nats_server.url])
    yield a
    await a.close()


@pytest.fixture
async def manager(nats_server: NatsServer, fleet: Fleet) -> AsyncIterator[ManagerProcess]:
    m = ManagerProcess([nats_server.url], "manager-1")
    m.start()
    await eventually(lambda: m.leading, "the manager leads")
    yield m
    await m.stop()


async def ready_nodes(manager: ManagerProcess, count: int) -> None:
    """Wait until the manager judges ``count`` nodes ready (they heartbeat ready)."""
    await eventually(
        lambda: manager.metric("reconciler_manager_nodes", state="ready") == float(count),
        f"{count} nodes ready",
    )


def web(replicas: int = 5, **fields: object) -> str:
    return service_set({"name": "web", "replicas": replicas, **fields})


async def test_five_replicas_spread_over_three_agents_and_run(
    fleet: Fleet, agents: Agents, manager: ManagerProcess
) -> None:
    nodes = [await agents.start(f"node-{c}") for c in "abc"]
    await ready_nodes(manager, 3)
    lines = await fleet.apply(web(5))
    assert lines == ["create service web (5 replicas)"]
    tasks = {f"web-{i}" for i in range(1, 6)}
    where = await eventually(lambda: fleet.settled(tasks, nodes), "5 tasks running")
    assert spread(where) == [1, 2, 2]
    await eventually(
        lambda: manager.metric("reconciler_manager_tasks", state="running") == 5.0,
        "the manager counts 5 running",
    )
    assert manager.metric("reconciler_manager_tasks", state="unassigned") == 0.0
    assert manager.metric("reconciler_manager_leader") == 1.0
    view = await fleet.read()
    assert {k: r.state for k, r in view.statuses.items()} == {
        f"{node}.{task}": TaskState.RUNNING for task, node in where.items()
    }


async def test_constraints_keep_tasks_on_matching_nodes(
    fleet: Fleet, agents: Agents, manager: ManagerProcess
) -> None:
    nodes = [
        await agents.start("node-a", labels={"site": "north"}),
        await agents.start("node-b", labels={"site": "north"}),
        await agents.start("node-c", labels={"site": "south"}),
    ]
    await ready_nodes(manager, 3)
    await fleet.apply(
        service_set(
            {
                "name": "north",
                "replicas": 4,
                "placement": {"constraints": ["engine.labels.site==north"]},
            },
            {"name": "notb", "replicas": 2, "placement": {"constraints": ["node.id!=node-b"]}},
        )
    )
    tasks = {"north-1", "north-2", "north-3", "north-4", "notb-1", "notb-2"}
    where = await eventually(lambda: fleet.settled(tasks, nodes), "every task running")
    assert {where[f"north-{i}"] for i in range(1, 5)} == {"node-a", "node-b"}
    assert {where["notb-1"], where["notb-2"]} == {"node-a", "node-c"}


async def test_a_nodes_own_claim_draws_no_operator_labelled_task(
    fleet: Fleet, agents: Agents, manager: ManagerProcess
) -> None:
    claimer = await agents.start("node-a", labels={"site": "secure"})  # its agent claims it
    nodes = [claimer, await agents.start("node-b")]
    await ready_nodes(manager, 2)
    secure = {"constraints": ["node.labels.site==secure"]}
    claimed = {"constraints": ["engine.labels.site==secure"]}
    await fleet.apply(
        service_set(
            {"name": "vault", "env": {"TOKEN": "for-secure-nodes"}, "placement": secure},
            {"name": "claimed", "placement": claimed},
        )
    )
    where = await eventually(lambda: fleet.settled({"claimed-1"}, nodes), "claimed-1 runs")
    assert where == {"claimed-1": "node-a"}  # engine.labels reads what the node claims
    view = await fleet.read()
    rows = {r.task: r for r in ps_rows(view, unassigned_reasons(view))}
    assert (rows["vault-1"].node, rows["vault-1"].reason) == (
        None,
        "node.labels.site==secure: no node has this operator label (node-a has it as an "
        "engine label: set it with reconciler manager label)",
    )
    assert "vault-1" not in claimer.states()

    labelled = await set_labels(fleet.options, "node-a", {"site": "secure"}, [])
    assert (dict(labelled.labels), labelled.known) == ({"site": "secure"}, True)
    where = await eventually(
        lambda: fleet.settled({"vault-1", "claimed-1"}, nodes), "vault-1 runs once labelled"
    )
    assert where == {"vault-1": "node-a", "claimed-1": "node-a"}
    assert claimer.env("vault-1")["TOKEN"] == "for-secure-nodes"
    a, b = node_rows(await fleet.read())
    assert (dict(a.labels), dict(a.engine_labels)) == ({"site": "secure"}, {"site": "secure"})
    assert (dict(b.labels), dict(b.engine_labels)) == ({}, {})


async def test_a_stopped_agents_tasks_move_after_the_grace_and_leave_it_when_it_returns(
    fleet: Fleet, agents: Agents, manager: ManagerProcess
) -> None:
    nodes = [await agents.start(f"node-{c}") for c in "abc"]
    await ready_nodes(manager, 3)
    await fleet.apply(web(6))
    tasks = {f"web-{i}" for i in range(1, 7)}
    where = await eventually(lambda: fleet.settled(tasks, nodes), "6 tasks running")
    gone = nodes[0]
    had = {t for t, n in where.items() if n == gone.node_id}
    assert len(had) == 2
    await gone.stop()
    others = nodes[1:]
    moved = await eventually(lambda: fleet.settled(tasks, others), "its tasks run elsewhere")
    assert spread(moved) == [3, 3]
    assert manager.metric("reconciler_manager_reschedules_total", reason="node_down") == 2.0
    assert manager.metric("reconciler_manager_nodes", state="down") == 1.0
    # it still runs them (it is away, not dead) until it is back and reads its assignments
    assert had <= {c.name.split(".")[0] for c in gone.executor.running()}

    await gone.start()
    await ready_nodes(manager, 3)
    await eventually(lambda: not gone.executor.running(), "the moved tasks removed from it")
    assert await fleet.settled(tasks, others) == moved  # nothing moved back


async def test_drain_moves_tasks_off_and_pause_keeps_them_but_takes_no_new_ones(
    fleet: Fleet, agents: Agents, manager: ManagerProcess
) -> None:
    nodes = [await agents.start(f"node-{c}") for c in "abc"]
    a, b, c = nodes
    await ready_nodes(manager, 3)
    await fleet.apply(web(3))
    tasks = {"web-1", "web-2", "web-3"}
    where = await eventually(lambda: fleet.settled(tasks, nodes), "3 tasks running")
    assert spread(where) == [1, 1, 1]

    await fleet.availability("node-a", Availability.DRAIN)
    drained = await eventually(
        lambda: fleet.settled(tasks, [b, c]), "node-a's task moved to b or c"
    )
    assert spread(drained) == [1, 2]
    await eventually(lambda: not a.executor.running(), "node-a runs nothing")
    assert manager.metric("reconciler_manager_reschedules_total", reason="drain") == 1.0
    assert manager.metric("reconciler_manager_nodes", state="draining") == 1.0

    await fleet.availability("node-b", Availability.PAUSE)
    await fleet.apply(web(6))
    more = {f"web-{i}" for i in range(1, 7)}
    grown = await eventually(lambda: fleet.settled(more, [b, c]), "3 more tasks, all on c")
    assert {t for t, n in grown.items() if n == "node-b"} == {
        t for t, n in drained.items() if n == "node-b"
    }
    assert {f"web-{i}" for i in (4, 5, 6)} <= {t for t, n in grown.items() if n == "node-c"}
    assert manager.metric("reconciler_manager_nodes", state="paused") == 1.0

    await fleet.availability("node-a", Availability.ACTIVE)
    await fleet.apply(web(7))
    final = await eventually(
        lambda: fleet.settled(more | {"web-7"}, nodes), "web-7 on the active node-a"
    )
    assert final["web-7"] == "node-a"


async def test_a_changed_spec_rolls_out_to_every_node(
    fleet: Fleet, agents: Agents, manager: ManagerProcess
) -> None:
    nodes = [await agents.start(f"node-{c}") for c in "abc"]
    await ready_nodes(manager, 3)
    await fleet.apply(web(3, env={"VERSION": "1"}))
    tasks = {"web-1", "web-2", "web-3"}
    where = await eventually(lambda: fleet.settled(tasks, nodes), "3 tasks running")
    by_id = {a.node_id: a for a in nodes}
    before = {t: by_id[n].current_id(t) for t, n in where.items()}
    assert all(by_id[n].env(t) == {"VERSION": "1"} for t, n in where.items())

    lines = await fleet.apply(web(3, env={"VERSION": "2"}))
    assert lines == ["update service web (env)"]

    def rolled_out() -> bool:
        return all(
            by_id[n].env(t) == {"VERSION": "2"} and t in by_id[n].running()
            for t, n in where.items()
        )

    await eventually(rolled_out, "every task on VERSION=2")
    assert await fleet.settled(tasks, nodes) == where  # updated where it ran, not moved
    after = {t: by_id[n].current_id(t) for t, n in where.items()}
    assert all(after[t] not in (None, before[t]) for t in tasks)  # a new instance each
    assert manager.metric("reconciler_manager_reschedules_total", reason="node_down") == 0.0


async def test_a_malformed_service_rejects_the_whole_file(
    fleet: Fleet, manager: ManagerProcess
) -> None:
    text = service_set(
        {"name": "good", "replicas": 2},
        {"name": "bad", "replicas": 2, "resources": {"memory": "lots"}},
    )
    with pytest.raises(DesiredStateError) as err:
        await fleet.apply(text)
    assert any("services[1].resources.memory" in str(p) for p in err.value.problems)
    view = await fleet.read()
    assert view.services == {} and view.invalid == {}


async def test_the_standby_takes_over_when_the_leader_dies_without_duplicates(
    nats_server: NatsServer, fleet: Fleet, agents: Agents
) -> None:
    first = ManagerProcess([nats_server.url], "manager-1")
    first.start()
    await eventually(lambda: first.leading, "the first manager leads")
    second = ManagerProcess([nats_server.url], "manager-2")
    second.start()
    try:
        nodes = [await agents.start(f"node-{c}") for c in "abc"]
        await ready_nodes(first, 3)
        await fleet.apply(web(5))
        tasks = {f"web-{i}" for i in range(1, 6)}
        where = await eventually(lambda: fleet.settled(tasks, nodes), "5 tasks running")
        await eventually(lambda: second.manager.readiness()[0], "the standby is ready")
        assert not second.leading
        assert second.metric("reconciler_manager_leader") == 0.0

        await first.kill()
        await eventually(lambda: second.leading, "the standby leads")
        await fleet.apply(web(8))
        more = {f"web-{i}" for i in range(1, 9)}
        grown = await eventually(lambda: fleet.settled(more, nodes), "8 tasks, one copy each")
        assert {t: grown[t] for t in tasks} == where  # nothing that ran was moved
        assert spread(grown) == [2, 3, 3]
        assert second.metric("reconciler_manager_reschedules_total", reason="node_down") == 0.0
    finally:
        await second.stop()
        await first.kill()


async def test_a_new_leader_judges_no_node_down_before_a_full_grace_period(
    nats_server: NatsServer, fleet: Fleet, agents: Agents
) -> None:
    # a lease longer than the grace: the standby sees node-b silent for longer than the grace
    # before it takes over, and must still give it a full grace period of its own
    config = {"grace": 4.0, "lease": 8.0}
    first = ManagerProcess([nats_server.url], "manager-1", **config)
    first.start()
    await eventually(lambda: first.leading, "the first manager leads")
    second = ManagerProcess([nats_server.url], "manager-2", **config)
    second.start()
    try:
        a, b = await agents.start("node-a"), await agents.start("node-b")
        await ready_nodes(first, 2)
        await fleet.apply(web(2))
        where = await eventually(lambda: fleet.settled({"web-1", "web-2"}, [a, b]), "running")
        on_b = next(t for t, n in where.items() if n == "node-b")
        await eventually(lambda: second.manager.readiness()[0], "the standby is ready")

        await first.kill()
        await b.stop()
        assert second.manager.led_passes == 0
        await eventually(lambda: second.manager.led_passes > 0, "a pass as the leader", within=60)
        assert (await fleet.placement())[on_b] == ["node-b"]  # not judged yet
        assert second.metric("reconciler_manager_nodes", state="down") == 0.0

        moved = await eventually(
            lambda: fleet.settled({"web-1", "web-2"}, [a]), "node-b's task moved after the grace"
        )
        assert moved[on_b] == "node-a"
        assert second.metric("reconciler_manager_reschedules_total", reason="node_down") == 1.0
    finally:
        await second.stop()
        await first.kill()

"""The pure scheduler with plain values: services, nodes and assignments in, a plan out."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from reconciler.core.model import Availability
from reconciler.fleet.buckets import SERVICES
from reconciler.manager.health import Health
from reconciler.manager.scheduler import NodeView, Placed, Plan, Reason, schedule, unassigned_reason
from reconciler.manager.services import Service, read_service

IMAGE = "localhost/busybox:latest"


def service(name: str, **fields: Any) -> Service:
    return read_service(SERVICES, name, json.dumps({"image": IMAGE, **fields}).encode())


def services(*items: Service) -> dict[str, Service]:
    return {s.name: s for s in items}


def node(name: str, health: Health = Health.READY, **kw: Any) -> NodeView:
    kw.setdefault("cpus", 4.0)
    kw.setdefault("memory", 8 << 30)
    return NodeView(id=name, health=health, **kw)


def nodes(*items: NodeView) -> dict[str, NodeView]:
    return {n.id: n for n in items}


def placed(svc: Service, node_id: str, task: str, revision: int = 1) -> Placed:
    return Placed(
        node=node_id,
        task=task,
        value=svc.assignment,
        revision=revision,
        cpus=svc.cpus,
        memory=svc.memory,
    )


def after(plan: Plan, current: list[Placed]) -> dict[str, list[str]]:
    """Task name -> the nodes holding it once the plan is written."""
    keys = {(p.node, p.task) for p in current}
    keys -= {(d.node, d.task) for d in plan.deletes}
    keys |= {(p.node, p.task) for p in plan.puts}
    out: dict[str, list[str]] = {}
    for n, t in sorted(keys):
        out.setdefault(t, []).append(n)
    return out


def test_replicas_are_named_from_slot_one_and_spread_across_nodes() -> None:
    web = service("web", replicas=5)
    plan = schedule(services(web), nodes(node("a"), node("b"), node("c")), [])
    assert sorted(p.task for p in plan.puts) == [f"web-{i}" for i in range(1, 6)]
    per_node = Counter(p.node for p in plan.puts)
    assert sorted(per_node.values()) == [1, 2, 2]
    assert all(p.value == web.assignment for p in plan.puts)
    assert plan.unassigned == () and not plan.deletes


def test_spreading_prefers_fewest_of_this_service_then_fewest_overall() -> None:
    db = service("db", replicas=2)
    web = service("web", replicas=1)
    current = [placed(db, "a", "db-1"), placed(db, "b", "db-2")]
    plan = schedule(services(db, web), nodes(node("a"), node("b"), node("c")), current)
    assert [(p.node, p.task) for p in plan.puts] == [("c", "web-1")]


def test_a_healthy_placement_is_never_moved() -> None:
    web = service("web", replicas=3)
    current = [placed(web, "a", f"web-{i}") for i in (1, 2, 3)]
    plan = schedule(services(web), nodes(node("a"), node("b"), node("c")), current)
    assert plan.empty
    assert sorted(plan.assigned) == [("a", "web-1"), ("a", "web-2"), ("a", "web-3")]


def test_scaling_down_removes_the_highest_slots() -> None:
    web = service("web", replicas=2)
    current = [placed(web, n, f"web-{i}") for i, n in ((1, "a"), (2, "b"), (3, "c"), (4, "a"))]
    plan = schedule(services(web), nodes(node("a"), node("b"), node("c")), current)
    assert sorted((d.node, d.task) for d in plan.deletes) == [("a", "web-4"), ("c", "web-3")]
    assert {d.why for d in plan.deletes} == {"scaled down"}
    assert not plan.puts


def test_a_removed_service_loses_its_tasks_and_a_frozen_one_keeps_them() -> None:
    gone = service("gone")
    broken = service("broken")
    current = [placed(gone, "a", "gone-1"), placed(broken, "a", "broken-1")]
    plan = schedule({}, nodes(node("a")), current, frozen={"broken"})
    assert [(d.node, d.task) for d in plan.deletes] == [("a", "gone-1")]
    assert ("a", "broken-1") in plan.assigned


def test_constraints_on_labels_and_id_are_honoured() -> None:
    north = service("north", replicas=4, placement={"constraints": ["node.labels.site==north"]})
    not_b = service("notb", replicas=3, placement={"constraints": ["node.id!=b"]})
    fleet = nodes(
        node("a", operator_labels={"site": "north"}),
        node("b", operator_labels={"site": "north"}),
        node("c", operator_labels={"site": "south"}),
    )
    plan = schedule(services(north, not_b), fleet, [])
    where = after(plan, [])
    assert {n for t, ns in where.items() if t.startswith("north-") for n in ns} == {"a", "b"}
    assert {n for t, ns in where.items() if t.startswith("notb-") for n in ns} == {"a", "c"}


def test_a_node_that_stops_matching_gives_its_task_up_for_a_constraint() -> None:
    svc = service("web", placement={"constraints": ["node.labels.site==north"]})
    current = [placed(svc, "a", "web-1")]
    fleet = nodes(
        node("a", operator_labels={"site": "south"}), node("b", operator_labels={"site": "north"})
    )
    plan = schedule(services(svc), fleet, current)
    assert [(d.node, d.reason) for d in plan.deletes] == [("a", Reason.CONSTRAINT)]
    assert [(p.node, p.task) for p in plan.puts] == [("b", "web-1")]
    assert plan.reschedules() == {Reason.CONSTRAINT: 1}


def test_node_labels_read_what_operators_set_and_engine_labels_what_the_node_claims() -> None:
    secure = service("vault", placement={"constraints": ["node.labels.site==secure"]})
    claimed = service("claimed", placement={"constraints": ["engine.labels.site==secure"]})
    fleet = nodes(
        node("a", engine_labels={"site": "secure"}),  # its agent claims it
        node("b", operator_labels={"site": "secure"}),  # an operator set it
    )
    where = after(schedule(services(secure, claimed), fleet, []), [])
    assert where["vault-1"] == ["b"] and where["claimed-1"] == ["a"]


def test_an_unassigned_task_that_only_a_nodes_own_claim_would_match_says_so() -> None:
    secure = service("vault", placement={"constraints": ["node.labels.site==secure"]})
    fleet = nodes(node("a", engine_labels={"site": "secure"}), node("b"))
    plan = schedule(services(secure), fleet, [])
    assert plan.unassigned == ("vault-1",)
    assert unassigned_reason(secure, fleet) == (
        "node.labels.site==secure: no node has this operator label (a has it as an engine "
        "label: set it with reconciler manager label)"
    )
    assert unassigned_reason(secure, nodes(node("b"))) == (
        "no node matches its placement constraints"
    )


def test_room_is_judged_against_capacity_and_what_the_node_holds() -> None:
    big = service("big", replicas=3, resources={"cpus": 1.5, "memory": "1Gi"})
    fleet = nodes(node("a", cpus=2.0), node("b", cpus=2.0, memory=512 << 20))
    plan = schedule(services(big), fleet, [])
    assert [(p.node, p.task) for p in plan.puts] == [("a", "big-1")]
    assert plan.unassigned == ("big-2", "big-3")


def test_a_node_without_a_described_capacity_takes_only_tasks_that_declare_none() -> None:
    sized = service("sized", resources={"memory": "64Mi"})
    free = service("free")
    plan = schedule(services(sized, free), nodes(node("a", cpus=None, memory=None)), [])
    assert [p.task for p in plan.puts] == ["free-1"]
    assert plan.unassigned == ("sized-1",)


def test_tasks_on_a_down_node_move_where_there_is_room_and_stay_otherwise() -> None:
    web = service("web", replicas=2, resources={"cpus": 2})
    current = [placed(web, "a", "web-1"), placed(web, "a", "web-2")]
    fleet = nodes(node("a", Health.DOWN), node("b", cpus=2.0))
    plan = schedule(services(web), fleet, current)
    moved = [(p.node, p.task, p.moved_from) for p in plan.puts]
    assert moved == [("b", "web-1", "a")]
    assert [(d.node, d.task, d.reason) for d in plan.deletes] == [("a", "web-1", Reason.NODE_DOWN)]
    assert plan.unassigned == ("web-2",)  # stays assigned to a, waiting for room or for a
    assert plan.reschedules() == {Reason.NODE_DOWN: 1}


def test_a_node_not_ready_within_its_grace_keeps_its_tasks_but_gets_none() -> None:
    web = service("web", replicas=2)
    current = [placed(web, "a", "web-1")]
    fleet = nodes(node("a", Health.NOT_READY), node("b"))
    plan = schedule(services(web), fleet, current)
    assert [(p.node, p.task) for p in plan.puts] == [("b", "web-2")]
    assert not plan.deletes


def test_when_a_node_returns_the_copy_of_a_task_that_moved_away_is_deleted() -> None:
    web = service("web")
    current = [placed(web, "a", "web-1", revision=3), placed(web, "b", "web-1", revision=9)]
    plan = schedule(services(web), nodes(node("a"), node("b")), current)
    assert [(d.node, d.task) for d in plan.deletes] == [("a", "web-1")]
    assert not plan.puts


def test_a_copy_on_a_down_node_is_deleted_once_the_task_runs_elsewhere() -> None:
    web = service("web")
    current = [placed(web, "a", "web-1", revision=3), placed(web, "b", "web-1", revision=9)]
    plan = schedule(services(web), nodes(node("a", Health.DOWN), node("b")), current)
    assert [(d.node, d.why) for d in plan.deletes] == [("a", "runs elsewhere")]
    assert plan.reschedules() == {}


def test_drain_takes_everything_off_and_pause_keeps_tasks_but_takes_no_new_ones() -> None:
    web = service("web", replicas=3)
    current = [placed(web, "a", "web-1"), placed(web, "b", "web-2")]
    fleet = nodes(
        node("a", availability=Availability.DRAIN),
        node("b", availability=Availability.PAUSE),
        node("c"),
    )
    plan = schedule(services(web), fleet, current)
    assert [(d.node, d.task, d.reason) for d in plan.deletes] == [("a", "web-1", Reason.DRAIN)]
    assert after(plan, current) == {"web-1": ["c"], "web-2": ["b"], "web-3": ["c"]}


def test_a_node_under_pressure_gets_nothing_new_and_keeps_what_it_has() -> None:
    web = service("web", replicas=2)
    current = [placed(web, "a", "web-1")]
    fleet = nodes(node("a", pressure=True), node("b", pressure=True))
    plan = schedule(services(web), fleet, current)
    assert plan.empty and plan.unassigned == ("web-2",)


def test_a_changed_spec_is_written_to_every_copy_in_place() -> None:
    old = service("web", replicas=2, env={"V": "1"})
    new = service("web", replicas=2, env={"V": "2"})
    current = [placed(old, "a", "web-1", 4), placed(old, "b", "web-2", 5)]
    plan = schedule(services(new), nodes(node("a"), node("b")), current)
    assert sorted((p.node, p.task, p.revision) for p in plan.puts) == [
        ("a", "web-1", 4),
        ("b", "web-2", 5),
    ]
    assert all(p.update and p.value == new.assignment for p in plan.puts)


def test_a_global_service_runs_once_on_every_eligible_node() -> None:
    agent = service("logship", mode="global", placement={"constraints": ["node.id!=c"]})
    fleet = nodes(
        node("a"),
        node("b"),
        node("c"),
        node("d", Health.DOWN),
        node("e", availability=Availability.PAUSE),
    )
    current = [placed(agent, "d", "logship")]
    plan = schedule(services(agent), fleet, current)
    assert sorted((p.node, p.task) for p in plan.puts) == [("a", "logship"), ("b", "logship")]
    assert not plan.deletes  # the down node keeps its own
    assert ("d", "logship") in plan.assigned


def test_a_global_task_leaves_a_draining_node_and_a_mode_change_renames_tasks() -> None:
    agent = service("agent", mode="global")
    as_replicas = service("agent", replicas=1)
    current = [placed(as_replicas, "a", "agent-1"), placed(agent, "b", "agent")]
    fleet = nodes(node("a"), node("b", availability=Availability.DRAIN))
    plan = schedule(services(agent), fleet, current)
    assert sorted((d.node, d.task) for d in plan.deletes) == [("a", "agent-1"), ("b", "agent")]
    assert [(p.node, p.task) for p in plan.puts] == [("a", "agent")]


def test_a_node_missing_from_the_picture_counts_as_down() -> None:
    web = service("web")
    plan = schedule(services(web), nodes(node("b")), [placed(web, "ghost", "web-1")])
    assert [(p.node, p.moved_from) for p in plan.puts] == [("b", "ghost")]


def test_ten_thousand_replicas_spread_evenly_over_two_hundred_nodes() -> None:
    web = service("web", replicas=10_000)
    fleet = nodes(*(node(f"n{i:03d}") for i in range(200)))
    plan = schedule(services(web), fleet, [])
    per_node = Counter(p.node for p in plan.puts)
    assert len(plan.puts) == 10_000 and set(per_node.values()) == {50}


def test_the_plan_is_a_pure_function_of_its_inputs() -> None:
    web = service("web", replicas=7)
    fleet = nodes(node("a"), node("b"), node("c"))
    assert schedule(services(web), fleet, []) == schedule(services(web), fleet, [])

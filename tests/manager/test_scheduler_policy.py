"""The scheduler and the nodes' policies for fleet tasks: a task goes only where it is allowed,
and an unassigned one says which field and flag stopped it."""

from __future__ import annotations

from reconciler.core.policy import Policy
from reconciler.manager.health import Health
from reconciler.manager.scheduler import schedule
from reconciler.manager.snapshot import unassigned_reason
from tests.manager.test_scheduler import after, node, nodes, placed, service, services

LOGS = {"mounts": [{"type": "bind", "source": "/var/log", "target": "/logs"}]}
LOG_NODE = Policy.of(binds=["/var/log"])


def test_a_replicated_task_goes_only_to_nodes_whose_policy_allows_it() -> None:
    logship = service("logship", replicas=3, **LOGS)
    plain = service("plain", replicas=3)
    fleet = nodes(node("a", policy=Policy()), node("b", policy=LOG_NODE), node("c", policy=None))
    where = after(schedule(services(logship, plain), fleet, []), [])
    # c reports no policy (an older agent): it checks nothing, so the scheduler does not either
    assert {n for t, ns in where.items() if t.startswith("logship-") for n in ns} == {"b", "c"}
    assert {n for t, ns in where.items() if t.startswith("plain-") for n in ns} == {"a", "b", "c"}


def test_a_global_task_skips_nodes_whose_policy_refuses_it() -> None:
    logship = service("logship", mode="global", **LOGS)
    fleet = nodes(node("a", policy=Policy()), node("b", policy=LOG_NODE))
    assert after(schedule(services(logship), fleet, []), []) == {"logship": ["b"]}


def test_with_no_node_allowing_it_the_task_is_unassigned_naming_the_field_and_flag() -> None:
    web = service("web", replicas=1, network="host", capAdd=["NET_ADMIN"])
    fleet = nodes(node("a", policy=Policy.of(caps=["NET_ADMIN"])), node("b", policy=Policy()))
    plan = schedule(services(web), fleet, [])
    assert plan.unassigned == ("web-1",)
    assert unassigned_reason(web, fleet) == (
        "no node's policy allows it: network: the host's network is not allowed on this node "
        "(--allow-host-network)"
    )
    allowing = nodes(node("a", policy=Policy.of(caps=["ALL"], host_network=True)))
    assert after(schedule(services(web), allowing, []), []) == {"web-1": ["a"]}


def test_a_copy_already_placed_stays_when_the_policy_changes() -> None:
    logship = service("logship", replicas=1, **LOGS)
    current = [placed(logship, "a", "logship-1")]
    fleet = nodes(node("a", policy=Policy()), node("b", health=Health.READY, policy=LOG_NODE))
    plan = schedule(services(logship), fleet, current)
    assert plan.empty and after(plan, current) == {"logship-1": ["a"]}

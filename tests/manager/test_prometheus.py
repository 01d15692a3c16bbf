"""A real Prometheus scrapes a real manager: every panel of the dashboard's fleet row has data.

The fleet is the one of ``tests.manager.harness`` (real nats-server, a manager in this loop, two
agents on the fake runtime), with the manager's endpoints served by ``reconciler.web.server``'s
``serve_routes`` as ``reconciler manager run`` serves them. Debian's ``prometheus`` scrapes them
every second. Once a service has been placed and scaled while Prometheus watched, every fleet
panel expression, its variables made concrete, must return data, and the fleet alert
expressions must evaluate.

Without the binaries this skips on a developer machine and fails under CI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
import yaml

from reconciler.observe.metrics import CONTENT_TYPE
from reconciler.testing.natsserver import NatsServer
from reconciler.testing.polling import eventually
from reconciler.web import server as http
from tests.manager.harness import Fleet, FleetAgent, ManagerProcess, service_set
from tests.prometheus import ALERTS, Prometheus, concrete, dashboard_targets, has_number

pytestmark = pytest.mark.prometheus


async def test_every_fleet_panel_returns_data_from_a_real_prometheus(
    tmp_path: Path, nats_server: NatsServer, prometheus: Callable[[str, str], Prometheus]
) -> None:
    nc = await nats.connect(nats_server.url)
    fleet = Fleet([nats_server.url])
    await fleet.init(nc)
    await nc.close()
    manager = ManagerProcess([nats_server.url], "manager-1")
    routes: dict[str, http.Route] = {
        "/metrics": lambda: (200, CONTENT_TYPE, manager.metrics.render()),
    }
    web = await http.serve_routes("127.0.0.1", 0, routes)
    instance = f"127.0.0.1:{web.sockets[0].getsockname()[1]}"
    prom = prometheus("reconciler-manager", instance)
    agents = [FleetAgent(tmp_path / n, [nats_server.url], n) for n in ("node-a", "node-b")]
    manager.start()
    try:
        for agent in agents:
            await agent.start()
        await eventually(
            lambda: manager.metric("reconciler_manager_nodes", state="ready") == 2.0, "2 ready"
        )
        await fleet.apply(service_set({"name": "web", "replicas": 3}))
        await eventually(
            lambda: fleet.settled({"web-1", "web-2", "web-3"}, agents), "3 tasks running"
        )
        await eventually(
            lambda: manager.metric("reconciler_manager_tasks", state="running") == 3.0,
            "the manager counts them running",
        )
        await prom.scraped(3)
        # a scheduling pass Prometheus sees happen, for the latency panel's rate()
        await fleet.apply(service_set({"name": "web", "replicas": 4}))
        tasks = {"web-1", "web-2", "web-3", "web-4"}
        await eventually(lambda: fleet.settled(tasks, agents), "4 tasks running")
        await prom.scraped(8)

        targets = dashboard_targets(fleet=True)
        assert {title for title, _ in targets} >= {"Leader", "Unassigned tasks", "Reschedules"}
        empty = []
        for title, target in targets:
            expr = concrete(target["expr"], instance)
            if target.get("instant"):
                data = await prom.aapi("query", query=expr)
            else:
                end = time.time()
                data = await prom.aapi(
                    "query_range", query=expr, start=str(end - 30), end=str(end), step="1"
                )
            if not has_number(data["result"]):
                empty.append(f"{title}: {expr} -> {data['result']}")
        assert not empty, "fleet panels without data:\n" + "\n".join(empty)

        assert await prom.avalue("sum(reconciler_manager_leader)") == 1.0
        await eventually(
            lambda: _at_least(prom, 'reconciler_manager_tasks{state="running"}', 4),
            "Prometheus sees 4 running",
        )
        rules = yaml.safe_load(ALERTS.read_text())
        fleet_rules = [g for g in rules["groups"] if g["name"] == "reconciler.fleet.rules"]
        for rule in fleet_rules[0]["rules"]:
            data = await prom.aapi("query", query=rule["expr"])
            assert data["resultType"] == "vector", rule["alert"]
            assert data["result"] == [], f"{rule['alert']} would fire on a healthy fleet"
    finally:
        await manager.stop()
        for agent in agents:
            await agent.stop()
            agent.close()
        web.close()
        await web.wait_closed()


async def _at_least(prom: Prometheus, expr: str, count: float) -> bool:
    got = await prom.avalue(expr)
    return got is not None and got >= count

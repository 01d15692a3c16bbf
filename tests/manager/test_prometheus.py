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

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import yaml

from reconciler.observe.metrics import CONTENT_TYPE
from reconciler.web import server as http
from tests.e2e.test_prometheus import (
    ALERTS,
    Prom,
    concrete,
    dashboard_targets,
    free_port,
    has_number,
    prometheus_binary,
)
from tests.manager.harness import Fleet, FleetAgent, ManagerProcess, eventually, service_set
from tests.natsserver import NatsServer, nats_server

pytestmark = pytest.mark.prometheus


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with nats_server(tmp_path / "nats") as s:
        yield s


def start_prometheus(tmp_path: Path, target: str) -> tuple[Prom, subprocess.Popen[bytes]]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "reconciler-manager", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    return Prom(f"http://127.0.0.1:{port}", log), proc


async def value(prom: Prom, expr: str) -> float | None:
    result = (await prom.aapi("query", query=expr))["result"]
    return float(result[0]["value"][1]) if len(result) == 1 else None


async def test_every_fleet_panel_returns_data_from_a_real_prometheus(
    tmp_path: Path, server: NatsServer
) -> None:
    nc = await nats.connect(server.url)
    fleet = Fleet([server.url])
    await fleet.init(nc)
    await nc.close()
    manager = ManagerProcess([server.url], "manager-1")
    routes: dict[str, http.Route] = {
        "/metrics": lambda: (200, CONTENT_TYPE, manager.metrics.render()),
    }
    web = await http.serve_routes("127.0.0.1", 0, routes)
    instance = f"127.0.0.1:{web.sockets[0].getsockname()[1]}"
    prom, proc = start_prometheus(tmp_path, instance)
    agents = [FleetAgent(tmp_path / n, [server.url], n) for n in ("node-a", "node-b")]
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
        scrapes = f'sum_over_time(up{{instance="{instance}"}}[1m])'
        await eventually(lambda: _at_least(prom, scrapes, 3), "three scrapes", within=90)
        # a scheduling pass Prometheus sees happen, for the latency panel's rate()
        await fleet.apply(service_set({"name": "web", "replicas": 4}))
        tasks = {"web-1", "web-2", "web-3", "web-4"}
        await eventually(lambda: fleet.settled(tasks, agents), "4 tasks running")
        await eventually(lambda: _at_least(prom, scrapes, 8), "eight scrapes", within=90)

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

        assert await value(prom, "sum(reconciler_manager_leader)") == 1.0
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
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)


async def _at_least(prom: Prom, expr: str, count: float) -> bool:
    got = await value(prom, expr)
    return got is not None and got >= count

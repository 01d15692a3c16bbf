"""Tests for reconciler.web.server: real HTTP requests to a server on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest
from prometheus_client import CollectorRegistry

from reconciler import __version__
from reconciler.core.model import TaskState
from reconciler.core.policy import Policy
from reconciler.core.snapshot import Snapshot, TaskView
from reconciler.observe.metrics import Metrics
from reconciler.web import server as rhttp
from reconciler.web.agent_routes import serve_agent
from tests.builders import node

NODE = node(arch="arm64", cpus=4, memory_bytes=4 * 1024**3)


def view(name: str, id: str, state: TaskState, *, current: bool = True) -> TaskView:
    return TaskView(
        name=name,
        id=id,
        desired_state=TaskState.RUNNING if current else TaskState.SHUTDOWN,
        state=state,
        message="started" if current else "",
        err=None if current else "exit 1",
        container_id=f"c{id}" if current else None,
        exit_code=None if current else 1,
        updated_at=1_700_000_000.25,
        restarts=1,
        current=current,
    )


def healthy(**kw: object) -> Snapshot:
    base: dict[str, object] = dict(
        node_id="node-a",
        node=NODE,
        labels=(("site", "north"), ("rack", "3")),
        store_open=True,
        init_done=True,
        runtime_up=True,
        desired_read=True,
        desired_valid=True,
        tasks=(
            view("api", "a2", TaskState.RUNNING),
            view("api", "a1", TaskState.FAILED, current=False),
            view("web", "w1", TaskState.STARTING),
        ),
        restarts=(("api", 1), ("web", 0)),
    )
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


class Holder:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.fail = False

    def __call__(self) -> Snapshot:
        if self.fail:
            raise RuntimeError("snapshot source broke")
        return self.snap


@dataclass
class Agent:
    holder: Holder
    metrics: Metrics
    port: int


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    holder = Holder(healthy())
    metrics = Metrics(snapshot=holder, registry=CollectorRegistry())
    server = await serve_agent("127.0.0.1", 0, snapshot=holder, metrics=metrics)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Agent(holder, metrics, port)
    finally:
        server.close()
        await server.wait_closed()


async def raw(port: int, request: bytes) -> Response:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return parse(data)


def parse(data: bytes) -> Response:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    assert int(headers["content-length"]) == len(body)
    return Response(status, headers, body)


async def get(port: int, path: str, *, method: str = "GET", extra: str = "") -> Response:
    req = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n"
    return await raw(port, req.encode())


async def test_metrics_serves_the_rendered_exposition(agent: Agent) -> None:
    r = await get(agent.port, "/metrics")
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert r.headers["connection"] == "close"
    assert r.body == agent.metrics.render()
    assert b'reconciler_task_state{name="web",id="w1",state="starting"} 1.0' in r.body


async def test_metrics_reflect_event_counters_and_the_current_snapshot(agent: Agent) -> None:
    agent.metrics.drift_corrected("orphan_removed")
    agent.holder.snap = healthy(
        tasks=(view("web", "w1", TaskState.RUNNING),), restarts=(("web", 0),)
    )
    body = (await get(agent.port, "/metrics")).text
    assert 'reconciler_drift_corrections_total{kind="orphan_removed"} 1.0' in body
    assert 'reconciler_tasks{state="running"} 1.0' in body
    assert 'name="api"' not in body


async def test_metrics_are_gzipped_when_the_scraper_accepts_it(agent: Agent) -> None:
    r = await get(agent.port, "/metrics", extra="Accept-Encoding: gzip\r\n")
    assert r.headers["content-encoding"] == "gzip"
    assert gzip.decompress(r.body) == agent.metrics.render()
    plain = await get(agent.port, "/metrics", extra="Accept-Encoding: gzip;q=0\r\n")
    assert "content-encoding" not in plain.headers


async def test_healthz_is_ok_while_the_loops_are_alive(agent: Agent) -> None:
    r = await get(agent.port, "/healthz")
    assert (r.status, r.text) == (200, "ok")
    agent.holder.snap = healthy(loops_down=(("resync", "RuntimeError: boom"),))
    r = await get(agent.port, "/healthz")
    assert (r.status, r.text) == (503, "agent loop resync is down: RuntimeError: boom")


async def test_healthz_answers_while_the_runtime_is_down(agent: Agent) -> None:
    agent.holder.snap = healthy(runtime_up=False, runtime_reason="podman hangs")
    r = await get(agent.port, "/healthz")
    assert (r.status, r.text) == (200, "ok")


async def test_readyz_is_ready_when_the_snapshot_is_ready(agent: Agent) -> None:
    r = await get(agent.port, "/readyz")
    assert (r.status, r.text) == (200, "ready")


async def test_readyz_gives_the_reason_as_plain_text_when_not_ready(agent: Agent) -> None:
    reason = "runtime: cannot reach unix:///run/podman/podman.sock"
    agent.holder.snap = healthy(runtime_up=False, runtime_reason=reason)
    r = await get(agent.port, "/readyz")
    assert (r.status, r.text) == (503, reason)
    assert r.headers["content-type"].startswith("text/plain")


async def test_readyz_follows_node_ready(agent: Agent) -> None:
    agent.holder.snap = healthy(store_open=False)
    r = await get(agent.port, "/readyz")
    assert r.status == 503
    assert agent.metrics.registry.get_sample_value("reconciler_node_ready") == 0.0


async def test_tasks_lists_current_and_history_in_snapshot_order(agent: Agent) -> None:
    r = await get(agent.port, "/v1/tasks")
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    tasks = json.loads(r.body)
    assert [(t["name"], t["id"]) for t in tasks] == [("api", "a2"), ("api", "a1"), ("web", "w1")]
    assert tasks == [t.to_json() for t in agent.holder.snap.tasks]
    assert tasks[1] == {
        "name": "api",
        "id": "a1",
        "desiredState": "shutdown",
        "state": "failed",
        "message": None,
        "error": "exit 1",
        "containerId": None,
        "exitCode": 1,
        "updatedAt": "2023-11-14T22:13:20.250Z",
        "restarts": 1,
    }


async def test_tasks_never_carry_env(agent: Agent) -> None:
    tasks = json.loads((await get(agent.port, "/v1/tasks")).body)
    for t in tasks:
        assert "env" not in t and "spec" not in t


async def test_tasks_follow_a_new_snapshot(agent: Agent) -> None:
    assert len(json.loads((await get(agent.port, "/v1/tasks")).body)) == 3
    agent.holder.snap = healthy(tasks=())
    assert json.loads((await get(agent.port, "/v1/tasks")).body) == []


async def test_node_describes_the_node_with_the_contract_keys(agent: Agent) -> None:
    r = await get(agent.port, "/v1/node")
    assert r.status == 200
    assert json.loads(r.body) == {
        "nodeId": "node-a",
        "hostname": "edge-1",
        "os": "linux",
        "arch": "arm64",
        "cpus": 4,
        "memoryBytes": 4 * 1024**3,
        "runtime": "podman",
        "runtimeVersion": "4.3.1",
        "version": __version__,
        "labels": {"site": "north", "rack": "3"},
        "ready": True,
        "conditions": {},
        "policy": None,  # a desired-directory node checks nothing
    }


async def test_node_shows_a_fleet_nodes_policy(agent: Agent) -> None:
    policy = Policy.of(binds=["/var/log/"], caps=["cap_net_admin"], registries=["localhost"])
    agent.holder.snap = healthy(node=replace(NODE, policy=policy))
    got = json.loads((await get(agent.port, "/v1/node")).body)
    assert list(got)[-1] == "policy"
    assert got["policy"] == {
        "allowBind": ["/var/log"],
        "allowDevice": [],
        "allowCap": ["NET_ADMIN"],
        "allowHostNetwork": False,
        "allowRegistry": ["localhost"],
    }


async def test_node_before_the_runtime_answered_has_nulls_and_is_not_ready(agent: Agent) -> None:
    agent.holder.snap = Snapshot(node_id="node-a")
    node = json.loads((await get(agent.port, "/v1/node")).body)
    assert node["nodeId"] == "node-a"
    assert node["hostname"] is None and node["cpus"] is None
    assert node["version"] == __version__
    assert node["ready"] is False


async def test_unknown_paths_are_404(agent: Agent) -> None:
    assert (await get(agent.port, "/nope")).status == 404
    assert (await get(agent.port, "/metrics/extra")).status == 404


async def test_other_methods_are_405(agent: Agent) -> None:
    for method in ("POST", "PUT", "DELETE"):
        r = await get(agent.port, "/metrics", method=method)
        assert r.status == 405
        assert r.headers["allow"] == "GET, HEAD"


async def test_head_answers_headers_without_a_body(agent: Agent) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    writer.write(b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Length: 2" in head
    assert body == b""


async def test_the_query_string_is_ignored(agent: Agent) -> None:
    r = await get(agent.port, "/healthz?verbose=1")
    assert (r.status, r.text) == (200, "ok")


async def test_a_malformed_request_is_400(agent: Agent) -> None:
    assert (await raw(agent.port, b"GARBAGE\r\n\r\n")).status == 400
    assert (await raw(agent.port, b"GET /metrics SPDY/3\r\n\r\n")).status == 400
    assert (await raw(agent.port, b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n")).status == 400


async def test_an_oversized_request_head_is_refused(agent: Agent) -> None:
    big = b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
    assert (await raw(agent.port, big)).status == 431
    many = b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 500 + b"\r\n"
    assert (await raw(agent.port, many)).status == 431


async def test_a_slow_client_is_timed_out(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rhttp, "READ_TIMEOUT", 0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")  # and never finishes the head
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert parse(data).status == 408


async def test_a_client_that_hangs_up_early_does_not_hurt_the_server(agent: Agent) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    writer.write(b"GET /met")
    writer.close()
    await writer.wait_closed()
    assert (await get(agent.port, "/healthz")).status == 200


async def test_a_failing_snapshot_source_gives_500_and_the_server_keeps_serving(
    agent: Agent,
) -> None:
    agent.holder.fail = True
    assert (await get(agent.port, "/v1/node")).status == 500
    agent.holder.fail = False
    assert (await get(agent.port, "/v1/node")).status == 200


async def test_concurrent_scrapes_all_get_the_same_text(agent: Agent) -> None:
    at_once = rhttp.DEFAULT_LIMITS.per_client  # one client's share: these all come from one
    results = await asyncio.gather(*(get(agent.port, "/metrics") for _ in range(at_once)))
    assert {r.body for r in results} == {agent.metrics.render()}


async def test_the_status_page_is_self_contained_html_under_a_strict_policy(agent: Agent) -> None:
    r = await get(agent.port, "/")
    assert r.status == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["connection"] == "close"
    assert r.text.startswith("<!DOCTYPE html>")
    assert 'data-name="api"' in r.text and 'data-name="web"' in r.text


async def test_the_status_page_follows_the_current_snapshot(agent: Agent) -> None:
    agent.holder.snap = healthy(tasks=(view("db", "d1", TaskState.RUNNING),), restarts=())
    page = (await get(agent.port, "/")).text
    assert 'data-name="db"' in page and 'data-name="api"' not in page


async def test_the_status_page_is_gzipped_when_the_browser_accepts_it(agent: Agent) -> None:
    r = await get(agent.port, "/", extra="Accept-Encoding: gzip, deflate, br\r\n")
    assert r.headers["content-encoding"] == "gzip"
    assert gzip.decompress(r.body).startswith(b"<!DOCTYPE html>")
    assert r.headers["vary"] == "Accept-Encoding"


async def test_only_get_and_head_reach_the_page(agent: Agent) -> None:
    assert (await get(agent.port, "/", method="POST")).status == 405
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    writer.write(b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b""

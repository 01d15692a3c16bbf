"""``reconciler manager apply|rm|ps|nodes|drain|pause|activate`` against a real nats-server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.main import main
from reconciler.core.codec import node_to_dict
from reconciler.core.model import NodeDescription
from reconciler.fleet.buckets import NODES, STATUS
from reconciler.testing.natsserver import NatsServer
from reconciler.testing.ports import free_port
from tests.fleet.support import IMAGE, Manager


def described(hostname: str, cpus: int, memory: int) -> dict[str, Any]:
    """A node's description as its agent writes it into a heartbeat."""
    node = NodeDescription(hostname, "linux", "amd64", cpus, memory, "podman", "4.3.1", "0.1.0")
    return node_to_dict(node, version="0.1.0")


def run(*args: str) -> Any:
    return asyncio.run(_run(*args))


async def _run(action: str, url: str, *args: Any) -> Any:
    m = await Manager.connect(url)
    try:
        if action == "init":
            await m.init()
            return None
        if action == "put":
            bucket, key, value = args
            return await (await m.kv(bucket)).put(key, json.dumps(value).encode())
        return await getattr(m, action)(*args)
    finally:
        await m.close()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def write(tmp: Path, *services: dict[str, Any]) -> str:
    doc = {
        "apiVersion": "reconciler/v1",
        "kind": "ServiceSet",
        "services": [{"image": IMAGE, **s} for s in services],
    }
    path = tmp / "fleet.yaml"
    path.write_text(json.dumps(doc, indent=2))
    return str(path)


def test_apply_upserts_says_what_changed_and_prune_removes_the_rest(
    tmp_path: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = nats_server.url
    run("init", url)
    both = write(tmp_path, {"name": "web", "replicas": 2}, {"name": "logship", "mode": "global"})
    assert cli(capsys, "manager", "apply", "-f", both, "--nats", url) == (
        0,
        "create service web (2 replicas)\ncreate service logship (global)\n",
        "",
    )
    one = write(tmp_path, {"name": "web", "replicas": 3})
    code, out, _ = cli(capsys, "manager", "apply", "-f", one, "--nats", url)
    assert (code, out) == (0, "update service web (replicas)\n")
    code, out, _ = cli(capsys, "manager", "apply", "-f", one, "--nats", url, "--prune")
    assert (code, out) == (0, "unchanged service web\nremove service logship\n")
    code, out, _ = cli(capsys, "manager", "ps", "--nats", url, "-o", "json")
    rows = json.loads(out)
    assert [(r["service"], r["task"], r["node"], r["state"]) for r in rows] == [
        ("web", f"web-{i}", None, "unassigned") for i in (1, 2, 3)
    ]


def test_a_malformed_file_exits_2_naming_file_line_and_field_and_writes_nothing(
    tmp_path: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = nats_server.url
    run("init", url)
    path = tmp_path / "bad.yaml"
    path.write_text(
        "apiVersion: reconciler/v1\n"
        "kind: ServiceSet\n"
        "services:\n"
        f"  - name: good\n    image: {IMAGE}\n"
        f"  - name: bad\n    image: {IMAGE}\n    replicas: many\n"
    )
    code, out, err = cli(capsys, "manager", "apply", "-f", str(path), "--nats", url)
    assert code == 2 and out == ""
    assert err.startswith(f"{path}:8: services[1].replicas: must be an integer")
    code, out, _ = cli(capsys, "manager", "ps", "--nats", url, "-o", "json")
    assert (code, json.loads(out)) == (0, [])


def test_dry_run_shows_where_tasks_would_go_and_writes_nothing(
    tmp_path: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = nats_server.url
    run("init", url)
    for node in ("node-a", "node-b"):
        beat = {"nodeId": node, "ready": True, "labels": {}, **described(node, 2, 1 << 30)}
        run("put", url, NODES, node, beat)
    path = write(tmp_path, {"name": "web", "replicas": 3})
    code, out, _ = cli(capsys, "manager", "apply", "-f", path, "--nats", url, "--dry-run")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "create service web (3 replicas)"
    assert sorted(lines[1:]) == sorted(
        ["place web-1 on node-a", "place web-2 on node-b", "place web-3 on node-a"]
    )
    code, out, _ = cli(capsys, "manager", "ps", "--nats", url, "-o", "json")
    assert json.loads(out) == []


def test_ps_and_nodes_show_assignments_statuses_and_heartbeats(
    tmp_path: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = nats_server.url
    run("init", url)
    cli(
        capsys,
        "manager",
        "apply",
        "-f",
        write(tmp_path, {"name": "web", "replicas": 2}),
        "--nats",
        url,
    )
    beat = {
        "nodeId": "node-a",
        "ready": True,
        "labels": {"site": "north"},
        **described("node-a", 2, 2 << 30),
        "heartbeatAt": "2025-05-01T12:00:00.000Z",
    }
    run("put", url, NODES, "node-a", beat)
    run("assign", url, "node-a", "web-1", {"image": IMAGE})
    status = {
        "id": "abc",
        "state": "running",
        "message": "started",
        "error": None,
        "exitCode": None,
        "containerId": "c1",
        "updatedAt": "2025-05-01T12:00:01.000Z",
        "restarts": 2,
    }
    run("put", url, STATUS, "node-a.web-1", status)

    code, out, _ = cli(capsys, "manager", "ps", "--nats", url)
    assert code == 0
    table = [line.split() for line in out.splitlines()]
    assert table[0] == ["SERVICE", "TASK", "NODE", "STATE", "RESTARTS", "MESSAGE"]
    assert table[1] == ["web", "web-1", "node-a", "running", "2", "started"]
    assert table[2] == ["web", "web-2", "-", "unassigned", "0", "not", "placed", "yet"]

    code, out, _ = cli(capsys, "manager", "nodes", "--nats", url, "-o", "json")
    (node,) = json.loads(out)
    assert node["node"] == "node-a" and node["ready"] is True
    assert node["tasks"] == 1 and node["engineLabels"] == {"site": "north"}
    assert node["labels"] == {}  # the node's own claim is no operator label
    assert node["availability"] == "active" and node["heartbeatAt"] == beat["heartbeatAt"]
    assert (node["hostname"], node["cpus"], node["memoryBytes"]) == ("node-a", 2, 2 << 30)

    code, out, _ = cli(capsys, "manager", "drain", "node-a", "--nats", url)
    assert (code, out) == (0, "node node-a: drain\n")
    code, out, _ = cli(capsys, "manager", "pause", "node-z", "--nats", url, "-o", "json")
    assert json.loads(out) == {"node": "node-z", "availability": "pause", "known": False}
    code, out, _ = cli(capsys, "manager", "nodes", "--nats", url)
    assert out.splitlines()[1].split()[:4] == ["node-a", "yes", "drain", "1"]
    code, out, _ = cli(capsys, "manager", "activate", "node-a", "--nats", url)
    assert out == "node node-a: active\n"


def test_rm_removes_services_and_names_those_that_do_not_exist(
    tmp_path: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = nats_server.url
    run("init", url)
    cli(capsys, "manager", "apply", "-f", write(tmp_path, {"name": "web"}), "--nats", url)
    code, _, err = cli(capsys, "manager", "rm", "web", "nope", "--nats", url)
    assert code == 1 and "no such service: nope" in err
    assert cli(capsys, "manager", "rm", "web", "--nats", url) == (0, "remove service web\n", "")
    code, out, _ = cli(capsys, "manager", "ps", "--nats", url, "-o", "json")
    assert json.loads(out) == []


def test_fleet_commands_say_why_they_cannot_reach_the_fleet(
    tmp_path: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "manager", "ps", "--nats", f"nats://127.0.0.1:{free_port()}")
    assert code == 1 and "no NATS server answers" in err
    code, _, err = cli(capsys, "manager", "nodes", "--nats", nats_server.url)  # no buckets yet
    assert code == 1 and "reconciler manager init" in err
    code, _, err = cli(capsys, "manager", "drain", "bad.node", "--nats", nats_server.url)
    assert code == 2 and "NODE" in err
    code, _, err = cli(capsys, "manager", "run", "--nats", nats_server.url, "--node-grace", "0s")
    assert code == 2 and "--node-grace" in err
    code, _, err = cli(capsys, "manager", "ps")
    assert code == 2 and "--nats" in err

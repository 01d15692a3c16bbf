"""The labels operators set on a node, against a real nats-server: ``reconciler manager label``
and the availability commands each change only their own field of the node's control value
(also when given at the same moment), ``manager nodes`` shows both kinds of labels, and a fleet
made the old way has its nodes' own labels copied to operator labels once and only once."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.main import main
from reconciler.core.model import Availability
from reconciler.fleet.buckets import CONTROL, FLEET_KEY, NODES, node_control_key
from reconciler.fleet.options import NatsOptions
from reconciler.fleet.values import FLEET_FORMAT, parse_node_controls
from reconciler.manager.control import set_availability, set_labels
from reconciler.testing.natsserver import NatsServer
from tests.fleet.support import IMAGE, Manager


async def _with(url: str, action: str, *args: Any) -> Any:
    m = await Manager.connect(url)
    try:
        if action == "init":
            return await m.init()
        kv = await m.kv(args[0])
        if action == "put":
            return await kv.put(args[1], json.dumps(args[2]).encode())
        if action == "delete":
            return await kv.delete(args[1])
        entry = await kv.get(args[1])
        return json.loads(entry.value or b"null")
    finally:
        await m.close()


def nats(url: str, action: str, *args: Any) -> Any:
    """``init``, or ``put``/``get``/``delete`` of BUCKET KEY [VALUE], as a manager."""
    return asyncio.run(_with(url, action, *args))


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def beat(node: str, **labels: str) -> dict[str, Any]:
    return {"nodeId": node, "ready": True, "labels": labels}


def test_label_sets_and_removes_and_keeps_the_availability_and_drain_keeps_the_labels(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = nats_server.url
    nats(url, "init")
    nats(url, "put", NODES, "node-a", beat("node-a", site="claimed"))
    assert cli(capsys, "manager", "drain", "node-a", "--nats", url)[:2] == (
        0,
        "node node-a: drain\n",
    )
    code, out, _ = cli(
        capsys, "manager", "label", "node-a", "site=secure", "rack=r1", "--nats", url
    )
    assert (code, out) == (0, "node node-a: labels rack=r1,site=secure\n")
    code, out, _ = cli(
        capsys, "manager", "label", "node-a", "--rm", "rack", "--nats", url, "-o", "json"
    )
    assert json.loads(out) == {"node": "node-a", "labels": {"site": "secure"}, "known": True}
    stored = nats(url, "get", CONTROL, node_control_key("node-a"))
    assert stored == {"availability": "drain", "labels": {"site": "secure"}}
    assert cli(capsys, "manager", "activate", "node-a", "--nats", url)[0] == 0
    stored = nats(url, "get", CONTROL, node_control_key("node-a"))
    assert stored == {"availability": "active", "labels": {"site": "secure"}}

    code, out, _ = cli(capsys, "manager", "nodes", "--nats", url, "-o", "json")
    (node,) = json.loads(out)
    assert (node["labels"], node["engineLabels"]) == ({"site": "secure"}, {"site": "claimed"})
    code, out, _ = cli(capsys, "manager", "nodes", "--nats", url)
    assert out.splitlines()[0].split()[-3:] == ["LABELS", "ENGINE", "LABELS"]
    assert out.splitlines()[1].split()[-2:] == ["site=secure", "site=claimed"]

    # a node that has not joined keeps its labels for when it does; a deleted key comes back
    nats(url, "delete", CONTROL, node_control_key("node-a"))
    code, out, _ = cli(capsys, "manager", "label", "node-z", "gpu=yes", "--nats", url)
    assert out.splitlines() == [
        "node node-z: labels gpu=yes",
        "(no heartbeat from this node yet; it applies when the node joins)",
    ]
    assert cli(capsys, "manager", "label", "node-a", "site=back", "--nats", url)[0] == 0
    assert nats(url, "get", CONTROL, node_control_key("node-a")) == {"labels": {"site": "back"}}


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["node-a"], "give KEY=VALUE"),
        (["node-a", "site"], "KEY=VALUE: expected KEY=VALUE"),
        (["node-a", "my site=x"], "label key 'my site'"),
        (["node-a", "site=a\x01b"], "control character"),
        (["node-a", "site=x", "--rm", "site"], "--rm: site is also set"),
        (["bad.node", "site=x"], "NODE"),
    ],
)
def test_a_bad_label_command_is_a_usage_error_naming_what(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str], args: list[str], problem: str
) -> None:
    code, out, err = cli(capsys, "manager", "label", *args, "--nats", nats_server.url)
    assert (code, out) == (2, "") and problem in err


def test_labels_and_availability_given_at_the_same_moment_both_land(
    nats_server: NatsServer,
) -> None:
    url = nats_server.url
    nats(url, "init")
    options = NatsOptions(servers=(url,))
    keys = [f"k{i}" for i in range(8)]

    async def together() -> None:
        await asyncio.gather(
            *(set_labels(options, "node-a", {key: "v"}, []) for key in keys),
            set_availability(options, "node-a", Availability.PAUSE),
        )

    asyncio.run(together())
    stored = nats(url, "get", CONTROL, node_control_key("node-a"))
    control = parse_node_controls(json.dumps(stored).encode())
    assert control.availability is Availability.PAUSE
    assert dict(control.labels) == dict.fromkeys(keys, "v")


def test_an_old_fleet_gets_its_nodes_own_labels_copied_once_and_only_once(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = nats_server.url
    nats(url, "init")
    # as an older version leaves it: no formatVersion, the agents' labels in their values
    old_fleet = {"heartbeatPeriod": "2s", "managers": ["nats://a:4222"]}
    nats(url, "put", CONTROL, FLEET_KEY, old_fleet)
    nats(url, "put", NODES, "node-a", beat("node-a", site="north", rack="r1"))
    nats(url, "put", NODES, "node-b", beat("node-b", **{"bad key": "x", "zone": "z"}))
    nats(url, "put", NODES, "node-c", beat("node-c"))
    nats(url, "put", CONTROL, node_control_key("node-a"), {"availability": "drain"})
    nats(url, "put", CONTROL, node_control_key("node-b"), {"labels": {"zone": "set-by-op"}})

    with caplog.at_level(logging.INFO, logger="reconciler.fleet.upgrade"):
        nats(url, "init")
    control = {n: nats(url, "get", CONTROL, node_control_key(n)) for n in ("node-a", "node-b")}
    assert control == {
        "node-a": {"availability": "drain", "labels": {"rack": "r1", "site": "north"}},
        "node-b": {"labels": {"zone": "set-by-op"}},  # an operator's label wins
    }
    fleet = nats(url, "get", CONTROL, FLEET_KEY)
    assert fleet == {**old_fleet, "formatVersion": FLEET_FORMAT}
    (upgraded,) = [r.getMessage() for r in caplog.records if "upgraded" in r.getMessage()]
    assert "from=1 to=2" in upgraded and "nodes=1 copied=node-a" in upgraded
    assert any("'bad key'" in r.getMessage() for r in caplog.records)

    # once: an operator's later change stays, a node's new claim is not copied
    nats(url, "put", CONTROL, node_control_key("node-a"), {"labels": {}})
    nats(url, "put", NODES, "node-c", beat("node-c", site="claimed"))
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="reconciler.fleet.upgrade"):
        nats(url, "init")
    assert nats(url, "get", CONTROL, node_control_key("node-a")) == {"labels": {}}
    assert not any("upgraded" in r.getMessage() for r in caplog.records)


def test_a_new_fleet_records_its_format_first_and_never_copies(nats_server: NatsServer) -> None:
    url = nats_server.url

    async def nodes_bucket_first() -> None:
        m = await Manager.connect(url)
        try:  # a node value already there when the fleet's control bucket is made
            await m.js.create_key_value(bucket=NODES)
            await (await m.kv(NODES)).put("node-a", json.dumps(beat("node-a", site="x")).encode())
            await m.init()
        finally:
            await m.close()

    asyncio.run(nodes_bucket_first())
    assert nats(url, "get", CONTROL, FLEET_KEY) == {"formatVersion": FLEET_FORMAT}
    with pytest.raises(Exception, match="not found"):
        nats(url, "get", CONTROL, node_control_key("node-a"))


def test_a_dry_run_says_why_a_task_has_no_node(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = nats_server.url
    nats(url, "init")
    nats(url, "put", NODES, "node-a", beat("node-a", site="secure"))
    path = tmp_path / "vault.yaml"
    service = {
        "name": "vault",
        "image": IMAGE,
        "placement": {"constraints": ["node.labels.site==secure"]},
    }
    path.write_text(
        json.dumps({"apiVersion": "reconciler/v1", "kind": "ServiceSet", "services": [service]})
    )
    code, out, _ = cli(capsys, "manager", "apply", "-f", str(path), "--nats", url, "--dry-run")
    assert (code, out.splitlines()) == (
        0,
        [
            "create service vault (1 replicas)",
            "unassigned vault-1 (node.labels.site==secure: no node has this operator label "
            "(node-a has it as an engine label: set it with reconciler manager label))",
        ],
    )

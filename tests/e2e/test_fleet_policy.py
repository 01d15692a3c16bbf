"""End to end: the node's policy for fleet tasks on real podman, with a real nats-server.

A ``reconciler run --manager`` subprocess is assigned a task that bind-mounts ``/etc``, with an
image that exists nowhere: the task ends ``rejected`` naming the field and the flag, and podman
holds no container of it (and no pull was tried: that would have failed with another message).
A task beside it that asks for nothing of the host runs.
"""

from __future__ import annotations

import pytest

from reconciler.testing.natsserver import NatsServer
from tests.e2e.agent_support import Harness, cli, task
from tests.e2e.test_fleet_session import manage

pytestmark = pytest.mark.e2e

REFUSED = "mounts[0]: a bind mount of /etc is not allowed on this node (--allow-bind)"


def test_a_refused_fleet_task_creates_no_container(
    harness: Harness, nats_server: NatsServer
) -> None:
    h = harness
    init = cli("manager", "init", "--nats", nats_server.url)
    assert init.returncode == 0, init.stderr
    etc = task(
        "etc",
        image="localhost/reconciler-never-built:1",
        mounts=[{"type": "bind", "source": "/etc", "target": "/host-etc"}],
    )
    manage(nats_server.url, "assign", h.node_id, "etc", etc)
    manage(nats_server.url, "assign", h.node_id, "plain", task("plain"))

    h.start_agent("--manager", nats_server.url)
    h.wait_state("plain", "running")
    refused = h.wait_state("etc", "rejected")
    assert refused["message"] == REFUSED
    stored = h.wait_for(
        lambda: (
            (s := manage(nats_server.url, "status", h.node_id, "etc"))
            and s["state"] == "rejected"
            and s
        ),
        "the rejection in the status bucket",
    )
    assert stored["message"] == REFUSED
    assert h.named("etc") == []
    assert [v["id"] for v in h.ps() if v["name"] == "etc"] == [refused["id"]]  # one instance

"""podman-py's internals that the runtime borrows are still there, with the shape it relies on.

If podman-py is upgraded and one moves, this fails here, naming it, rather than on a host."""

from __future__ import annotations

import json

from runtime.podman.internals import check, create_body


def test_the_podman_py_internals_the_runtime_uses_are_still_there() -> None:
    check()


def test_create_keywords_render_to_the_rest_payload_podman_expects() -> None:
    body = json.loads(
        create_body(
            {
                "image": "localhost/busybox:latest",
                "name": "web.abc",
                "command": ["sleep", "1"],
                "labels": {"reconciler.task.id": "abc"},
                "mem_limit": 64 << 20,
                "ports": {"80/tcp": 18080},
            }
        )
    )
    assert body["image"] == "localhost/busybox:latest"
    assert body["name"] == "web.abc"
    assert body["command"] == ["sleep", "1"]
    assert body["labels"] == {"reconciler.task.id": "abc"}
    assert body["resource_limits"]["memory"]["limit"] == 64 << 20
    assert body["portmappings"][0]["host_port"] == 18080

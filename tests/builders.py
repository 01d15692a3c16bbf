"""Builders for the values many tests need, so that each test states only what matters to it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from reconciler import __version__
from reconciler.model import NodeDescription

NODE = NodeDescription(
    hostname="edge-1",
    os="linux",
    arch="amd64",
    cpus=2,
    memory_bytes=2 * 1024**3,
    runtime_name="podman",
    runtime_version="4.3.1",
    agent_version=__version__,
)


def node(**changes: Any) -> NodeDescription:
    """A described node (edge-1, linux/amd64, 2 CPUs, 2 GiB, podman 4.3.1), with changes."""
    return replace(NODE, **changes)

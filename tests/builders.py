"""Builders for the values many tests need, so that each test states only what matters to it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from reconciler import __version__
from reconciler.core.executor import TaskUsage
from reconciler.core.model import NodeDescription
from reconciler.observe.hoststats import DiskFree, NodeUsage
from reconciler.observe.usage import Usage

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


def full_usage() -> Usage:
    """A usage sample of one task instance (``web``, id ``i1``) in which every figure is known,
    so every usage family is rendered."""
    return Usage(
        tasks=(
            TaskUsage(
                task_id="i1",
                name="web",
                cpu_seconds=1.5,
                memory_working_set_bytes=1000,
                memory_limit_bytes=2000,
                network_receive_bytes=10,
                network_transmit_bytes=20,
                block_read_bytes=30,
                block_write_bytes=40,
                pids=2,
            ),
        ),
        node=NodeUsage(
            cpu_seconds=(("user", 1.0), ("idle", 2.0)),
            memory_available_bytes=1000,
            memory_total_bytes=2000,
            disks=(DiskFree("state", 1, 2), DiskFree("images", 1, 2)),
            pressure=(("cpu", "some", 1.0),),
        ),
    )

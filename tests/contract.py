"""What the tests hold the product to, in one place: the metric names it exports, and the rule
for real components a test needs (nats-server, podman, Prometheus, promtool).

``AGENT_METRICS`` and ``MANAGER_METRICS`` are the series the code exports. They are checked
against the registries (``tests/observe/test_metrics.py``, ``tests/manager/test_http.py``) and,
both ways, against the metric tables of ``docs/http-and-metrics.md``, the reference users read
(``tests/deploy/test_alerts.py``). The shipped alert rules and dashboard may use these only.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import NoReturn

import pytest

from reconciler.testing.natsserver import MISSING as NATS_SERVER_MISSING
from reconciler.testing.natsserver import nats_server_binary

REPO = Path(__file__).resolve().parents[1]

#: The metrics an agent exports.
AGENT_METRICS = (
    "reconciler_build_info",
    "reconciler_node_info",
    "reconciler_node_ready",
    "reconciler_node_cpus",
    "reconciler_node_memory_bytes",
    "reconciler_runtime_up",
    "reconciler_tasks",
    "reconciler_task_state",
    "reconciler_task_restarts_total",
    "reconciler_task_start_seconds",
    "reconciler_reconcile_duration_seconds",
    "reconciler_drift_corrections_total",
    "reconciler_desired_state_valid",
    "reconciler_desired_state_errors_total",
    "reconciler_desired_state_applied_timestamp_seconds",
    "reconciler_runtime_errors_total",
    "reconciler_status_reports_pending",
    "reconciler_session_connected",
    "reconciler_loop_restarts_total",
    "reconciler_store_rebuilds_total",
    "reconciler_task_rollbacks_total",
    "reconciler_task_oom_kills_total",
    "reconciler_node_condition",
    *(
        # usage, from each --stats-interval sample
        "reconciler_task_cpu_seconds_total",
        "reconciler_task_memory_working_set_bytes",
        "reconciler_task_memory_limit_bytes",
        "reconciler_task_network_receive_bytes_total",
        "reconciler_task_network_transmit_bytes_total",
        "reconciler_task_block_read_bytes_total",
        "reconciler_task_block_write_bytes_total",
        "reconciler_task_pids",
        "reconciler_node_cpu_seconds_total",
        "reconciler_node_memory_available_bytes",
        "reconciler_node_disk_free_bytes",
        "reconciler_node_pressure_seconds_total",
    ),
    "reconciler_image_pulls_total",
    "reconciler_images_removed_total",
    "reconciler_session_bad_values_total",
)

#: The metrics a fleet manager exports (and reconciler_build_info, as an agent does).
MANAGER_METRICS = (
    "reconciler_manager_leader",
    "reconciler_manager_nodes",
    "reconciler_manager_tasks",
    "reconciler_manager_node_keys",
    "reconciler_manager_reschedules_total",
    "reconciler_manager_schedule_seconds",
    "reconciler_manager_bad_values_total",
)

#: Every metric name the code exports.
CONTRACT_METRICS = frozenset(AGENT_METRICS + MANAGER_METRICS)


def missing(message: str) -> NoReturn:
    """A real component the test needs is absent: fail under CI (``CI`` set), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {message}")
    pytest.skip(message)


def give_to_another_user(*paths: Path) -> int:
    """Make ``nobody`` the owner of ``paths`` (links themselves, not their targets); its uid.
    Only root can: ``missing`` otherwise, so it fails under CI (which runs as root)."""
    if os.geteuid() != 0:
        missing("giving a path to another user needs root (CI runs as root)")
    nobody = pwd.getpwnam("nobody").pw_uid
    for path in paths:
        os.chown(path, nobody, -1, follow_symlinks=False)
    return nobody


def require_nats_server() -> str:
    """The nats-server binary, for a test that runs it by hand; ``missing`` when it is absent."""
    binary = nats_server_binary()
    if binary is None:
        missing(NATS_SERVER_MISSING)
    return binary

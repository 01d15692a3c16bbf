"""What the tests hold the product to, in one place: PRODUCT.md's metric names, and the rule for
real components a test needs (podman, Prometheus, promtool).

The metric names are a copy of PRODUCT.md's "Metrics" table; ``tests/test_alerts.py`` checks
the copy against ``../shared/PRODUCT.md`` when that file stands beside the checkout (it does in
CI).
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

#: The metrics an agent exports, as PRODUCT.md lists them.
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
)

#: The metrics a fleet manager exports.
MANAGER_METRICS = (
    "reconciler_manager_leader",
    "reconciler_manager_nodes",
    "reconciler_manager_tasks",
    "reconciler_manager_reschedules_total",
)

#: Every metric name in the contract.
CONTRACT_METRICS = frozenset(AGENT_METRICS + MANAGER_METRICS)


def missing(message: str) -> NoReturn:
    """A real component the test needs is absent: fail under CI (``CI`` set), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {message}")
    pytest.skip(message)

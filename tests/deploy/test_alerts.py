"""The shipped alert rules and dashboard: promtool checks them, and they speak the contract.

``promtool`` comes with Debian's prometheus package. Without it these tests skip on a developer
machine and fail under CI (``CI`` set), saying what is missing, as every test of a real
component does here. The dashboard and rule checks that need no binary always run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from reconciler.manager.metrics import FleetCounts, ManagerMetrics
from tests.contract import CONTRACT_METRICS, missing

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "grafana" / "dashboards" / "reconciler.json"

HISTOGRAMS = frozenset(
    {
        "reconciler_task_start_seconds",
        "reconciler_reconcile_duration_seconds",
        "reconciler_manager_schedule_seconds",
    }
)
REQUIRED_ALERTS = frozenset(
    {
        "ReconcilerNodeNotReady",
        "ReconcilerRuntimeDown",
        "ReconcilerTaskRestartStorm",
        "ReconcilerDesiredStateInvalid",
        "ReconcilerTaskStuckBeforeRunning",
        "ReconcilerStatusReportsPiling",
        "ReconcilerNoLeader",
        "ReconcilerTasksUnassigned",
    }
)


def require(binary: str) -> str:
    """The binary's path; skip without it, or fail under CI."""
    path = shutil.which(binary)
    if path is None:
        missing(f"{binary} is not installed (Debian package: prometheus)")
    return path


def run(*args: str) -> None:
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


# ------------------------------------------------------------------------- promtool


def test_promtool_accepts_the_alert_rules() -> None:
    run(require("promtool"), "check", "rules", str(PROM / "alerts.yml"))


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    run(require("promtool"), "test", "rules", str(PROM / "alerts_test.yml"))


def test_promtool_accepts_the_example_scrape_config() -> None:
    run(require("promtool"), "check", "config", str(PROM / "prometheus.yml"))


# ------------------------------------------------------------------------- rules


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_the_required_alerts_exist_with_severity_and_annotations() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "for" in rule, f"{rule['alert']} fires on a single evaluation"


def test_every_alert_is_unit_tested_both_firing_and_not_firing() -> None:
    doc = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown not firing"


def test_alert_expressions_use_only_contract_metrics() -> None:
    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - allowed_names() - {"up"}
        assert not unknown, f"{rule['alert']}: {unknown}"


# ------------------------------------------------------------------------- dashboard


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside collapsed rows
    return [p for p in out if p.get("type") != "row"]


def test_the_dashboard_is_provisioned_with_uid_reconciler_and_a_node_variable() -> None:
    dash = dashboard()
    assert dash["uid"] == "reconciler"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert "instance" in variables["node"]["query"]["query"]
    provider = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "dashboards" / "reconciler.yml").read_text()
    )
    assert provider["providers"][0]["type"] == "file"
    datasources = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasources["datasources"][0]["type"] == "prometheus"


def test_every_dashboard_panel_has_a_query_filtered_by_node() -> None:
    ids = set()
    for panel in panels(dashboard()):
        assert panel["id"] not in ids
        ids.add(panel["id"])
        assert panel.get("targets"), panel["title"]
        for target in panel["targets"]:
            # agents' panels filter on the node variable, the fleet row's on the manager one
            wanted = "$manager" if "reconciler_manager_" in target["expr"] else "$node"
            assert f'instance=~"{wanted}"' in target["expr"], (panel["title"], target["expr"])


def test_every_dashboard_expression_uses_only_contract_metrics() -> None:
    allowed = allowed_names()
    for panel in panels(dashboard()):
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']!r}"
            unknown = names - allowed
            assert not unknown, f"{panel['title']}: {sorted(unknown)} not in the contract"


def test_the_dashboard_covers_what_an_operator_needs() -> None:
    used = set()
    for panel in panels(dashboard()):
        for target in panel["targets"]:
            used |= {base_name(n) for n in metric_names(target["expr"])}
    needed = {
        "reconciler_node_ready",
        "reconciler_runtime_up",
        "reconciler_tasks",
        "reconciler_task_state",
        "reconciler_task_restarts_total",
        "reconciler_drift_corrections_total",
        "reconciler_task_start_seconds",
        "reconciler_reconcile_duration_seconds",
        "reconciler_desired_state_valid",
        "reconciler_desired_state_errors_total",
        "reconciler_status_reports_pending",
        "reconciler_manager_leader",
        "reconciler_manager_nodes",
        "reconciler_manager_tasks",
        "reconciler_manager_reschedules_total",
    }
    assert needed <= used, needed - used


def documented_metrics() -> set[str]:
    """The series of docs/http-and-metrics.md's metric tables: each row's first cell."""
    text = (ROOT / "docs" / "http-and-metrics.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `(reconciler_[a-z0-9_]+)` \|", text, flags=re.MULTILINE))


def test_the_contract_is_exactly_what_the_metrics_reference_documents() -> None:
    # the names the rules and the dashboard may use are the ones a user can look up
    documented = documented_metrics()
    assert sorted(CONTRACT_METRICS - documented) == [], "exported but without a row"
    assert sorted(documented - CONTRACT_METRICS) == [], "documented but not exported"


def test_every_series_a_manager_registers_is_in_the_contract() -> None:
    counts = FleetCounts(leader=True, nodes={"ready": 1}, tasks={"running": 1})
    metrics = ManagerMetrics(counts=lambda: counts)
    metrics.observe_schedule(0.01)
    text = metrics.render().decode()
    registered = {
        f.name + "_total" if f.type == "counter" else f.name
        for f in text_string_to_metric_families(text)
    }
    assert registered and registered <= CONTRACT_METRICS, registered - CONTRACT_METRICS


# ------------------------------------------------------------------------- PromQL names

_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
)
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small scanner, enough for our queries)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = _GROUPING.sub(" ", text)  # grouping label lists
    text = re.sub(r"\b(group_left|group_right)\b", " ", text)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = m.group(0)
        rest = text[m.end() :].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or an aggregation, not a metric
        if m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] == "."):
            continue  # exponent or unit of a number literal
        names.add(word)
    return names


def allowed_names() -> set[str]:
    allowed = set(CONTRACT_METRICS)
    for h in HISTOGRAMS:
        allowed |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return allowed


def base_name(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


def test_the_promql_name_scanner_finds_metrics_and_skips_functions_and_labels() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le) (rate(a_bucket{instance=~"$node"}[5m]))) '
        "/ on (job, instance) group_left (node_id) b * 1e3 or vector(0) and c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}

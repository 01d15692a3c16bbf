"""The user reference in ``docs/`` names everything the code defines, so the two cannot drift.

Every list here is derived from the code, never copied: the metric names the agent exports
(``tests.contract.AGENT_METRICS``, the names registered in ``reconciler/observe/`` and a real
rendering of ``Metrics``), every command and long flag of ``reconciler.cli.options.COMMANDS``,
every YAML field of ``reconciler.spec.schema.TASK_SCHEMA`` (nested ones as
``restart.maxDelay`` and ``mounts[].readOnly``), the HTTP routes, the ``ps -o json`` and
``/v1/node`` keys, and the shipped alert rules and dashboard panels. Adding any of them to the
code without documenting it fails here, naming what is missing and where it belongs.

The docs are also checked to stand on their own: their relative links and anchors resolve, and
they never point at material a user who clones the repository does not have.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from reconciler.cli.options import COMMANDS, COMMON, CommandSpec
from reconciler.cli.parser import all_flags, build_parser
from reconciler.core.executor import DriftKind, PullResult, RuntimeOp
from reconciler.core.model import Condition, TaskState
from reconciler.core.snapshot import Snapshot, TaskView
from reconciler.observe.metrics import Metrics
from reconciler.spec.schema import DOCUMENT_SCHEMA, TASK_SCHEMA
from reconciler.web.agent_routes import agent_routes
from reconciler.web.server import probe_routes
from reconciler.web.state import node_json
from tests.builders import full_usage, node
from tests.contract import AGENT_METRICS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DESIRED_STATE = DOCS / "desired-state.md"
CLI = DOCS / "cli.md"
HTTP_AND_METRICS = DOCS / "http-and-metrics.md"
OPERATIONS = DOCS / "operations.md"
ARCHITECTURE = DOCS / "architecture.md"
REFERENCE = (DESIRED_STATE, CLI, HTTP_AND_METRICS, OPERATIONS, ARCHITECTURE)

#: Where the agent's metrics are registered; their ``"reconciler_..."`` literals are metric names.
METRICS_SOURCES = sorted((ROOT / "reconciler" / "observe").glob("*.py"))


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code_spans(text: str) -> set[str]:
    """Every inline code span of a Markdown text, as written between the backticks."""
    return set(re.findall(r"`([^`\n]+)`", text))


# ------------------------------------------------------------------------------- metrics


def registered_metric_names() -> set[str]:
    """Metric names written in reconciler/observe/, as registered (counters without _total)."""
    return {
        name
        for path in METRICS_SOURCES
        for name in re.findall(r"[\"'](reconciler_[a-z0-9_]+)[\"']", read(path))
    }


def documented(name: str, spans: set[str]) -> bool:
    """A registered name is documented as itself or, for a counter, with ``_total``."""
    return name in spans or f"{name}_total" in spans


def full_snapshot() -> Snapshot:
    """A snapshot with a described node and a current task, so every family is rendered."""
    described = node()
    task = TaskView(
        name="web",
        id="abc123",
        desired_state=TaskState.RUNNING,
        state=TaskState.RUNNING,
        message="started",
        err=None,
        container_id="c1",
        exit_code=None,
        updated_at=0.0,
        restarts=1,
        current=True,
    )
    return Snapshot(
        node_id="n1",
        node=described,
        store_open=True,
        init_done=True,
        runtime_up=True,
        desired_read=True,
        desired_valid=True,
        tasks=(task,),
        restarts=(("web", 1),),
        oom_kills=(("web", 0),),
        conditions=((Condition.DISK_PRESSURE, False), (Condition.MEMORY_PRESSURE, False)),
    )


def rendered_families() -> dict[str, set[str]]:
    """Family name (as exposed) -> its label names, from a real rendering of ``Metrics`` with
    a usage sample in which every figure is known."""
    snap = full_snapshot()
    metrics = Metrics(snapshot=lambda: snap)
    metrics.set_usage(full_usage())
    text = metrics.render().decode()
    families: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = families.setdefault(name, set())
        for sample in family.samples:
            labels.update(k for k in sample.labels if k != "le")
    return families


def test_the_metric_scan_finds_what_the_observe_package_registers() -> None:
    names = registered_metric_names()
    assert {"reconciler_drift_corrections", "reconciler_task_state"} <= names
    rendered = {n.removesuffix("_total") for n in rendered_families()}
    assert rendered <= {n.removesuffix("_total") for n in names}


def test_every_exported_metric_is_documented() -> None:
    spans = code_spans(read(HTTP_AND_METRICS))
    names = set(AGENT_METRICS) | registered_metric_names() | set(rendered_families())
    missing = sorted(n for n in names if not documented(n, spans))
    assert not missing, f"metrics not documented in {HTTP_AND_METRICS.name}: {missing}"


def test_every_metric_label_is_documented_in_the_metrics_row() -> None:
    rows = [line for line in read(HTTP_AND_METRICS).splitlines() if line.startswith("| `")]
    for name, labels in rendered_families().items():
        row = next((r for r in rows if r.startswith(f"| `{name}`")), None)
        assert row is not None, f"{name} has no row in the metrics tables"
        undocumented = sorted(label for label in labels if f"`{label}`" not in row)
        assert not undocumented, f"{name}: labels {undocumented} missing from its row"


def test_every_fixed_label_value_is_documented() -> None:
    spans = code_spans(read(HTTP_AND_METRICS)) | code_spans(read(DESIRED_STATE))
    values = {*DriftKind, *RuntimeOp, *PullResult, *(s.label for s in TaskState)}
    assert not sorted(values - spans), f"label values not documented: {sorted(values - spans)}"


# ----------------------------------------------------------------------------------- CLI


def subcommands() -> dict[str, CommandSpec]:
    """Every command, by its words after ``reconciler``, from the CLI's own table."""
    return {spec.name: spec for spec in COMMANDS}


def long_flags(spec: CommandSpec) -> set[str]:
    return {f"--{flag.name}" for flag in all_flags(spec)}


def sections(text: str) -> dict[str, str]:
    """Level-2 sections of a Markdown text, by heading (without backticks)."""
    out: dict[str, str] = {}
    for part in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = part.partition("\n")
        out[heading.strip().strip("`")] = body
    return out


def test_every_command_has_a_section_in_the_cli_reference() -> None:
    documented = sections(read(CLI))
    missing = sorted(
        f"reconciler {c}" for c in subcommands() if f"reconciler {c}" not in documented
    )
    assert not missing, f"commands without a '## `reconciler X`' section in cli.md: {missing}"


def test_the_cli_table_is_what_the_parser_accepts() -> None:
    parser = build_parser()
    for spec in COMMANDS:
        words = [*spec.path]
        required = [w for f in spec.flags if f.required for w in (f"--{f.name}", "x")]
        positional = ["x" for _ in spec.positionals]
        args = parser.parse_args([*words, *required, *positional])
        assert args.spec is spec


def test_every_long_flag_is_documented_where_it_belongs() -> None:
    text = read(CLI)
    documented = sections(text)
    subs = subcommands()
    common = {f"--{flag.name}" for flag in COMMON}
    problems = [f"{flag} (every command)" for flag in sorted(common) if flag not in text]
    for command, spec in subs.items():
        body = documented.get(f"reconciler {command}", "")
        problems += [
            f"{flag} (reconciler {command})"
            for flag in sorted(long_flags(spec) - common)
            if not re.search(rf"{re.escape(flag)}(?![\w-])", body)
        ]
    problems += [flag for flag in ("--version",) if flag not in text]
    assert not problems, f"flags not documented in cli.md: {problems}"


def test_every_choice_of_a_flag_is_documented() -> None:
    text = read(CLI)
    missing = [
        f"--{flag.name} {choice}"
        for spec in COMMANDS
        for flag in all_flags(spec)
        for choice in flag.choices
        if f"`{choice}`" not in text
    ]
    assert not missing, f"flag values not documented in cli.md: {missing}"


def test_every_ps_json_key_is_documented() -> None:
    view = full_snapshot().tasks[0]
    spans = code_spans(read(CLI))
    missing = sorted(k for k in view.to_json() if k not in spans)
    assert not missing, f"ps -o json keys not documented in cli.md: {missing}"


# ---------------------------------------------------------------------------- YAML fields


def schema_fields(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every field path of a JSON schema: ``restart.maxDelay``, ``mounts[].readOnly``."""
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        yield path
        if not isinstance(sub, dict):
            continue
        if "properties" in sub:
            yield from schema_fields(sub, f"{path}.")
        items = sub.get("items")
        if isinstance(items, dict) and "properties" in items:
            yield from schema_fields(items, f"{path}[].")


def schema_enums(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "enum":
                yield from (str(v) for v in value)
            elif key == "const" and isinstance(value, str):
                yield value
            else:
                yield from schema_enums(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from schema_enums(item)


def test_the_schema_walk_finds_nested_fields() -> None:
    fields = set(schema_fields(TASK_SCHEMA))
    assert {"name", "restart.maxDelay", "healthcheck.startPeriod", "mounts[].readOnly"} <= fields


def test_every_task_field_is_documented() -> None:
    spans = code_spans(read(DESIRED_STATE))
    missing = sorted(set(schema_fields(TASK_SCHEMA)) - spans)
    assert not missing, f"task fields not documented in desired-state.md: {missing}"


def test_every_document_field_and_allowed_value_is_documented() -> None:
    spans = code_spans(read(DESIRED_STATE))
    wanted = set(schema_fields(DOCUMENT_SCHEMA)) | set(schema_enums(DOCUMENT_SCHEMA))
    wanted |= set(schema_enums(TASK_SCHEMA))
    missing = sorted(wanted - spans)
    assert not missing, f"document fields or values not documented in desired-state.md: {missing}"


def test_no_documented_field_is_missing_from_the_schema() -> None:
    """A field documented in a table row must exist; planned ones are named only in prose."""
    fields = set(schema_fields(TASK_SCHEMA))
    rows = re.findall(r"^\| `([A-Za-z.\[\]]+)` \|", read(DESIRED_STATE), flags=re.MULTILINE)
    documents = set(schema_fields(DOCUMENT_SCHEMA))
    tops = {f.split(".")[0].split("[")[0] for f in fields}
    unknown = sorted(
        r
        for r in rows
        if r not in fields | documents
        and r.split(".")[0].split("[")[0] in tops | {"update", "dependsOn"}
    )
    assert not unknown, f"desired-state.md documents fields the schema lacks: {unknown}"


# ----------------------------------------------------------------------- HTTP and deploy


def test_every_http_route_and_node_key_is_documented() -> None:
    routes = {"/", "/v1/events"} | set(agent_routes(full_snapshot, Metrics(snapshot=full_snapshot)))
    routes |= set(probe_routes(lambda: (True, ""), lambda: (True, "")))
    spans = code_spans(read(HTTP_AND_METRICS))
    missing = sorted(routes - spans)
    missing += sorted(k for k in node_json(full_snapshot()) if k not in spans)
    assert not missing, f"routes or /v1/node keys not documented: {missing}"


def test_every_alert_rule_is_documented_with_its_expression() -> None:
    doc = yaml.safe_load(read(ROOT / "deploy" / "prometheus" / "alerts.yml"))
    text = read(HTTP_AND_METRICS).replace("\\|", "|")
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert f"`{rule['alert']}`" in text, f"alert {rule['alert']} not documented"
            assert f"`{rule['expr']}`" in text, f"{rule['alert']}: expression not documented"


def test_every_dashboard_panel_is_documented() -> None:
    dashboard = json.loads(read(ROOT / "grafana" / "dashboards" / "reconciler.json"))
    text = read(HTTP_AND_METRICS)
    missing = [p["title"] for p in dashboard["panels"] if p["title"] not in text]
    assert not missing, f"dashboard panels or rows not documented: {missing}"


# ------------------------------------------------------------------ standing on their own


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", read(path), flags=re.MULTILINE)}


@pytest.mark.parametrize("path", [*REFERENCE, ROOT / "README.md"], ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    text = re.sub(r"```.*?```", "", read(path), flags=re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        dangling = anchor and linked.suffix == ".md" and anchor not in anchors(linked)
        if not linked.exists() or dangling:
            broken.append(target)
    assert not broken, f"{path.name}: broken links {broken}"


@pytest.mark.parametrize("path", [*REFERENCE, ROOT / "README.md"], ids=lambda p: p.name)
def test_the_docs_never_point_outside_the_repository(path: Path) -> None:
    # a user has the clone and nothing beside it: every relative path a page names, linked or
    # in backticks, stays inside the repository
    found = re.findall(r"\]\((\.\.[^)\s#]*)|`(\.\./[^`\s]*)`", read(path))
    named = [link or code for link, code in found]
    outside = [p for p in named if not (path.parent / p).resolve().is_relative_to(ROOT)]
    assert not outside, f"{path.name} points outside the repository: {outside}"


def test_the_readme_links_every_reference_page() -> None:
    readme = read(ROOT / "README.md")
    missing = [p.name for p in REFERENCE if f"(docs/{p.name})" not in readme]
    assert not missing, f"README.md does not link {missing}"


def test_every_test_the_docs_name_exists() -> None:
    # the threat model (fleet.md) names the test behind each row: a renamed or deleted test
    # must not leave a claim standing on nothing
    defined = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M))
    named: dict[str, set[str]] = {}
    for doc in sorted(DOCS.glob("*.md")):
        for name in re.findall(r"\b(test_\w+)\b(?!\.py)", read(doc)):
            named.setdefault(name, set()).add(doc.name)
    assert named, "the docs name no test any more: is this check still needed?"
    missing = {name: sorted(docs) for name, docs in named.items() if name not in defined}
    assert not missing, f"tests named in docs/ that do not exist: {missing}"

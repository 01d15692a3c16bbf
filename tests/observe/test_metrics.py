"""Tests for reconciler.observe.metrics: every value read back through the injected registry."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reconciler import __version__
from reconciler.core.executor import RuntimeObserver
from reconciler.core.model import Condition, TaskState
from reconciler.core.snapshot import Snapshot, TaskView
from reconciler.observe.metrics import DRIFT_KINDS, RUNTIME_OPS, Metrics
from tests.builders import full_usage, node
from tests.contract import AGENT_METRICS

NODE = node()


def task(
    name: str,
    id: str,
    state: TaskState = TaskState.RUNNING,
    *,
    current: bool = True,
    restarts: int = 0,
) -> TaskView:
    return TaskView(
        name=name,
        id=id,
        desired_state=TaskState.RUNNING if current else TaskState.SHUTDOWN,
        state=state,
        message=None,
        err=None,
        container_id=f"c-{id}",
        exit_code=None,
        updated_at=1_700_000_000.0,
        restarts=restarts,
        current=current,
    )


def healthy(**kw: object) -> Snapshot:
    base: dict[str, object] = dict(
        node_id="node-a",
        node=NODE,
        store_open=True,
        init_done=True,
        runtime_up=True,
        desired_read=True,
        desired_valid=True,
        desired_applied_at=1_700_000_100.0,
    )
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


class Holder:
    """A swappable snapshot source, as the agent keeps one."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def __call__(self) -> Snapshot:
        return self.snap


def make(snap: Snapshot) -> tuple[Metrics, Holder, CollectorRegistry]:
    holder = Holder(snap)
    registry = CollectorRegistry()
    return Metrics(snapshot=holder, registry=registry), holder, registry


def names_in(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def family_samples(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [s.labels for f in registry.collect() for s in f.samples if s.name == name]


def test_every_fixed_label_value_is_exported_from_the_start() -> None:
    _, _, reg = make(Snapshot())
    for state in TaskState:
        assert reg.get_sample_value("reconciler_tasks", {"state": state.label}) == 0.0
    for kind in DRIFT_KINDS:
        assert reg.get_sample_value("reconciler_drift_corrections_total", {"kind": kind}) == 0.0
    for op in RUNTIME_OPS:
        assert reg.get_sample_value("reconciler_runtime_errors_total", {"op": op}) == 0.0
    assert reg.get_sample_value("reconciler_desired_state_errors_total") == 0.0
    assert reg.get_sample_value("reconciler_task_start_seconds_count") == 0.0
    assert reg.get_sample_value("reconciler_reconcile_duration_seconds_count") == 0.0


def test_fixed_label_sets_are_exactly_the_contract() -> None:
    assert DRIFT_KINDS == ("container_missing", "container_exited", "orphan_removed")
    assert set(RUNTIME_OPS) == {
        "create",
        "start",
        "stop",
        "remove",
        "inspect",
        "list",
        "events",
        "pull",
        "update",
        "healthcheck",
    }
    _, _, reg = make(Snapshot())
    states = {labels["state"] for labels in family_samples(reg, "reconciler_tasks")}
    assert states == {s.name.lower() for s in TaskState}


def everything() -> Metrics:
    """Metrics with a current task, a condition and a full usage sample: every family."""
    m, _, _ = make(
        healthy(
            tasks=(task("web", "i1"),),
            restarts=(("web", 0),),
            rollbacks=(("web", 1),),
            oom_kills=(("web", 0),),
            conditions=((Condition.DISK_PRESSURE, False), (Condition.MEMORY_PRESSURE, False)),
        )
    )
    m.set_usage(full_usage())
    return m


def test_every_agent_metric_of_the_contract_is_rendered() -> None:
    rendered = names_in(everything().render().decode())
    for name in AGENT_METRICS:
        assert name in rendered or f"{name}_count" in rendered, name


def test_every_rendered_metric_is_one_the_contract_names() -> None:
    rendered = names_in(everything().render().decode())
    histogram_parts = {f"{n}_{s}" for n in AGENT_METRICS for s in ("bucket", "sum", "count")}
    assert rendered - set(AGENT_METRICS) - histogram_parts == set()


def test_tasks_by_state_count_current_instances_only() -> None:
    snap = healthy(
        tasks=(
            task("api", "a2", TaskState.STARTING),
            task("api", "a1", TaskState.FAILED, current=False),
            task("api", "a0", TaskState.FAILED, current=False),
            task("web", "w1", TaskState.RUNNING),
            task("worker", "k1", TaskState.RUNNING),
        )
    )
    _, _, reg = make(snap)
    assert reg.get_sample_value("reconciler_tasks", {"state": "running"}) == 2.0
    assert reg.get_sample_value("reconciler_tasks", {"state": "starting"}) == 1.0
    assert reg.get_sample_value("reconciler_tasks", {"state": "failed"}) == 0.0


def test_task_state_is_one_series_per_current_instance() -> None:
    snap = healthy(
        tasks=(
            task("api", "a2", TaskState.PREPARING),
            task("api", "a1", TaskState.FAILED, current=False),
            task("web", "w1", TaskState.RUNNING),
        )
    )
    _, _, reg = make(snap)
    series = family_samples(reg, "reconciler_task_state")
    assert series == [
        {"name": "api", "id": "a2", "state": "preparing"},
        {"name": "web", "id": "w1", "state": "running"},
    ]
    labels = {"name": "api", "id": "a2", "state": "preparing"}
    assert reg.get_sample_value("reconciler_task_state", labels) == 1.0


def test_stale_task_series_disappear_when_the_snapshot_drops_a_task() -> None:
    m, holder, reg = make(
        healthy(
            tasks=(task("api", "a1"), task("web", "w1")),
            restarts=(("api", 2), ("web", 0)),
        )
    )
    first = m.render().decode()
    assert 'name="api"' in first
    holder.snap = healthy(tasks=(task("web", "w1"),), restarts=(("web", 0),))
    labels = {"name": "api", "id": "a1", "state": "running"}
    assert reg.get_sample_value("reconciler_task_state", labels) is None
    assert reg.get_sample_value("reconciler_task_restarts_total", {"name": "api"}) is None
    assert 'name="api"' not in m.render().decode()
    assert reg.get_sample_value("reconciler_tasks", {"state": "running"}) == 1.0


def test_a_state_change_moves_the_instance_series_to_the_new_state() -> None:
    m, holder, reg = make(healthy(tasks=(task("web", "w1", TaskState.STARTING),)))
    holder.snap = healthy(tasks=(task("web", "w1", TaskState.RUNNING),))
    assert family_samples(reg, "reconciler_task_state") == [
        {"name": "web", "id": "w1", "state": "running"}
    ]
    assert 'state="starting"} 1' not in m.render().decode()


def test_restarts_come_from_stored_counters_including_names_without_a_current_instance() -> None:
    snap = healthy(
        tasks=(task("web", "w3", restarts=2),),
        restarts=(("web", 2), ("batch", 7)),
    )
    _, _, reg = make(snap)
    assert reg.get_sample_value("reconciler_task_restarts_total", {"name": "web"}) == 2.0
    assert reg.get_sample_value("reconciler_task_restarts_total", {"name": "batch"}) == 7.0


def test_node_info_and_resources_describe_the_node() -> None:
    _, _, reg = make(healthy())
    info = {
        "node_id": "node-a",
        "hostname": "edge-1",
        "os": "linux",
        "arch": "amd64",
        "runtime_version": "4.3.1",
    }
    assert reg.get_sample_value("reconciler_node_info", info) == 1.0
    assert reg.get_sample_value("reconciler_build_info", {"version": __version__}) == 1.0
    assert reg.get_sample_value("reconciler_node_cpus") == 2.0
    assert reg.get_sample_value("reconciler_node_memory_bytes") == float(2 * 1024**3)


def test_node_info_keeps_the_node_id_before_the_runtime_has_answered() -> None:
    _, _, reg = make(Snapshot(node_id="node-a"))
    info = {"node_id": "node-a", "hostname": "", "os": "", "arch": "", "runtime_version": ""}
    assert reg.get_sample_value("reconciler_node_info", info) == 1.0
    assert reg.get_sample_value("reconciler_node_cpus") is None
    assert reg.get_sample_value("reconciler_node_ready") == 0.0
    assert reg.get_sample_value("reconciler_runtime_up") == 0.0


def test_node_ready_is_one_only_when_every_component_is_healthy() -> None:
    _, holder, reg = make(healthy())
    assert reg.get_sample_value("reconciler_node_ready") == 1.0
    for broken in (
        {"runtime_up": False, "runtime_reason": "runtime: connection refused"},
        {"runtime_up": False},
        {"store_open": False},
        {"store_failure": "IO error: No space left on device"},
        {"loops_down": (("session", "RecursionError"),)},
        {"init_done": False},
        {"desired_read": False},
    ):
        holder.snap = healthy(**broken)
        assert reg.get_sample_value("reconciler_node_ready") == 0.0, broken
        ready, reason = holder.snap.readiness()
        assert not ready and reason


def test_runtime_up_comes_from_the_snapshot() -> None:
    m, holder, reg = make(healthy(runtime_up=False))
    m.runtime_up(True)  # the observer call is accepted; the snapshot decides
    assert reg.get_sample_value("reconciler_runtime_up") == 0.0
    holder.snap = healthy(runtime_up=True)
    assert reg.get_sample_value("reconciler_runtime_up") == 1.0


def test_desired_state_session_and_report_gauges_follow_the_snapshot() -> None:
    _, holder, reg = make(
        healthy(
            desired_valid=False,
            desired_applied_at=1_700_000_123.5,
            reports_pending=4,
            session_connected=False,
        )
    )
    assert reg.get_sample_value("reconciler_desired_state_valid") == 0.0
    assert (
        reg.get_sample_value("reconciler_desired_state_applied_timestamp_seconds")
        == 1_700_000_123.5
    )
    assert reg.get_sample_value("reconciler_status_reports_pending") == 4.0
    assert reg.get_sample_value("reconciler_session_connected") == 0.0
    holder.snap = healthy(desired_applied_at=None, session_connected=True)
    assert reg.get_sample_value("reconciler_desired_state_valid") == 1.0
    assert reg.get_sample_value("reconciler_desired_state_applied_timestamp_seconds") == 0.0
    assert reg.get_sample_value("reconciler_session_connected") == 1.0


def test_event_methods_count_on_the_injected_registry() -> None:
    m, _, reg = make(healthy())
    m.runtime_error("pull")
    m.runtime_error("pull")
    m.runtime_error("healthcheck")
    m.drift_corrected("container_exited")
    m.drift_corrected("orphan_removed")
    m.desired_state_error()
    assert reg.get_sample_value("reconciler_runtime_errors_total", {"op": "pull"}) == 2.0
    assert reg.get_sample_value("reconciler_runtime_errors_total", {"op": "healthcheck"}) == 1.0
    assert reg.get_sample_value("reconciler_runtime_errors_total", {"op": "create"}) == 0.0
    kinds = {
        k: reg.get_sample_value("reconciler_drift_corrections_total", {"kind": k})
        for k in DRIFT_KINDS
    }
    assert kinds == {"container_missing": 0.0, "container_exited": 1.0, "orphan_removed": 1.0}
    assert reg.get_sample_value("reconciler_desired_state_errors_total") == 1.0


def test_unknown_label_values_are_refused_so_series_stay_bounded() -> None:
    m, _, _ = make(healthy())
    with pytest.raises(ValueError):
        m.runtime_error("frobnicate")
    with pytest.raises(ValueError):
        m.drift_corrected("container_sulking")


def test_start_latency_histogram_covers_fifty_milliseconds_to_two_minutes() -> None:
    m, _, reg = make(healthy())
    m.observe_task_start(0.04)
    m.observe_task_start(1.5)
    m.observe_task_start(90.0)
    m.observe_task_start(600.0)
    bucket = "reconciler_task_start_seconds_bucket"
    assert reg.get_sample_value(bucket, {"le": "0.05"}) == 1.0
    assert reg.get_sample_value(bucket, {"le": "2.5"}) == 2.0
    assert reg.get_sample_value(bucket, {"le": "120.0"}) == 3.0
    assert reg.get_sample_value(bucket, {"le": "+Inf"}) == 4.0
    assert reg.get_sample_value("reconciler_task_start_seconds_sum") == pytest.approx(691.54)


def test_reconcile_duration_histogram_records_passes() -> None:
    m, _, reg = make(healthy())
    m.observe_reconcile(0.02)
    m.observe_reconcile(0.3)
    assert reg.get_sample_value("reconciler_reconcile_duration_seconds_count") == 2.0
    bucket = "reconciler_reconcile_duration_seconds_bucket"
    assert reg.get_sample_value(bucket, {"le": "0.025"}) == 1.0


def test_render_is_cached_until_the_snapshot_or_an_event_changes() -> None:
    m, holder, _ = make(healthy(tasks=(task("web", "w1"),)))
    first = m.render()
    assert m.render() is first
    holder.snap = healthy(tasks=(task("web", "w1"),))  # equal, but a new snapshot object
    second = m.render()
    assert second is not first
    assert m.render() is second
    m.drift_corrected("container_missing")
    third = m.render()
    assert third is not second
    assert b'reconciler_drift_corrections_total{kind="container_missing"} 1.0' in third
    for observe in (m.observe_task_start, m.observe_reconcile):
        before = m.render()
        observe(0.1)
        assert m.render() is not before
    before = m.render()
    m.desired_state_error()
    assert m.render() is not before
    before = m.render()
    m.runtime_error("list")
    assert m.render() is not before


def test_render_reads_the_snapshot_once_per_scrape() -> None:
    calls = 0
    snap = healthy(tasks=(task("web", "w1"),))

    def source() -> Snapshot:
        nonlocal calls
        calls += 1
        return snap

    m = Metrics(snapshot=source, registry=CollectorRegistry())
    m.render()
    m.render()
    assert calls == 2


def families(text: str) -> dict[str, tuple[str, str, dict[object, float]]]:
    return {
        f.name: (
            f.type,
            f.documentation,
            {
                (x.name, frozenset(x.labels.items())): x.value
                for x in f.samples
                if not x.name.endswith("_created")
            },
        )
        for f in text_string_to_metric_families(text)
        if not f.name.endswith("_created")
    }


def test_render_matches_what_the_registry_collects() -> None:
    views = [
        task("api", "a1", TaskState.STARTING),
        task("api", "a0", TaskState.FAILED, current=False),
    ]
    views += [task(f"svc-{i}", f"id-{i}", TaskState(list(TaskState)[i % 14])) for i in range(50)]
    views += [task('we"ird\\name', "x\ny")]
    m, _, reg = make(
        healthy(
            tasks=tuple(views),
            restarts=(("api", 3), ("svc-1", 70), ('we"ird\\name', 0)),
            reports_pending=2,
        )
    )
    m.runtime_error("start")
    m.observe_task_start(0.7)
    m.observe_reconcile(0.01)
    ours = families(m.render().decode())
    reference = families(generate_latest(reg).decode())
    assert ours == reference
    assert len(ours["reconciler_task_state"][2]) == 52


def test_render_escapes_label_values() -> None:
    odd = node(
        hostname='edge "one"\\n', arch="arm64", cpus=4, memory_bytes=1, runtime_version="4.3.1\nx"
    )
    m, _, _ = make(healthy(node=odd))
    parsed = samples(m.render().decode())
    key = (
        "reconciler_node_info",
        frozenset(
            {
                "node_id": "node-a",
                "hostname": 'edge "one"\\n',
                "os": "linux",
                "arch": "arm64",
                "runtime_version": "4.3.1\nx",
            }.items()
        ),
    )
    assert parsed[key] == 1.0


def test_render_omits_openmetrics_created_samples() -> None:
    m, _, _ = make(healthy())
    assert b"_created" not in m.render()


def test_the_default_registry_is_private_never_the_global_one() -> None:
    a = Metrics(snapshot=Snapshot)
    b = Metrics(snapshot=Snapshot)
    a.runtime_error("pull")
    assert a.registry is not b.registry
    assert b.registry.get_sample_value("reconciler_runtime_errors_total", {"op": "pull"}) == 0.0
    assert REGISTRY.get_sample_value("reconciler_runtime_errors_total", {"op": "pull"}) is None


def test_metrics_is_a_runtime_observer_and_counts_what_the_runtime_reports() -> None:
    metrics = Metrics(snapshot=Snapshot)
    observer: RuntimeObserver = metrics
    observer.runtime_error("remove")
    observer.drift_corrected("container_missing")
    observer.runtime_up(False)  # accepted; runtime_up itself comes from the snapshot
    reg = metrics.registry
    assert reg.get_sample_value("reconciler_runtime_errors_total", {"op": "remove"}) == 1.0
    kind = {"kind": "container_missing"}
    assert reg.get_sample_value("reconciler_drift_corrections_total", kind) == 1.0
    assert reg.get_sample_value("reconciler_runtime_up") == 0.0

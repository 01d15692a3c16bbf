"""plan(): create / replace / update / remove / unchanged, with YAML field names."""

from __future__ import annotations

import dataclasses

from reconciler.core.model import HealthCheck, Resources, RestartPolicy, TaskSpec, TaskState
from reconciler.core.session import DesiredTask
from reconciler.spec.plan import PlanLine, changed_fields, plan


def task(name: str = "web", state: TaskState = TaskState.RUNNING, **spec: object) -> DesiredTask:
    base = TaskSpec(name=name, image="localhost/busybox:latest")
    return DesiredTask(spec=dataclasses.replace(base, **spec), desired_state=state)  # type: ignore[arg-type]


def lines(old: dict[str, DesiredTask], new: dict[str, DesiredTask]) -> list[str]:
    return [str(line) for line in plan(old, new)]


def test_new_names_are_created_and_missing_ones_removed_sorted_by_name() -> None:
    old = {"b": task("b"), "z": task("z")}
    new = {"a": task("a"), "b": task("b")}
    assert lines(old, new) == ["create a", "unchanged b", "remove z"]


def test_resources_only_is_an_update_in_place() -> None:
    old = {"web": task()}
    new = {"web": task(resources=Resources(memory=64 * 1024 * 1024))}
    assert lines(old, new) == ["update web (resources)"]


def test_desired_state_only_is_an_update() -> None:
    old = {"web": task()}
    new = {"web": task(state=TaskState.SHUTDOWN)}
    assert lines(old, new) == ["update web (desiredState)"]
    assert lines(new, old) == ["update web (desiredState)"]


def test_resources_and_desired_state_together_is_still_an_update() -> None:
    old = {"web": task()}
    new = {"web": task(state=TaskState.SHUTDOWN, resources=Resources(cpus=1.0))}
    assert lines(old, new) == ["update web (resources, desiredState)"]


def test_any_other_change_replaces() -> None:
    old = {"web": task()}
    assert lines(old, {"web": task(image="localhost/other:1")}) == ["replace web (image)"]
    assert lines(old, {"web": task(env=(("A", "1"),))}) == ["replace web (env)"]


def test_a_mix_of_resources_and_other_fields_replaces_listing_all_fields() -> None:
    old = {"web": task()}
    new = {
        "web": task(
            resources=Resources(cpus=0.5),
            cap_add=("NET_ADMIN",),
            stop_grace_period=30.0,
            log_max_size=1024,
            restart=RestartPolicy(delay=1.0),
            healthcheck=HealthCheck(test=("NONE",)),
            state=TaskState.SHUTDOWN,
        )
    }
    assert lines(old, new) == [
        "replace web (resources, capAdd, stopGracePeriod, logs, restart, healthcheck, desiredState)"
    ]


def test_field_names_use_the_yaml_spelling() -> None:
    old = task()
    new = task(cap_drop=("ALL",), stop_signal="SIGINT", command=("true",))
    assert changed_fields(old, new) == ["command", "capDrop", "stopSignal"]


def test_plan_line_prints_exactly_one_of_the_documented_forms() -> None:
    assert str(PlanLine("create", "a")) == "create a"
    assert str(PlanLine("replace", "a", ("image", "env"))) == "replace a (image, env)"
    assert str(PlanLine("update", "a", ("resources",))) == "update a (resources)"
    assert str(PlanLine("remove", "a")) == "remove a"
    assert str(PlanLine("unchanged", "a")) == "unchanged a"


def test_empty_to_empty_is_an_empty_plan() -> None:
    assert plan({}, {}) == []

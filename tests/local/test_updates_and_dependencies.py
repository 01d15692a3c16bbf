"""The desired-state fields of updates and start-up order: `update` and `dependsOn`."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.codec import spec_hash
from reconciler.core.model import (
    Dependency,
    DependencyCondition,
    FailureAction,
    UpdateOrder,
    UpdatePolicy,
)
from reconciler.spec.loader import load_directory
from reconciler.spec.problems import DesiredStateError
from tests.spec.helpers import safe_dir, task_set, write


def load(tmp_path: Path, *tasks: str) -> dict[str, object]:
    d = safe_dir(tmp_path / "d")
    write(d / "a.yaml", task_set(*tasks))
    return dict(load_directory(d).tasks)


def problems(tmp_path: Path, *tasks: str) -> list[str]:
    d = safe_dir(tmp_path / "d")
    f = write(d / "a.yaml", task_set(*tasks))
    with pytest.raises(DesiredStateError) as e:
        load_directory(d)
    return [str(p).replace(str(f), "F") for p in e.value.problems]


IMG = "  image: localhost/busybox:latest"


def test_update_and_depends_on_are_read_with_their_defaults(tmp_path: Path) -> None:
    tasks = load(
        tmp_path,
        f"- name: db\n{IMG}",
        f"- name: api\n{IMG}\n  update: {{order: start-first, monitor: 1m,"
        " failureAction: pause}\n  dependsOn:\n  - {task: db, condition: healthy}",
        f"- name: web\n{IMG}\n  dependsOn: [{{task: api}}]",
    )
    api = tasks["api"].spec  # type: ignore[attr-defined]
    assert api.update == UpdatePolicy(UpdateOrder.START_FIRST, 60.0, FailureAction.PAUSE)
    assert api.depends_on == (Dependency("db", DependencyCondition.HEALTHY),)
    web = tasks["web"].spec  # type: ignore[attr-defined]
    assert web.update == UpdatePolicy()
    assert web.depends_on == (Dependency("api", DependencyCondition.STARTED),)


def test_update_and_depends_on_leave_the_spec_hash_alone(tmp_path: Path) -> None:
    plain = load(tmp_path / "1", f"- name: db\n{IMG}")["db"].spec  # type: ignore[attr-defined]
    other = load(
        tmp_path / "2",
        f"- name: db\n{IMG}\n  update: {{monitor: 5s}}\n  dependsOn: [{{task: x}}]",
        f"- name: x\n{IMG}",
    )["db"].spec  # type: ignore[attr-defined]
    assert plain != other
    assert spec_hash(plain) == spec_hash(other)
    assert other.for_runtime() == plain


def test_start_first_is_refused_with_host_ports_devices_or_host_network(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        f'- name: web\n{IMG}\n  ports: ["8080:80"]\n  update: {{order: start-first}}',
    )
    assert lines == [
        "F:7: tasks[0].update.order: start-first runs two instances at once, which cannot "
        "share host ports; use stop-first"
    ]
    lines = problems(
        tmp_path,
        f"- name: web\n{IMG}\n  network: host\n  devices: [/dev/null]\n"
        "  update: {order: start-first}",
    )
    assert "cannot share devices or network: host" in lines[0]


def test_an_unknown_dependency_is_an_error_at_its_line(tmp_path: Path) -> None:
    lines = problems(tmp_path, f"- name: web\n{IMG}\n  dependsOn:\n  - task: nope")
    assert lines == [
        "F:7: tasks[0].dependsOn[0].task: depends on 'nope', which is not in the desired set"
    ]


def test_a_dependency_cycle_is_an_error_on_every_task_in_it(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        f"- name: a\n{IMG}\n  dependsOn: [{{task: b}}]",
        f"- name: b\n{IMG}\n  dependsOn: [{{task: c}}]",
        f"- name: c\n{IMG}\n  dependsOn: [{{task: a}}]",
    )
    assert lines == [
        "F:6: tasks[0].dependsOn[0].task: dependency cycle: a -> b -> c -> a",
        "F:9: tasks[1].dependsOn[0].task: dependency cycle: a -> b -> c -> a",
        "F:12: tasks[2].dependsOn[0].task: dependency cycle: a -> b -> c -> a",
    ]


def test_a_task_cannot_depend_on_itself_or_list_a_task_twice(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        f"- name: a\n{IMG}\n  dependsOn: [{{task: a}}]",
        f"- name: b\n{IMG}\n  dependsOn: [{{task: a}}, {{task: a, condition: healthy}}]",
    )
    assert any("a task cannot depend on itself" in line for line in lines)
    assert any("'a' is already listed at dependsOn[0]" in line for line in lines)


def test_a_dependency_across_files_is_fine(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "a.yaml", task_set(f"- name: web\n{IMG}\n  dependsOn: [{{task: db}}]"))
    write(d / "b.yaml", task_set(f"- name: db\n{IMG}"))
    assert set(load_directory(d).tasks) == {"web", "db"}

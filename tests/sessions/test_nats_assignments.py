"""Reading assignment values: each key judged alone, problems located at bucket/key."""

from __future__ import annotations

import json

from reconciler.core.model import TaskState
from reconciler.core.session import DesiredTask, DesiredTasks, RejectedTask
from reconciler.sessions.assignments import (
    assignment_change,
    full_assignment,
    merge_changes,
    read_assignment,
)

B = "reconciler_assignments"


def value(**fields: object) -> bytes:
    return json.dumps({"image": "localhost/busybox:latest", **fields}).encode()


def test_a_value_is_a_task_spec_with_the_yaml_field_names() -> None:
    read = read_assignment(B, "n1", "n1.web", value(name="web", desiredState="shutdown"))
    assert isinstance(read, DesiredTask)
    assert read.name == "web" and read.desired_state == TaskState.SHUTDOWN


def test_the_key_names_the_task_when_the_value_does_not() -> None:
    read = read_assignment(B, "n1", "n1.web", value())
    assert isinstance(read, DesiredTask) and read.name == "web"


def test_a_name_that_differs_from_the_key_is_rejected() -> None:
    read = read_assignment(B, "n1", "n1.web", value(name="db"))
    assert read == RejectedTask(
        "web", ("reconciler_assignments/n1.web:0: task.name: 'db' does not match the key's 'web'",)
    )


def test_invalid_values_are_rejected_with_located_problems() -> None:
    bad_json = read_assignment(B, "n1", "n1.a", b'{"image": ')
    assert isinstance(bad_json, RejectedTask)
    assert bad_json.problems[0].startswith("reconciler_assignments/n1.a:0: value: not valid JSON")
    not_object = read_assignment(B, "n1", "n1.a", b'"web"')
    assert isinstance(not_object, RejectedTask) and "JSON object" in not_object.problems[0]
    bad_field = read_assignment(B, "n1", "n1.a", value(restart={"delay": "soon"}))
    assert isinstance(bad_field, RejectedTask)
    assert any("task.restart.delay" in p for p in bad_field.problems)
    bad_name = read_assignment(B, "n1", "n1.Not_A_Label", value())
    assert isinstance(bad_name, RejectedTask) and bad_name.name == "Not_A_Label"


def test_full_assignment_lists_good_tasks_sorted_and_every_rejected_one() -> None:
    msg = full_assignment(B, "n1", {"n1.web": value(), "n1.db": value(), "n1.bad": b"{"})
    assert msg.full
    assert [t.name for t in msg.tasks] == ["db", "web"]
    assert [r.name for r in msg.rejected] == ["bad"]


def test_changes_are_incremental() -> None:
    put = assignment_change(B, "n1", "n1.web", value())
    assert not put.full and [t.name for t in put.tasks] == ["web"] and not put.rejected
    assert assignment_change(B, "n1", "n1.web", None) == DesiredTasks(
        tasks=(), full=False, removed=("web",)
    )
    bad = assignment_change(B, "n1", "n1.web", b"[]")
    assert bad.tasks == () and [r.name for r in bad.rejected] == ["web"]


def test_consecutive_changes_merge_with_the_later_one_winning() -> None:
    put_a = assignment_change(B, "n1", "n1.a", value())
    put_b = assignment_change(B, "n1", "n1.b", value())
    del_a = assignment_change(B, "n1", "n1.a", None)
    put_a2 = assignment_change(B, "n1", "n1.a", value(env={"V": "2"}))
    merged = merge_changes(put_a, put_b)
    assert merged is not None and [t.name for t in merged.tasks] == ["a", "b"]
    merged = merge_changes(merged, del_a)
    assert merged is not None
    assert [t.name for t in merged.tasks] == ["b"] and merged.removed == ("a",)
    merged = merge_changes(merged, put_a2)
    assert merged is not None and merged.removed == ()
    assert {t.name: dict(t.spec.env) for t in merged.tasks} == {"b": {}, "a": {"V": "2"}}


def test_full_assignments_and_rejections_never_merge() -> None:
    put = assignment_change(B, "n1", "n1.a", value())
    bad = assignment_change(B, "n1", "n1.a", b"[]")
    full = full_assignment(B, "n1", {})
    assert merge_changes(put, bad) is None
    assert merge_changes(bad, put) is None
    assert merge_changes(full, put) is None
    assert merge_changes(put, full) is None


def test_a_full_assignment_rejects_tasks_with_unknown_or_cyclic_dependencies() -> None:
    def value(name: str, *deps: str) -> bytes:
        task = {"image": "localhost/busybox:latest", "dependsOn": [{"task": d} for d in deps]}
        return json.dumps(task).encode()

    message = full_assignment(
        "reconciler_assignments",
        "n1",
        {
            "n1.web": value("web", "db"),
            "n1.db": value("db"),
            "n1.lost": value("lost", "nope"),
            "n1.a": value("a", "b"),
            "n1.b": value("b", "a"),
        },
    )
    assert sorted(t.name for t in message.tasks) == ["db", "web"]
    rejected = {r.name: r.problems for r in message.rejected}
    assert sorted(rejected) == ["a", "b", "lost"]
    assert rejected["lost"] == (
        "reconciler_assignments/n1.lost:0: task.dependsOn[0].task: depends on 'nope', which is "
        "not in the desired set",
    )
    assert "dependency cycle: a -> b -> a" in rejected["a"][0]

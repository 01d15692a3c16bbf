"""The page's JSON views of a snapshot, and the delta between two snapshots (no I/O)."""

from __future__ import annotations

from dataclasses import replace

from reconciler.core.model import TaskState
from reconciler.web.state import (
    delta_state,
    full_state,
    instance_json,
    node_json,
    page_model,
    problem_json,
)
from tests.web.support import NOW, snapshot, view, with_state


def test_full_state_lists_every_name_with_current_then_history() -> None:
    state = full_state(page_model(snapshot()), now=NOW)
    assert state["full"] is True
    assert state["now"] == "2023-11-14T22:13:20.000Z"
    assert [t["name"] for t in state["tasks"]] == ["api", "web"]
    api = state["tasks"][0]["instances"]
    assert [(i["id"], i["current"], i["state"]) for i in api] == [
        ("a2", True, "running"),
        ("a1", False, "failed"),
    ]
    assert state["node"] == node_json(snapshot())


def test_an_instance_is_the_tasks_api_object_plus_image_and_current() -> None:
    v = view("api", "a2")
    out = instance_json(v)
    assert {k: out[k] for k in v.to_json()} == v.to_json()
    assert set(out) - set(v.to_json()) == {"image", "current"}
    assert out["image"] == "localhost/busybox:latest"


def test_the_state_carries_no_spec_and_no_env() -> None:
    text = repr(full_state(page_model(snapshot()), now=NOW))
    for key in ("env", "spec", "command", "entrypoint"):
        assert f"'{key}'" not in text


def test_an_unchanged_snapshot_gives_no_delta() -> None:
    old = page_model(snapshot())
    new = page_model(snapshot())  # equal content, new objects, as the agent rebuilds them
    assert delta_state(old, new, now=NOW) is None


def test_a_delta_carries_only_the_changed_name() -> None:
    before = snapshot()
    after = with_state(before, "web", TaskState.RUNNING)
    delta = delta_state(page_model(before), page_model(after), now=NOW)
    assert delta is not None
    assert set(delta) == {"now", "tasks"}
    assert [t["name"] for t in delta["tasks"]] == ["web"]
    assert delta["tasks"][0]["instances"][0]["state"] == "running"


def test_a_history_change_resends_that_name_whole() -> None:
    before = snapshot()
    tasks = (
        *before.tasks[:2],
        view("api", "a0", TaskState.COMPLETE, current=False),
        *before.tasks[2:],
    )
    delta = delta_state(page_model(before), page_model(replace(before, tasks=tasks)), now=NOW)
    assert delta is not None
    assert [t["name"] for t in delta["tasks"]] == ["api"]
    assert [i["id"] for i in delta["tasks"][0]["instances"]] == ["a2", "a1", "a0"]


def test_new_and_removed_names_are_in_the_delta() -> None:
    before = snapshot()
    after = replace(before, tasks=(*before.tasks[:2], view("zeta", "z1")))
    delta = delta_state(page_model(before), page_model(after), now=NOW)
    assert delta is not None
    assert [t["name"] for t in delta["tasks"]] == ["zeta"]
    assert delta["removed"] == ["web"]


def test_node_agent_and_desired_objects_come_only_when_they_changed() -> None:
    before = snapshot()
    after = replace(before, runtime_up=False, runtime_reason="podman hangs")
    delta = delta_state(page_model(before), page_model(after), now=NOW)
    assert delta is not None
    assert set(delta) == {"now", "node", "agent"}
    assert delta["node"]["ready"] is False
    assert delta["agent"]["runtimeUp"] is False
    assert delta["agent"]["readyReason"] == "podman hangs"

    rejected = replace(before, desired_valid=False, desired_errors=("d/a.yaml:3: x: bad",))
    delta = delta_state(page_model(before), page_model(rejected), now=NOW)
    assert delta is not None
    assert set(delta) == {"now", "desired"}
    assert delta["desired"]["status"] == "invalid"


def test_desired_status_reads_unread_valid_or_invalid() -> None:
    def status(**kw: object) -> str:
        return str(full_state(page_model(snapshot(**kw)), now=NOW)["desired"]["status"])

    assert status(desired_read=False, desired_valid=False) == "unread"
    assert status(desired_read=True, desired_valid=True) == "valid"
    assert status(desired_read=True, desired_valid=False) == "invalid"


def test_a_problem_line_is_split_into_file_line_and_text() -> None:
    assert problem_json("/etc/d/web.yaml:7: tasks[0].image: required") == {
        "file": "/etc/d/web.yaml",
        "line": 7,
        "text": "tasks[0].image: required",
    }
    assert problem_json("/etc/d:x/a.yaml:0: file: unreadable")["line"] is None
    assert problem_json("/etc/d:x/a.yaml:0: file: unreadable")["file"] == "/etc/d:x/a.yaml"
    assert problem_json("no location at all") == {
        "file": None,
        "line": None,
        "text": "no location at all",
    }


def test_times_are_rfc3339_utc() -> None:
    state = full_state(page_model(snapshot(desired_errors_at=NOW)), now=NOW)
    assert state["agent"]["startedAt"] == "2023-11-14T21:13:20.000Z"
    assert state["desired"]["appliedAt"] == "2023-11-14T22:12:20.000Z"
    assert state["desired"]["rejectedAt"] == "2023-11-14T22:13:20.000Z"
    assert full_state(page_model(snapshot(started_at=None)), now=NOW)["agent"]["startedAt"] is None

"""The local manager's decision and the node's policy for fleet tasks: a rejected instance
the policy refuses is not restarted; a new policy or a new spec lets the name go on."""

from __future__ import annotations

from dataclasses import replace

from reconciler.core.model import Mount, MountType, TaskSpec, TaskState
from reconciler.local.decide import decide
from reconciler.local.records import Instance, NameRecord
from tests.local.test_decide import NOW, SPEC, ended, ids, new_id_from, running, want

ETC = replace(SPEC, mounts=(Mount(MountType.BIND, "/x", "/etc"),))


def refuses_etc(spec: TaskSpec) -> bool:
    return any(m.source == "/etc" for m in spec.mounts)


def rejected_record() -> NameRecord:
    return NameRecord("web", current=Instance("i1", ETC, TaskState.RUNNING, 0.0))


def test_a_rejected_instance_the_policy_refuses_is_judged_once_and_not_restarted() -> None:
    seen = {"i1": ended(TaskState.REJECTED)}
    d = decide(
        "web",
        rejected_record(),
        want(ETC),
        seen,
        now=NOW,
        new_id=new_id_from(ids()),
        refuses=refuses_etc,
    )
    assert d.record is not None and d.record.current is not None
    assert d.record.current.id == "i1" and d.record.current.refused
    assert d.record.restart_at is None and d.requeue_after is None
    # the same rejection without a policy (or refused for another reason) is restarted
    d = decide("web", rejected_record(), want(ETC), seen, now=NOW, new_id=new_id_from(ids()))
    assert d.record is not None and d.record.restart_at is not None


def test_a_policy_that_now_allows_it_makes_a_new_instance_not_counted_as_a_restart() -> None:
    seen = {"i1": ended(TaskState.REJECTED)}
    first = decide(
        "web",
        rejected_record(),
        want(ETC),
        seen,
        now=NOW,
        new_id=new_id_from(ids()),
        refuses=refuses_etc,
    ).record
    assert first is not None
    d = decide(
        "web",
        first,
        want(ETC),
        seen,
        now=NOW,
        new_id=new_id_from(ids()),
        refuses=lambda _: False,
    )
    assert d.record is not None and d.record.current is not None
    assert d.record.current.id == "id1" and d.assign
    assert d.record.restarts == 0 and [i.id for i in d.record.history] == ["i1"]


def test_a_refused_spec_change_stops_the_running_instance_rather_than_preparing() -> None:
    rec = NameRecord("web", current=Instance("old", SPEC, TaskState.RUNNING, 0.0, started_at=0.0))
    d = decide(
        "web",
        rec,
        want(ETC),
        {"old": running("old")},
        now=NOW,
        new_id=new_id_from(ids()),
        refuses=refuses_etc,
    )
    assert d.record is not None and d.record.pending is None and d.record.replacing
    assert d.record.current is not None and d.record.current.desired == TaskState.SHUTDOWN

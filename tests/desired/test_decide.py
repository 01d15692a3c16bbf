"""The local manager's pure decision, driven with plain values: no event loop, store or clock."""

from __future__ import annotations

import itertools
from dataclasses import replace

from reconciler.desired.decide import (
    RESET_AFTER,
    RESOURCES_REPLACED,
    decide,
    restart_delay,
)
from reconciler.desired.records import ADOPTED, Adopted, Instance, NameRecord, Seen
from reconciler.model import (
    Resources,
    RestartCondition,
    RestartPolicy,
    TaskSpec,
    TaskState,
    TaskStatus,
    spec_hash,
)
from reconciler.session import DesiredTask

S = TaskState
NOW = 1_000.0
POLICY = RestartPolicy(RestartCondition.ANY, delay=5.0, max_delay=40.0)
SPEC = TaskSpec(name="web", image="localhost/busybox:latest", restart=POLICY)


def ids() -> itertools.count[int]:
    return itertools.count(1)


def new_id_from(counter: itertools.count[int]):  # type: ignore[no-untyped-def]
    return lambda: f"id{next(counter)}"


def want(spec: TaskSpec = SPEC, state: TaskState = S.RUNNING) -> DesiredTask:
    return DesiredTask(spec, state)


def running(inst: str, since: float = 0.0) -> Seen:
    return Seen(TaskStatus(S.RUNNING, since))


def ended(state: TaskState, at: float = NOW) -> Seen:
    return Seen(TaskStatus(state, at))


def with_current(inst_id: str = "old", spec: TaskSpec = SPEC, **kw: object) -> NameRecord:
    inst = Instance(inst_id, spec, S.RUNNING, 0.0, started_at=0.0)
    return replace(NameRecord("web", current=inst), **kw)  # type: ignore[arg-type]


def test_a_new_name_gets_one_new_running_instance() -> None:
    d = decide("web", None, want(), {}, now=NOW, new_id=new_id_from(ids()))
    assert d.record is not None and d.record.current is not None
    assert (d.record.current.id, d.record.current.desired) == ("id1", S.RUNNING)
    assert d.assign and d.requeue_after is None


def test_a_name_that_left_the_desired_set_is_forgotten() -> None:
    d = decide("web", with_current(), None, {}, now=NOW, new_id=new_id_from(ids()))
    assert d.record is None and d.assign
    assert decide("web", None, None, {}, now=NOW, new_id=new_id_from(ids())).assign is False


def test_an_unchanged_running_name_changes_nothing() -> None:
    rec = with_current()
    d = decide("web", rec, want(), {"old": running("old")}, now=NOW, new_id=new_id_from(ids()))
    assert d.record == rec and not d.assign


def test_a_resources_change_updates_in_place() -> None:
    bigger = replace(SPEC, resources=Resources(memory=128 << 20))
    d = decide(
        "web",
        with_current(),
        want(bigger),
        {"old": running("old")},
        now=NOW,
        new_id=new_id_from(ids()),
    )
    assert d.record is not None and d.record.current is not None
    assert d.record.current.id == "old" and d.record.current.spec == bigger and d.assign


def test_another_change_replaces_stop_first_in_two_steps() -> None:
    other = replace(SPEC, image="localhost/other:2")
    step1 = decide(
        "web",
        with_current(),
        want(other),
        {"old": running("old")},
        now=NOW,
        new_id=new_id_from(ids()),
    )
    rec = step1.record
    assert rec is not None and rec.replacing and rec.current is not None
    assert (rec.current.id, rec.current.desired) == ("old", S.SHUTDOWN)
    # nothing new until the old one has ended
    again = decide(
        "web", rec, want(other), {"old": running("old")}, now=NOW, new_id=new_id_from(ids())
    )
    assert again.record == rec and not again.assign
    step2 = decide(
        "web", rec, want(other), {"old": ended(S.SHUTDOWN)}, now=NOW, new_id=new_id_from(ids())
    )
    assert step2.record is not None and step2.record.current is not None
    assert step2.record.current.id == "id1" and step2.record.current.spec == other
    assert [i.id for i in step2.record.history] == ["old"]
    assert not step2.record.replacing


def test_a_failed_in_place_update_replaces_and_both_instances_say_why() -> None:
    failed = Seen(TaskStatus(S.RUNNING, 1.0, update_failed=True))
    d = decide("web", with_current(), want(), {"old": failed}, now=NOW, new_id=new_id_from(ids()))
    rec = d.record
    assert rec is not None and rec.current is not None
    assert rec.replacing and rec.replace_note == RESOURCES_REPLACED
    assert rec.current.note == RESOURCES_REPLACED


def test_an_ended_instance_waits_out_the_restart_delay_then_is_replaced() -> None:
    seen = {"old": ended(S.FAILED)}
    first = decide("web", with_current(), want(), seen, now=NOW, new_id=new_id_from(ids()))
    rec = first.record
    assert rec is not None and rec.restart_at == NOW + 5.0 and first.requeue_after == 5.0
    assert rec.failures == 1
    early = decide("web", rec, want(), seen, now=NOW + 1, new_id=new_id_from(ids()))
    assert early.record == rec and early.requeue_after == 4.0
    served = decide("web", rec, want(), seen, now=NOW + 5, due=True, new_id=new_id_from(ids()))
    assert served.record is not None and served.record.current is not None
    assert served.record.current.id == "id1" and served.record.restarts == 1
    assert served.record.restart_at is None and served.assign


def test_on_failure_does_not_restart_a_completed_job_and_none_restarts_nothing() -> None:
    job = replace(SPEC, restart=replace(POLICY, condition=RestartCondition.ON_FAILURE))
    d = decide(
        "web",
        with_current(spec=job),
        want(job),
        {"old": ended(S.COMPLETE)},
        now=NOW,
        new_id=new_id_from(ids()),
    )
    assert d.record is not None and d.record.restart_at is None
    assert d.record.current is not None and d.record.current.id == "old"
    assert d.record.current.end_handled
    never = replace(SPEC, restart=replace(POLICY, condition=RestartCondition.NONE))
    d = decide(
        "web",
        with_current(spec=never),
        want(never),
        {"old": ended(S.FAILED)},
        now=NOW,
        new_id=new_id_from(ids()),
    )
    assert d.record is not None and d.record.restart_at is None
    assert d.record.current is not None and d.record.current.id == "old"


def test_max_attempts_within_the_window_stops_restarts() -> None:
    capped = replace(SPEC, restart=replace(POLICY, max_attempts=2, window=60.0))
    rec = with_current(spec=capped, attempts=(NOW - 30, NOW - 10))
    d = decide(
        "web", rec, want(capped), {"old": ended(S.FAILED)}, now=NOW, new_id=new_id_from(ids())
    )
    assert d.record is not None and d.record.restart_at is None
    assert d.record.current is not None and d.record.current.end_handled
    outside = with_current(spec=capped, attempts=(NOW - 300, NOW - 10))
    d = decide(
        "web", outside, want(capped), {"old": ended(S.FAILED)}, now=NOW, new_id=new_id_from(ids())
    )
    assert d.record is not None and d.record.restart_at is not None


def test_the_restart_delay_is_the_contract_formula_without_jitter() -> None:
    assert restart_delay(POLICY, complete=True, failures=7) == 5.0
    assert [restart_delay(POLICY, complete=False, failures=n) for n in range(1, 6)] == [
        5.0,
        10.0,
        20.0,
        40.0,
        40.0,
    ]


def test_an_instance_that_ran_long_enough_resets_the_failure_count() -> None:
    rec = with_current(failures=3)
    long_run = Seen(TaskStatus(S.FAILED, RESET_AFTER + 1))
    d = decide("web", rec, want(), {"old": long_run}, now=NOW, new_id=new_id_from(ids()))
    assert d.record is not None and d.record.failures == 1


def test_desired_shutdown_stops_and_keeps_the_instance() -> None:
    d = decide(
        "web",
        with_current(),
        want(state=S.SHUTDOWN),
        {"old": running("old")},
        now=NOW,
        new_id=new_id_from(ids()),
    )
    assert d.record is not None and d.record.current is not None
    assert (d.record.current.id, d.record.current.desired) == ("old", S.SHUTDOWN) and d.assign


def test_an_adopted_container_keeps_its_id_and_a_changed_one_is_replaced() -> None:
    a = Adopted("t9", "c9", spec_hash(SPEC), True, True, None, 10.0)
    d = decide("web", NameRecord("web", adopted=a), want(), {}, now=NOW, new_id=new_id_from(ids()))
    rec = d.record
    assert rec is not None and rec.current is not None and rec.adopted is None
    assert (rec.current.id, rec.current.note, rec.replacing) == ("t9", ADOPTED, False)
    assert rec.current.initial is not None and rec.current.initial.state == S.RUNNING
    stale = replace(a, spec_hash="0" * 16)
    d = decide(
        "web", NameRecord("web", adopted=stale), want(), {}, now=NOW, new_id=new_id_from(ids())
    )
    assert d.record is not None and d.record.replacing


def test_history_keeps_the_limit_newest_first() -> None:
    counter = ids()
    rec = None
    seen: dict[str, Seen] = {}
    for _ in range(4):
        d = decide("web", rec, want(), seen, now=NOW, due=True, new_id=new_id_from(counter))
        rec = d.record
        assert rec is not None and rec.current is not None
        seen[rec.current.id] = ended(S.FAILED)
        rec = decide(
            "web", rec, want(), seen, now=NOW, new_id=new_id_from(counter), history_limit=2
        ).record
    assert rec is not None
    assert len(rec.history) == 2
    assert rec.history[0].id > rec.history[1].id or len(rec.history[0].id) > len(rec.history[1].id)

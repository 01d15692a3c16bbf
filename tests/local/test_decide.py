"""The local manager's pure decision, driven with plain values: no event loop, store or clock."""

from __future__ import annotations

import itertools
from dataclasses import replace

from reconciler.core.codec import spec_hash
from reconciler.core.model import (
    Dependency,
    DependencyCondition,
    Resources,
    RestartCondition,
    RestartPolicy,
    Rollback,
    TaskSpec,
    TaskState,
    TaskStatus,
    UpdateOrder,
    UpdatePolicy,
)
from reconciler.core.session import DesiredTask
from reconciler.local.decide import decide
from reconciler.local.dependencies import Peer
from reconciler.local.records import ADOPTED, Adopted, Instance, NameRecord, Seen
from reconciler.local.restart import RESET_AFTER, restart_delay
from reconciler.local.updates import RESOURCES_REPLACED

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


def test_another_change_prepares_the_new_instance_then_stops_the_old_then_swaps() -> None:
    other = replace(SPEC, image="localhost/other:2")
    counter = ids()
    step1 = decide(
        "web",
        with_current(),
        want(other),
        {"old": running("old")},
        now=NOW,
        new_id=new_id_from(counter),
    )
    rec = step1.record
    assert rec is not None and rec.current is not None and rec.pending is not None
    assert (rec.current.id, rec.current.desired) == ("old", S.RUNNING)  # keeps running
    assert (rec.pending.id, rec.pending.desired, rec.pending.spec) == ("id1", S.READY, other)
    # nothing more until the new one is prepared
    again = decide(
        "web",
        rec,
        want(other),
        {"old": running("old"), "id1": Seen(TaskStatus(S.PREPARING))},
        now=NOW,
        new_id=new_id_from(counter),
    )
    assert again.record == rec and not again.assign
    prepared = {"old": running("old"), "id1": Seen(TaskStatus(S.READY))}
    step2 = decide("web", rec, want(other), prepared, now=NOW, new_id=new_id_from(counter))
    rec = step2.record
    assert rec is not None and rec.current is not None
    assert (rec.current.id, rec.current.desired) == ("old", S.SHUTDOWN) and step2.assign
    stopped = {"old": ended(S.SHUTDOWN), "id1": Seen(TaskStatus(S.READY))}
    step3 = decide("web", rec, want(other), stopped, now=NOW, new_id=new_id_from(counter))
    rec = step3.record
    assert rec is not None and rec.current is not None and rec.pending is None
    assert (rec.current.id, rec.current.desired) == ("id1", S.RUNNING)
    assert [i.id for i in rec.history] == ["old"]
    assert rec.monitor_until == NOW + 30.0 and rec.rollback_spec == SPEC


def test_a_failed_prepare_keeps_the_old_instance_running_and_retries_later() -> None:
    other = replace(SPEC, image="localhost/other:2")
    counter = ids()
    rec = decide(
        "web",
        with_current(),
        want(other),
        {"old": running("old")},
        now=NOW,
        new_id=new_id_from(counter),
    ).record
    failed = Seen(TaskStatus(S.REJECTED, NOW, "task failed", err="image not found"))
    d = decide(
        "web",
        rec,
        want(other),
        {"old": running("old"), "id1": failed},
        now=NOW,
        new_id=new_id_from(counter),
    )
    rec = d.record
    assert rec is not None and rec.current is not None and rec.pending is None
    assert (rec.current.id, rec.current.desired) == ("old", S.RUNNING)
    assert "image not found" in rec.blocked and d.requeue_after == 5.0
    retry = decide(
        "web",
        rec,
        want(other),
        {"old": running("old")},
        now=NOW + 5,
        due=True,
        new_id=new_id_from(counter),
    )
    assert retry.record is not None and retry.record.pending is not None
    assert retry.record.pending.id == "id2"


def test_start_first_starts_the_new_instance_and_swaps_once_it_runs() -> None:
    first = replace(SPEC, update=UpdatePolicy(UpdateOrder.START_FIRST))
    second = replace(first, image="localhost/other:2")
    counter = ids()
    rec = decide(
        "web",
        with_current(spec=first),
        want(second),
        {"old": running("old")},
        now=NOW,
        new_id=new_id_from(counter),
    ).record
    assert rec is not None and rec.pending is not None and rec.pending.desired == S.RUNNING
    both = {"old": running("old"), "id1": running("id1")}
    d = decide("web", rec, want(second), both, now=NOW, new_id=new_id_from(counter))
    rec = d.record
    assert rec is not None and rec.current is not None and rec.current.id == "id1"
    assert rec.history[0].id == "old" and rec.history[0].desired == S.SHUTDOWN


def test_a_new_instance_failing_within_its_monitor_is_rolled_back_once() -> None:
    other = replace(SPEC, image="localhost/other:2")
    counter = ids()
    new = Instance("id1", other, S.RUNNING, NOW, started_at=NOW)
    rec = NameRecord(
        "web",
        current=new,
        history=(Instance("old", SPEC, S.SHUTDOWN, 0.0, started_at=0.0),),
        monitor_until=NOW + 30,
        rollback_spec=SPEC,
        rollback_from="web.old",
    )
    crashed = {"id1": ended(S.FAILED, NOW + 3)}
    d = decide("web", rec, want(other), crashed, now=NOW + 3, new_id=new_id_from(counter))
    rec = d.record
    assert rec is not None and rec.current is not None
    assert rec.current.spec == SPEC and rec.current.rollback == Rollback(
        "web.old", spec_hash(other)
    )
    assert rec.rollbacks == 1 and rec.failed_hash == spec_hash(other)
    # the failed spec is not tried again while it stays the desired spec
    again = decide(
        "web",
        rec,
        want(other),
        {rec.current.id: running(rec.current.id)},
        now=NOW + 4,
        new_id=new_id_from(counter),
    ).record
    assert again is not None and again.current is not None and again.pending is None
    assert again.current.id == rec.current.id and again.failed_hash == spec_hash(other)
    # a new desired spec is tried
    third = replace(SPEC, image="localhost/other:3")
    d = decide(
        "web",
        rec,
        want(third),
        {rec.current.id: running(rec.current.id)},
        now=NOW + 5,
        new_id=new_id_from(counter),
    )
    assert d.record is not None and d.record.pending is not None
    assert d.record.pending.spec == third and d.record.failed_hash is None


def test_an_exit_0_within_the_monitor_is_no_failure() -> None:
    other = replace(SPEC, image="localhost/other:2")
    rec = NameRecord(
        "web",
        current=Instance("id1", other, S.RUNNING, NOW, started_at=NOW),
        monitor_until=NOW + 30,
        rollback_spec=SPEC,
    )
    d = decide(
        "web",
        rec,
        want(other),
        {"id1": ended(S.COMPLETE, NOW + 1)},
        now=NOW + 1,
        new_id=new_id_from(ids()),
    )
    assert d.record is not None and d.record.rollbacks == 0 and d.record.monitor_until is None


def test_a_new_instance_is_held_until_its_dependencies_are_met() -> None:
    web = replace(SPEC, depends_on=(Dependency("db", DependencyCondition.HEALTHY),))
    counter = ids()
    d = decide(
        "web",
        None,
        want(web),
        {},
        now=NOW,
        new_id=new_id_from(counter),
        peers={"db": Peer(running=False, completed_once=False)},
    )
    rec = d.record
    assert rec is not None and rec.current is not None and rec.current.held
    assert rec.blocked == "waiting for db (healthy)"
    d = decide(
        "web",
        rec,
        want(web),
        {},
        now=NOW,
        new_id=new_id_from(counter),
        peers={"db": Peer(running=True, completed_once=False)},
    )
    assert d.record is not None and d.record.current is not None
    assert not d.record.current.held and d.assign and d.record.blocked == ""


def test_a_spec_change_waits_for_dependencies_before_it_stops_anything() -> None:
    web = replace(SPEC, image="localhost/other:2", depends_on=(Dependency("db"),))
    d = decide(
        "web",
        with_current(),
        want(web),
        {"old": running("old")},
        now=NOW,
        new_id=new_id_from(ids()),
        peers={"db": Peer(running=False, completed_once=False)},
    )
    rec = d.record
    assert rec is not None and rec.pending is None and rec.current is not None
    assert rec.current.desired == S.RUNNING
    assert rec.blocked == "replacement waiting for db (started)"


def test_a_change_of_update_or_depends_on_alone_replaces_nothing() -> None:
    calmer = replace(SPEC, update=UpdatePolicy(monitor=5.0), depends_on=(Dependency("db"),))
    d = decide(
        "web",
        with_current(),
        want(calmer),
        {"old": running("old")},
        now=NOW,
        new_id=new_id_from(ids()),
        peers={"db": Peer(running=False, completed_once=False)},
    )
    assert d.record is not None and d.record.current is not None
    assert d.record.current.id == "old" and d.record.current.spec == calmer
    assert d.record.pending is None and not d.assign


def test_a_failed_in_place_update_replaces_and_both_instances_say_why() -> None:
    failed = Seen(TaskStatus(S.RUNNING, 1.0, update_failed=True))
    d = decide("web", with_current(), want(), {"old": failed}, now=NOW, new_id=new_id_from(ids()))
    rec = d.record
    assert rec is not None and rec.current is not None
    assert rec.pending is not None and rec.pending.note == RESOURCES_REPLACED
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

"""The agent's side of bad values: every hostile assignment becomes a rejection (never an
error), a rejection read again is marked ``reported`` and neither logged nor counted again, and
a bad control or status value is logged and counted once per key and revision."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from reconciler.core.clock import FakeClock, settle
from reconciler.core.model import TaskState
from reconciler.core.session import DesiredTasks, RejectedTask
from reconciler.fleet.buckets import ASSIGNMENTS, CONTROL, STATUS
from reconciler.fleet.values import BadValues
from reconciler.sessions.assignments import full_assignment, note_rejections, read_assignment
from reconciler.sessions.nats_values import Rejections
from reconciler.testing.fake import FakeExecutor
from reconciler.testing.hostile.values import hostile_values
from tests.agent.test_agent import desired, metric, running_agent, states

B = ASSIGNMENTS
GOOD = json.dumps({"image": "localhost/busybox:latest"}).encode()


def test_every_hostile_assignment_is_a_located_rejection() -> None:
    for i, value in enumerate(hostile_values(3, 3000, 1 << 20)):
        read = read_assignment(B, "n1", f"n1.t{i}", value)
        assert isinstance(read, RejectedTask), value[:80]
        assert read.problems and read.problems[0].startswith(f"{B}/n1.t{i}:0: ")


def test_a_rejection_read_again_at_the_same_revision_is_marked_reported() -> None:
    seen = BadValues()
    values = {"n1.web": GOOD, "n1.bad": b'{"image": NaN}'}
    first, new = note_rejections(B, "n1", full_assignment(B, "n1", values), {"n1.bad": 4}, seen)
    assert new == 1 and [r.reported for r in first.rejected] == [False]
    again, new = note_rejections(B, "n1", full_assignment(B, "n1", values), {"n1.bad": 4}, seen)
    assert new == 0 and [r.reported for r in again.rejected] == [True]
    assert again.tasks == first.tasks  # the good key is untouched
    values["n1.bad"] = b'{"image": Infinity}'
    _, new = note_rejections(B, "n1", full_assignment(B, "n1", values), {"n1.bad": 5}, seen)
    assert new == 1  # a new revision counts again
    good = DesiredTasks(tasks=full_assignment(B, "n1", {"n1.bad": GOOD}).tasks, full=False)
    note_rejections(B, "n1", good, {"n1.bad": 6}, seen)
    _, new = note_rejections(B, "n1", full_assignment(B, "n1", values), {"n1.bad": 5}, seen)
    assert new == 1  # bad again after a good value


def test_a_bad_control_or_status_value_is_logged_and_counted_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted: list[str] = []
    rejections = Rejections("n1", counted.append)
    caplog.set_level(logging.ERROR)
    for _ in range(3):  # read again after each reconnect
        rejections.bad(CONTROL, "node.n1", 9, "availability: 7 is not one of", "keeping active")
    rejections.bad(STATUS, "n1.web", 2, "not valid JSON", "overwriting it")
    assert counted == [CONTROL, STATUS]
    assert [r.getMessage() for r in caplog.records] == [
        "reconciler_control/node.n1 rejected (revision 9), keeping active: "
        "availability: 7 is not one of",
        "reconciler_status/n1.web rejected (revision 2), overwriting it: not valid JSON",
    ]


async def test_the_pump_keeps_the_last_spec_and_logs_a_reported_rejection_no_more(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    executor = FakeExecutor(clock=clock)
    async with running_agent(tmp_path, clock, executor) as r:
        r.session.send(desired("web", "db"))
        await settle()
        problem = "reconciler_assignments/node-a.db:0: value: NaN is not a number JSON allows"
        web = desired("web").tasks
        r.session.send(DesiredTasks(web, full=True, rejected=(RejectedTask("db", (problem,)),)))
        await settle()
        reported = RejectedTask("db", (problem,), reported=True)
        r.session.send(DesiredTasks(web, full=True, rejected=(reported,)))  # a reconnect
        await settle()
        running = {"web": TaskState.RUNNING, "db": TaskState.RUNNING}
        assert states(r.agent) == running  # db keeps its last spec
        logged = [rec.getMessage() for rec in caplog.records if problem in rec.getMessage()]
        assert logged == [f"desired state rejected: {problem}"]
        assert metric(r.agent, "reconciler_desired_state_errors_total") == 1
        assert not r.agent.snapshot().desired_valid
        assert r.agent.snapshot().desired_errors == (problem,)

"""A Hypothesis rule-based test of the worker, task managers and state machine together.

Random assignments, desired-state changes, temporary runtime errors and container exits are
applied on the fake clock. Invariants: every task's reported states never go backwards, and once
the faults stop and time passes, every task's actual state has converged to its desired one.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import replace

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from reconciler.core.backoff import Backoff
from reconciler.core.clock import FakeClock, settle
from reconciler.core.errors import TemporaryError
from reconciler.core.model import Assignment, Task, TaskState
from reconciler.core.worker import Worker
from reconciler.store.rocks import RocksStore
from reconciler.testing.fake import FakeExecutor
from tests.conftest import make_task

S = TaskState
DESIRED = [S.ACCEPTED, S.READY, S.RUNNING, S.SHUTDOWN, S.REMOVE]
IDS = ["a", "b", "c", "d"]


class AgentMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.TemporaryDirectory()
        self.clock = FakeClock()
        self.executor = FakeExecutor(clock=self.clock)
        self.store = RocksStore.open(self.dir.name)
        self.worker = Worker(self.store, self.executor, clock=self.clock, backoff=Backoff(cap=2))
        self.tasks: dict[str, Task] = {}
        self.seen: dict[str, list[TaskState]] = {}
        self.worker.listen(lambda tid, s: self.seen.setdefault(tid, []).append(s.state))

    def run(self, coro: object) -> None:
        self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def assign_all(self) -> None:
        self.run(self.worker.assign(Assignment.complete(list(self.tasks.values()))))
        self.run(settle())

    @rule(tid=st.sampled_from(IDS), desired=st.sampled_from(DESIRED))
    def add_task(self, tid: str, desired: TaskState) -> None:
        if tid in self.tasks:
            return
        self.tasks[tid] = make_task(tid, desired=desired)
        self.seen.pop(tid, None)
        self.assign_all()

    @rule(tid=st.sampled_from(IDS), desired=st.sampled_from(DESIRED))
    def raise_desired(self, tid: str, desired: TaskState) -> None:
        task = self.tasks.get(tid)
        if task is None or desired <= task.desired_state:
            return
        self.tasks[tid] = replace(task, desired_state=desired)
        self.assign_all()

    @rule(tid=st.sampled_from(IDS))
    def remove_task(self, tid: str) -> None:
        if self.tasks.pop(tid, None) is not None:
            self.assign_all()
            self.run(self.worker.wait_closed())
            assert tid not in self.store
            assert tid not in self.executor.containers

    @rule(op=st.sampled_from(["prepare", "start", "shutdown"]), times=st.integers(1, 3))
    def temporary_fault(self, op: str, times: int) -> None:
        self.executor.fail(op, TemporaryError("flaky runtime"), times=times)

    @rule(tid=st.sampled_from(IDS), code=st.sampled_from([0, 1, 137]))
    def container_exits(self, tid: str, code: int) -> None:
        c = self.executor.containers.get(tid)
        if c is not None and c.state == "running":
            self.executor.exit(tid, code)
            self.run(settle())

    @rule(seconds=st.floats(0.1, 5))
    def time_passes(self, seconds: float) -> None:
        self.run(self.clock.advance(seconds))

    @invariant()
    def states_never_go_backwards(self) -> None:
        for tid, states in self.seen.items():
            assert states == sorted(states), (tid, states)

    @precondition(lambda self: bool(self.tasks))
    @invariant()
    def store_holds_exactly_the_assigned_tasks(self) -> None:
        assert self.store.task_ids() == set(self.tasks)

    def teardown(self) -> None:
        try:
            # faults stop; give retries time to drain, then check convergence
            self.executor._failures.clear()
            for _ in range(10):
                self.run(self.clock.advance(3))
            for tid, task in self.tasks.items():
                state = self.store.get_status(tid).state  # type: ignore[union-attr]
                desired = task.desired_state
                if desired >= S.SHUTDOWN:
                    assert state.terminal, (tid, state)
                elif desired == S.RUNNING:
                    assert state == S.RUNNING or state in (S.COMPLETE, S.FAILED), (tid, state)
                    if state == S.RUNNING:
                        assert self.executor.containers[tid].state == "running"
                else:
                    # pause states: exactly desired, or one controller step past it at most
                    assert desired <= state <= S.READY or state.terminal, (tid, state, desired)
        finally:
            self.run(self.worker.close())
            self.store.close()
            self.dir.cleanup()
            self.loop.close()


AgentMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_agent_state_machine = AgentMachine.TestCase

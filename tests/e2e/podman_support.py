"""Helpers for the podman end-to-end tests: task builders, a lifecycle driver, an observer, and
podman's own view of a container (its CLI's inspect).

The driver calls ``reconciler.core.lifecycle.do`` in a loop, the way the task manager will, so the
tests exercise the controller through the real state machine. Retries happen at once (a
retried ``wait`` blocks on podman's event stream itself), with a cap so that a bug cannot spin
forever.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.core.clock import Clock, SystemClock
from reconciler.core.errors import TaskNoop, TaskRetry
from reconciler.core.executor import Controller, RuntimeObserver
from reconciler.core.lifecycle import do, resolve
from reconciler.core.model import HealthCheck, Resources, Task, TaskSpec, TaskState, TaskStatus
from reconciler.testing.podman import PodmanService
from reconciler.testing.polling import eventually
from runtime.podman import PodmanExecutor

IMAGE = "localhost/busybox:latest"
# Runs until stopped; exits 0 on SIGTERM at once, so graceful stops are quick.
FOREVER = ("sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done")


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def make_task(
    *,
    name: str = "job",
    command: tuple[str, ...] = FOREVER,
    node_id: str,
    image: str = IMAGE,
    pull: str = "missing",
    memory: int | None = None,
    healthcheck: HealthCheck | None = None,
    labels: tuple[tuple[str, str], ...] = (),
    grace: float = 5.0,
) -> Task:
    spec = TaskSpec(
        name=name,
        image=image,
        command=command,
        pull=pull,
        labels=labels,
        resources=Resources(memory=memory),
        healthcheck=healthcheck,
        stop_grace_period=grace,
    )
    return Task(id=new_id(), spec=spec, node_id=node_id)


@dataclass
class RecordingObserver:
    """A RuntimeObserver that remembers what it was told."""

    errors: Counter[str] = field(default_factory=Counter)
    drift: Counter[str] = field(default_factory=Counter)
    up: list[bool] = field(default_factory=list)
    oom: list[tuple[str, str]] = field(default_factory=list)
    pulls: Counter[str] = field(default_factory=Counter)

    def runtime_error(self, op: str) -> None:
        self.errors[op] += 1

    def drift_corrected(self, kind: str) -> None:
        self.drift[kind] += 1

    def runtime_up(self, up: bool) -> None:
        self.up.append(up)

    def oom_killed(self, name: str, task_id: str) -> None:
        self.oom.append((name, task_id))

    def image_pulled(self, result: str) -> None:
        self.pulls[result] += 1


@dataclass
class Driven:
    task: Task
    retries: list[TaskStatus] = field(default_factory=list)


async def drive(
    task: Task,
    ctlr: Controller,
    *,
    until: TaskState,
    max_retries: int = 20,
    out: Driven | None = None,
) -> Driven:
    """Step ``task`` with ``do()`` until it reaches ``until``, a terminal state, or a noop."""
    driven = out or Driven(task)
    driven.task = task
    while driven.task.status.state < until:
        try:
            status = await do(driven.task, ctlr, now=time.time)
        except TaskNoop:
            break
        except TaskRetry as retry:
            assert isinstance(retry.status, TaskStatus)
            driven.retries.append(retry.status)
            driven.task = replace(driven.task, status=retry.status)
            if len(driven.retries) > max_retries:
                raise AssertionError(f"too many retries: {driven.retries[-3:]}") from None
            await asyncio.sleep(0)  # a yield between two steps, not a wait
            continue
        driven.task = replace(driven.task, status=status)
        if status.state.terminal:
            break
    return driven


def resolved(task: Task, executor: object) -> tuple[Controller, Task]:
    ctlr, status = resolve(task, executor, now=time.time)  # type: ignore[arg-type]
    assert ctlr is not None, status
    return ctlr, replace(task, status=status)


async def running_task(ex: PodmanExecutor, node_id: str, **kw: object) -> tuple[Controller, Driven]:
    """A task made by ``make_task(**kw)`` for ``node_id``, driven on ``ex`` until it runs."""
    ctlr, task = resolved(make_task(node_id=node_id, **kw), ex)  # type: ignore[arg-type]
    driven = await drive(task, ctlr, until=TaskState.RUNNING)
    assert driven.task.status.state == TaskState.RUNNING
    return ctlr, driven


def inspect(svc: PodmanService, name: str) -> dict[str, Any] | None:
    """podman's own view of container ``name`` (its CLI's inspect), or None if it is gone."""
    out = svc.run("inspect", "--type", "container", name, check=False)
    if not out.strip():
        return None
    data = json.loads(out)
    return dict(data[0]) if data else None


def state_of(svc: PodmanService, name: str) -> dict[str, Any]:
    """The ``State`` of container ``name`` as podman's CLI inspects it (it must exist)."""
    info = inspect(svc, name)
    assert info is not None, f"container {name} is missing"
    state = info["State"]
    assert isinstance(state, dict)
    return state


def new_executor(
    url: str, node_id: str, observer: RuntimeObserver, *, clock: Clock | None = None
) -> PodmanExecutor:
    """A podman executor for one test's node (not started)."""
    return PodmanExecutor(
        url=url,
        node_id=node_id,
        clock=clock or SystemClock(),
        observer=observer,
        agent_version="test",
        image_gc_threshold=15.0,
    )


async def until(pred: object, *, limit: float = 60.0, what: str = "condition") -> None:
    """Poll real podman state (in a thread) until ``pred()`` is true."""
    assert callable(pred)
    await eventually(lambda: asyncio.to_thread(pred), what, within=limit, every=0.1)

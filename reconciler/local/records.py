"""What the local manager keeps per task name, as immutable values, and how it is stored.

The local manager (``reconciler.local.manager``) turns named desired tasks into instances.
Everything it must remember across an agent restart is one ``NameRecord`` per name: the current
instance, the history, the restart counter and backoff state, a pending restart's deadline, an
in-flight replacement and, after a store rebuild, the container adopted for the name. Records
are frozen: the pure decision (``reconciler.local.decide``) returns a new one, and the driver
writes it when it differs from the old.

Storage: the store's metadata, under ``lm/``: ``lm/desired`` holds the last valid desired set
(absent until one was read), ``lm/n/<name>`` one record per name, as compact JSON.

Observed statuses are not part of a record: the worker reports them (``Seen``), and the store
keeps them with the worker's tasks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from reconciler.core.codec import spec_from_dict, spec_hash, spec_to_dict
from reconciler.core.errors import StoreCorrupt
from reconciler.core.model import Rollback, Task, TaskSpec, TaskState, TaskStatus
from reconciler.core.session import DesiredTask
from reconciler.core.store import Store

__all__ = [
    "ADOPTED",
    "META_PREFIX",
    "Adopted",
    "Instance",
    "NameRecord",
    "Seen",
    "check_records",
    "desired_to_json",
    "load_records",
    "record_key",
]

META_PREFIX = "lm/"
"""Every metadata key the local manager writes starts with this."""
DESIRED_KEY = META_PREFIX + "desired"
NAME_PREFIX = META_PREFIX + "n/"

ADOPTED = "adopted from the runtime after the store was rebuilt"
"""The note of an instance adopted from a running container after a store rebuild."""


def record_key(name: str) -> str:
    return NAME_PREFIX + name


@dataclass(frozen=True, slots=True)
class Seen:
    """What the worker reported of one instance: its latest status, and whether its record
    vanished from the store (which counts as ended)."""

    status: TaskStatus | None = None
    gone: bool = False

    @property
    def ended(self) -> bool:
        return self.gone or (self.status is not None and self.status.state.terminal)


@dataclass(frozen=True, slots=True)
class Instance:
    """One task instance as the manager keeps it."""

    id: str
    spec: TaskSpec
    desired: TaskState
    created: float
    note: str = ""
    started_at: float | None = None  # timestamp of its first running status
    end_handled: bool = False  # the restart policy has judged its end
    update_failed: bool = False  # an in-place update was reported as failed
    initial: TaskStatus | None = None  # the status it is first assigned with (adoption)
    held: bool = False  # waiting for its dependencies: not assigned to the worker yet
    rollback: Rollback | None = None  # a rollback, pinned to an earlier container's image
    refused: bool = False  # rejected by the node's policy, and not restarted for it

    def task(self, node_id: str) -> Task:
        """The task the worker runs: the spec without what only the manager reads."""
        status = self.initial or TaskStatus(TaskState.NEW, self.created, self.note)
        return Task(self.id, self.spec.for_runtime(), self.desired, status, node_id, self.rollback)

    def absorb(self, status: TaskStatus | None) -> Instance:
        """The instance with what a status tells about it: when it first ran, and whether an
        in-place update failed. The one place that derives these from statuses."""
        if status is None:
            return self
        started_at = self.started_at
        if status.state == TaskState.RUNNING and started_at is None:
            started_at = status.timestamp
        update_failed = self.update_failed or status.update_failed
        if started_at == self.started_at and update_failed == self.update_failed:
            return self
        return replace(self, started_at=started_at, update_failed=update_failed)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "spec": spec_to_dict(self.spec),
            "desired": int(self.desired),
            "created": self.created,
        }
        if self.note:
            d["note"] = self.note
        if self.started_at is not None:
            d["startedAt"] = self.started_at
        if self.end_handled:
            d["endHandled"] = True
        if self.held:
            d["held"] = True
        if self.refused:
            d["refused"] = True
        if self.rollback is not None:
            d["rollback"] = [self.rollback.image_from, self.rollback.failed_hash]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Instance:
        rb = d.get("rollback")
        return cls(
            id=d["id"],
            spec=spec_from_dict(d["spec"]),
            desired=TaskState(d["desired"]),
            created=float(d["created"]),
            note=d.get("note", ""),
            started_at=d.get("startedAt"),
            end_handled=bool(d.get("endHandled", False)),
            held=bool(d.get("held", False)),
            refused=bool(d.get("refused", False)),
            rollback=Rollback(str(rb[0]), str(rb[1])) if rb else None,
        )


@dataclass(frozen=True, slots=True)
class Adopted:
    """A container adopted for a name after a store rebuild, waiting for the desired set."""

    task_id: str
    container_id: str
    spec_hash: str | None
    running: bool
    started: bool
    exit_code: int | None
    created: float
    rolled_back_from: str | None = None  # the failed spec hash, for a rollback's container

    def status(self, now: float) -> TaskStatus:
        """The status the adopted instance is first assigned with: running (its wait judges
        an exited container by its exit code), or ready for one that never started."""
        state = TaskState.RUNNING if self.started else TaskState.READY
        return TaskStatus(state, now, ADOPTED, container_id=self.container_id or None)

    def matches(self, spec: TaskSpec) -> bool:
        """Whether the container runs ``spec``, or is the rollback from it (a container
        without the label counts as matching)."""
        wanted = spec_hash(spec)
        return self.spec_hash is None or wanted in (self.spec_hash, self.rolled_back_from)

    def to_json(self) -> dict[str, Any]:
        return {
            "taskId": self.task_id,
            "containerId": self.container_id,
            "specHash": self.spec_hash,
            "running": self.running,
            "started": self.started,
            "exitCode": self.exit_code,
            "created": self.created,
            "rolledBackFrom": self.rolled_back_from,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Adopted:
        return cls(
            task_id=str(d["taskId"]),
            container_id=str(d["containerId"]),
            spec_hash=d.get("specHash"),
            running=bool(d["running"]),
            started=bool(d.get("started", True)),
            exit_code=d.get("exitCode"),
            created=float(d.get("created", 0.0)),
            rolled_back_from=d.get("rolledBackFrom"),
        )


@dataclass(frozen=True, slots=True)
class NameRecord:
    """Everything kept for one named task."""

    name: str
    current: Instance | None = None
    history: tuple[Instance, ...] = ()  # newest first
    restarts: int = 0  # replacements made by the restart policy
    failures: int = 0  # consecutive failures, for the restart delay
    restart_at: float | None = None  # wall-clock deadline of a pending restart
    attempts: tuple[float, ...] = ()  # wall-clock times of restarts, for maxAttempts
    replacing: bool = False  # the old instance is being stopped; then a new one starts
    replace_note: str = ""  # the note the new instance gets
    adopted: Adopted | None = None  # a container adopted after a store rebuild
    pending: Instance | None = None  # the replacement being prepared (or started, start-first)
    blocked: str = ""  # why the name's next step waits (dependencies, a failed prepare)
    monitor_until: float | None = None  # wall-clock end of the current instance's monitor
    rollback_spec: TaskSpec | None = None  # what a failed update rolls back to
    rollback_from: str = ""  # the container whose image a rollback is pinned to
    good_spec: TaskSpec | None = None  # the last spec that passed its monitor
    failed_hash: str | None = None  # a desired spec that failed its monitor: not retried
    paused: bool = False  # a failed update left failed (failureAction: pause)
    rollbacks: int = 0  # rollbacks made so far
    completed_once: bool = False  # an instance of this name has completed (dependsOn)

    def instances(self) -> Iterator[Instance]:
        if self.current is not None:
            yield self.current
        if self.pending is not None:
            yield self.pending
        yield from self.history

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "current": self.current.to_json() if self.current is not None else None,
            "history": [i.to_json() for i in self.history],
            "restarts": self.restarts,
            "failures": self.failures,
            "restartAt": self.restart_at,
            "attempts": list(self.attempts),
            "replacing": None,
        }
        if self.adopted is not None:
            d["adopted"] = self.adopted.to_json()
        if self.pending is not None:
            d["pending"] = self.pending.to_json()
        update: dict[str, Any] = {
            "blocked": self.blocked or None,
            "monitorUntil": self.monitor_until,
            "rollbackSpec": spec_to_dict(self.rollback_spec) if self.rollback_spec else None,
            "rollbackFrom": self.rollback_from or None,
            "goodSpec": spec_to_dict(self.good_spec) if self.good_spec else None,
            "failedHash": self.failed_hash,
            "paused": self.paused or None,
            "rollbacks": self.rollbacks or None,
            "completedOnce": self.completed_once or None,
        }
        d.update((k, v) for k, v in update.items() if v is not None)
        if self.replacing:
            old = self.current.id if self.current is not None else None
            d["replacing"] = {"old": old, "note": self.replace_note}
        return d

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> NameRecord:
        cur = d.get("current")
        rep = d.get("replacing")
        adopted = d.get("adopted")
        return cls(
            name=name,
            current=Instance.from_json(cur) if cur is not None else None,
            history=tuple(Instance.from_json(i) for i in d.get("history", ())),
            restarts=int(d.get("restarts", 0)),
            failures=int(d.get("failures", 0)),
            restart_at=d.get("restartAt"),
            attempts=tuple(float(t) for t in d.get("attempts", ())),
            replacing=rep is not None,
            replace_note=rep.get("note", "") if rep is not None else "",
            adopted=Adopted.from_json(adopted) if adopted is not None else None,
            pending=Instance.from_json(d["pending"]) if d.get("pending") else None,
            blocked=str(d.get("blocked", "")),
            monitor_until=d.get("monitorUntil"),
            rollback_spec=spec_from_dict(d["rollbackSpec"]) if d.get("rollbackSpec") else None,
            rollback_from=str(d.get("rollbackFrom", "")),
            good_spec=spec_from_dict(d["goodSpec"]) if d.get("goodSpec") else None,
            failed_hash=d.get("failedHash"),
            paused=bool(d.get("paused", False)),
            rollbacks=int(d.get("rollbacks", 0)),
            completed_once=bool(d.get("completedOnce", False)),
        )


def desired_to_json(desired: Mapping[str, DesiredTask]) -> dict[str, Any]:
    return {
        name: {"spec": spec_to_dict(t.spec), "desiredState": int(t.desired_state)}
        for name, t in desired.items()
    }


def load_records(
    store: Store,
) -> tuple[dict[str, DesiredTask] | None, dict[str, NameRecord], dict[str, Seen]]:
    """The stored desired set (None if none was ever stored), the name records, and what the
    store holds of every instance (its status; ``gone`` for a replaced instance whose record
    vanished). Raises ``StoreCorrupt`` if the records do not decode."""
    try:
        raw = store.get_meta(DESIRED_KEY)
        desired = (
            None
            if raw is None
            else {
                name: DesiredTask(spec_from_dict(v["spec"]), TaskState(v["desiredState"]))
                for name, v in raw.items()
            }
        )
        records = {key: NameRecord.from_json(key, rec) for key, rec in store.walk_meta(NAME_PREFIX)}
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise StoreCorrupt(
            f"the local manager's state in {store.path} is unreadable: {err}"
        ) from err
    seen: dict[str, Seen] = {}
    for rec in records.values():
        for inst in rec.instances():
            gone = rec.replacing and inst is rec.current and inst.id not in store
            seen[inst.id] = Seen(store.get_status(inst.id), gone)
    return desired, records, seen


def check_records(store: Store) -> None:
    """Decode the local manager's records. Raises ``StoreCorrupt`` if they do not decode."""
    load_records(store)

"""This node's assignments as session messages: KV entries in, ``DesiredTasks`` out. Pure.

The manager writes one key per named task, ``reconciler_assignments/<node>.<name>``, whose
value is the task spec as JSON with the YAML's field names (``name`` may be left out: the key
gives it; when present it must match the key). Each key is judged on its own: a bad value
rejects that task alone (``RejectedTask``, with problems in the usual
``PATH:LINE: FIELD: problem`` form, PATH being ``bucket/key``), and the receiver keeps the last
valid spec it has for that name; every other task is applied as usual.

- ``full_assignment``: the values read when a watch starts, i.e. the whole desired set.
- ``assignment_change``: one later put (or delete, ``value`` None), an incremental change.
- ``merge_changes``: two incremental changes as one, so that a burst of puts that queued while
  the agent was busy is applied in one go (one stored desired set, one assignment to the
  worker) instead of one by one.
- ``note_rejections``: a bad value is logged and counted once per key and revision: a
  rejection read again (the full set after a reconnect) is marked ``reported``.

Every value is parsed as hostile input first (``reconciler.fleet.values.load_json``: size,
depth, finite numbers, short integers, UTF-8, no control characters), so no value raises here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from reconciler.core.session import DesiredTask, DesiredTasks, RejectedTask
from reconciler.fleet.buckets import assignment_key
from reconciler.fleet.values import BadValue, BadValues, load_json
from reconciler.spec.deps import dependency_problems
from reconciler.spec.problems import DesiredStateError, Problem
from reconciler.spec.schema import parse_task

__all__ = [
    "assignment_change",
    "full_assignment",
    "merge_changes",
    "note_rejections",
    "read_assignment",
]


def read_assignment(
    bucket: str, node_id: str, key: str, value: bytes
) -> DesiredTask | RejectedTask:
    """Validate one assignment value; never raises for bad input."""
    path = f"{bucket}/{key}"
    name = _name(node_id, key)
    try:
        doc = load_json(value)
    except BadValue as err:
        return RejectedTask(name, (str(Problem(path, 0, "value", str(err))),))
    if not isinstance(doc, dict):
        return RejectedTask(name, (str(Problem(path, 0, "value", "expected a JSON object")),))
    declared = doc.setdefault("name", name)
    if declared != name:
        problem = Problem(path, 0, "task.name", f"{declared!r} does not match the key's {name!r}")
        return RejectedTask(name, (str(problem),))
    try:
        return parse_task(doc, path=path, field="task")
    except DesiredStateError as err:
        return RejectedTask(name, err.lines())


def full_assignment(bucket: str, node_id: str, values: Mapping[str, bytes]) -> DesiredTasks:
    """Every key of this node (``key -> value``) as one full ``DesiredTasks``."""
    tasks: list[DesiredTask] = []
    rejected: list[RejectedTask] = []
    keys: dict[str, str] = {}
    for key in sorted(values):
        read = read_assignment(bucket, node_id, key, values[key])
        if isinstance(read, RejectedTask):
            rejected.append(read)
        else:
            tasks.append(read)
            keys[read.name] = key
    # Dependencies are checked over the node's whole set: a task naming one that is not
    # assigned here, or part of a cycle, is rejected like a malformed value.
    bad = dependency_problems({t.name: t for t in tasks})
    for name, problems in bad.items():
        path = f"{bucket}/{keys[name]}"
        lines = tuple(str(Problem(path, 0, f"task.dependsOn[{i}].task", m)) for i, m in problems)
        rejected.append(RejectedTask(name, lines))
    tasks = [t for t in tasks if t.name not in bad]
    return DesiredTasks(tasks=tuple(tasks), full=True, rejected=tuple(rejected))


def assignment_change(bucket: str, node_id: str, key: str, value: bytes | None) -> DesiredTasks:
    """One put or delete (``value`` None) as an incremental ``DesiredTasks``."""
    if value is None:
        return DesiredTasks(tasks=(), full=False, removed=(_name(node_id, key),))
    read = read_assignment(bucket, node_id, key, value)
    if isinstance(read, RejectedTask):
        return DesiredTasks(tasks=(), full=False, rejected=(read,))
    return DesiredTasks(tasks=(read,), full=False)


def merge_changes(first: DesiredTasks, then: DesiredTasks) -> DesiredTasks | None:
    """``first`` followed by ``then`` as one incremental change, or None when they cannot be.

    Only incremental changes without rejections merge: a rejection keeps the receiver's last
    valid spec, which must be the one from before it, so it is delivered on its own.
    """
    if first.full or then.full or first.rejected or then.rejected:
        return None
    tasks = {t.name: t for t in first.tasks}
    removed = dict.fromkeys(first.removed)
    for name in then.removed:
        tasks.pop(name, None)
        removed[name] = None
    for task in then.tasks:
        tasks[task.name] = task
        removed.pop(task.name, None)
    return DesiredTasks(tasks=tuple(tasks.values()), full=False, removed=tuple(removed))


def note_rejections(
    bucket: str,
    node_id: str,
    message: DesiredTasks,
    revisions: Mapping[str, int],
    seen: BadValues,
) -> tuple[DesiredTasks, int]:
    """``message`` with each rejection already reported at its key's revision (``revisions``:
    key -> revision) marked ``reported``, and how many rejections are new. Keys the message
    accepts or removes are forgotten by ``seen``."""
    for name in (*(t.name for t in message.tasks), *message.removed):
        seen.good(bucket, assignment_key(node_id, name))
    new = 0
    rejected: list[RejectedTask] = []
    for task in message.rejected:
        key = assignment_key(node_id, task.name)
        if seen.first(bucket, key, revisions.get(key, 0)):
            new += 1
            rejected.append(task)
        else:
            rejected.append(replace(task, reported=True))
    return replace(message, rejected=tuple(rejected)), new


def _name(node_id: str, key: str) -> str:
    prefix = f"{node_id}."
    return key[len(prefix) :] if key.startswith(prefix) else key

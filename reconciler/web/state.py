"""The JSON views of a ``Snapshot`` that ``/v1/node``, the status page and ``/v1/events`` share.

Pure functions of one immutable snapshot, no I/O. The status page is fed three objects and a
task list, the same shapes whether they arrive rendered into the HTML or as server-sent events:

* ``node``: exactly the ``/v1/node`` object;
* ``agent``: the readiness reason, the start time (for the uptime), and the loops and the
  runtime (``runtimeUp``, ``loopsAlive``, ``initDone``, ``sessionConnected``,
  ``reportsPending``), and the node's policy for fleet tasks in words (``policy``);
* ``desired``: the desired source's ``status`` (``valid``, ``invalid`` or ``unread``), when a
  valid set was last applied, and the last rejected read's problems, each split into file,
  line and text where the line has the ``PATH:LINE: ...`` form;
* ``tasks``: one entry per task name, ``{"name", "instances"}``, the current instance first and
  then the history newest first. An instance is the ``/v1/tasks`` object plus ``image`` and
  ``current``.

Nothing else of a task's spec is ever included (no env, no command): the page and the stream
show no more than ``/v1/tasks``, ``/v1/node`` and the desired source's errors.

``PageModel`` groups one snapshot for comparison, and ``delta_state`` compares two: only the
names whose instances changed, the removed names, and the objects that changed are sent, so an
agent with 1,000 tasks does not resend them all when one changes.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Final

from reconciler import __version__
from reconciler.core.codec import node_to_dict
from reconciler.core.policy import Policy
from reconciler.core.snapshot import Snapshot, TaskView

__all__ = [
    "PageModel",
    "delta_state",
    "full_state",
    "instance_json",
    "node_json",
    "page_model",
    "policy_words",
    "problem_json",
    "rfc3339",
]

#: ``PATH:LINE: rest``, the form of every desired-state problem (line 0: no line).
_PROBLEM: Final = re.compile(r"(?P<file>.+?):(?P<line>\d+): (?P<text>.*)", re.DOTALL)


def rfc3339(timestamp: float | None) -> str | None:
    """A Unix time as RFC 3339 UTC with milliseconds and ``Z`` (``None`` stays ``None``)."""
    if timestamp is None:
        return None
    when = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def node_json(snap: Snapshot) -> dict[str, Any]:
    """The ``/v1/node`` object: null for what the runtime has not described yet (the node
    codec, ``reconciler.core.codec.node_to_dict``), then the node's id, labels, readiness and
    conditions, and last its policy for fleet tasks (null on a node that checks none: the
    desired directory is trusted)."""
    node = snap.node
    version = node.agent_version if node and node.agent_version else __version__
    described = node_to_dict(node, version=version)
    policy = described.pop("policy")
    return {
        "nodeId": snap.node_id,
        **described,
        "labels": dict(snap.labels),
        "ready": snap.ready,
        "conditions": {condition.key: holds for condition, holds in snap.conditions},
        "policy": policy,
    }


def agent_json(snap: Snapshot) -> dict[str, Any]:
    """The agent's own health: readiness reason, start time, loops, runtime, session."""
    return {
        "readyReason": snap.ready_reason,
        "startedAt": rfc3339(snap.started_at),
        "runtimeUp": snap.runtime_up,
        "loopsAlive": snap.loops_alive,
        "initDone": snap.init_done,
        "sessionConnected": snap.session_connected,
        "reportsPending": snap.reports_pending,
        "policy": policy_words(snap.node.policy if snap.node is not None else None, snap),
    }


def policy_words(policy: Policy | None, snap: Snapshot) -> str | None:
    """The node's policy for fleet tasks in words, for the page: what its flags allow (None
    until the node is described)."""
    if snap.node is None:
        return None
    if policy is None:
        return "not checked (desired directory)"
    parts = [
        *(f"bind {p}" for p in policy.binds),
        *(f"device {d}" for d in policy.devices),
        *(f"capability {c}" for c in policy.caps),
        *(["host network"] if policy.host_network else []),
        *([f"images from {', '.join(policy.registries)} only"] if policy.registries else []),
    ]
    return "; ".join(parts) if parts else "nothing of the host"


def problem_json(line: str) -> dict[str, Any]:
    """One desired-source problem: ``{"file", "line", "text"}``; file and line may be null."""
    m = _PROBLEM.fullmatch(line)
    if m is None:
        return {"file": None, "line": None, "text": line}
    number = int(m["line"])
    return {"file": m["file"], "line": number or None, "text": m["text"]}


def desired_json(snap: Snapshot) -> dict[str, Any]:
    """The desired source: valid or not, when last applied, the last rejected read's problems."""
    status = ("valid" if snap.desired_valid else "invalid") if snap.desired_read else "unread"
    return {
        "status": status,
        "appliedAt": rfc3339(snap.desired_applied_at),
        "rejectedAt": rfc3339(snap.desired_errors_at),
        "errors": [problem_json(line) for line in snap.desired_errors],
    }


def instance_json(view: TaskView) -> dict[str, Any]:
    """The ``/v1/tasks`` object of one instance, plus its ``image`` and whether it is current."""
    out = view.to_json()
    out["image"] = view.image or None
    out["current"] = view.current
    return out


def task_json(name: str, views: tuple[TaskView, ...]) -> dict[str, Any]:
    return {"name": name, "instances": [instance_json(v) for v in views]}


@dataclass(frozen=True, slots=True, eq=False)
class PageModel:
    """One snapshot, grouped for the page: the three objects, and the instances per name."""

    node: dict[str, Any]
    agent: dict[str, Any]
    desired: dict[str, Any]
    tasks: dict[str, tuple[TaskView, ...]]  # by name, in name order


def page_model(snap: Snapshot) -> PageModel:
    """Group ``snap`` for the page. O(tasks); callers cache it per snapshot object."""
    groups: dict[str, list[TaskView]] = {}
    for view in snap.tasks:
        group = groups.get(view.name)
        if group is None:
            groups[view.name] = [view]
        else:
            group.append(view)
    return PageModel(
        node=node_json(snap),
        agent=agent_json(snap),
        desired=desired_json(snap),
        tasks={name: tuple(views) for name, views in groups.items()},
    )


def full_state(model: PageModel, *, now: float) -> dict[str, Any]:
    """Everything the page shows: the first event of a stream, and what the HTML is rendered from.

    ``now`` (the server's clock) lets the browser show durations right when its own clock is off.
    """
    return {
        "full": True,
        "now": rfc3339(now),
        "node": model.node,
        "agent": model.agent,
        "desired": model.desired,
        "tasks": [task_json(name, views) for name, views in model.tasks.items()],
    }


def delta_state(old: PageModel, new: PageModel, *, now: float) -> dict[str, Any] | None:
    """What changed from ``old`` to ``new``, or ``None`` when nothing the page shows did.

    Keys appear only when they changed: ``node``, ``agent``, ``desired`` (whole objects),
    ``tasks`` (the changed or new names, whole, in name order) and ``removed`` (names).
    """
    out: dict[str, Any] = {}
    for key in ("node", "agent", "desired"):
        value = getattr(new, key)
        if value != getattr(old, key):
            out[key] = value
    before = old.tasks
    changed = [
        task_json(name, views)
        for name, views in new.tasks.items()
        if before.get(name) != views  # tuples of frozen views: field by field, no encoding
    ]
    if changed:
        out["tasks"] = changed
    removed = [name for name in before if name not in new.tasks]
    if removed:
        out["removed"] = removed
    if not out:
        return None
    out["now"] = rfc3339(now)
    return out

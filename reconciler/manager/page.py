"""The fleet manager's status page: the HTML served at ``/`` and the events of ``/v1/events``.

``ManagerPage`` is the manager's ``LivePage`` over its ``FleetSnapshot`` (``manager.snapshot``):
the manager (id, leadership, readiness), the nodes as it judges them, the services with their
desired and running tasks, the unassigned tasks with the reason, and every assigned task with
its node, state and restarts. The state objects are the rows ``reconciler manager nodes`` and
``manager ps -o json`` print, plus the manager's verdict on each node; nothing of a spec, and
never an env value.

Events, as on the agent's page: the first is the full state, ``{"now", "full": true,
"manager", "nodes", "services", "unassigned", "tasks"}``; each later one carries only what
changed: ``manager`` when it did, and per section the new or changed rows, whole, with the
keys of the rows gone under ``removed`` (``{"removed": {"tasks": ["node-a.web-1"]}}``). A row's
key is the node id, the service name, the task name (unassigned), or ``<node>.<task>``.

The HTML is rendered on the server from the very state the first event carries, so the page is
complete with JavaScript off (a static snapshot, stamped with its time); the script
(``page.html``, with the helpers it shares with the agent's page) keeps it current. Values
a node wrote (labels, times, messages) may be hostile: times are read and written back in one
form (or shown as unknown), long texts are cut, and everything is escaped here and set as text
by the script, never as markup.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from typing import Any, Final

from reconciler.core.model import TaskState
from reconciler.fleet.values import BadValue, parse_rfc3339, rfc3339
from reconciler.manager.admin import TaskRow
from reconciler.manager.health import NodeState
from reconciler.manager.snapshot import (
    FleetSnapshot,
    ManagerState,
    NodeStatus,
    ServiceStatus,
    UnassignedTask,
)
from reconciler.web.common import (
    DASH,
    ICON_BAD,
    ICON_OK,
    EventBodies,
    Field,
    badge,
    card,
    code,
    content_security_policy,
    fill,
    fmt_ago,
    fmt_bytes,
    fmt_labels,
    fmt_text,
    fmt_time,
    snapshot_stamp,
    template,
)

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "SECTIONS",
    "ManagerPage",
    "delta_state",
    "full_state",
    "render",
]

_TEMPLATE: Final = template("page.html", __package__)

#: Only the page's own inline style and script; connections only back to where it came from.
CONTENT_SECURITY_POLICY: Final = content_security_policy(_TEMPLATE)

#: The page's sections, in page order.
SECTIONS: Final = ("nodes", "services", "unassigned", "tasks")
#: Texts a node or agent wrote are cut to this many characters.
MAX_TEXT: Final = 400

_RANK: Final = {s.label: int(s) for s in TaskState}
_NODE_ORDER: Final = tuple(NodeState)


# ------------------------------------------------------------------------------ state


def _cut(value: str | None) -> str | None:
    if value is None or len(value) <= MAX_TEXT:
        return value
    return value[: MAX_TEXT - 3] + "..."


def _when(value: str | None) -> str | None:
    """An RFC 3339 time written back in one form (UTC, milliseconds, ``Z``); None if not one."""
    if value is None:
        return None
    try:
        return rfc3339(parse_rfc3339(value))
    except (BadValue, ValueError, OverflowError, OSError):
        return None


def manager_json(m: ManagerState) -> dict[str, Any]:
    return {
        "managerId": m.manager_id,
        "version": m.version,
        "leader": m.leader,
        "ready": m.ready,
        "readyReason": m.reason,
    }


def node_json(n: NodeStatus) -> dict[str, Any]:
    """The ``manager nodes -o json`` object, plus ``state`` (the manager's verdict) and
    ``running`` (its tasks reported running)."""
    out = n.row.to_json()
    out["heartbeatAt"] = _when(out["heartbeatAt"])
    out["hostname"] = _cut(out["hostname"])
    out["version"] = _cut(out["version"])
    out["state"] = n.state.value
    out["running"] = n.running
    return out


def service_json(s: ServiceStatus) -> dict[str, Any]:
    return {
        "service": s.name,
        "mode": s.mode,
        "desired": s.desired,
        "running": s.running,
        "unassigned": s.unassigned,
    }


def unassigned_json(u: UnassignedTask) -> dict[str, Any]:
    return {"service": u.service, "task": u.task, "reason": u.reason, "node": u.node}


def task_json(r: TaskRow) -> dict[str, Any]:
    """The ``manager ps -o json`` object (long texts cut, the time in one form)."""
    out = r.to_json()
    out["message"] = _cut(out["message"])
    out["error"] = _cut(out["error"])
    out["updatedAt"] = _when(out["updatedAt"])
    return out


_JSON: Final[Mapping[str, Callable[[Any], dict[str, Any]]]] = {
    "nodes": node_json,
    "services": service_json,
    "unassigned": unassigned_json,
    "tasks": task_json,
}


def _rows(snap: FleetSnapshot, section: str) -> Mapping[str, Any]:
    rows: Mapping[str, Any] = getattr(snap, section)
    return rows


def full_state(snap: FleetSnapshot) -> dict[str, Any]:
    """Everything the page shows: the first event of a stream (without its time), and what the
    HTML is rendered from."""
    out: dict[str, Any] = {"full": True, "manager": manager_json(snap.manager)}
    for section in SECTIONS:
        convert = _JSON[section]
        out[section] = [convert(row) for row in _rows(snap, section).values()]
    return out


def delta_state(old: FleetSnapshot, new: FleetSnapshot) -> dict[str, Any] | None:
    """What changed from ``old`` to ``new`` (without its time), or None when nothing the page
    shows did. See the module docstring for the form."""
    out: dict[str, Any] = {}
    if new.manager != old.manager:
        out["manager"] = manager_json(new.manager)
    removed: dict[str, list[str]] = {}
    for section in SECTIONS:
        before, after = _rows(old, section), _rows(new, section)
        if before is after:
            continue
        convert = _JSON[section]
        changed = [
            convert(row)
            for key, row in after.items()
            if (was := before.get(key)) is not row and was != row
        ]
        if changed:
            out[section] = changed
        gone = [key for key in before if key not in after]
        if gone:
            removed[section] = gone
    if removed:
        out["removed"] = removed
    return out or None


# ------------------------------------------------------------------------------ markup
# Each function mirrors its twin in page.html's script.


def fmt_number(value: float | None) -> str:
    """A number as the script's ``String(v)`` writes it: ``2``, ``0.5``."""
    if value is None:
        return DASH
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _cell(label: str, body: str) -> str:
    return f'<td data-label="{label}">{body}</td>'


def _message(r: Mapping[str, Any]) -> str:
    out: list[str] = []
    if r["error"]:
        out.append(f'<span class="err">error: {escape(r["error"])}</span>')
    if r["message"] and r["message"] != r["error"]:
        out.append((" " if out else "") + escape(r["message"]))
    return "".join(out) or DASH


def _since(iso: str | None, now: float) -> str:
    """``42s ago``, the time ticking and its UTC form as the title; a dash for none."""
    if not iso:
        return DASH
    when = escape(iso)
    return (
        f'<time class="ago" datetime="{when}" title="{fmt_time(iso)}">{fmt_ago(iso, now)}</time>'
        " ago"
    )


def node_row(n: Mapping[str, Any], now: float) -> str:
    state = f'<span class="st n-{escape(n["state"])}">{escape(n["state"])}</span>'
    if n["conditions"]:
        state += f" <small>{escape(', '.join(n['conditions']))}</small>"
    return (
        f'<tr data-key="{escape(n["node"])}" data-state="{escape(n["state"])}">'
        f'<th scope="row">{escape(n["node"])}</th>'
        + _cell("State", state)
        + _cell("Availability", escape(n["availability"]))
        + _cell("Labels", escape(fmt_labels(n["labels"])))
        + _cell("Engine labels", escape(fmt_labels(n["engineLabels"])))
        + _cell("Last heartbeat", _since(n["heartbeatAt"], now))
        + _cell("Tasks", str(n["tasks"]))
        + _cell("Running", str(n["running"]))
        + _cell("CPUs", fmt_number(n["cpus"]))
        + _cell("Memory", fmt_bytes(n["memoryBytes"]))
        + _cell("Version", escape(fmt_text(n["version"])))
        + "</tr>"
    )


def _running(s: Mapping[str, Any]) -> str:
    desired = s["desired"]
    if desired is None:
        return str(s["running"])
    cls = "ok" if s["running"] >= desired else "bad"
    return f'<span class="{cls}">{s["running"]} of {desired}</span>'


def service_row(s: Mapping[str, Any], now: float) -> str:
    mode = escape(s["mode"])
    if s["mode"] == "invalid":
        mode = '<span class="bad">invalid</span> <small>its tasks are left as they are</small>'
    return (
        f'<tr data-key="{escape(s["service"])}">'
        f'<th scope="row">{escape(s["service"])}</th>'
        + _cell("Mode", mode)
        + _cell("Desired", fmt_text(s["desired"]))
        + _cell("Running", _running(s))
        + _cell("Unassigned", str(s["unassigned"]))
        + "</tr>"
    )


def unassigned_row(u: Mapping[str, Any], now: float) -> str:
    return (
        f'<tr data-key="{escape(u["task"])}">'
        f'<th scope="row">{escape(u["task"])}</th>'
        + _cell("Service", escape(u["service"]))
        + _cell("Reason", escape(u["reason"]))
        + _cell("Held by", escape(fmt_text(u["node"])))
        + "</tr>"
    )


def task_row(t: Mapping[str, Any], now: float) -> str:
    return (
        f'<tr data-key="{escape(t["node"])}.{escape(t["task"])}" data-state="{escape(t["state"])}">'
        f'<th scope="row">{escape(t["task"])}</th>'
        + _cell("Service", escape(t["service"]))
        + _cell("Node", escape(t["node"]))
        + _cell("State", badge(t["state"]))
        + _cell("Restarts", str(t["restarts"]))
        + _cell("Message", _message(t))
        + _cell("Updated", _since(t["updatedAt"], now))
        + _cell("Instance", code(t["id"]))
        + "</tr>"
    )


_ROW: Final[Mapping[str, Callable[[Mapping[str, Any], float], str]]] = {
    "nodes": node_row,
    "services": service_row,
    "unassigned": unassigned_row,
    "tasks": task_row,
}

#: Per section: heading, caption (for screen readers), columns, and what shows when empty.
_TABLES: Final = {
    "nodes": (
        "Nodes",
        "Every node the manager knows of, as it judges them",
        (
            "Node",
            "State",
            "Availability",
            "Labels",
            "Engine labels",
            "Last heartbeat",
            "Tasks",
            "Running",
            "CPUs",
            "Memory",
            "Version",
        ),
        "No node has joined the fleet yet.",
    ),
    "services": (
        "Services",
        "Every service, with its desired and running tasks",
        ("Service", "Mode", "Desired", "Running", "Unassigned"),
        "No services.",
    ),
    "unassigned": (
        "Unassigned tasks",
        "Tasks no node can take now, and why",
        ("Task", "Service", "Reason", "Held by"),
        "Every task is assigned.",
    ),
    "tasks": (
        "Tasks",
        "Every assigned task, with its node and the state its agent reported",
        ("Task", "Service", "Node", "State", "Restarts", "Message", "Updated", "Instance"),
        "No task is assigned.",
    ),
}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _counted(n: int, word: str, states: Iterable[str], order: Callable[[str], Any]) -> str:
    counts = Counter(states)
    parts = [f"{counts[s]} {s}" for s in sorted(counts, key=order)]
    return _plural(n, word) + (": " + ", ".join(parts) if parts else "")


def _node_order(state: str) -> tuple[int, str]:
    return (_NODE_ORDER.index(state) if state in _NODE_ORDER else len(_NODE_ORDER), state)


def _task_order(state: str) -> tuple[int, str]:
    return (_RANK.get(state, 1000), state)


def summaries(state: Mapping[str, Any]) -> dict[str, str]:
    """The fleet card's lines, as the script writes them."""
    nodes, tasks = state["nodes"], state["tasks"]
    return {
        "nodes": _counted(len(nodes), "node", (n["state"] for n in nodes), _node_order),
        "services": _plural(len(state["services"]), "service"),
        "tasks": _counted(len(tasks), "task", (t["state"] for t in tasks), _task_order),
        "unassigned": str(len(state["unassigned"])) if state["unassigned"] else "none",
    }


def _problems(state: Mapping[str, Any]) -> list[str]:
    """What the title names, worst first; none: all is well (the favicon is green)."""
    out = []
    if not state["manager"]["ready"]:
        out.append("not ready")
    down = sum(1 for n in state["nodes"] if n["state"] == NodeState.DOWN)
    if down:
        out.append(f"{down} down")
    if state["unassigned"]:
        out.append(f"{len(state['unassigned'])} unassigned")
    return out


MANAGER_CARD: Final = (
    Field("Manager ID", "manager.managerId"),
    Field("Role", "manager.leader", "flag", "leader", "standby"),
    Field("Readiness", "manager.ready", "bool", "ready", "not ready", "manager.readyReason"),
    Field("Version", "manager.version"),
)


def _fleet_card(state: Mapping[str, Any]) -> str:
    lines = summaries(state)
    cls = ' class="ok"' if not state["unassigned"] else ' class="bad"'
    rows = "".join(
        f'<dt>{label}</dt><dd id="sum-{key}"{cls if key == "unassigned" else ""}>'
        f"{escape(lines[key])}</dd>"
        for label, key in (
            ("Nodes", "nodes"),
            ("Services", "services"),
            ("Tasks", "tasks"),
            ("Unassigned", "unassigned"),
        )
    )
    return (
        '<section class="card" aria-labelledby="h-fleet">'
        f'<h2 id="h-fleet">Fleet</h2><dl>{rows}</dl></section>'
    )


def _section(name: str, rows: Sequence[Mapping[str, Any]], now: float) -> str:
    title, caption, columns, empty = _TABLES[name]
    head = "".join(f'<th scope="col">{c}</th>' for c in columns)
    body = "".join(_ROW[name](row, now) for row in rows)
    hidden = " hidden" if not rows else ""
    shown = " hidden" if rows else ""
    bar = f'<h2 id="h-{name}">{title}</h2>'
    if name == "tasks":
        bar = (
            f'<div class="bar">{bar}<input type="search" id="filter" '
            'aria-label="Filter tasks by task, service, node or state" '
            'placeholder="Filter by task, service, node or state" hidden></div>'
        )
    return (
        f'<section class="part" aria-labelledby="h-{name}">{bar}'
        f'<p id="{name}-none"{shown}>{empty}</p>'
        f'<div class="scroll"><table id="{name}" class="stack"{hidden}>'
        f'<caption class="vh">{caption}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></section>"
    )


def render(state: Mapping[str, Any], *, now: float) -> str:
    """The whole page for one full state (as ``full_state`` builds it), rendered at ``now``."""
    manager = state["manager"]
    problems = _problems(state)
    cards = card("Manager", MANAGER_CARD, state, now) + _fleet_card(state)
    main = f'<div class="cards">{cards}</div>' + "".join(
        _section(name, state[name], now) for name in SECTIONS
    )
    title = (f"({', '.join(problems)}) " if problems else "") + "reconciler manager"
    values = {
        "title": escape(title + " " + manager["managerId"]),
        "icon": ICON_BAD if problems else ICON_OK,
        "icon_ok": ICON_OK,
        "icon_bad": ICON_BAD,
        "manager": escape(manager["managerId"]),
        "stamp": snapshot_stamp(now),
        "main": main,
    }
    return fill(_TEMPLATE, values)


# ------------------------------------------------------------------------------ the page


class ManagerPage:
    """The manager's status page over its snapshots: a ``LivePage`` for streams, and the HTML.

    ``snapshot`` returns the current ``FleetSnapshot`` (the same object until something
    changed), which is the page's model; event bodies are cached per snapshot (and the last
    delta per pair), so several open pages share the work of one change. ``clock`` gives the
    server's wall time.
    """

    content_security_policy: Final = CONTENT_SECURITY_POLICY

    def __init__(
        self, snapshot: Callable[[], FleetSnapshot], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._snapshot = snapshot
        self._clock = clock
        self._bodies: EventBodies[FleetSnapshot] = EventBodies(clock)

    def model(self) -> FleetSnapshot:
        return self._snapshot()

    def full(self, model: FleetSnapshot) -> bytes:
        return self._bodies.full(model, lambda: full_state(model))

    def delta(self, old: FleetSnapshot, new: FleetSnapshot) -> bytes | None:
        return self._bodies.delta(old, new, lambda: delta_state(old, new))

    def html(self) -> bytes:
        """The page for the current snapshot, rendered now (never cached: it shows durations)."""
        now = self._clock()
        return render(full_state(self.model()), now=now).encode()

"""The agent's status page: the HTML served at ``/`` and the events of ``/v1/events``.

``AgentPage`` is the agent's ``LivePage``: it turns the current ``Snapshot`` into the state
objects of ``reconciler.web.state`` and renders them. The HTML is rendered on the server from
the very state the first event carries, so the page is complete with JavaScript off (a static
snapshot, stamped with its time) and the browser's script only has to keep it current. The
markup here and the markup the script builds (``agent.html``) are kept alike by hand: each cell
and field has one plain form, and the end-to-end browser test compares the two.

The page is one file, ``agent.html``, with its CSS and script inline (the parts it shares with
the manager's page are inlined from ``shared.css`` and ``shared.js``, ``reconciler.web.common``):
no CDN, no font, no build step, no request to any other host. ``CONTENT_SECURITY_POLICY``
allows exactly that file's own style and script (by hash), connections back to the agent, and
``data:`` images (the favicon, whose colour follows readiness); a browser enforces it, so even
a bug cannot fetch elsewhere.

Every text that comes from the snapshot (task names, messages, errors, file names) is escaped
here and set as text by the script, never as markup.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from typing import Any, Final

from reconciler.core.model import TaskState
from reconciler.core.snapshot import Snapshot
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
from reconciler.web.state import PageModel, delta_state, full_state, page_model

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "AgentPage",
    "fmt_ago",
    "fmt_bytes",
    "fmt_labels",
    "fmt_time",
    "render",
]

_TEMPLATE: Final = template("agent.html")

_RANK: Final = {s.label: int(s) for s in TaskState}

#: How the desired source's status reads on the page.
WORDS: Final = {
    "valid": "valid",
    "invalid": "invalid (the last valid set keeps running)",
    "unread": "not read yet",
}

#: Only the page's own inline style and script; connections only back to where it came from.
CONTENT_SECURITY_POLICY: Final = content_security_policy(_TEMPLATE)


# ---------------------------------------------------------------------------- sections


CARDS: Final[tuple[tuple[str, tuple[Field, ...]], ...]] = (
    (
        "Node",
        (
            Field("Node ID", "node.nodeId"),
            Field("Hostname", "node.hostname"),
            Field("Readiness", "node.ready", "bool", "ready", "not ready", "agent.readyReason"),
            Field("Uptime", "agent.startedAt", "ago"),
            Field("Runtime", "node.runtime"),
            Field("Runtime version", "node.runtimeVersion"),
            Field("OS", "node.os"),
            Field("Architecture", "node.arch"),
            Field("CPUs", "node.cpus"),
            Field("Memory", "node.memoryBytes", "bytes"),
            Field("Agent version", "node.version"),
            Field("Labels", "node.labels", "labels"),
            Field("Fleet tasks may use", "agent.policy"),
        ),
    ),
    (
        "Loops and runtime",
        (
            Field("Runtime", "agent.runtimeUp", "bool", "up", "down"),
            Field("Agent loops", "agent.loopsAlive", "bool", "alive", "down"),
            Field("Worker init", "agent.initDone", "bool", "done", "not done"),
            Field("Session", "agent.sessionConnected", "bool", "connected", "disconnected"),
            Field("Statuses pending", "agent.reportsPending"),
        ),
    ),
    (
        "Desired state",
        (
            Field("Status", "desired.status", "word"),
            Field("Applied", "desired.appliedAt", "time"),
            Field("Rejected", "desired.rejectedAt", "time"),
        ),
    ),
)

_TASK_COLUMNS: Final = (
    "Name",
    "State",
    "For",
    "Restarts",
    "Exit code",
    "Message",
    "Container",
    "Image",
    "Instance",
)
_HISTORY_COLUMNS: Final = (
    "Instance",
    "State",
    "Updated",
    "Exit code",
    "Message",
    "Container",
    "Image",
)


def _errors(problems: Sequence[Mapping[str, Any]]) -> str:
    """The last rejected read's problems, across the whole width (hidden while there are none)."""
    rows = "".join(
        f"<tr><td>{code(p['file'])}</td><td>{escape(fmt_text(p['line']))}</td>"
        f"<td>{escape(p['text'])}</td></tr>"
        for p in problems
    )
    hidden = "" if problems else " hidden"
    return (
        f'<section id="errors" class="card problems" aria-labelledby="h-problems"{hidden}>'
        '<h2 id="h-problems">Problems in the last rejected read of the desired state</h2>'
        '<div class="scroll"><table class="errors"><thead><tr>'
        '<th scope="col">File</th><th scope="col">Line</th><th scope="col">Problem</th>'
        f'</tr></thead><tbody id="errors-body">{rows}</tbody></table></div></section>'
    )


# ------------------------------------------------------------------------------- tasks


def _short(container_id: str | None) -> str | None:
    return container_id[:12] if container_id else None


def _message(i: Mapping[str, Any]) -> str:
    out: list[str] = []
    if i["error"]:
        out.append(f'<span class="err">error: {escape(i["error"])}</span>')
    if i["message"] and i["message"] != i["error"]:
        out.append((" " if out else "") + escape(i["message"]))
    return "".join(out) or DASH


def _cell(label: str, body: str) -> str:
    return f'<td data-label="{label}">{body}</td>'


def _history_row(name: str, hist: Sequence[Mapping[str, Any]]) -> str:
    """The history of one name in a closed <details>.

    The table sits in a <noscript>: without JavaScript it is ordinary markup, and with it the
    browser keeps it as plain text (no 5,000 rows of DOM to build on a big node); the script
    builds its own history table when a <details> opens.
    """
    head = "".join(f'<th scope="col">{c}</th>' for c in _HISTORY_COLUMNS)
    rows = "".join(
        "<tr>"
        f"<td>{code(i['id'])}</td><td>{badge(i['state'])}</td>"
        f'<td><time datetime="{escape(i["updatedAt"])}">{fmt_time(i["updatedAt"])}</time></td>'
        f"<td>{escape(fmt_text(i['exitCode']))}</td><td>{_message(i)}</td>"
        f"<td>{code(_short(i['containerId']), i['containerId'])}</td>"
        f"<td>{code(i['image'])}</td>"
        "</tr>"
        for i in hist
    )
    n = len(hist)
    summary = f"History: {n} earlier instance" + ("" if n == 1 else "s")
    return (
        '<tr class="hist"><td colspan="9"><details>'
        f"<summary>{summary}</summary>"
        '<div class="scroll"><noscript><table class="history">'
        f'<caption class="vh">Earlier instances of {escape(name)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></noscript></div>"
        "</details></td></tr>"
    )


def task_body(task: Mapping[str, Any], now: float) -> str:
    """One name's ``<tbody>``: the current instance's row, then its history in a <details>."""
    name: str = task["name"]
    instances: Sequence[Mapping[str, Any]] = task["instances"]
    cur = instances[0] if instances and instances[0]["current"] else None
    hist = instances[1:] if cur else instances
    cells = ""
    if cur is not None:
        state = badge(cur["state"])
        if _RANK[cur["state"]] < _RANK[cur["desiredState"]]:
            state += f" <small>\u2192 {escape(cur['desiredState'])}</small>"
        since = escape(cur["updatedAt"])
        cells = (
            _cell("State", state)
            + _cell("For", f'<time class="ago" datetime="{since}">{fmt_ago(since, now)}</time>')
            + _cell("Restarts", str(cur["restarts"]))
            + _cell("Exit code", escape(fmt_text(cur["exitCode"])))
            + _cell("Message", _message(cur))
            + _cell("Container", code(_short(cur["containerId"]), cur["containerId"]))
            + _cell("Image", code(cur["image"]))
            + _cell("Instance", code(cur["id"]))
        )
    else:
        cells = '<td colspan="8" data-label="State">no current instance</td>'
    history = _history_row(name, hist) if hist else ""
    state_attr = escape(cur["state"]) if cur else "none"
    return (
        f'<tbody data-name="{escape(name)}" data-state="{state_attr}">'
        f'<tr><th scope="row">{escape(name)}</th>{cells}</tr>{history}</tbody>'
    )


def _summary(tasks: Iterable[Mapping[str, Any]]) -> tuple[int, str]:
    counts: dict[str, int] = {}
    n = 0
    for t in tasks:
        n += 1
        first = t["instances"][0] if t["instances"] else None
        if first is not None and first["current"]:
            counts[first["state"]] = counts.get(first["state"], 0) + 1
    parts = [f"{counts[s]} {s}" for s in sorted(counts, key=_RANK.__getitem__)]
    text = f"{n} task" + ("" if n == 1 else "s") + (": " + ", ".join(parts) if parts else "")
    return n, text


def _tasks_section(tasks: Sequence[Mapping[str, Any]], now: float, rows: str | None) -> str:
    n, summary = _summary(tasks)
    head = "".join(f'<th scope="col">{c}</th>' for c in _TASK_COLUMNS)
    bodies = "".join(task_body(t, now) for t in tasks)
    attrs = (" hidden" if n == 0 else "") + (f' data-rows="{escape(rows)}"' if rows else "")
    return (
        '<section aria-labelledby="h-tasks"><div class="bar">'
        '<h2 id="h-tasks">Tasks</h2>'
        f'<p id="summary">{escape(summary)}</p>'
        '<input type="search" id="filter" aria-label="Filter tasks by name or state" '
        'placeholder="Filter by name or state" hidden>'
        "</div>"
        f'<p id="none"{"" if n == 0 else " hidden"}>No tasks.</p>'
        f'<table id="tasks" class="tasks"{attrs}>'
        '<caption class="vh">Every named task: its current instance, then its history</caption>'
        f"<thead><tr>{head}</tr></thead>{bodies}</table></section>"
    )


# ------------------------------------------------------------------------------- page


def render(state: Mapping[str, Any], *, now: float, rows: str | None = None) -> str:
    """The whole page for one full state (as ``full_state`` builds it), rendered at ``now``.

    ``rows`` names the task rows' content; when the stream's first event carries the same name,
    the script keeps the rows the server rendered instead of building them again.
    """
    node = state["node"]
    name = node.get("hostname") or node.get("nodeId") or ""
    ready = bool(node.get("ready"))
    cards = "".join(card(title, fields, state, now, WORDS) for title, fields in CARDS)
    words = json.dumps(WORDS).replace("</", "<\\/")
    main = (
        f'<div class="cards">{cards}</div>'
        f"{_errors(state['desired']['errors'])}"
        f"{_tasks_section(state['tasks'], now, rows)}"
        f'<script type="application/json" id="words">{words}</script>'
    )
    values = {
        "title": escape(("" if ready else "(not ready) ") + "reconciler " + name),
        "icon": ICON_OK if ready else ICON_BAD,
        "icon_ok": ICON_OK,
        "icon_bad": ICON_BAD,
        "node": escape(name),
        "stamp": snapshot_stamp(now),
        "main": main,
    }
    return fill(_TEMPLATE, values)


class AgentPage:
    """The status page over one snapshot source: a ``LivePage`` for streams, and the HTML.

    Models and event bodies are cached per snapshot object (and the last delta per pair), so
    several open pages share the work of one change. ``clock`` gives the server's wall time.

    Each model gets a name, unique to this process (a random prefix and a serial), that the
    HTML and the first event both carry: when they match, the page the browser holds already
    shows that model's rows, and its script adopts them rather than rebuilding 1,000 rows.
    """

    content_security_policy: Final = CONTENT_SECURITY_POLICY

    def __init__(
        self, snapshot: Callable[[], Snapshot], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._snapshot = snapshot
        self._clock = clock
        self._model: tuple[Snapshot | None, PageModel | None, str] = (None, None, "")
        self._prefix = secrets.token_hex(4)
        self._serial = 0
        self._bodies: EventBodies[PageModel] = EventBodies(clock)

    def model(self) -> PageModel:
        snap = self._snapshot()
        cached_snap, model, _ = self._model
        if cached_snap is not snap or model is None:
            model = page_model(snap)
            self._serial += 1
            self._model = (snap, model, f"{self._prefix}-{self._serial}")
        return model

    def _rows(self, model: PageModel) -> str | None:
        _, current, name = self._model
        return name if current is model else None

    def full(self, model: PageModel) -> bytes:
        def build() -> dict[str, Any]:
            state = full_state(model, now=0.0)
            del state["now"]
            rows = self._rows(model)
            if rows is not None:
                state["rows"] = rows
            return state

        return self._bodies.full(model, build)

    def delta(self, old: PageModel, new: PageModel) -> bytes | None:
        def build() -> dict[str, Any] | None:
            change = delta_state(old, new, now=0.0)
            if change is not None:
                del change["now"]
            return change

        return self._bodies.delta(old, new, build)

    def html(self) -> bytes:
        """The page for the current snapshot, rendered now (never cached: it shows durations)."""
        now = self._clock()
        model = self.model()
        return render(full_state(model, now=now), now=now, rows=self._rows(model)).encode()

"""How the command line shows its results: tables and JSON, and nothing else.

Commands return data (``TaskView`` lists, dicts, plan lines); this module turns them into the
text an operator reads. ``ps`` prints a table or, with ``-o json``, the list of objects whose
keys the reference documents; ``inspect`` prints JSON.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.core.snapshot import TaskView

__all__ = ["fmt_time", "json_text", "task_table", "tasks_json", "watch_frame"]

_PS_HEADER = (
    "NAME",
    "ID",
    "DESIRED",
    "STATE",
    "RESTARTS",
    "EXIT",
    "CONTAINER",
    "UPDATED",
    "MESSAGE",
)


def fmt_time(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC, to the second."""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    all_rows = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header) - 1)]
    out = []
    for r in all_rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
        out.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(out)


def task_table(views: Sequence[TaskView]) -> str:
    """``reconciler ps``: one row per instance; history rows are indented under their name."""
    rows = []
    for v in views:
        message = v.message or ""
        if v.err and v.err not in message:
            message = f"{message}: {v.err}" if message else v.err
        rows.append(
            (
                v.name if v.current else f"  {v.name}",
                v.id,
                v.desired_state.label,
                v.state.label,
                str(v.restarts),
                "" if v.exit_code is None else str(v.exit_code),
                (v.container_id or "")[:12],
                fmt_time(v.updated_at),
                message,
            )
        )
    return table(_PS_HEADER, rows)


def tasks_json(views: Sequence[TaskView]) -> str:
    """``reconciler ps -o json``."""
    return json_text([v.to_json() for v in views])


def json_text(value: Any) -> str:
    return json.dumps(value, indent=2)


def watch_frame(text: str, now: float) -> str:
    """One screen of ``ps --watch``: clear, draw, say when."""
    stamp = dt.datetime.fromtimestamp(now, tz=dt.UTC).strftime("%H:%M:%S")
    return f"\x1b[H\x1b[2J{text}\n\nrefreshed {stamp} (Ctrl-C to quit)\n"

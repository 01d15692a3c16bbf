"""``main()``: parse, merge ``--config``, set up logging, run the command, show its result.

Each command is a function that returns data and a renderer that turns that data into text
(``HANDLERS``); what a failure prints and which code it exits with is ``exits.outcome``'s one
decision. The flags themselves are declared in ``options``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.cli.exits import EXIT_OK, outcome
from reconciler.cli.logfmt import setup_logging
from reconciler.cli.options import CommandSpec
from reconciler.cli.parser import apply_config, apply_defaults, build_parser
from reconciler.cli.render import json_text, task_table, tasks_json

__all__ = ["HANDLERS", "main"]


@dataclass(frozen=True, slots=True)
class Handler:
    """How one command runs: ``run`` returns data (or, with no ``render``, an exit code) and
    ``render`` turns that data into the text printed on stdout."""

    run: Callable[[Any], Any]
    render: Callable[[Any, Any], str] | None = None


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported when first called: a command loads only what it uses.

    The one place the command line imports late, for a measured reason: importing every
    command's code took about 0.6 s on a 2-core edge VM (the fleet's NATS client, podman-py,
    jsonschema), against about 0.04 s for this module, so ``reconciler validate`` or ``ps``
    never pays for podman and NATS, and an agent's restart never loads the fleet's code."""

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(f"reconciler.cli.{module}"), name)(*args)

    call.__name__ = name
    return call


def _render_ps(views: Any, args: Any) -> str:
    if views is None:
        return ""
    return tasks_json(views) if args.output == "json" else task_table(views)


def _lines(lines: Any, _: Any) -> str:
    return "\n".join(lines)


HANDLERS: dict[tuple[str, ...], Handler] = {
    ("run",): Handler(_lazy("agent", "run")),
    ("validate",): Handler(_lazy("tasks", "validate"), lambda n, _: f"ok: {n} task(s)"),
    ("apply",): Handler(_lazy("tasks", "apply"), lambda lines, _: "\n".join(map(str, lines))),
    ("ps",): Handler(_lazy("tasks", "ps_command"), _render_ps),
    ("inspect",): Handler(_lazy("tasks", "inspect"), lambda data, _: json_text(data)),
    ("logs",): Handler(_lazy("logs", "logs")),
    ("manager", "init"): Handler(
        _lazy("manager", "manager_init"),
        lambda done, _: "\n".join(f"{what} {bucket}" for bucket, what in done),
    ),
    ("manager", "run"): Handler(_lazy("manager", "manager_run")),
    ("manager", "apply"): Handler(
        _lazy("manager", "manager_apply"), lambda lines, _: "\n".join(lines)
    ),
    ("manager", "rm"): Handler(_lazy("manager", "manager_rm"), lambda lines, _: "\n".join(lines)),
    ("manager", "ps"): Handler(_lazy("manager", "manager_ps"), _lazy("manager", "render_ps")),
    ("manager", "nodes"): Handler(
        _lazy("manager", "manager_nodes"), _lazy("manager", "render_nodes")
    ),
    ("manager", "node", "add"): Handler(_lazy("manager", "node_add"), _lines),
    ("manager", "node", "rm"): Handler(_lazy("manager", "node_rm"), _lines),
    ("manager", "node", "ls"): Handler(
        _lazy("manager", "node_ls"), _lazy("manager", "render_identities")
    ),
    ("manager", "node", "users-file"): Handler(_lazy("manager", "node_users_file"), _lines),
    ("manager", "drain"): Handler(
        _lazy("nodecontrol", "manager_availability"), _lazy("nodecontrol", "render_availability")
    ),
    ("manager", "pause"): Handler(
        _lazy("nodecontrol", "manager_availability"), _lazy("nodecontrol", "render_availability")
    ),
    ("manager", "activate"): Handler(
        _lazy("nodecontrol", "manager_availability"), _lazy("nodecontrol", "render_availability")
    ),
    ("manager", "label"): Handler(
        _lazy("nodecontrol", "manager_label"), _lazy("nodecontrol", "render_label")
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    spec: CommandSpec = args.spec
    handler = HANDLERS[spec.path]
    try:
        apply_config(args, spec)
        apply_defaults(args, spec)
        setup_logging(args.log_level)
        result = handler.run(args)
    except Exception as err:
        decided = outcome(err)
        if decided is None:
            raise
        code, lines = decided
        for line in lines:
            print(line, file=sys.stderr)
        return code
    if handler.render is None:
        return int(result)
    text = handler.render(result, args)
    if text:
        print(text)
    return EXIT_OK

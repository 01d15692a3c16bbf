"""The desired-state schema: declared as JSON Schema, checked by ``jsonschema``, turned into specs.

This module owns what a valid task looks like in a desired-state file and how a valid
one becomes a ``reconciler.core.session.DesiredTask`` in the canonical units of
``reconciler.core.model``.

Why JSON Schema: the schema is data, so it reads like the contract, and ``jsonschema`` reports
every violation with the exact path of the bad value, which ``yamlsource.SourceMap`` maps back to
a file line. Everything a pure schema cannot say well is still declared in it, as a named
``format`` (``formats``). Problems are worded by ``messages``; rules that span several fields,
and the conversion into a ``TaskSpec``, are ``convert``'s. Names that must be unique across
files are the loader's business.

The same task validator serves files (``tasks[i]`` inside a ``TaskSet`` document) and the fleet
session, which delivers one task as a JSON dict with the YAML's field names (``parse_task``).

Limits: every duration and size is bounded, so nothing read from a file can become an infinite
or absurd number downstream (a deadline, a cgroup limit): ``stopGracePeriod`` is at most an
hour, every other duration at most a day, ``memory`` and ``logs.maxSize`` at most 1Ti, and
``cpus`` at most 1024 and finite. Env names are what a shell can export
(``[A-Za-z_][A-Za-z0-9_]*``). Checking stops at a caller's problem limit, so a file of
thousands of broken tasks costs no more than its first few dozen problems.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator

from reconciler.core.model import TaskState
from reconciler.core.session import DesiredTask
from reconciler.spec.convert import Converter
from reconciler.spec.formats import (
    API_VERSION,
    FORMATS,
    KIND,
    MAX_CPUS,
    MAX_DURATION,
    MAX_RESTART_DELAY,
    MAX_SIZE,
    MAX_STOP_GRACE_PERIOD,
    RESERVED_LABEL_PREFIX,
    duration_format,
    parse_device,
    parse_port,
    parse_signal,
)
from reconciler.spec.messages import schema_problems, unique
from reconciler.spec.problems import DesiredStateError, Problem
from reconciler.spec.yamlsource import SourceMap

__all__ = [
    "API_VERSION",
    "DOCUMENT_SCHEMA",
    "KIND",
    "MAX_CPUS",
    "MAX_DURATION",
    "MAX_RESTART_DELAY",
    "MAX_SIZE",
    "MAX_STOP_GRACE_PERIOD",
    "RESERVED_LABEL_PREFIX",
    "TASK_SCHEMA",
    "check_document",
    "parse_device",
    "parse_port",
    "parse_signal",
    "parse_task",
    "task_problems",
]


def _duration(maximum: float = MAX_DURATION) -> dict[str, Any]:
    return {"type": "string", "format": duration_format(maximum)}


_DURATION = _duration()
_SIZE: dict[str, Any] = {
    "type": ["integer", "string"],
    "format": "positive-size",
    "minimum": 1,
    "maximum": MAX_SIZE,
}
_SCALAR_MESSAGE = (
    "must be a scalar (string, number or boolean); lists and maps are not allowed, "
    "quote the text instead"
)
_SCALAR: dict[str, Any] = {
    "type": ["string", "number", "boolean", "null"],
    "x-message": _SCALAR_MESSAGE,
}


def _strings(**extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", **extra}}


def _when_type(kind: str, then: dict[str, Any]) -> dict[str, Any]:
    return {"if": {"properties": {"type": {"const": kind}}, "required": ["type"]}, "then": then}


MOUNT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "target"],
    "properties": {
        "type": {"enum": ["bind", "volume", "tmpfs"]},
        "source": {"type": "string"},
        "target": {"type": "string", "format": "absolute-path"},
        "readOnly": {"type": "boolean"},
    },
    "allOf": [
        _when_type(
            "bind",
            {
                "required": ["source"],
                "x-message": "required for a bind mount (the host path)",
                "properties": {"source": {"format": "absolute-path"}},
            },
        ),
        _when_type(
            "volume",
            {
                "required": ["source"],
                "x-message": "required for a volume mount (the volume name)",
                "properties": {"source": {"format": "volume-name"}},
            },
        ),
        _when_type(
            "tmpfs",
            {"properties": {"source": {"not": {}, "x-message": "a tmpfs mount takes no source"}}},
        ),
    ],
}

TASK_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "reconciler/v1 task",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "image"],
    "properties": {
        "name": {"type": "string", "format": "dns-label"},
        "image": {"type": "string", "format": "image"},
        "command": {**_strings(), "minItems": 1},
        "entrypoint": _strings(),
        "env": {
            "type": "object",
            "propertyNames": {"format": "env-name"},
            "additionalProperties": _SCALAR,
        },
        "labels": {
            "type": "object",
            "propertyNames": {"format": "label-key"},
            "additionalProperties": _SCALAR,
        },
        "desiredState": {"enum": ["running", "shutdown"]},
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "cpus": {
                    "type": "number",
                    "format": "finite",
                    "exclusiveMinimum": 0,
                    "maximum": MAX_CPUS,
                },
                "memory": _SIZE,
            },
        },
        "ports": _strings(format="port"),
        "mounts": {"type": "array", "items": MOUNT_SCHEMA},
        "network": {"enum": ["bridge", "host", "none"]},
        "user": {"type": ["string", "integer"], "format": "user", "minimum": 0},
        "workdir": {"type": "string", "format": "absolute-path"},
        "devices": _strings(format="device"),
        "capAdd": _strings(format="capability"),
        "capDrop": _strings(format="capability"),
        "stopSignal": {"type": "string", "format": "signal"},
        "stopGracePeriod": _duration(MAX_STOP_GRACE_PERIOD),
        "pull": {"enum": ["missing", "always", "never"]},
        "logs": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"maxSize": _SIZE},
        },
        "restart": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "condition": {"enum": ["any", "on-failure", "none"]},
                "delay": _duration(MAX_RESTART_DELAY),
                "maxDelay": _duration(MAX_RESTART_DELAY),
                "maxAttempts": {"type": "integer", "minimum": 0},
                "window": _DURATION,
            },
        },
        "healthcheck": {
            "type": "object",
            "additionalProperties": False,
            "required": ["test"],
            "properties": {
                "test": {**_strings(), "minItems": 1},
                "interval": _DURATION,
                "timeout": _DURATION,
                "retries": {"type": "integer", "minimum": 1},
                "startPeriod": _DURATION,
            },
        },
        "update": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "order": {"enum": ["stop-first", "start-first"]},
                "monitor": _DURATION,
                "failureAction": {"enum": ["rollback", "pause", "continue"]},
            },
        },
        "dependsOn": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["task"],
                "properties": {
                    "task": {"type": "string", "format": "dns-label"},
                    "condition": {"enum": ["started", "healthy", "completed"]},
                },
            },
        },
    },
}

DOCUMENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "reconciler/v1 TaskSet",
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "tasks"],
    "properties": {
        "apiVersion": {"const": API_VERSION},
        "kind": {"const": KIND},
        # Each task is checked on its own by TASK_SCHEMA, so its problems carry its own prefix.
        "tasks": {"type": "array"},
    },
}

_TASK_VALIDATOR = Draft202012Validator(TASK_SCHEMA, format_checker=FORMATS)
_DOCUMENT_VALIDATOR = Draft202012Validator(DOCUMENT_SCHEMA, format_checker=FORMATS)


def task_problems(
    data: Any, *, path: str, field: str, source: SourceMap, limit: int | None = None
) -> tuple[DesiredTask | None, list[Problem]]:
    """Validate one task value and convert it; never raises for bad input.

    Returns ``(task, [])`` for a valid task, else ``(None, problems)``. ``field`` is the
    prefix of every FIELD (``tasks[3]``), ``source`` locates values relative to the task.
    With a ``limit``, at most that many schema problems are looked for.
    """
    problems = schema_problems(
        _TASK_VALIDATOR, data, path=path, field=field, source=source, limit=limit
    )
    if problems:
        return None, problems
    checker = Converter(data, path=path, field=field, source=source)
    spec = checker.spec()
    if checker.problems:
        return None, unique(checker.problems)
    state = TaskState.SHUTDOWN if data.get("desiredState") == "shutdown" else TaskState.RUNNING
    return DesiredTask(spec=spec, desired_state=state), []


def parse_task(
    doc: Mapping[str, Any],
    *,
    path: str = "<json>",
    field: str = "task",
    lines: SourceMap | None = None,
) -> DesiredTask:
    """Validate one task given as a mapping with the YAML's field names, and convert it.

    This is how the fleet session reads a spec delivered as JSON. ``path`` and ``field`` only
    shape the error lines (``<json>:0: task.image: required field is missing``); ``lines``, a
    ``SourceMap`` relative to the task, supplies line numbers and the scalars' text when the
    mapping came from YAML. Raises ``DesiredStateError`` listing every problem.
    """
    task, problems = task_problems(doc, path=path, field=field, source=lines or SourceMap())
    if task is None:
        raise DesiredStateError(problems)
    return task


def check_document(
    data: Any, *, path: str, source: SourceMap, start_line: int, limit: int | None = None
) -> tuple[list[tuple[DesiredTask, int, str, tuple[int, ...]]], list[Problem]]:
    """Validate one ``TaskSet`` document; return its valid tasks and its problems.

    Each task comes with the line of its name, its FIELD prefix (``tasks[2]``) and the line of
    each of its ``dependsOn`` entries.

    Problems for every invalid part are returned, never raised. A null document (an empty
    ``---`` section) is a problem: it is almost always a truncated or mis-split file. With a
    ``limit``, checking stops once that many problems are found (the tasks returned are then
    only those checked so far, and the problems say the document is invalid).
    """
    if data is None:
        return [], [Problem(path, start_line, "document", "document is empty")]
    problems = schema_problems(
        _DOCUMENT_VALIDATOR, data, path=path, field="", source=source, limit=limit
    )
    tasks: list[tuple[DesiredTask, int, str, tuple[int, ...]]] = []
    items = data.get("tasks") if isinstance(data, dict) else None
    if isinstance(items, list):
        for i, item in enumerate(items):
            left = None if limit is None else limit - len(problems)
            if left is not None and left <= 0:
                break
            prefix = f"tasks[{i}]"
            task_source = source.child(("tasks", i))
            task, more = task_problems(
                item, path=path, field=prefix, source=task_source, limit=left
            )
            problems.extend(more)
            if task is not None:
                tasks.append(
                    (
                        task,
                        task_source.line(("name",)),
                        prefix,
                        tuple(
                            task_source.line(("dependsOn", j, "task"))
                            for j in range(len(task.spec.depends_on))
                        ),
                    )
                )
    return tasks, problems

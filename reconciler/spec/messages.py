"""Turning ``jsonschema``'s validation errors into ``PATH:LINE: FIELD: problem`` lines.

A validation error knows the path of the bad value and the rule it broke; an operator wants the
file line, the field as written (``tasks[0].resources.memory``) and a sentence that says what to
write instead (``must be a duration such as 500ms, 10s or 1h30m, not the integer 5``). This
module owns that translation: the wording of every schema problem, unknown-field hints
("did you mean ...?"), and quoting advice for a scalar YAML read as the wrong type.
"""

from __future__ import annotations

import difflib
import itertools
import json
from collections.abc import Iterable
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from reconciler.spec.problems import Problem
from reconciler.spec.units import format_size
from reconciler.spec.yamlsource import FieldPath, SourceMap, format_field

__all__ = ["schema_problems", "unique"]

_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


_NOUNS = {
    "duration": "a duration such as 500ms, 10s or 1h30m",
    "positive-size": "a size such as 64Mi or 1G, or a number of bytes",
    "port": 'a string such as "8080:80/tcp" (quote it in YAML)',
    "device": 'a string such as "/dev/ttyUSB0"',
}


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else _kind(value)


def _plain(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _problems_from_error(
    error: ValidationError, *, path: str, field: str, source: SourceMap
) -> Iterable[Problem]:
    rel: FieldPath = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    custom = schema.get("x-message")
    kw: Any = error.validator
    value: Any = error.validator_value
    instance: Any = error.instance

    def at(p: FieldPath, message: str, *, key: bool = False) -> Problem:
        line = source.key_line(p) if key else source.line(p)
        return Problem(path, line, format_field(p, field), message)

    if kw == "required":
        missing = [p for p in value if isinstance(instance, dict) and p not in instance]
        name = next((p for p in missing if error.message.startswith(repr(p))), None)
        name = name or (missing[0] if missing else "?")
        problem = at(rel, _message(error, custom) if custom else "required field is missing")
        yield Problem(path, problem.line, format_field((*rel, name), field), problem.message)
    elif kw == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        for extra in sorted(k for k in instance if k not in known):
            close = difflib.get_close_matches(extra, known, n=1) if len(extra) <= 64 else []
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(known)}"
            yield at((*rel, extra), f"unknown field{hint}", key=True)
    elif "propertyNames" in error.relative_schema_path:
        yield at((*rel, instance), _message(error, custom), key=True)
    else:
        message = _message(error, custom)
        raw = source.raw_text(rel)
        wanted = value if isinstance(value, list) else [value]
        if kw == "type" and "string" in wanted and raw and not isinstance(instance, str):
            message += f'; quote it ("{raw}") to make it text'
        yield at(rel, message)


def _message(error: ValidationError, custom: str | None) -> str:
    kw: Any = error.validator
    value: Any = error.validator_value
    instance: Any = error.instance
    if custom and kw in ("type", "required", "not"):
        return custom
    if kw == "format" and error.cause is not None:
        return str(error.cause)
    fmt = error.schema.get("format") if isinstance(error.schema, dict) else None
    noun = _NOUNS.get(str(fmt).partition(":")[0])
    if kw == "type" and noun:
        return f"must be {noun}, not {_kind(instance)}"
    if kw == "type":
        kinds = value if isinstance(value, list) else [value]
        kinds = [k for k in kinds if k != "null"]
        return f"must be {' or '.join(_TYPE_WORDS[k] for k in kinds)}, not {_kind(instance)}"
    if kw == "enum":
        return f"must be one of {', '.join(_plain(v) for v in value)}, not {_show(instance)}"
    if kw == "const":
        return f"must be {_plain(value)}, not {_show(instance)}"
    if kw == "minimum":
        return f"must be at least {value}, not {instance}"
    if kw == "exclusiveMinimum":
        return f"must be greater than {value}, not {instance}"
    if kw == "maximum" and fmt == "positive-size":
        return f"must be at most {format_size(value)} ({value} bytes), not {instance}"
    if kw == "maximum":
        return f"must be at most {value}, not {instance}"
    if kw == "minItems":
        return "must not be empty" if value == 1 else f"must have at least {value} items"
    return str(error.message)


def schema_problems(
    validator: Draft202012Validator,
    data: Any,
    *,
    path: str,
    field: str,
    source: SourceMap,
    limit: int | None = None,
) -> list[Problem]:
    """The schema's problems with ``data``; checking stops once ``limit`` are found."""
    problems: list[Problem] = []
    for error in validator.iter_errors(data):
        found = _problems_from_error(error, path=path, field=field, source=source)
        if limit is None:
            problems.extend(found)
            continue
        problems.extend(itertools.islice(found, max(0, limit - len(problems))))
        if len(problems) >= limit:
            break
    return unique(problems)


def unique(problems: Iterable[Problem]) -> list[Problem]:
    return sorted(set(problems), key=lambda p: (p.path, p.line, p.field, p.message))

"""The desired-state schema: declared as JSON Schema, checked by ``jsonschema``, turned into specs.

This module owns what a valid task looks like in a desired-state file and how a valid
one becomes a ``reconciler.session.DesiredTask`` in the canonical units of ``reconciler.model``.

Why JSON Schema: the schema is data, so it reads like the contract, and ``jsonschema`` reports
every violation with the exact path of the bad value, which ``yamlsource.SourceMap`` maps back to
a file line. Everything a pure schema cannot say well is still declared in it, as a named
``format`` whose checker (below) raises a ``UnitError``/``ValueError`` with an operator-grade
message: DNS-label names, durations, sizes, ports, devices, signals, paths. The few rules that
span several fields (``maxDelay`` not below ``delay``, repeated host ports or mount targets,
the shape of a health-check test) run after the schema, on tasks the schema accepted. Names that
must be unique across files are the loader's business.

The same task validator serves files (``tasks[i]`` inside a ``TaskSet`` document) and the fleet
session, which delivers one task as a JSON dict with the YAML's field names (``parse_task``).

Limits: every duration and size is bounded, so nothing read from a file can become an infinite
or absurd number downstream (a deadline, a cgroup limit): ``stopGracePeriod`` is at most an
hour, every other duration at most a day, ``memory`` and ``logs.maxSize`` at most 1Ti, and
``cpus`` at most 1024 and finite. Env names are what a shell can export
(``[A-Za-z_][A-Za-z0-9_]*``). Checking stops at a caller's problem limit, so a file of
thousands of broken tasks costs no more than its first few dozen problems.

Canonical form (so equal intent compares equal): env and labels are sorted by key; signals are
upper case with the ``SIG`` prefix; env and label values are the scalar's text as written in the
YAML (``1.10`` stays ``1.10``, ``yes`` stays ``yes``); from JSON, booleans are ``true``/``false``
and null is the empty string.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, ValidationError

from reconciler.desired.problems import DesiredStateError, Problem
from reconciler.desired.units import (
    UnitError,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)
from reconciler.desired.yamlsource import FieldPath, SourceMap, format_field
from reconciler.model import (
    Device,
    HealthCheck,
    Mount,
    PortMapping,
    Resources,
    RestartPolicy,
    TaskSpec,
    TaskState,
)
from reconciler.session import DesiredTask

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

API_VERSION = "reconciler/v1"
KIND = "TaskSet"
RESERVED_LABEL_PREFIX = "reconciler."

MAX_STOP_GRACE_PERIOD = 3600.0
"""``stopGracePeriod`` is at most an hour: a stop must end while someone still waits for it."""
MAX_RESTART_DELAY = 24 * 3600.0
"""``restart.delay`` and ``restart.maxDelay`` are at most a day."""
MAX_DURATION = 24 * 3600.0
"""Every other duration is at most a day too."""
MAX_SIZE = 1024**4
"""``memory`` and ``logs.maxSize`` are at most 1Ti."""
MAX_CPUS = 1024

# ---------------------------------------------------------------------------------- formats

FORMATS = FormatChecker(formats=())


_StrCheck = Callable[[str], object]


def _string_format(name: str) -> Callable[[_StrCheck], _StrCheck]:
    """Register a checker that applies to strings only (other types are the schema's job)."""

    def register(func: _StrCheck) -> _StrCheck:
        def check(instance: object) -> bool:
            if isinstance(instance, str):
                func(instance)
            return True

        FORMATS.checks(name, raises=(ValueError,))(check)
        return func

    return register


_DNS_CHARS = re.compile(r"[a-z0-9-]+")


@_string_format("dns-label")
def _check_dns_label(value: str) -> None:
    reason = None
    if not value:
        reason = "it is empty"
    elif len(value) > 63:
        reason = f"it is {len(value)} characters long, at most 63 are allowed"
    elif not _DNS_CHARS.fullmatch(value):
        reason = "only lowercase letters a-z, digits and '-' are allowed"
    elif value[0] == "-" or value[-1] == "-":
        reason = "it must start and end with a letter or digit"
    if reason:
        raise ValueError(f"{value!r} is not a DNS label: {reason}")


@_string_format("image")
def _check_image(value: str) -> None:
    if not value or any(c.isspace() for c in value) or value.startswith("-"):
        raise ValueError(f"{value!r} is not an image reference such as localhost/busybox:latest")


def _duration_format(maximum: float) -> str:
    """The name of a format for durations of at most ``maximum`` seconds, registered once."""
    name = f"duration:{format_duration(maximum)}"
    if name not in FORMATS.checkers:

        @_string_format(name)
        def _check_duration(value: str) -> None:
            parse_duration(value, maximum=maximum)

    return name


@_string_format("positive-size")
def _check_size(value: str) -> None:
    if parse_size(value, maximum=MAX_SIZE) <= 0:
        raise UnitError(f"size {value!r} must be greater than 0")


@FORMATS.checks("finite", raises=(ValueError,))
def _check_finite(instance: object) -> bool:
    if isinstance(instance, float) and not math.isfinite(instance):
        raise ValueError(f"must be a finite number, not {instance}")
    return True


@_string_format("absolute-path")
def _check_absolute_path(value: str) -> None:
    if not value.startswith("/") or "\0" in value:
        raise ValueError(f"{value!r} is not an absolute path (it must start with '/')")


_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@_string_format("volume-name")
def _check_volume_name(value: str) -> None:
    if not _VOLUME_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a volume name (letters, digits, '_', '.', '-', starting with a "
            "letter or digit); use type: bind for a host path"
        )


@_string_format("port")
def _check_port(value: str) -> None:
    parse_port(value)


@_string_format("device")
def _check_device(value: str) -> None:
    parse_device(value)


@_string_format("signal")
def _check_signal(value: str) -> None:
    parse_signal(value)


_CAPABILITY = re.compile(r"ALL|(CAP_)?[A-Z][A-Z0-9_]*", re.IGNORECASE)


@_string_format("capability")
def _check_capability(value: str) -> None:
    if not _CAPABILITY.fullmatch(value):
        raise ValueError(f"{value!r} is not a capability name such as NET_ADMIN or ALL")


_USER_PART = r"[A-Za-z0-9_.][A-Za-z0-9_.-]*"
_USER = re.compile(rf"{_USER_PART}(:{_USER_PART})?")


@_string_format("user")
def _check_user(value: str) -> None:
    if not _USER.fullmatch(value):
        raise ValueError(f"{value!r} is not a user: use NAME, UID, NAME:GROUP or UID:GID")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@_string_format("env-name")
def _check_env_name(value: str) -> None:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a usable environment variable name: use letters, digits and "
            "'_', not starting with a digit"
        )


@_string_format("label-key")
def _check_label_key(value: str) -> None:
    if not value:
        raise ValueError("a label key must not be empty")
    if value.startswith(RESERVED_LABEL_PREFIX):
        raise ValueError(
            f"label key {value!r} is reserved: keys starting with "
            f"{RESERVED_LABEL_PREFIX!r} belong to the agent"
        )


# -------------------------------------------------------------------------- value parsers


def parse_port(text: str) -> PortMapping:
    """Parse ``[IP:]HOST:CONTAINER[/tcp|/udp]`` (an IPv6 address goes in brackets).

    Raises ``ValueError`` with an operator-grade message for anything else, including port
    numbers outside 1-65535.
    """
    hint = "use HOST:CONTAINER[/tcp|udp], such as 8080:80/tcp"
    rest, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp") or ("/" in text and not text.partition("/")[2]):
        raise ValueError(f"{text!r}: the protocol must be tcp or udp; {hint}")
    host_ip = ""
    if rest.startswith("["):
        addr, sep, rest = rest[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not a port mapping; {hint}")
        host_ip = _check_ip(addr, text, version=6)
    parts = rest.split(":")
    if len(parts) == 3 and not host_ip:
        host_ip = _check_ip(parts[0], text, version=4)
        parts = parts[1:]
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not a port mapping; {hint}")
    host, container = (_port_number(p, text) for p in parts)
    return PortMapping(host_port=host, container_port=container, protocol=proto, host_ip=host_ip)


def _check_ip(addr: str, text: str, *, version: int) -> str:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"{text!r}: {addr!r} is not an IP address") from None
    if ip.version != version:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, such as [::1]:8080:80")
    return str(ip)


def _port_number(part: str, text: str) -> int:
    if not part.isdigit() or not part.isascii():
        raise ValueError(f"{text!r}: {part!r} is not a port number")
    n = int(part)
    if not 1 <= n <= 65535:
        raise ValueError(f"{text!r}: port {n} is outside 1-65535")
    return n


def parse_device(text: str) -> Device:
    """Parse ``HOST[:CONTAINER]``, both absolute paths; the container path defaults to HOST."""
    host, _, container = text.partition(":")
    container = container or host
    for p in (host, container):
        if not p.startswith("/") or ":" in p or "\0" in p:
            raise ValueError(
                f"{text!r} is not a device: use HOST[:CONTAINER] with absolute paths, "
                "such as /dev/ttyUSB0"
            )
    return Device(host=host, container=container)


_SIGNALS = frozenset(
    {
        *("HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1"),
        *("SEGV", "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP"),
        *("TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL"),
        *("PWR", "SYS", "RTMIN", "RTMAX"),
    }
)
_RT_SIGNAL = re.compile(r"RTMIN\+(\d+)|RTMAX-(\d+)")


def parse_signal(text: str) -> str:
    """Canonicalise a Linux signal name (``term``, ``SIGTERM``, ``SIGRTMIN+3``) to ``SIGTERM`` form.

    Raises ``ValueError`` for an unknown name. Numbers are not accepted: names read better and
    do not depend on the architecture.
    """
    name = text.upper()
    name = name.removeprefix("SIG")
    rt = _RT_SIGNAL.fullmatch(name)
    if name in _SIGNALS or (rt and 1 <= int(rt.group(1) or rt.group(2)) <= 30):
        return "SIG" + name
    raise ValueError(f"{text!r} is not a signal name such as SIGTERM, SIGINT or SIGQUIT")


# ----------------------------------------------------------------------------------- schema


def _duration(maximum: float = MAX_DURATION) -> dict[str, Any]:
    return {"type": "string", "format": _duration_format(maximum)}


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

# ------------------------------------------------------------------------- error messages

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


def _schema_problems(
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
    return _unique(problems)


def _unique(problems: Iterable[Problem]) -> list[Problem]:
    return sorted(set(problems), key=lambda p: (p.path, p.line, p.field, p.message))


# ------------------------------------------------------------------------------ conversion


def _text(value: object, raw: str | None) -> str:
    """A scalar's text: as written in YAML when known, else its JSON spelling."""
    if raw is not None:
        return raw
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not MISSING}


_RESTART = RestartPolicy()
_HEALTH = _defaults(HealthCheck)
_SPEC = _defaults(TaskSpec)


class _Checker:
    """Cross-field checks and conversion of one schema-valid task."""

    def __init__(self, data: Mapping[str, Any], *, path: str, field: str, source: SourceMap):
        self.data = data
        self.path = path
        self.field = field
        self.source = source
        self.problems: list[Problem] = []

    def problem(self, p: FieldPath, message: str) -> None:
        self.problems.append(
            Problem(self.path, self.source.line(p), format_field(p, self.field), message)
        )

    def scalar_map(self, key: str) -> tuple[tuple[str, str], ...]:
        m = self.data.get(key) or {}
        return tuple(sorted((k, _text(v, self.source.raw_text((key, k)))) for k, v in m.items()))

    def duration(self, p: FieldPath, default: float) -> float:
        node: Any = self.data
        for part in p:
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return parse_duration(node)

    def ports(self) -> tuple[PortMapping, ...]:
        out: list[PortMapping] = []
        seen: dict[tuple[str, int, str], int] = {}
        for i, text in enumerate(self.data.get("ports", ())):
            port = parse_port(text)
            key = (port.host_ip, port.host_port, port.protocol)
            if key in seen:
                self.problem(
                    ("ports", i),
                    f"host port {port.host_port}/{port.protocol} is already published by "
                    f"ports[{seen[key]}]",
                )
            seen.setdefault(key, i)
            out.append(port)
        return tuple(out)

    def mounts(self) -> tuple[Mount, ...]:
        out: list[Mount] = []
        seen: dict[str, int] = {}
        for i, m in enumerate(self.data.get("mounts", ())):
            target = m["target"]
            if target.rstrip("/") in seen:
                self.problem(
                    ("mounts", i, "target"),
                    f"{target!r} is already mounted by mounts[{seen[target.rstrip('/')]}]",
                )
            seen.setdefault(target.rstrip("/"), i)
            out.append(
                Mount(
                    type=m["type"],
                    target=target,
                    source=m.get("source", ""),
                    read_only=m.get("readOnly", False),
                )
            )
        return tuple(out)

    def restart(self) -> RestartPolicy:
        r = self.data.get("restart") or {}
        policy = RestartPolicy(
            condition=r.get("condition", "any"),
            delay=self.duration(("restart", "delay"), _RESTART.delay),
            max_delay=self.duration(("restart", "maxDelay"), _RESTART.max_delay),
            max_attempts=int(r.get("maxAttempts", 0)),
            window=self.duration(("restart", "window"), _RESTART.window),
        )
        if policy.max_delay < policy.delay:
            where = ("restart", "maxDelay") if "maxDelay" in r else ("restart", "delay")
            self.problem(
                where,
                f"maxDelay ({format_duration(policy.max_delay)}) must not be shorter than "
                f"delay ({format_duration(policy.delay)})",
            )
        return policy

    def healthcheck(self) -> HealthCheck | None:
        h = self.data.get("healthcheck")
        if h is None:
            return None
        test = tuple(h["test"])
        kind = test[0]
        if kind == "CMD-SHELL" and len(test) != 2:
            self.problem(
                ("healthcheck", "test"),
                'CMD-SHELL takes exactly one shell command: ["CMD-SHELL", "wget -q -O- localhost"]',
            )
        elif kind == "CMD" and len(test) < 2:
            self.problem(("healthcheck", "test"), 'CMD needs a command: ["CMD", "/bin/true"]')
        elif kind == "NONE" and len(test) != 1:
            self.problem(("healthcheck", "test"), 'NONE takes no arguments: ["NONE"]')
        elif kind not in ("CMD", "CMD-SHELL", "NONE"):
            self.problem(
                ("healthcheck", "test", 0),
                f"must be CMD, CMD-SHELL or NONE, not {kind!r}, such as "
                '["CMD-SHELL", "wget -q -O- localhost:8080"]',
            )
        timeout = self.duration(("healthcheck", "timeout"), _HEALTH["timeout"])
        interval = self.duration(("healthcheck", "interval"), _HEALTH["interval"])
        for key, seconds in (("interval", interval), ("timeout", timeout)):
            if seconds <= 0:
                self.problem(("healthcheck", key), "must be greater than 0")
        return HealthCheck(
            test=test,
            interval=interval,
            timeout=timeout,
            retries=int(h.get("retries", _HEALTH["retries"])),
            start_period=self.duration(("healthcheck", "startPeriod"), _HEALTH["start_period"]),
        )

    def spec(self) -> TaskSpec:
        d = self.data
        res = d.get("resources") or {}
        logs = d.get("logs") or {}
        command = d.get("command")
        entrypoint = d.get("entrypoint")
        user = d.get("user")
        signal = d.get("stopSignal")
        return TaskSpec(
            name=d["name"],
            image=d["image"],
            command=tuple(command) if command is not None else None,
            entrypoint=tuple(entrypoint) if entrypoint is not None else None,
            env=self.scalar_map("env"),
            labels=self.scalar_map("labels"),
            resources=Resources(
                cpus=float(res["cpus"]) if "cpus" in res else None,
                memory=parse_size(res["memory"]) if "memory" in res else None,
            ),
            ports=self.ports(),
            mounts=self.mounts(),
            network=d.get("network", "bridge"),
            user=str(user) if user is not None else None,
            workdir=d.get("workdir"),
            devices=tuple(parse_device(t) for t in d.get("devices", ())),
            cap_add=tuple(d.get("capAdd", ())),
            cap_drop=tuple(d.get("capDrop", ())),
            stop_signal=parse_signal(signal) if signal is not None else None,
            stop_grace_period=self.duration(("stopGracePeriod",), _SPEC["stop_grace_period"]),
            pull=d.get("pull", "missing"),
            log_max_size=parse_size(logs["maxSize"])
            if "maxSize" in logs
            else _SPEC["log_max_size"],
            restart=self.restart(),
            healthcheck=self.healthcheck(),
        )


def task_problems(
    data: Any, *, path: str, field: str, source: SourceMap, limit: int | None = None
) -> tuple[DesiredTask | None, list[Problem]]:
    """Validate one task value and convert it; never raises for bad input.

    Returns ``(task, [])`` for a valid task, else ``(None, problems)``. ``field`` is the
    prefix of every FIELD (``tasks[3]``), ``source`` locates values relative to the task.
    With a ``limit``, at most that many schema problems are looked for.
    """
    problems = _schema_problems(
        _TASK_VALIDATOR, data, path=path, field=field, source=source, limit=limit
    )
    if problems:
        return None, problems
    checker = _Checker(data, path=path, field=field, source=source)
    spec = checker.spec()
    if checker.problems:
        return None, _unique(checker.problems)
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
) -> tuple[list[tuple[DesiredTask, int, str]], list[Problem]]:
    """Validate one ``TaskSet`` document; return its valid tasks and its problems.

    Each task comes with the line of its name and its FIELD prefix (``tasks[2]``).

    Problems for every invalid part are returned, never raised. A null document (an empty
    ``---`` section) is a problem: it is almost always a truncated or mis-split file. With a
    ``limit``, checking stops once that many problems are found (the tasks returned are then
    only those checked so far, and the problems say the document is invalid).
    """
    if data is None:
        return [], [Problem(path, start_line, "document", "document is empty")]
    problems = _schema_problems(
        _DOCUMENT_VALIDATOR, data, path=path, field="", source=source, limit=limit
    )
    tasks: list[tuple[DesiredTask, int, str]] = []
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
                tasks.append((task, task_source.line(("name",)), prefix))
    return tasks, problems

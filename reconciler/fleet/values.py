"""The JSON values in the fleet's buckets: what an agent writes, and what it reads. Pure.

Writing (every text made printable by ``reconciler.core.text.printable``, so that what an agent
writes passes the parser below):

- ``node_value``: the node's heartbeat in ``reconciler_nodes/<node>``: its description (the
  fields of ``/v1/node``, through the one node codec, ``reconciler.core.codec.node_to_dict``),
  ``ready``, ``availability``, ``labels``, ``version`` and ``heartbeatAt``.
- ``status_value``: the status of a named task's current instance in
  ``reconciler_status/<node>.<name>``: ``id``, ``state``, ``message``, ``error``, ``exitCode``,
  ``containerId``, ``updatedAt`` and ``restarts``. States are the lowercase names, times are
  RFC 3339 in UTC with ``Z``, as ``reconciler ps -o json`` prints them.

Reading, where every value may be hostile (``BadValue`` says what is wrong, never a traceback):

- ``load_json``: the one parser of every value read from NATS, by the agent and the manager:
  JSON held to the limits of every untrusted document (``reconciler.spec.limits``: 1 MiB,
  UTF-8, depth 64, finite numbers, integers of at most 18 digits, no control character but
  TAB, CR and LF in any text or key). Every other reader below starts from it.
- ``BadValues``: which bad values were reported, so each key and revision is logged and
  counted once.

- ``parse_fleet``: ``reconciler_control/fleet``: ``heartbeatPeriod`` (a duration such as ``5s``,
  or seconds as a number), ``managers`` (NATS URLs) and ``formatVersion`` (``FLEET_FORMAT``:
  absent in a fleet made before operators labelled nodes).
- ``parse_node_control``: ``reconciler_control/node.<node>``: ``availability``, all an agent
  reads of it; ``parse_node_controls``: the whole value as the manager reads it, with the
  operators' ``labels`` (``parse_labels``: a map of label keys to strings, ``check_label``).
- ``parse_status``: a stored status, for the compare-and-set rule ``status_supersedes``;
  ``parse_state`` its ``state``, a ``TaskState`` label, for the manager too.

The status rule: a status never moves backwards for the same instance id; a status of another
instance replaces the stored one when that one has ended (a new instance follows its
predecessor's terminal status) or is older.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from reconciler.core.codec import compact, node_to_dict
from reconciler.core.model import Availability, NodeDescription, TaskState
from reconciler.core.session import NamedStatus
from reconciler.core.text import printable
from reconciler.spec.limits import (
    MAX_BYTES,
    MAX_DEPTH,
    MAX_INT_DIGITS,
    control_character,
    control_problem,
    int_digits,
)
from reconciler.spec.units import UnitError, parse_duration
from reconciler.spec.yamlsource import FieldPath, format_field

__all__ = [
    "DEFAULT_HEARTBEAT_PERIOD",
    "FLEET_FORMAT",
    "MAX_HEARTBEAT_PERIOD",
    "MAX_LABELS",
    "MAX_LABEL_TEXT",
    "MAX_VALUE_BYTES",
    "MIN_HEARTBEAT_PERIOD",
    "BadValue",
    "BadValues",
    "FleetSettings",
    "NodeControl",
    "StoredStatus",
    "check_label",
    "load_json",
    "node_value",
    "parse_fleet",
    "parse_labels",
    "parse_node_control",
    "parse_node_controls",
    "parse_rfc3339",
    "parse_state",
    "parse_status",
    "rfc3339",
    "status_supersedes",
    "status_value",
]

DEFAULT_HEARTBEAT_PERIOD = 5.0
MIN_HEARTBEAT_PERIOD = 0.05
MAX_HEARTBEAT_PERIOD = 3600.0
MAX_VALUE_BYTES = MAX_BYTES
"""Values larger than this are refused unread (NATS's own default limit is 1 MiB too)."""

_STATES = {s.label: s for s in TaskState}
_SURROGATE = re.compile(r"[\ud800-\udfff]")

FLEET_FORMAT = 2
"""The fleet's format version, ``formatVersion`` in ``reconciler_control/fleet``. Absent (1):
a fleet made before operators labelled nodes, whose constraints read the agents' own labels;
2: ``node.labels`` are the operators' labels in ``reconciler_control/node.<node>``."""


class BadValue(ValueError):
    """A value in a bucket that does not follow the contract; the message says why."""


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """Fleet-wide settings from ``reconciler_control/fleet``."""

    heartbeat_period: float = DEFAULT_HEARTBEAT_PERIOD
    managers: tuple[str, ...] = ()
    format_version: int | None = None  # None: a fleet made before FLEET_FORMAT 2


@dataclass(frozen=True, slots=True)
class NodeControl:
    """``reconciler_control/node.<node>`` as the manager reads it: the availability and the
    labels that operators set (``reconciler manager drain|pause|activate`` and ``label``)."""

    availability: Availability = Availability.ACTIVE
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredStatus:
    """The parts of a stored status that decide whether a new one may replace it."""

    id: str
    state: TaskState
    updated_at: float


# --------------------------------------------------------------------------------- time


def rfc3339(ts: float) -> str:
    """Seconds since the epoch as RFC 3339 in UTC, milliseconds, with ``Z``."""
    t = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> float:
    """An RFC 3339 time as seconds since the epoch. Raises ``BadValue``."""
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise BadValue(f"not an RFC 3339 time: {text!r}") from err
    if t.tzinfo is None:
        raise BadValue(f"time without a zone: {text!r}")
    return t.timestamp()


# -------------------------------------------------------------------------------- reading


def load_json(data: bytes) -> Any:
    """Parse a value read from NATS as JSON, held to the limits of every untrusted document
    (``reconciler.spec.limits``): at most 1 MiB, UTF-8, nesting at most 64 deep, finite
    numbers, integers of at most 18 digits, and no control character but TAB, CR and LF in any
    text or key. Raises ``BadValue`` saying which limit, and where; never anything else."""
    if len(data) > MAX_VALUE_BYTES:
        raise BadValue(f"value of {len(data)} bytes is over the {MAX_VALUE_BYTES}-byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadValue(f"not UTF-8: byte 0x{data[err.start]:02x} at offset {err.start}") from None
    try:
        doc = _DECODER.decode(text)
    except json.JSONDecodeError as err:
        raise BadValue(
            f"not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from None
    except RecursionError:
        raise BadValue(f"nesting is deeper than {MAX_DEPTH} levels") from None
    _check_tree(doc)
    return doc


def _constant(name: str) -> NoReturn:
    raise BadValue(f"{name} is not a number JSON allows: numbers must be finite")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadValue(f"the number {text[:40]} is out of range: numbers must be finite")
    return value


def _int(text: str) -> int:
    if int_digits(text) > MAX_INT_DIGITS:
        raise BadValue(f"an integer may have at most {MAX_INT_DIGITS} digits ({text[:20]}...)")
    return int(text)


_DECODER = json.JSONDecoder(parse_float=_float, parse_int=_int, parse_constant=_constant)


def _check_tree(doc: Any) -> None:
    """Depth, and control characters in every text and key, of a parsed value."""
    stack: list[tuple[Any, FieldPath]] = [(doc, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            _check_text(value, path)
            continue
        if not isinstance(value, dict | list):
            continue
        if len(path) >= MAX_DEPTH:
            raise BadValue(f"nesting is deeper than {MAX_DEPTH} levels")
        if isinstance(value, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(value))
            continue
        for key, v in value.items():
            _check_text(key, path, key=True)
            stack.append((v, (*path, key)))


def _check_text(text: str, path: FieldPath, *, key: bool = False) -> None:
    at = control_character(text)
    if at is not None:
        where = format_field(path, "value")
        raise BadValue(f"{where}: {'a key ' if key else ''}{control_problem(text[at])}")
    if not text.isascii() and (lone := _SURROGATE.search(text)) is not None:
        where = format_field(path, "value")
        raise BadValue(f"{where}: holds U+{ord(lone.group()):04X}, a lone surrogate: not UTF-8")


class BadValues:
    """The bad values already reported, so that each key and revision is logged and counted
    once, however often a watch reads it again (after a reconnect, a watch restarted).

    ``first`` says whether a bad value is new; ``good`` forgets a key that holds a good value
    now, or none. Past ``limit`` keys, all are forgotten (a flood costs memory, never a crash).
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._seen: dict[tuple[str, str], int] = {}

    def first(self, bucket: str, key: str, revision: int) -> bool:
        """Whether ``bucket/key`` at ``revision`` is a bad value not reported yet; it is now."""
        if self._seen.get((bucket, key)) == revision:
            return False
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen[(bucket, key)] = revision
        return True

    def good(self, bucket: str, key: str) -> None:
        """``bucket/key`` holds a good value now, or none."""
        self._seen.pop((bucket, key), None)


def _object(data: bytes) -> Mapping[str, Any]:
    doc = load_json(data)
    if not isinstance(doc, dict):
        raise BadValue("expected a JSON object")
    return doc


def parse_fleet(data: bytes) -> FleetSettings:
    """Read ``reconciler_control/fleet``; absent fields take their defaults."""
    doc = _object(data)
    period = DEFAULT_HEARTBEAT_PERIOD
    raw = doc.get("heartbeatPeriod")
    if isinstance(raw, bool):
        raise BadValue("heartbeatPeriod: expected a duration such as '5s'")
    if isinstance(raw, int | float):
        period = float(raw)
    elif isinstance(raw, str):
        try:
            period = parse_duration(raw)
        except (UnitError, ValueError) as err:
            raise BadValue(f"heartbeatPeriod: {err}") from None
    elif raw is not None:
        raise BadValue("heartbeatPeriod: expected a duration such as '5s'")
    if not MIN_HEARTBEAT_PERIOD <= period <= MAX_HEARTBEAT_PERIOD:
        raise BadValue(
            f"heartbeatPeriod: {period:g}s is outside "
            f"{MIN_HEARTBEAT_PERIOD:g}s..{MAX_HEARTBEAT_PERIOD:g}s"
        )
    managers = doc.get("managers", [])
    if not isinstance(managers, list) or not all(
        isinstance(m, str) and m.strip() for m in managers
    ):
        raise BadValue("managers: expected a list of NATS URLs")
    version = doc.get("formatVersion")
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= 1000
    ):
        raise BadValue("formatVersion: expected a whole number from 1")
    return FleetSettings(
        heartbeat_period=period,
        managers=tuple(m.strip() for m in managers),
        format_version=version,
    )


def _availability(doc: Mapping[str, Any]) -> Availability:
    raw = doc.get("availability", Availability.ACTIVE.value)
    try:
        return Availability(raw)
    except ValueError:
        allowed = ", ".join(a.value for a in Availability)
        raise BadValue(f"availability: {raw!r} is not one of {allowed}") from None


def parse_node_control(data: bytes) -> Availability:
    """Read ``reconciler_control/node.<node>``: its ``availability`` (default active)."""
    return _availability(_object(data))


MAX_LABELS = 64
"""The most labels that operators may set on one node."""
MAX_LABEL_TEXT = 256
"""The most characters of a label's key and of its value."""


def check_label(key: str, value: str) -> None:
    """Raise ``ValueError`` unless ``key=value`` can be a node label: a key that a constraint
    can name (not empty; no space, ``=`` or ``!``), a value of printable text, both at most
    ``MAX_LABEL_TEXT`` characters. The rule of ``--node-label`` and ``manager label``."""
    if not key or any(c.isspace() or c in "=!" for c in key):
        raise ValueError(f"label key {key!r}: expected text without spaces, '=' or '!'")
    if not value.isprintable():
        raise ValueError(f"label {key}: the value holds a control character")
    for what, text in (("key", key), ("value", value)):
        if len(text) > MAX_LABEL_TEXT:
            raise ValueError(f"label {key[:40]}: the {what} is over {MAX_LABEL_TEXT} characters")


def parse_labels(raw: object) -> dict[str, str]:
    """A ``labels`` field: a map of label keys to strings (``check_label``), at most
    ``MAX_LABELS``; absent (None) is none. Raises ``BadValue``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise BadValue("labels: expected a map of strings")
    if len(raw) > MAX_LABELS:
        raise BadValue(f"labels: {len(raw)} labels, more than {MAX_LABELS}")
    for key, value in raw.items():
        try:
            check_label(key, value)
        except ValueError as err:
            raise BadValue(f"labels: {err}") from None
    return dict(sorted(raw.items()))


def parse_node_controls(data: bytes) -> NodeControl:
    """Read ``reconciler_control/node.<node>`` whole: availability and the operators' labels."""
    doc = _object(data)
    return NodeControl(_availability(doc), parse_labels(doc.get("labels")))


def parse_state(raw: object) -> TaskState:
    """A status's ``state``: one of ``TaskState``'s lowercase labels. Raises ``BadValue``."""
    state = _STATES.get(raw) if isinstance(raw, str) else None
    if state is None:
        raise BadValue(f"state: {raw!r} is not a task state")
    return state


def parse_status(data: bytes) -> StoredStatus:
    """Read the fields of a stored status that ``status_supersedes`` compares."""
    doc = _object(data)
    task_id, state, updated = doc.get("id"), doc.get("state"), doc.get("updatedAt")
    if not isinstance(task_id, str) or not isinstance(updated, str):
        raise BadValue("expected a status with id, state and updatedAt")
    try:
        task_state = parse_state(state)
    except BadValue:
        raise BadValue("expected a status with id, state and updatedAt") from None
    return StoredStatus(id=task_id, state=task_state, updated_at=parse_rfc3339(updated))


def status_supersedes(new: NamedStatus, stored: StoredStatus | None) -> bool:
    """Whether ``new`` may replace ``stored`` (see the module docstring)."""
    if stored is None:
        return True
    if new.id == stored.id:
        return new.state >= stored.state
    return stored.state.terminal or new.updated_at >= stored.updated_at


# -------------------------------------------------------------------------------- writing


def node_value(
    *,
    node_id: str,
    node: NodeDescription | None,
    ready: bool,
    availability: Availability,
    labels: Mapping[str, str],
    version: str,
    now: float,
    conditions: Mapping[str, bool] | None = None,
) -> bytes:
    """The heartbeat value; description fields are null until the runtime described them.
    ``conditions`` (``diskPressure``, ``memoryPressure``) tell a manager to place nothing new
    on the node while one holds."""
    described = {
        k: printable(v) if isinstance(v, str) else v
        for k, v in node_to_dict(node, version=version).items()
    }
    return compact(
        {
            "nodeId": node_id,
            **described,
            "labels": {printable(k): printable(v) for k, v in labels.items()},
            "ready": ready,
            "availability": availability.value,
            "heartbeatAt": rfc3339(now),
            "conditions": dict(conditions or {}),
        },
        sort_keys=True,
    )


STATUS_TEXT_MAX = 1000
"""The most characters of a status's ``message`` and of its ``error`` written to NATS: even
escaped to ASCII (six bytes a character at worst), a status stays under the status bucket's
value limit (``reconciler.fleet.buckets``), so a long podman error never blocks the key."""


def _bounded(text: str | None) -> str | None:
    """``text`` made printable (``reconciler.core.text``) and cut to ``STATUS_TEXT_MAX``."""
    if text is None:
        return None
    text = printable(text)
    if len(text) <= STATUS_TEXT_MAX:
        return text
    return text[: STATUS_TEXT_MAX - 3] + "..."


def status_value(status: NamedStatus) -> bytes:
    return compact(
        {
            "id": status.id,
            "state": status.state.label,
            "message": _bounded(status.message) or None,
            "error": _bounded(status.err),
            "exitCode": status.exit_code,
            "containerId": status.container_id,
            "updatedAt": rfc3339(status.updated_at),
            "restarts": status.restarts,
        },
        sort_keys=True,
    )

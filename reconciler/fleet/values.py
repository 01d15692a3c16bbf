"""The JSON values in the fleet's buckets: what an agent writes, and what it reads. Pure.

Writing:

- ``node_value``: the node's heartbeat in ``reconciler_nodes/<node>``: its description (the
  fields of ``/v1/node``, through the one node codec, ``reconciler.core.codec.node_to_dict``),
  ``ready``, ``availability``, ``labels``, ``version`` and ``heartbeatAt``.
- ``status_value``: the status of a named task's current instance in
  ``reconciler_status/<node>.<name>``: ``id``, ``state``, ``message``, ``error``, ``exitCode``,
  ``containerId``, ``updatedAt`` and ``restarts``. States are the lowercase names, times are
  RFC 3339 in UTC with ``Z``, as ``reconciler ps -o json`` prints them.

Reading, where every value may be hostile (``BadValue`` says what is wrong, never a traceback):

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.core.codec import compact, node_to_dict
from reconciler.core.model import Availability, NodeDescription, TaskState
from reconciler.core.session import NamedStatus
from reconciler.spec.units import UnitError, parse_duration

__all__ = [
    "DEFAULT_HEARTBEAT_PERIOD",
    "FLEET_FORMAT",
    "MAX_HEARTBEAT_PERIOD",
    "MAX_LABELS",
    "MAX_LABEL_TEXT",
    "MAX_VALUE_BYTES",
    "MIN_HEARTBEAT_PERIOD",
    "BadValue",
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
MAX_VALUE_BYTES = 1 << 20
"""Values larger than this are refused unread (NATS's own default limit is 1 MiB too)."""

_STATES = {s.label: s for s in TaskState}

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
    """Parse a value as JSON, bounded in size and depth. Raises ``BadValue``."""
    if len(data) > MAX_VALUE_BYTES:
        raise BadValue(f"value of {len(data)} bytes is over the {MAX_VALUE_BYTES}-byte limit")
    try:
        return json.loads(data)
    except json.JSONDecodeError as err:
        raise BadValue(
            f"not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from None
    except (UnicodeDecodeError, RecursionError) as err:
        raise BadValue(f"not valid JSON: {type(err).__name__}") from None


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
    return compact(
        {
            "nodeId": node_id,
            **node_to_dict(node, version=version),
            "labels": dict(labels),
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
    if text is None or len(text) <= STATUS_TEXT_MAX:
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

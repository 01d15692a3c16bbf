"""The fleet's identities: who may connect to its NATS account, and what each may do. Pure.

Every connection to the fleet's account is made as one identity: a name (one subject token, as
a node id is, ``reconciler.fleet.buckets.check_node_id``), a role, and the bcrypt hash of its
password. The roles:

- ``manager``: everything in the account: ``reconciler manager run`` and ``init``, and the
  ``manager node`` commands, which alone read and write the identities.
- ``operator``: reads what ``manager ps``, ``manager nodes`` and ``manager apply --dry-run``
  read (``READS``), and writes services (``apply``, ``rm``) and what operators set on a node
  in its control key: availability (``drain``, ``pause``, ``activate``) and labels (``label``).
- ``viewer``: reads what an operator reads, and writes nothing.
- ``node``: one agent, named after its node id, confined to its own keys.

This module owns the one permission template, ``permissions(role, name)``: every subject in it
is built from the bucket names and key functions of ``reconciler.fleet.buckets``, so that no
subject is copied by hand (one missed rename in a copied block granted a node another node's
keys). Readers watch keys through the consumer create subject that carries the watch's filter
(``reconciler.fleet.watch``); the bare create subject, the bare direct get and
``STREAM.MSG.GET`` (each of which reads any key) are never allowed to anyone but managers.

It also owns the users list's JSON form, kept by the managers in ``reconciler_control/users``
(``encode_users``, and ``decode_users``, which reads it as hostile input), and the nats-server
2.9 config text that every server of the fleet includes (``render_users_file``): it defines the
variable ``FLEET_USERS`` that ``deploy/nats/fleet.conf``'s account takes as its users, and
records each identity in a comment so that the file can seed a list that NATS lost
(``users_in_file``).

Passwords are ``secrets.token_urlsafe(32)``; hashes are bcrypt ``$2a$`` (nats-server tells a
bcrypt hash from a plain password by that prefix) at cost ``BCRYPT_ROUNDS``.
"""

from __future__ import annotations

import enum
import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import bcrypt

from reconciler.fleet.buckets import (
    ASSIGNMENTS,
    CONTROL,
    FLEET_KEY,
    NODES,
    SERVICES,
    STATUS,
    assignment_key,
    check_node_id,
    key_subject,
    node_control_key,
    status_key,
    stream_name,
    watch_subject,
)

__all__ = [
    "BCRYPT_ROUNDS",
    "READS",
    "USERS_KEY",
    "USERS_VARIABLE",
    "Identity",
    "IdentityError",
    "Permissions",
    "Role",
    "added",
    "check_name",
    "decode_users",
    "direct_get_subject",
    "encode_users",
    "hash_password",
    "inbox_prefix",
    "new_password",
    "permissions",
    "removed",
    "render_users_file",
    "users_in_file",
]

USERS_KEY: Final = "users"
"""The key in ``reconciler_control`` holding the users list (managers only)."""
USERS_VARIABLE: Final = "FLEET_USERS"
"""The variable the users file defines, which ``deploy/nats/fleet.conf`` takes as users."""
BCRYPT_ROUNDS: Final = 11
MAX_IDENTITIES: Final = 10_000
MAX_LIST_BYTES: Final = 1 << 20
"""A stored list larger than this is refused unread (NATS's default payload limit)."""

_BCRYPT = re.compile(r"\$2[ab]\$\d\d\$[./A-Za-z0-9]{53}")
_RECORD: Final = "# identity "
"""How the users file records each identity, in a comment line above its block."""


class IdentityError(ValueError):
    """A name, role, hash or users list that cannot be used; the message says why."""


class Role(enum.StrEnum):
    """What an identity may do; see the module docstring."""

    MANAGER = "manager"
    OPERATOR = "operator"
    VIEWER = "viewer"
    NODE = "node"


@dataclass(frozen=True, slots=True)
class Identity:
    """One user of the fleet's account: its name, role and password hash (never the password)."""

    name: str
    role: Role
    hash: str

    @classmethod
    def issue(cls, name: str, role: Role, password: str) -> Identity:
        """The identity whose password is ``password``. Raises ``IdentityError``."""
        return cls(check_name(name), role, hash_password(password))

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "role": self.role.value, "hash": self.hash}


def check_name(name: str) -> str:
    """``name`` if it can name an identity (one subject token); raise ``IdentityError``."""
    try:
        return check_node_id(name)
    except ValueError as err:
        raise IdentityError(str(err).replace("node id", "name", 1)) from None


def new_password() -> str:
    """A fresh password: 32 random bytes, URL-safe base64."""
    return secrets.token_urlsafe(32)


def hash_password(password: str, *, rounds: int = BCRYPT_ROUNDS) -> str:
    """The ``$2a$`` bcrypt hash nats-server checks ``password`` against."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds, prefix=b"2a")).decode()


def inbox_prefix(name: str) -> str:
    """The inbox prefix of ``name``'s connections; its permissions allow replies there only."""
    return f"_INBOX.{name}"


# ------------------------------------------------------------------------- the template


def direct_get_subject(bucket: str, key: str) -> str:
    """The direct get of ``key``'s last value, by subject (as nats-py's ``KeyValue.get``)."""
    return f"$JS.API.DIRECT.GET.{stream_name(bucket)}.{key_subject(bucket, key)}"


READS: Final[Mapping[str, tuple[str, ...]]] = {
    SERVICES: (">",),
    NODES: (">",),
    CONTROL: (node_control_key("*"),),
    ASSIGNMENTS: (">",),
    STATUS: (">",),
}
"""The keys operators and viewers may watch, per bucket: what ``manager ps``, ``nodes`` and
``apply --dry-run`` read (``reconciler.manager.admin`` watches exactly these, one watch each);
of the control bucket only the nodes' availability, never ``users``."""

_OPERATOR_WRITES: Final = (
    key_subject(SERVICES, ">"),
    key_subject(CONTROL, node_control_key("*")),
)


@dataclass(frozen=True, slots=True)
class Permissions:
    """The subjects an identity may publish to and subscribe to; nothing else."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def permissions(role: Role, name: str) -> Permissions | None:
    """The one permission template: what ``name`` in ``role`` may do. None: everything in the
    account (a manager)."""
    check_name(name)
    inbox = (f"{inbox_prefix(name)}.>",)
    if role is Role.MANAGER:
        return None
    if role is Role.NODE:
        return Permissions(
            publish=(
                watch_subject(ASSIGNMENTS, assignment_key(name, "*")),
                watch_subject(CONTROL, node_control_key(name)),
                watch_subject(CONTROL, FLEET_KEY),
                key_subject(NODES, name),
                key_subject(STATUS, status_key(name, "*")),
                direct_get_subject(STATUS, status_key(name, "*")),
            ),
            subscribe=inbox,
        )
    reads = tuple(watch_subject(b, keys) for b, patterns in READS.items() for keys in patterns)
    if role is Role.OPERATOR:
        return Permissions(publish=reads + _OPERATOR_WRITES, subscribe=inbox)
    return Permissions(publish=reads, subscribe=inbox)


# ------------------------------------------------------------------------- the list's rules


def added(identities: Sequence[Identity], new: Identity, *, rotate: bool) -> tuple[Identity, ...]:
    """The list with ``new`` in it. A name already there is refused unless ``rotate`` (new
    credentials, same role). Raises ``IdentityError``."""
    old = next((i for i in identities if i.name == new.name), None)
    if old is not None and not rotate:
        raise IdentityError(
            f"{new.name} is already an identity ({old.role.value}): pass --rotate to issue new "
            "credentials for it"
        )
    if old is None and rotate:
        raise IdentityError(f"{new.name} is not an identity yet: there is nothing to rotate")
    if old is not None and old.role is not new.role:
        raise IdentityError(
            f"{new.name} is a {old.role.value}: --rotate keeps the role (--role "
            f"{old.role.value}); remove it and add it again to change it"
        )
    kept = [i for i in identities if i.name != new.name]
    return tuple(sorted([*kept, new], key=lambda i: i.name))


def removed(identities: Sequence[Identity], name: str) -> tuple[Identity, ...]:
    """The list without ``name`` (as it was when ``name`` is not in it). Refuses to remove the
    last manager. Raises ``IdentityError``."""
    gone = next((i for i in identities if i.name == name), None)
    if gone is None:
        return tuple(identities)
    managers = [i for i in identities if i.role is Role.MANAGER]
    if gone.role is Role.MANAGER and len(managers) == 1:
        raise IdentityError(
            f"{name} is the last manager: add another manager first (without one, no one "
            "could change the fleet's identities again)"
        )
    return tuple(i for i in identities if i.name != name)


# ------------------------------------------------------------------------- the JSON form


def encode_users(identities: Iterable[Identity]) -> bytes:
    """The users list as stored: a JSON list of ``{name, role, hash}``, sorted by name."""
    items = [i.to_json() for i in sorted(identities, key=lambda i: i.name)]
    return json.dumps(items, separators=(",", ":")).encode()


def decode_users(data: bytes) -> tuple[Identity, ...]:
    """Read a stored users list (hostile input). Raises ``IdentityError`` saying what is
    wrong, and where."""
    doc = _load_json(data, "the users list")
    if not isinstance(doc, list):
        raise IdentityError("the users list: expected a JSON list")
    if len(doc) > MAX_IDENTITIES:
        raise IdentityError(f"the users list: more than {MAX_IDENTITIES} identities")
    identities = tuple(_identity(item, f"the users list[{n}]") for n, item in enumerate(doc))
    _check_unique(identities, "the users list")
    return identities


def _load_json(data: bytes, where: str) -> Any:
    if len(data) > MAX_LIST_BYTES:
        raise IdentityError(f"{where}: {len(data)} bytes, over the {MAX_LIST_BYTES}-byte limit")
    try:
        return json.loads(data)
    except json.JSONDecodeError as err:
        raise IdentityError(f"{where}: not valid JSON: {err.msg} (column {err.colno})") from None
    except (UnicodeDecodeError, RecursionError) as err:
        raise IdentityError(f"{where}: not valid JSON: {type(err).__name__}") from None


def _identity(item: Any, where: str) -> Identity:
    if not isinstance(item, dict):
        raise IdentityError(f"{where}: expected an object with name, role and hash")
    unknown = sorted(str(k) for k in item if k not in ("name", "role", "hash"))
    if unknown:
        raise IdentityError(f"{where}: unknown field {unknown[0]!r}")
    name, role, hashed = item.get("name"), item.get("role"), item.get("hash")
    if not isinstance(name, str):
        raise IdentityError(f"{where}.name: expected a string")
    try:
        check_name(name)
    except IdentityError as err:
        raise IdentityError(f"{where}.name: {err}") from None
    if role not in tuple(Role):
        roles = ", ".join(r.value for r in Role)
        raise IdentityError(f"{where}.role: expected one of {roles}, got {str(role)[:40]!r}")
    if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
        raise IdentityError(f"{where}.hash: expected a bcrypt hash ($2a$...)")
    return Identity(name, Role(role), hashed)


def _check_unique(identities: Sequence[Identity], where: str) -> None:
    seen: set[str] = set()
    for identity in identities:
        if identity.name in seen:
            raise IdentityError(f"{where}: {identity.name!r} appears twice")
        seen.add(identity.name)


# ------------------------------------------------------------------------- the users file


def render_users_file(identities: Iterable[Identity], *, command: str) -> str:
    """The nats-server 2.9 config text that defines ``FLEET_USERS``: every identity with its
    hash and its permissions from the template. ``command`` is the one that generated it,
    named in the header. Raises ``IdentityError`` for an empty list or a repeated name."""
    ordered = sorted(identities, key=lambda i: i.name)
    if not ordered:
        raise IdentityError("no identities: a users file without a manager locks everyone out")
    _check_unique(ordered, "the identities")
    lines = [
        f"# The fleet's NATS users, generated by `{command}`.",
        "# Do not edit: regenerate it (`reconciler manager node users-file`), install it beside",
        "# fleet.conf on every NATS server of the fleet, and reload each server",
        "# (`systemctl reload nats-server`, or `nats-server --signal reload=PID`).",
        f"# Identities: {len(ordered)}, each recorded in the comment above its block.",
        "",
        f"{USERS_VARIABLE} = [",
    ]
    for identity in ordered:
        lines.append(f"  {_RECORD}{json.dumps(identity.to_json(), separators=(',', ':'))}")
        lines.extend(_block(identity))
    lines.append("]")
    return "\n".join(lines) + "\n"


def _block(identity: Identity) -> list[str]:
    lines = [
        "  {",
        f"    user: {json.dumps(identity.name)}",
        f"    password: {json.dumps(identity.hash)}",
    ]
    allowed = permissions(identity.role, identity.name)
    if allowed is not None:
        lines.append("    permissions: {")
        for verb, subjects in (("publish", allowed.publish), ("subscribe", allowed.subscribe)):
            lines.append(f"      {verb}: {{")
            lines.append("        allow: [")
            lines.extend(f"          {json.dumps(s)}" for s in subjects)
            lines.append("        ]")
            lines.append("      }")
        lines.append("    }")
    lines.append("  }")
    return lines


def users_in_file(text: str, *, where: str = "the users file") -> tuple[Identity, ...]:
    """The identities a users file records (``render_users_file``'s comments). Raises
    ``IdentityError`` when a record cannot be read."""
    identities: list[Identity] = []
    for number, line in enumerate(text.splitlines(), 1):
        record = line.strip()
        if not record.startswith(_RECORD):
            continue
        item = _load_json(record[len(_RECORD) :].encode(), f"{where}:{number}")
        identities.append(_identity(item, f"{where}:{number}"))
    _check_unique(identities, where)
    return tuple(identities)

"""The fleet's identities in NATS, for ``reconciler manager node``: the users list, and
forgetting a removed node.

- **The users list** is ``reconciler_control/users``, in ``reconciler.fleet.identity``'s JSON
  form; only managers may read or write it. ``change_users`` reads it, applies a change and
  writes the result compare-and-set on the key's revision. A write that finds the key changed
  (another manager host added someone meanwhile) reads it again and redoes the change, so two
  hosts never lose an add.
- **Seeding.** An absent list (a new fleet, whose first manager was made offline by ``node add
  --bootstrap``) starts from the identities the local users file records, plus the connecting
  manager, its hash made from the password in its own credentials file: the manager that
  bootstrapped the fleet is never lost.
- **Forgetting a node** (``forget_node``): its heartbeat, its availability, its status keys and
  its assignments are deleted, in that order. The leader then judges it as a node that stopped
  beating, places its tasks elsewhere, and stops showing it once its last assignment is gone
  (``reconciler.manager.view``).

Each of ``add_identity``, ``remove_identity`` and ``read_identities`` opens one connection.
Errors are ``FleetError``s (``reconciler.manager.admin``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nats.errors import NoRespondersError
from nats.js.errors import KeyNotFoundError

from reconciler.fleet.buckets import (
    ASSIGNMENTS,
    CONTROL,
    NODES,
    STATUS,
    assignment_key,
    node_control_key,
    status_key,
)
from reconciler.fleet.identity import (
    USERS_KEY,
    Identity,
    IdentityError,
    Role,
    added,
    decode_users,
    encode_users,
    removed,
    users_in_file,
)
from reconciler.fleet.options import ConfigError, NatsOptions, load_credentials
from reconciler.manager.admin import FleetError, Link, connected, read_keys
from reconciler.manager.writes import Conflict, kv, publish

__all__ = [
    "Forgotten",
    "Users",
    "add_identity",
    "change_users",
    "forget_node",
    "read_identities",
    "remove_identity",
    "seed_from",
]

ATTEMPTS: Final = 10
"""Compare-and-set writes of the list tried before giving up (each after a fresh read)."""

Seed = Callable[[], tuple[Identity, ...]]
Change = Callable[[tuple[Identity, ...]], tuple[Identity, ...]]

_WHERE: Final = f"{CONTROL}/{USERS_KEY}"


@dataclass(frozen=True, slots=True)
class Users:
    """The users list as written (or read); ``seeded``: what it was started with, when NATS
    had none."""

    identities: tuple[Identity, ...]
    seeded: tuple[Identity, ...] = ()

    def get(self, name: str) -> Identity | None:
        return next((i for i in self.identities if i.name == name), None)


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What ``forget_node`` deleted: the keys, per bucket."""

    keys: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.keys.values())


# ------------------------------------------------------------------------ the list


async def _stored(link: Link) -> tuple[bytes | None, int]:
    """The stored list (None: absent or deleted) and the revision to write it at."""
    store = kv(link.jetstream(), CONTROL)
    try:
        entry = await store.get(USERS_KEY)
    except KeyNotFoundError as err:
        deleted = getattr(err, "entry", None)
        return None, int(deleted.revision or 0) if deleted is not None else 0
    except NoRespondersError:
        raise FleetError(
            f"no answer from bucket {CONTROL}: run `reconciler manager init` first"
        ) from None
    return entry.value or b"", int(entry.revision or 0)


def _decoded(stored: bytes) -> tuple[Identity, ...]:
    try:
        return decode_users(stored)
    except IdentityError as err:
        raise FleetError(f"{_WHERE}: {err}") from None


async def change_users(link: Link, change: Change, seed: Seed) -> Users:
    """Read the list (or, absent, ``seed()`` it), apply ``change`` and write the result
    compare-and-set; again from a fresh read when the key changed meanwhile. A change that
    changes nothing writes nothing (unless the list was seeded). Raises ``FleetError``."""
    for _ in range(ATTEMPTS):
        stored, revision = await link.guarded(_stored(link), f"reading {_WHERE}")
        seeded = seed() if stored is None else ()
        current = seeded or _decoded(stored or b"")
        try:
            new = change(current)
        except IdentityError as err:
            raise FleetError(str(err)) from None
        if not seeded and new == current:
            return Users(new)
        write = publish(link.jetstream(), CONTROL, USERS_KEY, encode_users(new), last=revision)
        try:
            await link.guarded(write, f"writing {_WHERE}")
        except Conflict:
            continue
        return Users(new, seeded)
    raise FleetError(f"{_WHERE} kept changing under this command: run it again")


def _unchanged(identities: tuple[Identity, ...]) -> tuple[Identity, ...]:
    return identities


def seed_from(options: NatsOptions, users_file: Path | None) -> Seed:
    """The seed of an absent list: the identities ``users_file`` records (if it exists), plus
    the manager that ``options``' credentials name. ``FleetError`` when that holds no manager."""

    def seed() -> tuple[Identity, ...]:
        recorded = _recorded(users_file) if users_file is not None else ()
        me = _connecting_manager(options)
        if me is not None and all(i.name != me.name for i in recorded):
            recorded = (*recorded, me)
        if not any(i.role is Role.MANAGER for i in recorded):
            raise FleetError(
                f"NATS holds no users list yet ({_WHERE}), and there is no manager to start it "
                "with: pass --creds of the manager that `reconciler manager node add --role "
                "manager NAME --bootstrap` made, or run in the directory of its users file"
            )
        return tuple(sorted(recorded, key=lambda i: i.name))

    return seed


def _recorded(users_file: Path) -> tuple[Identity, ...]:
    try:
        text = users_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ()
    except OSError as err:
        raise FleetError(f"{users_file}: {err.strerror or err}") from None
    try:
        return users_in_file(text, where=str(users_file))
    except IdentityError as err:
        raise FleetError(str(err)) from None


def _connecting_manager(options: NatsOptions) -> Identity | None:
    if options.creds is None:
        return None
    try:
        creds = load_credentials(options.creds)
    except ConfigError as err:
        raise FleetError(str(err)) from None
    user, password = creds.get("user"), creds.get("password")
    if not isinstance(user, str) or not isinstance(password, str):
        return None
    try:
        return Identity.issue(user, Role.MANAGER, password)
    except IdentityError as err:
        raise FleetError(f"credentials file {options.creds}: {err}") from None


# ------------------------------------------------------------------------ forgetting


async def forget_node(link: Link, name: str) -> Forgotten:
    """Delete the node's keys: heartbeat, availability, statuses, assignments. Raises
    ``FleetError``."""
    deleted: dict[str, int] = {}
    for bucket, keys in (
        (NODES, name),
        (CONTROL, node_control_key(name)),
        (ASSIGNMENTS, assignment_key(name, "*")),
        (STATUS, status_key(name, "*")),
    ):
        present = await read_keys(link, bucket, keys)
        for key in sorted(present):
            write = publish(link.jetstream(), bucket, key, None, last=None)
            await link.guarded(write, f"deleting {bucket}/{key}")
        deleted[bucket] = len(present)
    return Forgotten(deleted)


# ------------------------------------------------------------------------ the commands


async def add_identity(
    options: NatsOptions, identity: Identity, *, rotate: bool, users_file: Path | None
) -> Users:
    """Add ``identity`` to the list (with ``rotate``: replace its hash). Raises
    ``FleetError``."""
    async with connected(options) as link:
        return await change_users(
            link,
            lambda current: added(current, identity, rotate=rotate),
            seed_from(options, users_file),
        )


async def remove_identity(
    options: NatsOptions, name: str, *, users_file: Path | None
) -> tuple[Users, Identity | None, Forgotten]:
    """Remove ``name`` from the list and forget its keys in the fleet: the list as written,
    the identity removed (None: the list did not hold it), and the keys deleted. Raises
    ``FleetError`` when neither the list nor the fleet knows ``name``, or it is the last
    manager."""
    gone: list[Identity] = []

    def remove(current: tuple[Identity, ...]) -> tuple[Identity, ...]:
        gone[:] = [i for i in current if i.name == name]
        return removed(current, name)

    async with connected(options) as link:
        users = await change_users(link, remove, seed_from(options, users_file))
        forgotten = await forget_node(link, name)
    if not gone and forgotten.total == 0:
        raise FleetError(f"no identity named {name}, and no keys of a node {name} in the fleet")
    return users, (gone[0] if gone else None), forgotten


async def read_identities(options: NatsOptions, *, users_file: Path | None) -> Users:
    """The list (seeded, when NATS has none). Raises ``FleetError``."""
    async with connected(options) as link:
        return await change_users(link, _unchanged, seed_from(options, users_file))

"""The fleet commands: ``reconciler manager ...`` over NATS JetStream.

- ``manager init`` creates the fleet's buckets with their settings (idempotent) and prints one
  line per bucket saying what it did; ``--bucket-max-bytes`` and ``--bucket-max-value``
  (``BUCKET=SIZE``, repeatable, also on ``manager run``) change a bucket's quotas.
- ``manager run`` runs a manager (``reconciler.manager.driver``) with its HTTP endpoints
  (``/metrics``, ``/healthz``, ``/readyz``) until SIGTERM or SIGINT; a leader resigns on the
  way out, so a standby takes over at once.
- ``manager apply -f FILE`` checks a ServiceSet file (every problem as ``PATH:LINE: FIELD:
  problem``, exit 2, nothing written) and upserts its services; ``--prune`` also removes the
  services the file does not name, ``--dry-run`` writes nothing and prints where the tasks
  would go. ``manager rm SERVICE...`` removes services.
- ``manager ps``, ``manager nodes``: tables, or ``-o json``.
- ``manager drain|pause|activate NODE`` and ``manager label NODE`` are
  ``reconciler.cli.nodecontrol``'s.
- ``manager node add|rm|ls|users-file``: the fleet's identities (``reconciler.fleet.identity``,
  ``reconciler.manager.identities``). ``add`` issues an identity's credentials file (mode
  0600), ``rm`` revokes one and forgets the node's keys, and both regenerate the users file
  that every NATS server of the fleet includes, then say how to install it. ``add --role
  manager NAME --bootstrap`` makes the first manager without NATS.

Each command returns data; the renderers here turn it into text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from reconciler import __version__
from reconciler.assemble.manager import ManagerOptions, assemble_manager
from reconciler.assemble.process import CannotListen, run_process
from reconciler.cli.exits import EXIT_FAILURE, EXIT_OK, Failure, UsageError
from reconciler.cli.options import CREDS_OUT
from reconciler.cli.render import table
from reconciler.cli.values import fleet_options, parse_http_hosts, parse_interval, parse_listen
from reconciler.fleet.buckets import bucket_name, buckets
from reconciler.fleet.connect import connect_first
from reconciler.fleet.identity import (
    Identity,
    IdentityError,
    Role,
    check_name,
    new_password,
    render_users_file,
)
from reconciler.fleet.options import NatsOptions, redact
from reconciler.fleet.provision import default_replicas, init_buckets
from reconciler.manager.admin import (
    FleetError,
    NodeRow,
    TaskRow,
    apply_services,
    node_rows,
    ps_rows,
    read_fleet,
    remove_services,
    unassigned_reasons,
)
from reconciler.manager.credfiles import CREDS_MODE, USERS_FILE_MODE, credentials_text
from reconciler.manager.identities import (
    Users,
    add_identity,
    read_identities,
    remove_identity,
)
from reconciler.manager.services import parse_service_file
from reconciler.spec.apply import write_atomically
from reconciler.spec.loader import read_file
from reconciler.spec.problems import DesiredStateError
from reconciler.spec.units import UnitError, parse_size

__all__ = [
    "bucket_quotas",
    "fleet_call",
    "manager_apply",
    "manager_init",
    "manager_nodes",
    "manager_ps",
    "manager_rm",
    "manager_run",
    "nats_options",
    "node_add",
    "node_ls",
    "node_rm",
    "node_users_file",
    "render_identities",
    "render_nodes",
    "render_ps",
]

log = logging.getLogger("reconciler")
T = TypeVar("T")


def nats_options(args: argparse.Namespace) -> NatsOptions:
    """``--nats`` with ``--creds`` and ``--tls-ca``, checked. Raises ``UsageError``."""
    if not args.nats:
        raise UsageError("--nats URL is required")
    options = fleet_options(args.nats, args.creds, args.tls_ca, "--nats")
    assert options is not None
    return options


def fleet_call(call: Awaitable[T]) -> T:
    """Run one fleet operation; its ``FleetError`` becomes a ``Failure`` (exit 1)."""

    try:
        return asyncio.run(_checked(call))
    except FleetError as err:
        raise Failure(str(err)) from err


async def _checked(call: Awaitable[T]) -> T:
    return await call


def bucket_quotas(args: argparse.Namespace) -> tuple[dict[str, int], dict[str, int]]:
    """``--bucket-max-bytes`` and ``--bucket-max-value`` as (max bytes, max value size) by
    bucket name, checked together with the defaults they leave. Raises ``UsageError``."""
    max_bytes = _sizes(args.bucket_max_bytes, "--bucket-max-bytes")
    max_value = _sizes(args.bucket_max_value, "--bucket-max-value")
    try:
        buckets(max_bytes=max_bytes, max_value_size=max_value)
    except ValueError as err:
        raise UsageError(f"--bucket-max-bytes, --bucket-max-value: {err}") from err
    return max_bytes, max_value


def _sizes(items: Sequence[str], flag: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for item in items:
        name, sep, size = item.partition("=")
        if not sep or not name.strip() or not size.strip():
            raise UsageError(f"{flag}: expected BUCKET=SIZE (such as status=64Mi), got {item!r}")
        try:
            sizes[bucket_name(name.strip())] = parse_size(size.strip())
        except (UnitError, ValueError) as err:
            raise UsageError(f"{flag} {item}: {err}") from err
    return sizes


# ------------------------------------------------------------------------------ init


def manager_init(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Create or check every bucket. Returns (bucket, what was done). Raises ``Failure``."""
    max_bytes, max_value = bucket_quotas(args)
    return asyncio.run(_init(nats_options(args), max_bytes, max_value))


async def _init(
    options: NatsOptions, max_bytes: dict[str, int], max_value: dict[str, int]
) -> list[tuple[str, str]]:

    try:
        nc, _ = await connect_first(options, options.servers)
    except ConnectionError as err:
        raise Failure(str(err)) from err
    try:
        results = await init_buckets(
            nc.jetstream(),
            replicas=default_replicas(nc),
            max_bytes=max_bytes,
            max_value_size=max_value,
        )
    except Exception as err:
        raise Failure(f"creating the buckets failed: {str(err) or type(err).__name__}") from err
    finally:
        await nc.close()
    return [(bucket, result.value) for bucket, result in results]


# ------------------------------------------------------------------------------- run


def _duration(text: str, flag: str) -> float:
    seconds = parse_interval(text, flag)
    if seconds <= 0:
        raise UsageError(f"{flag}: must be longer than 0s")
    return seconds


def run_options(args: argparse.Namespace) -> ManagerOptions:
    """Check every ``manager run`` flag (their defaults already applied). Raises
    ``UsageError``."""
    max_bytes, max_value = bucket_quotas(args)
    return ManagerOptions(
        nats=nats_options(args),
        listen=parse_listen(args.listen),
        grace=_duration(args.node_grace, "--node-grace"),
        lease=_duration(args.lease, "--lease"),
        max_bytes=max_bytes,
        max_value_size=max_value,
        http_hosts=parse_http_hosts(args.http_host or []),
    )


def manager_run(args: argparse.Namespace) -> int:
    """Run a manager until SIGTERM or SIGINT. Returns the exit code."""
    opts = run_options(args)
    assembled = assemble_manager(opts)
    host, port = opts.listen
    log.info(
        "manager starting version=%s id=%s nats=%s listen=%s:%d grace=%gs lease=%gs",
        __version__,
        assembled.manager.config.manager_id,
        ",".join(redact(u) for u in opts.nats.servers),
        host,
        port,
        opts.grace,
        opts.lease,
    )
    try:
        asyncio.run(run_process(assembled, opts.listen, hosts=opts.http_hosts))
    except CannotListen as err:
        print(f"reconciler: {err}", file=sys.stderr)
        return EXIT_FAILURE
    log.info("manager stopped")
    return EXIT_OK


# ----------------------------------------------------------------------------- apply


def manager_apply(args: argparse.Namespace) -> list[str]:
    """Check the file, then upsert its services (or, with ``--dry-run``, only plan). Returns
    the lines to print. Raises ``DesiredStateError`` (exit 2, nothing written) or
    ``Failure``."""

    options = nats_options(args)
    data, problems = read_file(args.file, check_owner=False)
    if data is None:
        raise DesiredStateError(problems)
    services = parse_service_file(data, args.file)
    lines, placement = fleet_call(
        apply_services(options, services, prune=args.prune, dry_run=args.dry_run)
    )
    if args.dry_run:
        return [*lines, *placement] if placement else [*lines, "no placement changes"]
    return lines


def manager_rm(args: argparse.Namespace) -> list[str]:

    return fleet_call(remove_services(nats_options(args), args.services))


# ------------------------------------------------------------------------ ps and nodes


def manager_ps(args: argparse.Namespace) -> list[TaskRow]:

    view = fleet_call(read_fleet(nats_options(args)))
    return ps_rows(view, unassigned_reasons(view))


def manager_nodes(args: argparse.Namespace) -> list[NodeRow]:

    return node_rows(fleet_call(read_fleet(nats_options(args))))


def render_ps(rows: Sequence[TaskRow], args: Any) -> str:
    if args.output == "json":
        return json.dumps([r.to_json() for r in rows], indent=2)
    body = [
        (
            r.service,
            r.task,
            r.node or "-",
            r.state,
            str(r.restarts),
            ": ".join(x for x in (r.message, r.error) if x) or r.reason or "",
        )
        for r in rows
    ]
    return table(("SERVICE", "TASK", "NODE", "STATE", "RESTARTS", "MESSAGE"), body)


def render_nodes(rows: Sequence[NodeRow], args: Any) -> str:
    if args.output == "json":
        return json.dumps([r.to_json() for r in rows], indent=2)
    body = [
        (
            r.node,
            {True: "yes", False: "no", None: "-"}[r.ready],
            r.availability,
            str(r.tasks),
            "-" if r.cpus is None else f"{r.cpus:g}",
            "-" if r.memory is None else _mib(r.memory),
            r.heartbeat_at or "-",
            ",".join(f"{k}={v}" for k, v in r.labels) or "-",
            ",".join(f"{k}={v}" for k, v in r.engine_labels) or "-",
        )
        for r in rows
    ]
    header = (
        "NODE",
        "READY",
        "AVAILABILITY",
        "TASKS",
        "CPUS",
        "MEMORY",
        "HEARTBEAT",
        "LABELS",
        "ENGINE LABELS",
    )
    return table(header, body)


def _mib(size: int) -> str:
    return f"{size / (1 << 30):.1f}Gi" if size >= 1 << 30 else f"{size >> 20}Mi"


# ---------------------------------------------------------------------------- identities


def _name(text: str) -> str:
    try:
        return check_name(text)
    except IdentityError as err:
        raise UsageError(f"NAME: {err}") from err


def node_add(args: argparse.Namespace) -> list[str]:
    """Issue an identity's credentials, add it to the list (none, with ``--bootstrap``) and
    regenerate the users file. Returns the lines to print. Raises ``UsageError`` or
    ``Failure``."""
    name, role = _name(args.name), Role(args.role)
    out = Path(args.out or CREDS_OUT.format(name=name))
    users_file = Path(args.users_file)
    if args.bootstrap:
        if role is not Role.MANAGER or args.nats or args.rotate:
            raise UsageError(
                "--bootstrap makes the fleet's first manager without NATS: give it --role "
                "manager, and neither --nats nor --rotate"
            )
        if users_file.exists() and not args.force:
            raise Failure(
                f"{users_file} exists: --bootstrap would replace it with a users file holding "
                f"{name} alone (pass --force to)"
            )
    if (out.exists() or out.is_symlink()) and not args.force:
        raise Failure(f"{out} exists: pass --force to replace it, or --out FILE")
    for directory in {out.absolute().parent, users_file.absolute().parent}:
        if not directory.is_dir():
            raise Failure(f"{directory} is not a directory: nothing could be written there")
    password = new_password()
    identity = Identity.issue(name, role, password)
    command = f"reconciler manager node add {name} --role {role.value}"
    if args.bootstrap:
        users = Users((identity,))
    else:
        options = nats_options(args)
        users = fleet_call(
            add_identity(options, identity, rotate=args.rotate, users_file=users_file)
        )
    _seeded(users)
    text = credentials_text(identity, password, command=command)
    try:
        write_atomically(out, text.encode(), mode=CREDS_MODE, replace=args.force)
    except OSError as err:
        lost = "" if args.bootstrap else f"; issue others with `{command} --rotate`"
        raise Failure(
            f"writing {out}: {err.strerror or err}: {name}'s password is lost{lost}"
        ) from err
    done = "new credentials for" if args.rotate else "added"
    lines = [f"{done} {role.value} {name}: credentials in {out} (mode 0600)"]
    lines += _write_users_file(users_file, users, command)
    if args.bootstrap:
        lines.append(
            f"then, with the servers running: reconciler manager init --nats URL --creds {out}"
        )
    return lines


def node_rm(args: argparse.Namespace) -> list[str]:
    """Remove an identity, forget the node's keys, regenerate the users file. Returns the
    lines to print. Raises ``UsageError`` or ``Failure``."""
    name = _name(args.name)
    users_file = Path(args.users_file)
    options = nats_options(args)
    users, gone, forgotten = fleet_call(remove_identity(options, name, users_file=users_file))
    _seeded(users)
    lines = [f"removed {gone.role.value} {name}" if gone else f"{name} was not an identity"]
    if forgotten.total:
        counts = ", ".join(f"{bucket} {n}" for bucket, n in forgotten.keys.items() if n)
        lines.append(f"forgot node {name}'s keys: {counts}")
    return lines + _write_users_file(users_file, users, f"reconciler manager node rm {name}")


def node_ls(args: argparse.Namespace) -> Users:
    """The identities in NATS."""
    return fleet_call(read_identities(nats_options(args), users_file=None))


def node_users_file(args: argparse.Namespace) -> list[str]:
    """Regenerate the users file from the list in NATS."""
    users_file = Path(args.users_file)
    users = fleet_call(read_identities(nats_options(args), users_file=users_file))
    _seeded(users)
    return _write_users_file(users_file, users, "reconciler manager node users-file")


def render_identities(users: Users, args: Any) -> str:
    rows = [(i.name, i.role.value) for i in users.identities]
    if args.output == "json":
        return json.dumps([{"name": n, "role": r} for n, r in rows], indent=2)
    return table(("NAME", "ROLE"), rows)


def _seeded(users: Users) -> None:
    if users.seeded:
        shown = ", ".join(f"{i.name} ({i.role.value})" for i in users.seeded)
        log.info("NATS held no users list: started it with %s", shown)


def _count(n: int) -> str:
    return f"{n} identity" if n == 1 else f"{n} identities"


def _write_users_file(path: Path, users: Users, command: str) -> list[str]:
    """Write the users file; the lines saying so and how to install it. Raises ``Failure``."""
    text = render_users_file(users.identities, command=command)
    try:
        write_atomically(path, text.encode(), mode=USERS_FILE_MODE, replace=True)
    except OSError as err:
        raise Failure(
            f"writing {path}: {err.strerror or err}; the list in NATS is changed: write the "
            "file again with `reconciler manager node users-file --users-file FILE`"
        ) from err
    return [
        f"users file {path}: {_count(len(users.identities))}",
        "next, on every NATS server of the fleet, install it beside fleet.conf and reload:",
        f"  install -m 0640 -g nats {path} /etc/nats/fleet-users.conf",
        "  systemctl reload nats-server     # or: nats-server --signal reload=PID",
    ]

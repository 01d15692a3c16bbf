"""The fleet commands: ``reconciler manager ...`` over NATS JetStream.

- ``manager init`` creates the fleet's buckets with their settings (idempotent) and prints one
  line per bucket saying what it did.
- ``manager run`` runs a manager (``reconciler.manager.driver``) with its HTTP endpoints
  (``/metrics``, ``/healthz``, ``/readyz``) until SIGTERM or SIGINT; a leader resigns on the
  way out, so a standby takes over at once.
- ``manager apply -f FILE`` checks a ServiceSet file (every problem as ``PATH:LINE: FIELD:
  problem``, exit 2, nothing written) and upserts its services; ``--prune`` also removes the
  services the file does not name, ``--dry-run`` writes nothing and prints where the tasks
  would go. ``manager rm SERVICE...`` removes services.
- ``manager ps``, ``manager nodes``: tables, or ``-o json``.
- ``manager drain|pause|activate NODE`` write the node's availability.

Each command returns data; the renderers here turn it into text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from reconciler.cli.agent import fleet_options, parse_listen
from reconciler.cli.exits import EXIT_FAILURE, EXIT_OK, Failure, UsageError
from reconciler.cli.render import table

if TYPE_CHECKING:
    from reconciler.fleet.connect import NatsOptions
    from reconciler.manager.admin import NodeRow, TaskRow

__all__ = [
    "manager_apply",
    "manager_availability",
    "manager_init",
    "manager_nodes",
    "manager_ps",
    "manager_rm",
    "manager_run",
    "nats_options",
    "render_availability",
    "render_nodes",
    "render_ps",
]

log = logging.getLogger("reconciler")
T = TypeVar("T")

DEFAULT_LISTEN = "127.0.0.1:9470"


def nats_options(args: argparse.Namespace) -> NatsOptions:
    """``--nats`` with ``--creds`` and ``--tls-ca``, checked. Raises ``UsageError``."""
    if not args.nats:
        raise UsageError("--nats URL is required")
    options = fleet_options(args.nats, args.creds, args.tls_ca, "--nats")
    assert options is not None
    return options


def _fleet(call: Awaitable[T]) -> T:
    """Run one fleet operation; its ``FleetError`` becomes a ``Failure`` (exit 1)."""
    from reconciler.manager.admin import FleetError

    try:
        return asyncio.run(_checked(call))
    except FleetError as err:
        raise Failure(str(err)) from err


async def _checked(call: Awaitable[T]) -> T:
    return await call


# ------------------------------------------------------------------------------ init


def manager_init(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Create or check every bucket. Returns (bucket, what was done). Raises ``Failure``."""
    return asyncio.run(_init(nats_options(args)))


async def _init(options: NatsOptions) -> list[tuple[str, str]]:
    from reconciler.fleet.buckets import default_replicas, init_buckets
    from reconciler.fleet.connect import connect_first

    try:
        nc, _ = await connect_first(options, options.servers)
    except ConnectionError as err:
        raise Failure(str(err)) from err
    try:
        results = await init_buckets(nc.jetstream(), replicas=default_replicas(nc))
    except Exception as err:
        raise Failure(f"creating the buckets failed: {str(err) or type(err).__name__}") from err
    finally:
        await nc.close()
    return [(bucket, result.value) for bucket, result in results]


# ------------------------------------------------------------------------------- run


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything ``reconciler manager run`` was asked to do, checked."""

    nats: NatsOptions
    listen: tuple[str, int]
    grace: float
    lease: float


def _duration(text: str | None, default: str, flag: str) -> float:
    from reconciler.spec.units import parse_duration

    try:
        seconds = parse_duration(text or default)
    except ValueError as err:
        raise UsageError(f"{flag}: {err}") from err
    if seconds <= 0:
        raise UsageError(f"{flag}: must be longer than 0s")
    return seconds


def run_options(args: argparse.Namespace) -> RunOptions:
    """Check every ``manager run`` flag. Raises ``UsageError``."""
    return RunOptions(
        nats=nats_options(args),
        listen=parse_listen(args.listen or DEFAULT_LISTEN),
        grace=_duration(args.node_grace, "15s", "--node-grace"),
        lease=_duration(args.lease, "10s", "--lease"),
    )


def manager_run(args: argparse.Namespace) -> int:
    """Run a manager until SIGTERM or SIGINT. Returns the exit code."""
    return asyncio.run(_run(run_options(args)))


async def _run(opts: RunOptions) -> int:
    from reconciler import __version__
    from reconciler.core.clock import SystemClock
    from reconciler.core.supervisor import Supervisor
    from reconciler.fleet.connect import redact
    from reconciler.manager.driver import FleetManager, ManagerConfig
    from reconciler.manager.metrics import ManagerMetrics
    from reconciler.manager.page import ManagerPage
    from reconciler.observe.metrics import CONTENT_TYPE
    from reconciler.web import server as http

    clock = SystemClock()
    manager_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
    manager = FleetManager(
        options=opts.nats,
        config=ManagerConfig(manager_id=manager_id, grace=opts.grace, lease=opts.lease),
        clock=clock,
    )
    metrics = ManagerMetrics(counts=manager.counts)
    manager.metrics = metrics
    supervisor = Supervisor(clock=clock)

    def healthz() -> tuple[int, str, bytes]:
        down = supervisor.down
        if not down:
            return 200, "text/plain; charset=utf-8", b"ok"
        why = "; ".join(f"loop {name} is down: {err}" for name, err in sorted(down.items()))
        return 503, "text/plain; charset=utf-8", why.encode()

    def readyz() -> tuple[int, str, bytes]:
        ready, why = manager.readiness()
        return (200 if ready else 503), "text/plain; charset=utf-8", why.encode()

    routes: dict[str, http.Route] = {
        "/metrics": lambda: (200, CONTENT_TYPE, metrics.render()),
        "/healthz": healthz,
        "/readyz": readyz,
    }
    page = ManagerPage(manager.snapshots.current)
    changes = manager.snapshots.changes
    host, port = opts.listen
    try:
        server = await http.serve_routes(host, port, routes, page=page, changes=changes)
    except OSError as err:
        print(f"reconciler: cannot listen on {host}:{port}: {err}", file=sys.stderr)
        return EXIT_FAILURE
    log.info(
        "manager starting version=%s id=%s nats=%s listen=%s:%d grace=%gs lease=%gs",
        __version__,
        manager_id,
        ",".join(redact(u) for u in opts.nats.servers),
        host,
        port,
        opts.grace,
        opts.lease,
    )

    async def serve_http() -> None:
        nonlocal server
        if not server.is_serving():
            server.close()
            server = await http.serve_routes(host, port, routes, page=page, changes=changes)
        await server.serve_forever()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    supervisor.start("manager", manager.run)
    supervisor.start("http", serve_http)
    try:
        await stop.wait()
    finally:
        await manager.resign()
        await supervisor.stop()
        server.close()  # and its event streams
        with contextlib.suppress(Exception):
            await server.wait_closed()
    log.info("manager stopped")
    return EXIT_OK


# ----------------------------------------------------------------------------- apply


def manager_apply(args: argparse.Namespace) -> list[str]:
    """Check the file, then upsert its services (or, with ``--dry-run``, only plan). Returns
    the lines to print. Raises ``DesiredStateError`` (exit 2, nothing written) or
    ``Failure``."""
    from reconciler.manager.admin import apply_services
    from reconciler.manager.services import parse_service_file
    from reconciler.spec.loader import read_file
    from reconciler.spec.problems import DesiredStateError

    options = nats_options(args)
    data, problems = read_file(args.file, check_owner=False)
    if data is None:
        raise DesiredStateError(problems)
    services = parse_service_file(data, args.file)
    lines, placement = _fleet(
        apply_services(options, services, prune=args.prune, dry_run=args.dry_run)
    )
    if args.dry_run:
        return [*lines, *placement] if placement else [*lines, "no placement changes"]
    return lines


def manager_rm(args: argparse.Namespace) -> list[str]:
    from reconciler.manager.admin import remove_services

    return _fleet(remove_services(nats_options(args), args.services))


# ------------------------------------------------------------------------ ps and nodes


def manager_ps(args: argparse.Namespace) -> list[TaskRow]:
    from reconciler.manager.admin import ps_rows, read_fleet

    return ps_rows(_fleet(read_fleet(nats_options(args))))


def manager_nodes(args: argparse.Namespace) -> list[NodeRow]:
    from reconciler.manager.admin import node_rows, read_fleet

    return node_rows(_fleet(read_fleet(nats_options(args))))


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
            ": ".join(x for x in (r.message, r.error) if x) or "",
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
        )
        for r in rows
    ]
    header = ("NODE", "READY", "AVAILABILITY", "TASKS", "CPUS", "MEMORY", "HEARTBEAT", "LABELS")
    return table(header, body)


def _mib(size: int) -> str:
    return f"{size / (1 << 30):.1f}Gi" if size >= 1 << 30 else f"{size >> 20}Mi"


# ----------------------------------------------------------------------- availability


def manager_availability(args: argparse.Namespace) -> dict[str, Any]:
    """``manager drain|pause|activate NODE``: write the node's availability."""
    from reconciler.fleet.buckets import check_node_id
    from reconciler.fleet.values import Availability
    from reconciler.manager.admin import set_availability

    word = args.spec.path[-1]
    availability = {
        "drain": Availability.DRAIN,
        "pause": Availability.PAUSE,
        "activate": Availability.ACTIVE,
    }[word]
    try:
        check_node_id(args.node)
    except ValueError as err:
        raise UsageError(f"NODE: {err}") from err
    known = _fleet(set_availability(nats_options(args), args.node, availability))
    return {"node": args.node, "availability": availability.value, "known": known}


def render_availability(result: dict[str, Any], args: Any) -> str:
    if args.output == "json":
        return json.dumps(result, indent=2)
    line = f"node {result['node']}: {result['availability']}"
    if not result["known"]:
        line += " (no heartbeat from this node yet; it applies when the node joins)"
    return line

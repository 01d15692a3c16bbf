"""``reconciler run``: check the flags, take the state dir, open the store, run the agent.

Start-up order, as operators rely on it: (1) the state-dir lock (a second agent exits here,
with code 1, before any store is opened, moved aside or rebuilt); (2) the store (created only
where none exists; a corrupt one is moved aside and rebuilt); (3) the HTTP listener; (4)
podman, which is never fatal: the agent retries and ``/readyz`` says why. Flags are all checked
before anything is touched: a bad one exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler import __version__
from reconciler.cli.exits import UsageError
from reconciler.cli.options import desired_dir, state_dir

if TYPE_CHECKING:
    from reconciler.fleet.connect import NatsOptions

__all__ = [
    "AgentOptions",
    "fleet_options",
    "parse_labels",
    "parse_listen",
    "parse_percent",
    "run",
]

log = logging.getLogger("reconciler")

DEFAULT_LISTEN = "127.0.0.1:9469"


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """Everything ``reconciler run`` was asked to do, checked."""

    state_dir: Path
    desired: Path
    listen: tuple[str, int]
    podman_url: str | None
    node_id: str | None
    resync_interval: float
    stats_interval: float
    labels: tuple[tuple[str, str], ...]
    manager: NatsOptions | None  # fleet mode when set
    image_gc_threshold: float = 15.0  # percent free of the image store; 0: off


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--listen: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_labels(items: list[str]) -> tuple[tuple[str, str], ...]:
    labels = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--node-label: expected KEY=VALUE, got {item!r}")
        labels.append((key, value))
    return tuple(labels)


def parse_percent(text: str | None, default: float, flag: str) -> float:
    """A percentage flag: a number from 0 to 100. Raises ``UsageError``."""
    if text is None or str(text).strip() == "":
        return default
    try:
        value = float(str(text).strip().removesuffix("%"))
    except ValueError:
        raise UsageError(f"{flag}: expected a percentage from 0 to 100, got {text!r}") from None
    if not 0.0 <= value <= 100.0:
        raise UsageError(f"{flag}: expected a percentage from 0 to 100, got {text!r}")
    return value


def fleet_options(
    servers: str | None, creds: str | None, tls_ca: str | None, flag: str
) -> NatsOptions | None:
    """NATS connection options from flags, checked now (a bad one is a usage error).
    Credentials or a CA without servers say that they need fleet mode."""
    if not servers:
        if creds or tls_ca:
            raise UsageError(f"credentials and a TLS CA are for fleet mode: they need {flag}")
        return None
    from reconciler.fleet.connect import ConfigError, checked_options

    try:
        return checked_options(servers, creds=creds, tls_ca=tls_ca)
    except ConfigError as err:
        raise UsageError(f"{flag}: {err}") from err


def agent_options(args: argparse.Namespace) -> AgentOptions:
    """Check every ``run`` flag. Raises ``UsageError``."""
    from reconciler.spec.units import parse_duration

    try:
        resync = parse_duration(args.resync_interval or "30s")
    except ValueError as err:
        raise UsageError(f"--resync-interval: {err}") from err
    try:
        stats = parse_duration(args.stats_interval or "10s")
    except ValueError as err:
        raise UsageError(f"--stats-interval: {err}") from err
    manager = fleet_options(args.manager, args.manager_creds, args.manager_tls_ca, "--manager")
    if manager is not None and args.node_id:
        from reconciler.fleet.buckets import check_node_id

        try:
            check_node_id(args.node_id)
        except ValueError as err:
            raise UsageError(f"--node-id: {err}") from err
    return AgentOptions(
        state_dir=state_dir(args),
        desired=desired_dir(args),
        listen=parse_listen(args.listen or DEFAULT_LISTEN),
        podman_url=args.podman_url,
        node_id=args.node_id,
        resync_interval=resync,
        stats_interval=stats,
        labels=parse_labels(args.node_label or []),
        manager=manager,
        image_gc_threshold=parse_percent(args.image_gc_threshold, 15.0, "--image-gc-threshold"),
    )


def run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM or SIGINT. Returns the exit code. Raises ``UsageError``
    for a bad flag and ``StoreError`` when the state dir is in use or the store cannot open."""
    from reconciler.assemble import read_podman_info, run_agent

    # podman's info takes it a fifth of a second and readiness waits for it: with the URL
    # given, ask now (a read), while the flags are checked and the store opens.
    info = read_podman_info(args.podman_url) if args.podman_url else None

    from reconciler.local.records import check_records
    from reconciler.store.recovery import open_store
    from reconciler.store.statedir import StateDirLock, load_node_id, prepare_state_dir

    opts = agent_options(args)
    prepare_state_dir(opts.state_dir)
    with StateDirLock(opts.state_dir):
        opened = open_store(opts.state_dir, verify=check_records)
        try:
            node_id = load_node_id(opts.state_dir, opts.node_id)
            if opts.manager is not None:
                from reconciler.fleet.buckets import check_node_id

                try:
                    check_node_id(node_id)
                except ValueError as err:
                    raise UsageError(f"node id {node_id!r}: {err}") from err
            log.info(
                "starting version=%s node_id=%s state_dir=%s store=%s",
                __version__,
                node_id,
                opts.state_dir,
                opened.origin.value,
            )
            return asyncio.run(run_agent(opts, opened, node_id, info))
        finally:
            opened.store.close()

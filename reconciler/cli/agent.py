"""``reconciler run``: check the flags, take the state dir, open the store, run the agent.

Start-up order, as operators rely on it: (1) the state-dir lock (a second agent exits here,
with code 1, before any store is opened, moved aside or rebuilt); (2) the store (created only
where none exists; a corrupt one is moved aside and rebuilt); (3) the HTTP listener; (4)
podman, which is never fatal: the agent retries and ``/readyz`` says why. Flags are all checked
before anything is touched: a bad one exits 2. The agent is put together and run by
``reconciler.assemble``, as the tests and benchmarks put theirs together.

In fleet mode a node connects as itself: credentials (``--manager-creds``) that name a user
other than the node id (``--node-id``, or the one generated and kept in the state dir) exit 2
before anything connects, naming the file, the user and the node id, since NATS would refuse
every key of that node id to them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from reconciler import __version__
from reconciler.assemble.agent import AgentOptions, assemble_agent, read_podman_info
from reconciler.assemble.process import CannotListen, run_process
from reconciler.cli.exits import EXIT_FAILURE, EXIT_OK, UsageError
from reconciler.cli.options import desired_dir, state_dir
from reconciler.cli.values import (
    fleet_options,
    parse_http_hosts,
    parse_interval,
    parse_labels,
    parse_listen,
    parse_percent,
    parse_policy,
)
from reconciler.fleet.buckets import check_node_id
from reconciler.fleet.options import ConfigError, load_credentials
from reconciler.local.records import check_records
from reconciler.store.recovery import open_store
from reconciler.store.statedir import StateDirLock, load_node_id, prepare_state_dir

__all__ = ["agent_options", "run"]

log = logging.getLogger("reconciler")


def _checked_node_id(node_id: str, what: str) -> None:
    try:
        check_node_id(node_id)
    except ValueError as err:
        raise UsageError(f"{what}: {err}") from err


def check_identity(creds: Path | None, node_id: str) -> None:
    """Raise ``UsageError`` when the credentials name a user other than ``node_id``."""
    if creds is None:
        return
    try:
        user = load_credentials(creds).get("user")
    except ConfigError as err:
        raise UsageError(f"--manager-creds: {err}") from err
    if isinstance(user, str) and user != node_id:
        raise UsageError(
            f"--manager-creds {creds} are the credentials of user {user!r}, but this node's id "
            f"is {node_id!r}: a node connects as itself (run it with --node-id {user}, or issue "
            f"its own with `reconciler manager node add {node_id}`)"
        )


def agent_options(args: argparse.Namespace) -> AgentOptions:
    """Check every ``run`` flag (their defaults already applied). Raises ``UsageError``."""
    manager = fleet_options(args.manager, args.manager_creds, args.manager_tls_ca, "--manager")
    if manager is not None and args.node_id:
        _checked_node_id(args.node_id, "--node-id")
        check_identity(manager.creds, args.node_id)
    return AgentOptions(
        state_dir=state_dir(args),
        desired=desired_dir(args),
        listen=parse_listen(args.listen),
        podman_url=args.podman_url,
        node_id=args.node_id,
        resync_interval=parse_interval(args.resync_interval, "--resync-interval"),
        stats_interval=parse_interval(args.stats_interval, "--stats-interval"),
        labels=parse_labels(args.node_label or []),
        http_hosts=parse_http_hosts(args.http_host or []),
        manager=manager,
        image_gc_threshold=parse_percent(args.image_gc_threshold, "--image-gc-threshold"),
        policy=parse_policy(args),
    )


def run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM or SIGINT. Returns the exit code. Raises ``UsageError``
    for a bad flag and ``StoreError`` when the state dir is in use or the store cannot open."""
    # podman's info takes it a fifth of a second and readiness waits for it: with the URL
    # given, ask now (a read), while the flags are checked and the store opens.
    info = read_podman_info(args.podman_url) if args.podman_url else None
    opts = agent_options(args)
    prepare_state_dir(opts.state_dir)
    with StateDirLock(opts.state_dir):
        opened = open_store(opts.state_dir, verify=check_records)
        try:
            node_id = load_node_id(opts.state_dir, opts.node_id)
            if opts.manager is not None:
                _checked_node_id(node_id, f"node id {node_id!r}")
                check_identity(opts.manager.creds, node_id)
            log.info(
                "starting version=%s node_id=%s state_dir=%s store=%s",
                __version__,
                node_id,
                opts.state_dir,
                opened.origin.value,
            )
            agent = assemble_agent(
                opts, store=opened.store, origin=opened.origin, node_id=node_id, info=info
            )
            try:
                asyncio.run(run_process(agent, opts.listen, hosts=opts.http_hosts))
            except CannotListen as err:
                print(f"reconciler: {err}", file=sys.stderr)
                return EXIT_FAILURE
            log.info("stopped")
            return EXIT_OK
        finally:
            opened.store.close()

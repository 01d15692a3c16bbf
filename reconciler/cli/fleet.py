"""The fleet commands: ``reconciler manager ...`` over NATS JetStream.

``manager init`` creates the fleet's buckets with their settings (idempotent) and prints one
line per bucket saying what it did.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

from reconciler.cli.agent import fleet_options
from reconciler.cli.exits import Failure, UsageError

if TYPE_CHECKING:
    from reconciler.fleet.connect import NatsOptions

__all__ = ["manager_init", "nats_options"]


def nats_options(args: argparse.Namespace) -> NatsOptions:
    """``--nats`` with ``--creds`` and ``--tls-ca``, checked. Raises ``UsageError``."""
    if not args.nats:
        raise UsageError("--nats URL is required")
    options = fleet_options(args.nats, args.creds, args.tls_ca, "--nats")
    assert options is not None
    return options


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

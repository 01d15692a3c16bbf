"""Connecting to NATS: server URLs, credentials, TLS, and the one way to open a connection.

Agents (``--manager``, ``--manager-creds``, ``--manager-tls-ca``) and the manager (``--nats``)
connect the same way:

- **Servers.** A comma-separated list of ``nats://`` or ``tls://`` URLs. ``connect`` opens one
  connection to one of them, with nats-py's own reconnecting turned off: whoever holds the
  connection decides when and where to reconnect, and re-reads everything after it, so a
  reconnect is never a silent resumption.
- **Credentials** (a file, re-read at every connect so it can be rotated), either a NATS
  credentials file (a user JWT and its nkey seed, as ``nsc`` writes them; nats-py needs the
  ``nkeys`` package for those), or a YAML map with ``user`` and ``password`` (or ``token``)
  for servers whose users are in the server's config, as ``deploy/nats/`` ships them.
- **TLS.** ``tls_ca`` names the CA bundle that signs the servers' certificates; with it every
  connection is TLS and verifies the server.

Nothing here logs a secret: URLs are logged through ``redact`` (user info dropped) and errors
about a credentials file name the file and the field, never its content.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats
from nats.aio.client import Client

from reconciler.fleet.options import ConfigError, NatsOptions, load_credentials, redact, tls_context

__all__ = ["connect", "connect_first"]

Callback = Callable[[], Awaitable[None]]
ErrorCallback = Callable[[Exception], Awaitable[None]]


async def connect(
    options: NatsOptions,
    server: str,
    *,
    error_cb: ErrorCallback,
    disconnected_cb: Callback | None = None,
    closed_cb: Callback | None = None,
    connect_timeout: float = 2.0,
    ping_interval: float = 5.0,
) -> Client:
    """Open one connection to ``server``; nats-py does not reconnect it on its own.

    A lost connection calls ``disconnected_cb`` and ``closed_cb`` and stays closed. Pings every
    ``ping_interval`` seconds find a dead peer after three unanswered ones. Raises
    ``ConfigError`` for unusable settings and nats-py's or the OS's errors when the server
    cannot be reached or refuses.
    """
    kwargs: dict[str, Any] = {}
    if options.creds is not None:
        kwargs.update(load_credentials(options.creds))
    if options.tls_ca is not None:
        kwargs["tls"] = tls_context(options.tls_ca)
    opening = asyncio.ensure_future(
        nats.connect(
            servers=[server],
            name=options.name,
            inbox_prefix=options.inbox_prefix,
            allow_reconnect=False,
            # nats-py retries a server that refuses up to this many more times (at least once)
            # before it gives up; no wait in between.
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            connect_timeout=connect_timeout,
            ping_interval=ping_interval,
            max_outstanding_pings=3,
            error_cb=error_cb,
            disconnected_cb=disconnected_cb,
            closed_cb=closed_cb,
            **kwargs,
        )
    )
    try:
        # Shielded: nats-py's connect can swallow a cancellation (reconciler.core.cancel), and
        # one cancelled midway leaves its socket open. Cancelling the caller raises here at
        # once; the connect finishes on its own (within connect_timeout), and a connection it
        # opens after its caller was cancelled is closed.
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_abandoned)
        raise


_abandoned: set[asyncio.Task[None]] = set()


def _close_abandoned(opening: asyncio.Future[Client]) -> None:
    if opening.cancelled() or opening.exception() is not None:
        return  # nothing opened (nats-py closes what it opened when a connect fails)
    closing = asyncio.ensure_future(opening.result().close())
    _abandoned.add(closing)
    closing.add_done_callback(_abandoned.discard)


async def connect_first(
    options: NatsOptions,
    servers: Sequence[str],
    *,
    error_cb: ErrorCallback | None = None,
    disconnected_cb: Callback | None = None,
    closed_cb: Callback | None = None,
) -> tuple[Client, str]:
    """Connect to the first of ``servers`` that answers, in order: the client and its URL.

    Raises ``ConfigError`` for unusable settings, and ``ConnectionError`` naming each URL
    (redacted) with the reason it failed when none answers.
    """
    failures: list[str] = []
    for url in servers:
        last = [""]  # the most telling error: what nats-py reported while connecting

        async def on_error(err: Exception, last: list[str] = last) -> None:
            last[0] = str(err) or type(err).__name__
            if error_cb is not None:
                await error_cb(err)

        try:
            nc = await connect(
                options,
                url,
                error_cb=on_error,
                disconnected_cb=disconnected_cb,
                closed_cb=closed_cb,
            )
        except (asyncio.CancelledError, ConfigError):
            raise
        except Exception as err:
            failures.append(f"{redact(url)}: {last[0] or str(err) or type(err).__name__}")
            continue
        return nc, url
    raise ConnectionError("no NATS server answers (" + "; ".join(failures) + ")")

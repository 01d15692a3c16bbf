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
- **TLS, never plaintext where it is asked for.** A server must speak TLS when its URL is
  ``tls://`` or a CA is given (``tls_ca``, the bundle that signs the servers' certificates);
  its certificate is then verified, hostname included, against that CA, or the system's CAs
  where none is given. nats-py upgrades to TLS only when the server's first message (INFO)
  says ``tls_required``, and would otherwise send CONNECT, credentials and all, in clear. So
  every connection goes through ``_Client``, whose hook refuses such a server as soon as its
  INFO is read: the socket is closed, nothing was written to it, the refusal is logged (a
  warning per attempt) and raised as ``PlaintextRefused``. (A TLS handshake before INFO would
  need nats-server 2.10.4; Debian 12 ships 2.9.)

Nothing here logs a secret: URLs are logged through ``redact`` (user info dropped) and errors
about a credentials file name the file and the field, never its content.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nats import errors
from nats.aio.client import Client

from reconciler.fleet.options import (
    ConfigError,
    NatsOptions,
    load_credentials,
    redact,
    requires_tls,
    tls_context,
)

__all__ = ["PlaintextRefused", "connect", "connect_first"]

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]
ErrorCallback = Callable[[Exception], Awaitable[None]]


class PlaintextRefused(errors.Error, ConnectionError):
    """A server that must speak TLS did not ask for it; nothing was sent to it."""

    def __init__(self, url: str) -> None:
        super().__init__(
            f"NATS server {redact(url)} refused before CONNECT: it does not require TLS, and "
            "TLS is required (a tls:// URL or a CA given); nothing was sent to it"
        )


class _Client(Client):
    """nats-py's client, refusing before CONNECT a server that offers no TLS where TLS is
    required.

    The hook is nats-py's private ``_process_info``, which 2.16 calls with
    ``initial_connection=True`` in ``_process_connect_init`` once it has read the server's
    INFO, before its TLS upgrade and before it writes CONNECT. pyproject.toml pins nats-py to
    the versions this was checked against, and tests/fleet/test_tls.py fails (a fake server
    sees CONNECT) if the hook stops being called.
    """

    def __init__(self, url: str, *, tls: bool) -> None:
        super().__init__()
        self._guard_url = url
        self._guard_tls = tls

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection and self._guard_tls and info.get("tls_required") is not True:
            refused = PlaintextRefused(self._guard_url)
            log.warning("%s", refused)
            raise refused
        await super()._process_info(info, initial_connection=initial_connection)

    def _discard(self) -> None:
        """Close the socket of a connect that failed (nats-py leaves it open)."""
        transport = self._transport
        if transport:
            transport.close()  # type: ignore[no-untyped-call]


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
    tls = requires_tls(options, server)
    if tls:
        kwargs["tls"] = _tls_context(options)
    opening = asyncio.ensure_future(
        _open(
            _Client(server, tls=tls),
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


def _tls_context(options: NatsOptions) -> ssl.SSLContext:
    """The CA's context, or the system's CAs; either checks the server's hostname."""
    if options.tls_ca is not None:
        return tls_context(options.tls_ca)
    return ssl.create_default_context()


async def _open(client: _Client, **kwargs: Any) -> Client:
    try:
        await client.connect(**kwargs)
    except BaseException:
        client._discard()
        raise
    return client


_abandoned: set[asyncio.Task[None]] = set()


def _close_abandoned(opening: asyncio.Future[Client]) -> None:
    if opening.cancelled() or opening.exception() is not None:
        return  # nothing opened (``_open`` closes what a failed connect opened)
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

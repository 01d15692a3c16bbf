"""How to reach NATS, checked: server URLs, credentials files, the TLS CA, and redaction.

These are the settings ``reconciler.fleet.connect`` opens a connection with, kept apart from it
so that checking a flag (``--manager``, ``--nats``, ``--creds``, ``--tls-ca``) never loads the
NATS client: an agent on a desired directory never imports nats-py.

- **Servers.** A comma-separated list of ``nats://`` or ``tls://`` URLs.
- **Credentials** (a file, re-read at every connect so it can be rotated), either a NATS
  credentials file (a user JWT and its nkey seed, as ``nsc`` writes them), or a YAML map with
  ``user`` and ``password`` (or ``token``) for servers whose users are in the server's config.
- **TLS.** ``tls_ca`` names the CA bundle that signs the servers' certificates. A server must
  speak TLS when its URL is ``tls://`` or a CA is given (``requires_tls``); a connection
  configured so (``uses_tls``) takes no ``nats://`` URL the fleet publishes
  (``published_servers``). The refusal itself is ``reconciler.fleet.connect``'s.
- **Inbox.** Credentials that name a user give the connection the inbox prefix
  ``_INBOX.<user>`` (``reconciler.fleet.identity.inbox_prefix``): the only inbox that user's
  permissions let it receive replies on.

Nothing here logs a secret: URLs are logged through ``redact`` (user info dropped) and errors
about a credentials file name the file and the field, never its content.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from reconciler.fleet.identity import IdentityError, check_name, inbox_prefix

__all__ = [
    "ConfigError",
    "NatsOptions",
    "checked_options",
    "load_credentials",
    "parse_servers",
    "published_servers",
    "redact",
    "requires_tls",
    "tls_context",
    "uses_tls",
]

_JWT_MARKER = "-----BEGIN NATS USER JWT-----"
_MAX_CREDS_BYTES = 64 * 1024


class ConfigError(ValueError):
    """Bad connection settings (a URL, a credentials file, a CA file); the message says which."""


@dataclass(frozen=True, slots=True)
class NatsOptions:
    servers: tuple[str, ...]
    creds: Path | None = None
    tls_ca: Path | None = None
    name: str = "reconciler"
    inbox_prefix: str = "_INBOX"


def checked_options(
    servers: str, *, creds: str | None = None, tls_ca: str | None = None
) -> NatsOptions:
    """Options from command-line text, each part checked now; the inbox prefix is the
    credentials' user's, when they name one. Raises ``ConfigError``."""
    options = NatsOptions(
        servers=parse_servers(servers),
        creds=Path(creds) if creds else None,
        tls_ca=Path(tls_ca) if tls_ca else None,
    )
    if options.creds is not None:
        user = load_credentials(options.creds).get("user")
        # a user that no identity can be named (not one subject token) keeps the default
        with contextlib.suppress(IdentityError):
            if isinstance(user, str):
                options = replace(options, inbox_prefix=inbox_prefix(check_name(user)))
    if options.tls_ca is not None:
        tls_context(options.tls_ca)
    return options


def parse_servers(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Server URLs from ``nats://a:4222,nats://b:4222`` (or a list). Raises ``ConfigError``."""
    items = text.split(",") if isinstance(text, str) else list(text)
    servers: list[str] = []
    for raw in items:
        url = raw.strip()
        if not url:
            continue
        parts = urlsplit(url)
        # The scheme is written back in lower case: nats-py matches it as written, and a
        # ``TLS://`` it does not know would reach it otherwise.
        url = parts._replace(scheme=parts.scheme).geturl()
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ConfigError(f"expected nats://HOST:PORT or tls://HOST:PORT, got {redact(url)!r}")
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError as err:
            raise ConfigError(f"bad port in {redact(url)!r}: {err}") from None
        if url not in servers:
            servers.append(url)
    if not servers:
        raise ConfigError("no NATS server URL given")
    return tuple(servers)


def requires_tls(options: NatsOptions, url: str) -> bool:
    """True when ``url`` must speak TLS: it is ``tls://``, or a CA is given."""
    return options.tls_ca is not None or urlsplit(url).scheme == "tls"


def uses_tls(options: NatsOptions) -> bool:
    """True when these settings ask for TLS: a CA is given, or any server URL is ``tls://``."""
    return any(requires_tls(options, url) for url in options.servers)


def published_servers(
    options: NatsOptions, published: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The URLs the fleet published (its ``managers`` setting) that these settings may use,
    and those they ignore: with TLS asked for, a ``nats://`` URL would be a downgrade."""
    if not uses_tls(options):
        return tuple(published), ()
    kept = tuple(u for u in published if urlsplit(u).scheme == "tls")
    return kept, tuple(u for u in published if u not in kept)


def redact(url: str) -> str:
    """The URL without its user info, fit for a log line."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()


def load_credentials(path: Path) -> dict[str, Any]:
    """The ``nats.connect`` keyword arguments a credentials file stands for.

    Raises ``ConfigError`` naming the file (never its content) when it cannot be used.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_CREDS_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"credentials file {path}: {err.strerror or err}") from None
    if len(data) > _MAX_CREDS_BYTES:
        raise ConfigError(f"credentials file {path}: larger than {_MAX_CREDS_BYTES} bytes")
    text = data.decode("utf-8", errors="replace")
    if _JWT_MARKER in text:
        return {"user_credentials": str(path)}
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(
            f"credentials file {path}: neither a NATS credentials file nor YAML"
        ) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"credentials file {path}: expected 'user' and 'password', or 'token'")
    user, password, token = doc.get("user"), doc.get("password"), doc.get("token")
    if isinstance(token, str) and token and user is None:
        return {"token": token}
    if isinstance(user, str) and user and isinstance(password, str):
        return {"user": user, "password": password}
    raise ConfigError(f"credentials file {path}: expected 'user' and 'password', or 'token'")


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """A client TLS context that verifies servers against ``ca_file``. Raises ``ConfigError``."""
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"TLS CA file {ca_file}: {err}") from None

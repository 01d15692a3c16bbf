"""Checking flag values: one parser per kind of value, each failure a ``UsageError`` naming the
flag (exit 2), so every command says the same thing about the same mistake.
"""

from __future__ import annotations

import argparse

from reconciler.cli.exits import UsageError
from reconciler.core.policy import Policy
from reconciler.fleet.options import ConfigError, NatsOptions, checked_options
from reconciler.fleet.values import check_label
from reconciler.spec.units import parse_duration
from reconciler.web.admission import normal_host

__all__ = [
    "fleet_options",
    "parse_http_hosts",
    "parse_interval",
    "parse_labels",
    "parse_listen",
    "parse_percent",
    "parse_policy",
]


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--listen: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_http_hosts(items: list[str]) -> frozenset[str]:
    """``--http-host`` names, normalised as the Host rule compares them. Raises
    ``UsageError``."""
    try:
        return frozenset(normal_host(item) for item in items)
    except ValueError as err:
        raise UsageError(f"--http-host: {err}") from None


def parse_labels(items: list[str], flag: str = "--node-label") -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` items (``--node-label``, ``manager label``), each held to the one label
    rule (``reconciler.fleet.values.check_label``). Raises ``UsageError`` naming ``flag``."""
    labels = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag}: expected KEY=VALUE, got {item!r}")
        try:
            check_label(key, value)
        except ValueError as err:
            raise UsageError(f"{flag}: {err}") from None
        labels.append((key, value))
    return tuple(labels)


def parse_policy(args: argparse.Namespace) -> Policy:
    """``reconciler run``'s policy for fleet tasks, from its ``--allow-*`` flags."""
    try:
        return Policy.of(
            binds=args.allow_bind or [],
            devices=args.allow_device or [],
            caps=args.allow_cap or [],
            host_network=bool(args.allow_host_network),
            registries=args.allow_registry or [],
        )
    except ValueError as err:
        raise UsageError(str(err)) from None


def parse_percent(text: str, flag: str) -> float:
    """A percentage flag: a number from 0 to 100. Raises ``UsageError``."""
    try:
        value = float(str(text).strip().removesuffix("%"))
    except ValueError:
        raise UsageError(f"{flag}: expected a percentage from 0 to 100, got {text!r}") from None
    if not 0.0 <= value <= 100.0:
        raise UsageError(f"{flag}: expected a percentage from 0 to 100, got {text!r}")
    return value


def parse_interval(text: str, flag: str) -> float:
    """A duration flag (``30s``, ``1m``). Raises ``UsageError``."""
    try:
        return parse_duration(text)
    except ValueError as err:
        raise UsageError(f"{flag}: {err}") from err


def fleet_options(
    servers: str | None, creds: str | None, tls_ca: str | None, flag: str
) -> NatsOptions | None:
    """NATS connection options from flags, checked now (a bad one is a usage error).
    Credentials or a CA without servers say that they need fleet mode."""
    if not servers:
        if creds or tls_ca:
            raise UsageError(f"credentials and a TLS CA are for fleet mode: they need {flag}")
        return None
    try:
        return checked_options(servers, creds=creds, tls_ca=tls_ca)
    except ConfigError as err:
        raise UsageError(f"{flag}: {err}") from err

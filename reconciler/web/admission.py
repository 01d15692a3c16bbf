"""Who the HTTP server lets in: the ``Host`` rule against DNS rebinding, and connection slots.

This module owns two pure decisions of the server (``reconciler.web.server`` is their driver):

* **The Host rule.** A page open in an operator's browser can make that browser send requests
  to the agent (or the manager) through a name the page's owner controls and re-points at
  127.0.0.1 (DNS rebinding). The browser then treats the answers as the attacker's own origin
  and lets its script read them. Such a request still carries the attacker's name in ``Host``,
  so the routes that show state (the page, ``/v1/*``) answer only a ``Host`` that is an IP
  literal, ``localhost``, or a name the operator gave with ``--http-host``; anything else gets
  421. ``Host`` is required by HTTP/1.1, so a request without one is treated as foreign.
  ``/metrics`` and the probes answer any ``Host``: scrapers and load balancers reach hosts by
  name, and neither the numbers nor ``ok`` are worth a rebinding attack.
* **Slots.** ``Slots`` counts the connections open per client address and in two pools: the
  ordinary pool for everything, and a small pool kept for ``PROBE_PATHS`` so a scrape and the
  probes answer while every ordinary slot is held.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_LIMITS",
    "PROBE_PATHS",
    "Admission",
    "Limits",
    "Slots",
    "host_allowed",
    "normal_host",
]

#: Paths that answer any ``Host`` and may use the reserved slots: what scrapers and probes use.
PROBE_PATHS: Final = frozenset({"/metrics", "/healthz", "/readyz"})
#: Names always admitted besides IP literals: the loopback name every resolver keeps local.
#: ``*.localhost`` is not admitted: some resolvers send it to the network.
LOCAL_NAMES: Final = frozenset({"localhost"})


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's connection limits; the defaults are the product's, tests shorten them."""

    #: Ordinary connections served at once (event streams not counted: see ``max_streams``).
    max_connections: int = 64
    #: Ordinary connections one client address may hold at once, streams included: one
    #: neighbour can take an eighth of the ordinary slots and half the stream slots, never all.
    per_client: int = 8
    #: Connections kept for ``PROBE_PATHS``, for a client over its share or when the ordinary
    #: ones are all taken; any other path asked on one of these gets 503. Few: a probe is
    #: answered at once, and a socket that sends nothing leaves after ``first_line_timeout``.
    reserved: int = 8
    #: Reserved connections one client address may hold: a neighbour needs several addresses
    #: to take them all.
    reserved_per_client: int = 2
    #: Event streams open at once; more get a 503.
    max_streams: int = 16
    #: Seconds a client has to send its request line: a socket that sends nothing is closed.
    first_line_timeout: float = 5.0
    #: Seconds an event stream lives; then it ends and the browser reconnects on its own
    #: (``EventSource`` does, after the stream's ``retry``), so no client holds a slot forever.
    stream_life: float = 600.0


DEFAULT_LIMITS: Final = Limits()
"""The product's limits."""


class Admission(enum.Enum):
    """Which pool a new connection got, if any."""

    ORDINARY = "ordinary"
    RESERVED = "reserved"  # probe paths only
    REFUSED = "refused"


class Slots:
    """Open connections per pool, and per client address in each (the driver gives back what
    it took). A client over its ordinary share, or arriving when the ordinary pool is full, gets
    a reserved slot while its reserved share lasts: the probes of a client that holds many
    connections (every client of an SSH tunnel is 127.0.0.1) still answer."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._held: dict[tuple[str, Admission], int] = {}
        self._used = {Admission.ORDINARY: 0, Admission.RESERVED: 0}

    def take(self, client: str) -> Admission:
        """A slot for a new connection from ``client``, or ``REFUSED``."""
        limits = self._limits
        if (
            self._used[Admission.ORDINARY] < limits.max_connections
            and self._held.get((client, Admission.ORDINARY), 0) < limits.per_client
        ):
            pool = Admission.ORDINARY
        elif (
            self._used[Admission.RESERVED] < limits.reserved
            and self._held.get((client, Admission.RESERVED), 0) < limits.reserved_per_client
        ):
            pool = Admission.RESERVED
        else:
            return Admission.REFUSED
        self._held[client, pool] = self._held.get((client, pool), 0) + 1
        self._used[pool] += 1
        return pool

    def move_to_stream(self) -> None:
        """An ordinary connection became an event stream: it leaves the pool (streams are
        capped apart) but still counts against its client's share."""
        self._used[Admission.ORDINARY] -= 1

    def give(self, client: str, pool: Admission, *, streamed: bool = False) -> None:
        """Give back what ``take`` gave (``streamed``: the pool was already left)."""
        if not streamed:
            self._used[pool] -= 1
        held = self._held.pop((client, pool), 0) - 1
        if held > 0:
            self._held[client, pool] = held


def normal_host(name: str) -> str:
    """A ``--http-host`` name as the rule compares it. Raises ``ValueError`` for one that is
    not a DNS name (an IP literal is admitted anyway and needs no flag)."""
    text = name.strip().lower().rstrip(".")
    labels = text.split(".")
    ok = bool(text) and len(text) <= 253
    ok = ok and all(0 < len(x) <= 63 and x.replace("-", "").isalnum() for x in labels)
    ok = ok and all(x.isascii() and not x.startswith("-") for x in labels)
    if not ok:
        raise ValueError(f"expected a DNS name, got {name!r}")
    return text


def host_allowed(host: str | None, names: frozenset[str] = frozenset()) -> bool:
    """Whether a request's ``Host`` header may reach the state routes: an IP literal (IPv6 in
    brackets), ``localhost`` or one of ``names`` (normalised by ``normal_host``), with or
    without a port. ``None`` (no header) is not."""
    if not host:
        return False
    if host.startswith("["):
        inner, sep, port = host[1:].partition("]")
        if not sep or (port and not _is_port(port.removeprefix(":"), port)):
            return False
        return _is_ip(inner, ipaddress.IPv6Address)
    name, sep, port = host.rpartition(":")
    if not sep:
        name = port
    elif not _is_port(port, ":" + port):
        return False
    name = name.lower().rstrip(".")
    return _is_ip(name, ipaddress.IPv4Address) or name in LOCAL_NAMES or name in names


def _is_port(digits: str, raw: str) -> bool:
    return raw.startswith(":") and digits.isdigit() and len(digits) <= 5


def _is_ip(text: str, kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True

"""The value formats of the desired-state schema, and the parsers behind them.

Everything a JSON Schema cannot say well about a single value is a named ``format`` here, whose
checker raises ``ValueError`` (or ``UnitError``) with an operator-grade message: DNS-label names,
image references, bounded durations and sizes, absolute paths, volume names, ports, devices,
signals, capabilities, users, env names and label keys. ``jsonschema`` calls the checkers and
puts the message on the exact path of the bad value.

Ports, devices and signals are *parsed* by their checkers, and conversion needs the parsed
value: the parsers are memoised, so each distinct text is parsed once and the checker and the
conversion share the result (the values are immutable).

The limits are part of the contract: nothing read from a file can become an infinite or absurd
number downstream (a deadline, a cgroup limit).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections.abc import Callable

from jsonschema import FormatChecker

from reconciler.core.model import Device, PortMapping, Protocol
from reconciler.spec.units import UnitError, format_duration, parse_duration, parse_size

__all__ = [
    "API_VERSION",
    "FORMATS",
    "KIND",
    "MAX_CPUS",
    "MAX_DURATION",
    "MAX_RESTART_DELAY",
    "MAX_SIZE",
    "MAX_STOP_GRACE_PERIOD",
    "RESERVED_LABEL_PREFIX",
    "VOLUME_NAME",
    "duration_format",
    "parse_device",
    "parse_port",
    "parse_signal",
]

API_VERSION = "reconciler/v1"
KIND = "TaskSet"
RESERVED_LABEL_PREFIX = "reconciler."

MAX_STOP_GRACE_PERIOD = 3600.0
"""``stopGracePeriod`` is at most an hour: a stop must end while someone still waits for it."""
MAX_RESTART_DELAY = 24 * 3600.0
"""``restart.delay`` and ``restart.maxDelay`` are at most a day."""
MAX_DURATION = 24 * 3600.0
"""Every other duration is at most a day too."""
MAX_SIZE = 1024**4
"""``memory`` and ``logs.maxSize`` are at most 1Ti."""
MAX_CPUS = 1024


FORMATS = FormatChecker(formats=())


_StrCheck = Callable[[str], object]


def _string_format(name: str) -> Callable[[_StrCheck], _StrCheck]:
    """Register a checker that applies to strings only (other types are the schema's job)."""

    def register(func: _StrCheck) -> _StrCheck:
        def check(instance: object) -> bool:
            if isinstance(instance, str):
                func(instance)
            return True

        FORMATS.checks(name, raises=(ValueError,))(check)
        return func

    return register


_DNS_CHARS = re.compile(r"[a-z0-9-]+")


@_string_format("dns-label")
def _check_dns_label(value: str) -> None:
    reason = None
    if not value:
        reason = "it is empty"
    elif len(value) > 63:
        reason = f"it is {len(value)} characters long, at most 63 are allowed"
    elif not _DNS_CHARS.fullmatch(value):
        reason = "only lowercase letters a-z, digits and '-' are allowed"
    elif value[0] == "-" or value[-1] == "-":
        reason = "it must start and end with a letter or digit"
    if reason:
        raise ValueError(f"{value!r} is not a DNS label: {reason}")


@_string_format("image")
def _check_image(value: str) -> None:
    if not value or any(c.isspace() for c in value) or value.startswith("-"):
        raise ValueError(f"{value!r} is not an image reference such as localhost/busybox:latest")


def duration_format(maximum: float) -> str:
    """The name of a format for durations of at most ``maximum`` seconds, registered once."""
    name = f"duration:{format_duration(maximum)}"
    if name not in FORMATS.checkers:

        @_string_format(name)
        def _check_duration(value: str) -> None:
            parse_duration(value, maximum=maximum)

    return name


@_string_format("positive-size")
def _check_size(value: str) -> None:
    if parse_size(value, maximum=MAX_SIZE) <= 0:
        raise UnitError(f"size {value!r} must be greater than 0")


@FORMATS.checks("finite", raises=(ValueError,))
def _check_finite(instance: object) -> bool:
    if isinstance(instance, float) and not math.isfinite(instance):
        raise ValueError(f"must be a finite number, not {instance}")
    return True


@_string_format("absolute-path")
def _check_absolute_path(value: str) -> None:
    if not value.startswith("/") or "\0" in value:
        raise ValueError(f"{value!r} is not an absolute path (it must start with '/')")


VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@_string_format("volume-name")
def _check_volume_name(value: str) -> None:
    if not VOLUME_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a volume name (letters, digits, '_', '.', '-', starting with a "
            "letter or digit); use type: bind for a host path"
        )


@_string_format("port")
def _check_port(value: str) -> None:
    parse_port(value)


@_string_format("device")
def _check_device(value: str) -> None:
    parse_device(value)


@_string_format("signal")
def _check_signal(value: str) -> None:
    parse_signal(value)


_CAPABILITY = re.compile(r"ALL|(CAP_)?[A-Z][A-Z0-9_]*", re.IGNORECASE)


@_string_format("capability")
def _check_capability(value: str) -> None:
    if not _CAPABILITY.fullmatch(value):
        raise ValueError(f"{value!r} is not a capability name such as NET_ADMIN or ALL")


_USER_PART = r"[A-Za-z0-9_.][A-Za-z0-9_.-]*"
_USER = re.compile(rf"{_USER_PART}(:{_USER_PART})?")


@_string_format("user")
def _check_user(value: str) -> None:
    if not _USER.fullmatch(value):
        raise ValueError(f"{value!r} is not a user: use NAME, UID, NAME:GROUP or UID:GID")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@_string_format("env-name")
def _check_env_name(value: str) -> None:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a usable environment variable name: use letters, digits and "
            "'_', not starting with a digit"
        )


@_string_format("label-key")
def _check_label_key(value: str) -> None:
    if not value:
        raise ValueError("a label key must not be empty")
    if value.startswith(RESERVED_LABEL_PREFIX):
        raise ValueError(
            f"label key {value!r} is reserved: keys starting with "
            f"{RESERVED_LABEL_PREFIX!r} belong to the agent"
        )


# -------------------------------------------------------------------------- value parsers


@functools.lru_cache(maxsize=1024)
def parse_port(text: str) -> PortMapping:
    """Parse ``[IP:]HOST:CONTAINER[/tcp|/udp]`` (an IPv6 address goes in brackets).

    Raises ``ValueError`` with an operator-grade message for anything else, including port
    numbers outside 1-65535.
    """
    hint = "use HOST:CONTAINER[/tcp|udp], such as 8080:80/tcp"
    rest, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp") or ("/" in text and not text.partition("/")[2]):
        raise ValueError(f"{text!r}: the protocol must be tcp or udp; {hint}")
    host_ip = ""
    if rest.startswith("["):
        addr, sep, rest = rest[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not a port mapping; {hint}")
        host_ip = _check_ip(addr, text, version=6)
    parts = rest.split(":")
    if len(parts) == 3 and not host_ip:
        host_ip = _check_ip(parts[0], text, version=4)
        parts = parts[1:]
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not a port mapping; {hint}")
    host, container = (_port_number(p, text) for p in parts)
    return PortMapping(
        host_port=host, container_port=container, protocol=Protocol(proto), host_ip=host_ip
    )


def _check_ip(addr: str, text: str, *, version: int) -> str:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"{text!r}: {addr!r} is not an IP address") from None
    if ip.version != version:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, such as [::1]:8080:80")
    return str(ip)


def _port_number(part: str, text: str) -> int:
    if not part.isdigit() or not part.isascii():
        raise ValueError(f"{text!r}: {part!r} is not a port number")
    n = int(part)
    if not 1 <= n <= 65535:
        raise ValueError(f"{text!r}: port {n} is outside 1-65535")
    return n


@functools.lru_cache(maxsize=1024)
def parse_device(text: str) -> Device:
    """Parse ``HOST[:CONTAINER]``, both absolute paths; the container path defaults to HOST."""
    host, _, container = text.partition(":")
    container = container or host
    for p in (host, container):
        if not p.startswith("/") or ":" in p or "\0" in p:
            raise ValueError(
                f"{text!r} is not a device: use HOST[:CONTAINER] with absolute paths, "
                "such as /dev/ttyUSB0"
            )
    return Device(host=host, container=container)


_SIGNALS = frozenset(
    {
        *("HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1"),
        *("SEGV", "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP"),
        *("TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL"),
        *("PWR", "SYS", "RTMIN", "RTMAX"),
    }
)
_RT_SIGNAL = re.compile(r"RTMIN\+(\d+)|RTMAX-(\d+)")


@functools.lru_cache(maxsize=256)
def parse_signal(text: str) -> str:
    """Canonicalise a Linux signal name (``term``, ``SIGTERM``, ``SIGRTMIN+3``) to ``SIGTERM`` form.

    Raises ``ValueError`` for an unknown name. Numbers are not accepted: names read better and
    do not depend on the architecture.
    """
    name = text.upper()
    name = name.removeprefix("SIG")
    rt = _RT_SIGNAL.fullmatch(name)
    if name in _SIGNALS or (rt and 1 <= int(rt.group(1) or rt.group(2)) <= 30):
        return "SIG" + name
    raise ValueError(f"{text!r} is not a signal name such as SIGTERM, SIGINT or SIGQUIT")

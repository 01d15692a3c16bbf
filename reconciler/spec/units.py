"""Human units in desired-state files: durations ("1h30m") and sizes ("64Mi").

This module owns the two unit grammars of desired-state files so that the schema, the CLI and
the fleet session all accept exactly the same spellings and turn them into the canonical form
of ``reconciler.core.model``: float seconds and integer bytes.

- A duration is one or more ``<number><unit>`` groups, units ``ms``, ``s``, ``m`` and ``h``, in
  any order and without spaces (``500ms``, ``10s``, ``1.5m``, ``1h30m``), like Go's
  ``time.ParseDuration``. The lone string ``0`` is also accepted. Negative durations are not.
- A size is a non-negative integer of bytes, or a string: a number followed by an optional
  binary suffix (``Ki``, ``Mi``, ``Gi``, ``Ti``: powers of 1024) or decimal suffix (``K`` or
  ``k``, ``M``, ``G``, ``T``: powers of 1000), as in Kubernetes. ``1.5Gi`` is fine; the result
  must be a whole number of bytes.

Both parsers take a ``maximum`` and refuse anything above it, and anything above a ceiling
when none is given (a year; the largest signed 64-bit number of bytes): a number written with
four hundred digits would otherwise become an infinite float that breaks every deadline
computed from it. A spelling longer than ``MAX_UNIT_CHARS`` is refused before it is read.

Both parsers raise ``UnitError`` (a ``ValueError``) with a message that names the accepted
forms, because these messages end up verbatim in ``PATH:LINE: FIELD: problem`` lines.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "DURATION_CEILING",
    "MAX_UNIT_CHARS",
    "SIZE_CEILING",
    "UnitError",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
]

DURATION_CEILING = 365 * 24 * 3600.0
"""The longest duration any caller accepts, in seconds, when it gives no maximum of its own."""

SIZE_CEILING = 2**63 - 1
"""The largest size any caller accepts, in bytes, when it gives no maximum of its own."""

MAX_UNIT_CHARS = 64
"""A duration or size spelled with more characters than this is refused unread."""


class UnitError(ValueError):
    """A duration or size that cannot be parsed; the message is fit for an operator."""


_DURATION_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(ms|s|m|h)")
_NUMBER_ONLY = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")

_SIZE_SUFFIXES = {
    "": 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "K": 1000,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)([A-Za-z]*)")

_DURATION_HINT = "use a number with a unit (ms, s, m or h), such as 500ms, 10s, 5m or 1h30m"
_SIZE_HINT = (
    "use bytes, or a number with Ki, Mi, Gi (powers of 1024) or K, M, G (powers of 1000), "
    "such as 64Mi or 1G"
)


def parse_duration(text: str, *, maximum: float | None = None) -> float:
    """Parse a duration string into float seconds, at most ``maximum`` (default: a year).

    Accepts ``0`` and concatenations of ``<number><unit>`` with units ms, s, m, h. Raises
    ``UnitError`` for anything else, including a non-string, a bare number other than 0, an
    unknown unit, a sign, embedded spaces, or a duration longer than ``maximum``.
    """
    if not isinstance(text, str):
        raise UnitError(f"a duration must be a string, not {_kind(text)}; {_DURATION_HINT}")
    if text == "0":
        return 0.0
    if not text:
        raise UnitError(f"empty duration; {_DURATION_HINT}")
    if len(text) > MAX_UNIT_CHARS:
        raise UnitError(f"duration {_show(text)} is too long to be meant; {_DURATION_HINT}")
    if _NUMBER_ONLY.fullmatch(text):
        raise UnitError(f"duration {text!r} has no unit; {_DURATION_HINT}")
    total = Decimal(0)
    pos = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += Decimal(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise UnitError(f"invalid duration {text!r}; {_DURATION_HINT}")
    limit = DURATION_CEILING if maximum is None else maximum
    if total > Decimal(limit):
        raise UnitError(f"duration {text!r} is longer than the limit of {format_duration(limit)}")
    return float(total)


def format_duration(seconds: float) -> str:
    """The shortest duration string that ``parse_duration`` reads back as ``seconds``."""
    if seconds == 0:
        return "0s"
    ms = round(seconds * 1000)
    if abs(ms - seconds * 1000) > 1e-6 or ms % 1000:
        return f"{seconds * 1000:g}ms"
    s = ms // 1000
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    return "".join(parts)


def parse_size(value: int | float | str, *, maximum: int | None = None) -> int:
    """Parse a size into integer bytes, at most ``maximum`` (default: ``SIZE_CEILING``).

    Accepts a non-negative integer (or an integral float) of bytes, or a string of digits with
    an optional suffix: Ki, Mi, Gi, Ti (powers of 1024) or K/k, M, G, T (powers of 1000).
    Raises ``UnitError`` for booleans, negative numbers, unknown suffixes (such as ``MB``),
    values that are not a whole number of bytes and sizes above ``maximum``.
    """
    size = _size(value)
    limit = SIZE_CEILING if maximum is None else maximum
    if size > limit:
        shown = repr(value) if isinstance(value, str) else str(size)
        raise UnitError(f"size {shown} is more than the limit of {format_size(limit)}")
    return size


def format_size(size: int) -> str:
    """``size`` bytes with the largest binary suffix that divides it (``1Ti``, ``64Mi``)."""
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        unit = _SIZE_SUFFIXES[suffix]
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _size(value: int | float | str) -> int:
    if isinstance(value, bool):
        raise UnitError(
            f"a size must be a number of bytes or a string, not a boolean; {_SIZE_HINT}"
        )
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"size {value} is negative")
        return value
    if isinstance(value, float):
        if value < 0 or not value.is_integer():
            raise UnitError(f"size {value!r} is not a whole, non-negative number of bytes")
        if value > SIZE_CEILING:
            raise UnitError(f"size {value!r} is more than the limit of {format_size(SIZE_CEILING)}")
        return int(value)
    if not isinstance(value, str):
        raise UnitError(f"a size must be a number of bytes or a string, not {_kind(value)}")
    if len(value) > MAX_UNIT_CHARS:
        raise UnitError(f"size {_show(value)} is too long to be meant; {_SIZE_HINT}")
    match = _SIZE.fullmatch(value)
    if match is None:
        raise UnitError(f"invalid size {value!r}; {_SIZE_HINT}")
    number, suffix = match.groups()
    if suffix not in _SIZE_SUFFIXES:
        raise UnitError(f"invalid size {value!r}: unknown suffix {suffix!r}; {_SIZE_HINT}")
    try:
        amount = Decimal(number) * _SIZE_SUFFIXES[suffix]
    except InvalidOperation as e:  # pragma: no cover - the regex admits only decimals
        raise UnitError(f"invalid size {value!r}; {_SIZE_HINT}") from e
    if amount != amount.to_integral_value():
        raise UnitError(f"size {value!r} is not a whole number of bytes")
    return int(amount)


def _show(text: str) -> str:
    return repr(text[:20] + "...")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__

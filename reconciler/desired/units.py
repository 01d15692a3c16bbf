"""Human units in desired-state files: durations ("1h30m") and sizes ("64Mi").

This module owns the two unit grammars of PRODUCT.md so that the schema, the CLI and the fleet
session all accept exactly the same spellings and turn them into the canonical form of
``reconciler.model``: float seconds and integer bytes.

- A duration is one or more ``<number><unit>`` groups, units ``ms``, ``s``, ``m`` and ``h``, in
  any order and without spaces (``500ms``, ``10s``, ``1.5m``, ``1h30m``), like Go's
  ``time.ParseDuration``. The lone string ``0`` is also accepted. Negative durations are not.
- A size is a non-negative integer of bytes, or a string: a number followed by an optional
  binary suffix (``Ki``, ``Mi``, ``Gi``, ``Ti``: powers of 1024) or decimal suffix (``K`` or
  ``k``, ``M``, ``G``, ``T``: powers of 1000), as in Kubernetes. ``1.5Gi`` is fine; the result
  must be a whole number of bytes.

Both parsers raise ``UnitError`` (a ``ValueError``) with a message that names the accepted
forms, because these messages end up verbatim in ``PATH:LINE: FIELD: problem`` lines.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["UnitError", "format_duration", "parse_duration", "parse_size"]


class UnitError(ValueError):
    """A duration or size that cannot be parsed; the message is fit for an operator."""


_DURATION_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)")
_NUMBER_ONLY = re.compile(r"\d+(?:\.\d+)?|\.\d+")

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
_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)([A-Za-z]*)")

_DURATION_HINT = "use a number with a unit (ms, s, m or h), such as 500ms, 10s, 5m or 1h30m"
_SIZE_HINT = (
    "use bytes, or a number with Ki, Mi, Gi (powers of 1024) or K, M, G (powers of 1000), "
    "such as 64Mi or 1G"
)


def parse_duration(text: str) -> float:
    """Parse a duration string into float seconds.

    Accepts ``0`` and concatenations of ``<number><unit>`` with units ms, s, m, h. Raises
    ``UnitError`` for anything else, including a non-string, a bare number other than 0, an
    unknown unit, a sign or embedded spaces.
    """
    if not isinstance(text, str):
        raise UnitError(f"a duration must be a string, not {_kind(text)}; {_DURATION_HINT}")
    if text == "0":
        return 0.0
    if not text:
        raise UnitError(f"empty duration; {_DURATION_HINT}")
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


def parse_size(value: int | float | str) -> int:
    """Parse a size into integer bytes.

    Accepts a non-negative integer (or an integral float) of bytes, or a string of digits with
    an optional suffix: Ki, Mi, Gi, Ti (powers of 1024) or K/k, M, G, T (powers of 1000).
    Raises ``UnitError`` for booleans, negative numbers, unknown suffixes (such as ``MB``) and
    values that are not a whole number of bytes.
    """
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
        return int(value)
    if not isinstance(value, str):
        raise UnitError(f"a size must be a number of bytes or a string, not {_kind(value)}")
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

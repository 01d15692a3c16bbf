"""The limits every untrusted document is held to: a desired-state file and a value read from
the fleet's buckets alike. Pure.

Whoever writes a file into the desired directory, or a value into a bucket an agent or a
manager reads, must not be able to stall or kill it, so both are refused when they break one of
these limits, and both use these checks (``reconciler.spec.yamlsource`` for YAML,
``reconciler.fleet.values`` for JSON):

- more than ``MAX_BYTES`` (1 MiB): far above any real task file or value, small enough to read;
- nesting deeper than ``MAX_DEPTH`` (64) levels: Python and every library after the parser
  recurse per level;
- an integer written with more than ``MAX_INT_DIGITS`` (18) digits: any 18-digit number fits
  in 64 bits, no field needs more, and Python refuses to convert past 4,300 digits anyway;
- a control character other than TAB, CR and LF (``control_character``), in the text as
  written or in a string it spells with an escape: a NUL or a terminal escape sequence is never
  meant.

Numbers must also be finite; each parser says so in its own terms (YAML's ``.inf`` is the
schema's business, JSON's ``NaN`` and ``Infinity`` are not JSON).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "control_character",
    "control_problem",
    "int_digits",
]

MAX_BYTES: Final = 1024 * 1024
"""A document larger than this is refused rather than parsed."""

MAX_DEPTH: Final = 64
"""Collections may nest this deep; a real task needs about six."""

MAX_INT_DIGITS: Final = 18
"""The longest integer accepted: any 18-digit number fits in 64 bits."""

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def control_character(text: str) -> int | None:
    """The index of the first control character in ``text`` other than TAB, CR and LF (C0,
    DEL and C1), or None."""
    match = _CONTROL.search(text)
    return None if match is None else match.start()


def control_problem(char: str) -> str:
    """The one wording of a refused control character ``char``."""
    return f"holds the control character U+{ord(char):04X}; only TAB, CR and LF are allowed"


def int_digits(text: str) -> int:
    """How many digits an integer is written with (sign, base prefix and '_' left out)."""
    body = text.lstrip("+-").replace("_", "")
    if body[:2].lower() in ("0x", "0o", "0b"):
        body = body[2:]
    return len(body)

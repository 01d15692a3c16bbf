"""Validation problems and the exception that carries them.

Every check in ``reconciler.spec`` reports through ``Problem`` so that the CLI, the agent's
log and ``DesiredInvalid`` messages all print one format: ``PATH:LINE: FIELD: problem``.
Problems are collected, never raised one by one, so that ``reconciler validate`` can list every
problem of a file set in one run.

LINE is 1-based. A problem that belongs to no line (a missing directory, an unsafe mode) uses
line 0, which keeps the format parseable.

A problem is always one short line, whatever the input: its text may quote a hostile file (a
key of a megabyte, a value with newlines or escape sequences), and the agent logs it. So control
characters in every part are escaped (``\\n``, ``\\x1b``), and FIELD and the message are cut to
``MAX_FIELD_CHARS`` and ``MAX_MESSAGE_CHARS``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MAX_FIELD_CHARS",
    "MAX_MESSAGE_CHARS",
    "DesiredStateError",
    "Problem",
    "describe",
    "one_line",
]

MAX_FIELD_CHARS = 200
MAX_MESSAGE_CHARS = 400

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    if c in _ESCAPES:
        return _ESCAPES[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` with control characters escaped, cut to ``limit`` characters (ending "...")."""
    if _CONTROL.search(text):
        text = _CONTROL.sub(_escape, text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def describe(e: BaseException) -> str:
    """An unexpected exception in a few words: ``RecursionError: maximum recursion depth...``.

    For a problem line, never a traceback; the problem cuts it to length.
    """
    detail = str(e)
    return f"{type(e).__name__}: {detail}" if detail else type(e).__name__


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One thing wrong with the desired state, located by file, line and field path.

    The parts are made safe on construction (see the module docstring), so a problem can be
    printed or logged as it is.
    """

    path: str
    line: int
    field: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", one_line(self.path))
        object.__setattr__(self, "field", one_line(self.field, MAX_FIELD_CHARS))
        object.__setattr__(self, "message", one_line(self.message, MAX_MESSAGE_CHARS))

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


class DesiredStateError(Exception):
    """The desired state is invalid. ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)

    def lines(self) -> tuple[str, ...]:
        """The problems as text lines, the form ``DesiredInvalid.errors`` carries."""
        return tuple(str(p) for p in self.problems)

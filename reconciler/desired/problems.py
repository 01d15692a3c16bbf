"""Validation problems and the exception that carries them.

Every check in ``reconciler.desired`` reports through ``Problem`` so that the CLI, the agent's
log and ``DesiredInvalid`` messages all print the one format PRODUCT.md fixes:
``PATH:LINE: FIELD: problem``. Problems are collected, never raised one by one, so that
``reconciler validate`` can list every problem of a file set in one run.

LINE is 1-based. A problem that belongs to no line (a missing directory, an unsafe mode) uses
line 0, which keeps the format parseable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["DesiredStateError", "Problem"]


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One thing wrong with the desired state, located by file, line and field path."""

    path: str
    line: int
    field: str
    message: str

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

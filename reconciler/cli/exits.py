"""The one map from what went wrong to the command line's exit code and message.

0 success; 1 a runtime failure (the store, podman or NATS refused, nothing matched the name);
2 a usage or validation error (a bad flag, a bad config key, desired-state problems). Commands
raise; ``main`` asks ``outcome()`` what to print and which code to return.
"""

from __future__ import annotations

from reconciler.core.errors import StoreError
from reconciler.spec.problems import DesiredStateError

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "Failure", "NotFound", "UsageError", "outcome"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad flag, config key or value: exit 2."""


class Failure(Exception):
    """The command could not do its job (a peer refused, a write failed): exit 1."""


class NotFound(Failure):
    """Nothing matched what the operator named: exit 1."""


def outcome(err: BaseException) -> tuple[int, list[str]] | None:
    """The exit code and the lines for stderr for an error a command raised, or None for an
    error that is a bug (it propagates with its traceback)."""
    if isinstance(err, DesiredStateError):
        return EXIT_USAGE, [str(p) for p in err.problems]
    if isinstance(err, UsageError):
        return EXIT_USAGE, [f"reconciler: {err}"]
    if isinstance(err, Failure | StoreError):
        return EXIT_FAILURE, [f"reconciler: {err}"]
    return None

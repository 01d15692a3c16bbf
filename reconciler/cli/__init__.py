"""The ``reconciler`` command line, and the composition root.

* ``options``: every command and flag, declared as data; ``--config`` merging; the defaults.
* ``main``: parse, run the command, render its data, map failures to exit codes (``exits``).
* ``tasks``, ``agent``, ``fleet``: the commands, each returning data.
* ``render``: tables and JSON. ``logfmt``: ``key=value`` log lines.
* ``wiring``: the composition root, the only module that picks concrete implementations
  (podman, the session, the clock); import-linter allows it, alone, to import ``runtime``.

Exit codes: 0 success, 1 a runtime failure (including "not found"), 2 a usage or validation
error. See docs/cli.md for every command.
"""

from reconciler.cli.main import main

__all__ = ["main"]

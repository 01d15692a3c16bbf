"""The ``reconciler`` command line.

* ``options``: every command and flag, declared as data, each default written once there;
  ``--config`` merging. ``values``: one checker per kind of flag value.
* ``main``: parse, run the command, render its data, map failures to exit codes (``exits``).
* ``tasks``, ``agent``, ``logs``, ``manager``: the commands, each returning data; ``agent`` and
  ``manager`` hand their checked options to ``reconciler.assemble``, which picks the concrete
  runtime and session and runs the process.
* ``render``: tables and JSON. ``logfmt``: ``key=value`` log lines.

Exit codes: 0 success, 1 a runtime failure (including "not found"), 2 a usage or validation
error. See docs/cli.md for every command.
"""

from reconciler.cli.main import main

__all__ = ["main"]

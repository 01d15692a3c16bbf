"""Agents for tests and benchmarks, put together exactly as ``reconciler run`` puts them.

``agent_options`` reads flags through the command line's own parser, defaults and checks, so a
test's agent runs with the defaults an operator's does; ``assemble_agent`` (the composition
layer's, not a copy) then builds it over whatever runtime, session and clock the test hands in.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.assemble.agent import AgentOptions
from reconciler.cli.agent import agent_options as checked_agent_options
from reconciler.cli.parser import apply_defaults, build_parser

__all__ = ["agent_options"]


def agent_options(state_dir: Path, *flags: str) -> AgentOptions:
    """What ``reconciler run --state-dir STATE_DIR FLAGS...`` would run with. Raises
    ``UsageError`` for a bad flag, as the command does."""
    args = build_parser().parse_args(["run", "--state-dir", str(state_dir), *flags])
    apply_defaults(args, args.spec)
    return checked_agent_options(args)

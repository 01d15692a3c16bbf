"""Defaults are written once, in the option data: the help shows them, commands read them
after ``--config``, and the reference documents the same value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.cli.options import COMMANDS
from reconciler.cli.parser import apply_config, apply_defaults, build_parser

ROOT = Path(__file__).resolve().parents[2]
CLI_DOC = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")

FLAGS_WITH_DEFAULTS = sorted(
    {(f.name, f.default) for spec in COMMANDS for f in spec.flags if f.default is not None}
)


@pytest.mark.parametrize(("name", "default"), FLAGS_WITH_DEFAULTS)
def test_every_default_is_the_one_docs_cli_md_shows(name: str, default: str) -> None:
    rows = [
        line
        for line in CLI_DOC.splitlines()
        if line.startswith("| ") and re.search(rf"`--{name}\b", line.split(" | ")[0])
    ]
    assert rows, f"--{name} has no row in docs/cli.md"
    shown = [row for row in rows if f"`{default}`" in row]
    assert shown, f"no row of --{name} in docs/cli.md shows its default {default!r}: {rows}"


def test_the_help_shows_the_default_and_a_command_reads_it() -> None:
    parser = build_parser()
    args = parser.parse_args(["run"])
    assert args.resync_interval is None  # not given: --config may still set it
    apply_defaults(args, args.spec)
    assert (args.resync_interval, args.listen, args.output if "output" in args else None) == (
        "30s",
        "127.0.0.1:9469",
        None,
    )
    run = next(s for s in COMMANDS if s.path == ("run",))
    flag = next(f for f in run.flags if f.name == "stats-interval")
    assert flag.text.endswith("(default 10s)")


def test_a_config_value_wins_over_the_default_and_the_command_line_over_both(
    tmp_path: Path,
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("resync-interval: 5s\nlisten: 127.0.0.1:1\n")
    args = build_parser().parse_args(["run", "--config", str(config), "--listen", "0.0.0.0:2"])
    apply_config(args, args.spec)
    apply_defaults(args, args.spec)
    assert (args.resync_interval, args.listen, args.stats_interval) == ("5s", "0.0.0.0:2", "10s")

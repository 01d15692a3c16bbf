"""``--image-gc-threshold``: a percentage from 0 to 100, from the flag or the config file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.cli.agent import agent_options
from reconciler.cli.exits import UsageError
from reconciler.cli.parser import apply_defaults, build_parser
from reconciler.cli.values import parse_percent


def run_options(*argv: str) -> argparse.Namespace:
    args = build_parser().parse_args(["run", *argv])
    apply_defaults(args, args.spec)
    return args


def test_the_threshold_defaults_to_15_and_takes_the_flag(tmp_path: Path) -> None:
    base = ("--state-dir", str(tmp_path / "s"), "--desired", str(tmp_path / "d"))
    assert agent_options(run_options(*base)).image_gc_threshold == 15.0
    assert agent_options(run_options(*base, "--image-gc-threshold", "0")).image_gc_threshold == 0
    opts = agent_options(run_options(*base, "--image-gc-threshold", "22.5%"))
    assert opts.image_gc_threshold == 22.5


@pytest.mark.parametrize("bad", ["-1", "101", "lots", "nan"])
def test_a_threshold_outside_0_to_100_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match="--image-gc-threshold"):
        parse_percent(bad, "--image-gc-threshold")


def test_a_bad_threshold_exits_two_before_anything_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    code = main(["run", "--state-dir", str(state), "--image-gc-threshold", "200"])
    assert code == 2
    assert "--image-gc-threshold" in capsys.readouterr().err
    assert not state.exists()

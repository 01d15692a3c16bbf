"""The shipped example set (deploy/examples/desired) is valid and does what its files say."""

from __future__ import annotations

from pathlib import Path

from reconciler.core.model import PortMapping
from reconciler.spec.loader import DesiredSet, load_directory
from tests.spec.helpers import safe_dir, write

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "desired"


def load_examples(tmp_path: Path) -> DesiredSet:
    # Copied with safe modes: a checkout made under umask 002 would (rightly) be refused.
    d = safe_dir(tmp_path / "desired")
    for f in sorted(EXAMPLES.iterdir()):
        write(d / f.name, f.read_text())
    return load_directory(d)


def test_examples_are_valid(tmp_path: Path) -> None:
    desired = load_examples(tmp_path)
    assert sorted(desired.tasks) == ["heartbeat", "tick", "web"]
    assert all(t.spec.image == "localhost/busybox:latest" for t in desired.tasks.values())


def test_web_example_publishes_18080(tmp_path: Path) -> None:
    web = load_examples(tmp_path).tasks["web"].spec
    assert web.ports == (PortMapping(18080, 8080, "tcp", ""),)
    assert web.command is not None and "httpd -f -p 8080" in web.command[-1]


def test_tick_example_is_a_periodic_job(tmp_path: Path) -> None:
    tick = load_examples(tmp_path).tasks["tick"].spec
    assert tick.restart.condition == "any"
    assert tick.restart.delay == 30.0


def test_heartbeat_example_has_a_health_check(tmp_path: Path) -> None:
    hb = load_examples(tmp_path).tasks["heartbeat"].spec
    assert hb.healthcheck is not None
    assert hb.healthcheck.test[0] == "CMD-SHELL"
    assert hb.healthcheck.timeout > 0


def test_examples_directory_holds_only_desired_files() -> None:
    assert all(f.suffix in (".yaml", ".yml") for f in EXAMPLES.iterdir())

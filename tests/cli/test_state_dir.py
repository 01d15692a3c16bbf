"""``reconciler run`` refuses a state dir it cannot trust (a symlink, another user's) with exit
code 1 and a message naming the path, before anything is created or changed in it."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

HANG_GUARD = 60.0
"""An agent that wrongly started would run until killed: the test fails instead of hanging."""


def run_agent(state: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    desired = tmp_path / "desired"
    desired.mkdir(mode=0o700, exist_ok=True)
    argv = ["run", "--state-dir", str(state), "--desired", str(desired), "--listen", "127.0.0.1:0"]
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *argv],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )


def test_a_symlinked_state_dir_exits_one_naming_it(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    link = tmp_path / "state"
    link.symlink_to(target)
    out = run_agent(link, tmp_path)
    assert out.returncode == 1, out.stderr
    assert f"reconciler: state dir {link} is a symlink (to {target})" in out.stderr
    assert "Traceback" not in out.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert list(target.iterdir()) == []


def test_a_state_dir_of_another_user_exits_one_naming_owner_and_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root (CI runs as root)")
    nobody = pwd.getpwnam("nobody").pw_uid
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    os.chown(state, nobody, -1)
    out = run_agent(state, tmp_path)
    assert out.returncode == 1, out.stderr
    assert (
        f"reconciler: state dir {state} is owned by uid {nobody} (nobody), "
        "not by the agent's user uid 0 (root)"
    ) in out.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o755
    assert list(state.iterdir()) == []

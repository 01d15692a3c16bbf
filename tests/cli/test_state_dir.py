"""``reconciler run`` refuses a state dir it cannot trust (a symlink, another user's) with exit
code 1 and a message naming the path, before anything is created or changed in it; ``ps`` and
``inspect``, which write into it too when they open the store, refuse the same and change
nothing."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.store.rocks import RocksStore
from tests.contract import give_to_another_user

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
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    nobody = give_to_another_user(state)
    out = run_agent(state, tmp_path)
    assert out.returncode == 1, out.stderr
    assert (
        f"reconciler: state dir {state} is owned by uid {nobody} (nobody), "
        "not by the agent's user uid 0 (root)"
    ) in out.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o755
    assert list(state.iterdir()) == []


def _contents(directory: Path) -> dict[str, int]:
    return {str(p): p.lstat().st_mtime_ns for p in sorted(directory.rglob("*"))}


def _state_with_a_store(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    RocksStore.open(state).close()
    return state


def test_ps_and_inspect_refuse_a_state_dir_of_another_user_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _state_with_a_store(tmp_path)
    nobody = give_to_another_user(state, *state.rglob("*"))
    before = _contents(state)
    assert main(["ps", "--state-dir", str(state)]) == 1
    assert main(["inspect", "--state-dir", str(state), "web"]) == 1
    err = capsys.readouterr().err
    assert err.count(f"state dir {state} is owned by uid {nobody} (nobody)") == 2
    assert _contents(state) == before


@pytest.mark.parametrize("kind", ["symlink", "group-writable"])
def test_ps_refuses_a_symlinked_or_group_writable_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    state = _state_with_a_store(tmp_path)
    given = state
    if kind == "symlink":
        given = tmp_path / "link"
        given.symlink_to(state)
    else:
        state.chmod(0o770)
    before = _contents(state)
    assert main(["ps", "--state-dir", str(given)]) == 1
    why = "is a symlink" if kind == "symlink" else "is writable by group or others (mode 0770)"
    assert f"state dir {given} {why}" in capsys.readouterr().err
    assert _contents(state) == before
    state.chmod(0o700)
    assert main(["ps", "--state-dir", str(state)]) == 0

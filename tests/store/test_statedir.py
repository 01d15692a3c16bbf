"""The state dir: one agent at a time by flock, the node id kept apart from the store, and
nothing in it followed through a link or taken from another user."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.core.errors import StateDirInUse
from reconciler.store.statedir import (
    StateDirLock,
    StateDirRefused,
    load_node_id,
    prepare_state_dir,
)
from tests.contract import give_to_another_user


def test_the_lock_is_exclusive_until_released(tmp_path: Path) -> None:
    first = StateDirLock(tmp_path)
    first.acquire()
    with pytest.raises(StateDirInUse, match="in use"):
        StateDirLock(tmp_path).acquire()
    first.release()
    with StateDirLock(tmp_path):
        pass


def test_another_process_cannot_take_the_lock_while_it_is_held(tmp_path: Path) -> None:
    code = (
        "from pathlib import Path\n"
        "from reconciler.store.statedir import StateDirLock\n"
        f"StateDirLock(Path({str(tmp_path)!r})).acquire()\n"
    )
    with StateDirLock(tmp_path):
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
    assert proc.returncode != 0
    assert "StateDirInUse" in proc.stderr
    free = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert free.returncode == 0


def test_the_state_dir_is_made_private(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    prepare_state_dir(state)
    assert state.stat().st_mode & 0o777 == 0o700
    state.chmod(0o755)
    prepare_state_dir(state)
    assert state.stat().st_mode & 0o777 == 0o700


def test_the_node_id_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = load_node_id(tmp_path, None)
    assert first and load_node_id(tmp_path, None) == first
    assert load_node_id(tmp_path, "explicit") == "explicit"


def _outside(tmp_path: Path) -> Path:
    """A file and a directory outside the state dir that a planted link points at."""
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    outside.chmod(0o755)
    (outside / "precious").write_text("keep me\n")
    return outside


def test_a_state_dir_that_is_a_symlink_is_refused_and_its_target_left_alone(
    tmp_path: Path,
) -> None:
    outside = _outside(tmp_path)
    link = tmp_path / "state"
    link.symlink_to(outside)
    with pytest.raises(StateDirRefused, match=f"state dir {link} is a symlink \\(to {outside}\\)"):
        prepare_state_dir(link)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o755
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]


def test_a_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(StateDirRefused, match="is not a directory"):
        prepare_state_dir(tmp_path / "state")


def test_a_state_dir_owned_by_another_user_is_refused_and_left_alone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    nobody = give_to_another_user(state)
    expected = (
        f"state dir {state} is owned by uid {nobody} (nobody), not by the agent's user uid 0 (root)"
    )
    with pytest.raises(StateDirRefused, match=re.escape(expected)):
        prepare_state_dir(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o755


def test_a_planted_node_id_tmp_link_is_not_followed(tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    state = tmp_path / "state"
    prepare_state_dir(state)
    (state / "node-id.tmp").symlink_to(outside / "precious")
    node_id = load_node_id(state, None)
    assert (outside / "precious").read_text() == "keep me\n"
    kept = state / "node-id"
    assert not kept.is_symlink() and kept.read_text() == f"{node_id}\n"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600


def test_a_node_id_or_lock_that_is_a_link_is_refused_not_followed(tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    state = tmp_path / "state"
    prepare_state_dir(state)
    (state / "node-id").symlink_to(outside / "precious")
    with pytest.raises(StateDirRefused, match="cannot read the node id"):
        load_node_id(state, None)
    (state / "lock").symlink_to(outside / "lock")
    with pytest.raises(StateDirRefused, match="cannot open the state dir's lock"):
        StateDirLock(state).acquire()
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]
    assert (outside / "precious").read_text() == "keep me\n"

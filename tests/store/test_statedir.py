"""The state dir: one agent at a time by flock, the node id kept apart from the store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.core.errors import StateDirInUse
from reconciler.store.statedir import StateDirLock, load_node_id, prepare_state_dir


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

"""The RocksDB store: layout, atomic assignments, locking, read-only access and versions."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from reconciler.core.errors import (
    StateDirInUse,
    StoreCorrupt,
    StoreVersionError,
    StoreWriteError,
    UnknownTask,
)
from reconciler.core.model import TaskState, TaskStatus
from reconciler.core.store import ADOPT_PENDING, StoreOrigin
from reconciler.store.opening import FORMAT_VERSION, db_path
from reconciler.store.recovery import open_store
from reconciler.store.rocks import RocksStore
from tests.conftest import make_task

S = TaskState


def test_store_lives_under_worker_tasks_db(tmp_path: Path):
    s = RocksStore.open(tmp_path)
    s.close()
    assert (tmp_path / "worker" / "tasks.db" / "CURRENT").exists()


def test_walk_is_in_id_order_with_status(store: RocksStore):
    store.apply_assignment([make_task("c"), make_task("a"), make_task("b")])
    store.put_status("b", TaskStatus(state=S.RUNNING, timestamp=5))
    tasks = list(store.walk_tasks())
    assert [t.id for t in tasks] == ["a", "b", "c"]
    assert tasks[1].status.state == S.RUNNING
    assert tasks[0].status.state == S.NEW


def test_task_data_is_stored_without_status(store: RocksStore):
    task = make_task("a", state=S.RUNNING)
    store.put_task(task)
    assert store.get_task("a").status == TaskStatus()
    assert store.get_status("a") is None


def test_put_status_of_unknown_task_raises(store: RocksStore):
    with pytest.raises(UnknownTask):
        store.put_status("nope", TaskStatus())


def test_get_unknown_task_raises(store: RocksStore):
    with pytest.raises(UnknownTask):
        store.get_task("nope")


def test_assignment_flag_and_delete_whole_record(store: RocksStore):
    store.apply_assignment([make_task("a")], statuses=[("a", TaskStatus(state=S.READY))])
    assert store.is_assigned("a")
    store.set_assigned("a", False)
    assert not store.is_assigned("a")
    store.delete_task("a")
    assert "a" not in store
    assert store.get_status("a") is None
    with pytest.raises(UnknownTask):
        store.get_task("a")


def test_assignment_batch_is_atomic_and_durable(tmp_path: Path):
    s = RocksStore.open(tmp_path)
    s.apply_assignment([make_task("a"), make_task("b")], meta=[("x", {"k": 1})])
    s.apply_assignment([make_task("c")], ["a"])
    s.close()
    s = RocksStore.open(tmp_path)
    assert s.task_ids() == {"b", "c"}
    assert s.get_meta("x") == {"k": 1}
    s.close()


def test_status_write_survives_kill_9(tmp_path: Path):
    code = (
        "import os\n"
        "from reconciler.store.rocks import RocksStore\n"
        "from reconciler.core.model import *\n"
        f"s = RocksStore.open({str(tmp_path)!r})\n"
        "s.apply_assignment([Task(id='a', spec=TaskSpec(name='a', image='i'))])\n"
        "s.put_status('a', TaskStatus(state=TaskState.RUNNING, timestamp=9))\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    s = RocksStore.open(tmp_path)
    assert s.get_status("a") == TaskStatus(state=S.RUNNING, timestamp=9)
    s.close()


def test_second_writer_gets_state_dir_in_use(tmp_path: Path):
    s = RocksStore.open(tmp_path)
    code = f"from reconciler.store.rocks import RocksStore\nRocksStore.open({str(tmp_path)!r})\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "StateDirInUse" in proc.stderr
    assert "in use" in proc.stderr
    with pytest.raises(StateDirInUse):
        RocksStore.open(tmp_path)
    s.close()


def test_read_only_open_works_while_writer_holds_it(tmp_path: Path):
    s = RocksStore.open(tmp_path)
    s.apply_assignment([make_task("a")])
    ro = RocksStore.open(tmp_path, read_only=True)
    assert ro.task_ids() == {"a"}
    ro.close()
    s.close()


def test_newer_store_is_refused(tmp_path: Path):
    s = RocksStore.open(tmp_path)
    s.put_meta("format", FORMAT_VERSION + 1)
    s.close()
    with pytest.raises(StoreVersionError, match="newer than this agent"):
        RocksStore.open(tmp_path)


def test_old_store_is_copied_aside_then_migrated(tmp_path: Path):
    path = db_path(tmp_path)
    path.mkdir(parents=True)
    legacy = Rdict(str(path), options=Options(raw_mode=True))
    legacy.put(b"t/a", b'{"id":"a","spec":{"name":"a","image":"i"},"desiredState":512}')
    legacy.put(b"a/a", b"1")
    legacy.close()
    s = RocksStore.open(tmp_path)
    assert s.format_version == FORMAT_VERSION
    assert s.task_ids() == {"a"}
    s.close()
    backups = list(path.parent.glob("tasks.db.v0.*.bak"))
    assert len(backups) == 1
    old = Rdict(str(backups[0]), options=Options(raw_mode=True))
    assert old.get(b"m/format") is None
    assert old.get(b"t/a") is not None
    old.close()


# ------------------------------------------------------------------ never silently re-created


def _filled(state: Path) -> None:
    s = RocksStore.open(state)
    s.apply_assignment([make_task(f"t{i}") for i in range(50)], meta=[("x", {"k": 1})])
    s._handle().flush()  # an SST on disk, so that the SST cases have one to damage
    s.close()


def _damage_current(db: Path) -> None:
    (db / "CURRENT").unlink()


def _garbage_current(db: Path) -> None:
    (db / "CURRENT").write_text("garbage\n")


def _garbage_manifest(db: Path) -> None:
    manifest = next(db.glob("MANIFEST-*"))
    manifest.write_bytes(b"\x00\xff" * 200)


def _truncated_sst(db: Path) -> None:
    sst = next(db.glob("*.sst"))
    with open(sst, "r+b") as f:
        f.truncate(sst.stat().st_size // 2)


def _undecodable_row(db: Path) -> None:
    raw = Rdict(str(db), options=Options(raw_mode=True))
    raw.put(b"t/bad", b"{not json")
    raw.close()


@pytest.mark.parametrize(
    "damage",
    [_damage_current, _garbage_current, _garbage_manifest, _truncated_sst, _undecodable_row],
)
def test_a_corrupt_store_is_moved_aside_and_a_new_one_marked_for_adoption(
    tmp_path: Path, damage: Callable[[Path], None]
):
    _filled(tmp_path)
    db = db_path(tmp_path)
    damage(db)
    with pytest.raises(StoreCorrupt):
        RocksStore.open(tmp_path).close()
    opened = open_store(tmp_path, now=lambda: 1_700_000_000.0)
    try:
        assert opened.origin is StoreOrigin.REBUILT
        assert opened.moved_to == db.with_name("tasks.db.corrupt-20231114T221320Z")
        assert opened.moved_to.is_dir()
        assert opened.store.task_ids() == set()
        assert opened.store.get_meta(ADOPT_PENDING) == "rebuilt"
        assert opened.adopt_pending
    finally:
        opened.store.close()
    again = open_store(tmp_path)
    assert again.origin is StoreOrigin.OPENED
    again.store.close()


def test_a_missing_current_never_leaves_an_empty_store_behind(tmp_path: Path):
    _filled(tmp_path)
    _damage_current(db_path(tmp_path))
    for _ in range(2):  # the first failed open must not have written a fresh CURRENT
        with pytest.raises(StoreCorrupt):
            RocksStore.open(tmp_path).close()


def test_a_new_store_is_created_only_where_none_exists_and_is_marked_for_adoption(
    tmp_path: Path,
):
    opened = open_store(tmp_path)
    assert opened.origin is StoreOrigin.CREATED
    assert opened.store.get_meta(ADOPT_PENDING) == "created"
    opened.store.put_meta(ADOPT_PENDING, None)
    opened.store.close()
    again = open_store(tmp_path)
    assert again.origin is StoreOrigin.OPENED
    assert not again.adopt_pending
    again.store.close()


def test_a_lock_held_by_another_handle_is_not_corruption(tmp_path: Path):
    s = RocksStore.open(tmp_path)
    with pytest.raises(StateDirInUse):
        open_store(tmp_path)
    s.close()
    assert not list(tmp_path.glob("worker/tasks.db.corrupt-*"))


def test_a_verify_hook_that_finds_corruption_moves_the_store_aside(tmp_path: Path):
    _filled(tmp_path)

    def verify(store: RocksStore) -> None:
        if store.get_meta("x") is not None:
            raise StoreCorrupt("records do not decode")

    opened = open_store(tmp_path, verify=verify)
    assert opened.origin is StoreOrigin.REBUILT
    assert "records do not decode" in opened.reason
    opened.store.close()


# ---------------------------------------------------------------------------- failed writes


def test_a_failed_write_marks_the_store_failed_and_recover_reopens_it(tmp_path: Path):
    s = RocksStore.open(tmp_path)
    reasons: list[str] = []
    s.add_failure_listener(reasons.append)
    s.apply_assignment([make_task("a")])
    s._handle().close()  # a stuck handle, as after a full disk
    with pytest.raises(StoreWriteError):
        s.put_status("a", TaskStatus(state=S.RUNNING, timestamp=1))
    assert s.failure is not None
    assert len(reasons) == 1
    assert s.recover()
    assert s.failure is None
    s.put_status("a", TaskStatus(state=S.RUNNING, timestamp=2))
    assert s.get_status("a") == TaskStatus(state=S.RUNNING, timestamp=2)
    assert s.task_ids() == {"a"}
    s.close()
    s.close()  # idempotent, never raises

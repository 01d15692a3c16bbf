"""The RocksDB store: layout, atomic assignments, locking, read-only access and versions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from reconciler.errors import StateDirInUse, StoreVersionError, UnknownTask
from reconciler.model import TaskState, TaskStatus
from reconciler.store import FORMAT_VERSION, Store, db_path

from .conftest import make_task

S = TaskState


def test_store_lives_under_worker_tasks_db(tmp_path: Path):
    s = Store.open(tmp_path)
    s.close()
    assert (tmp_path / "worker" / "tasks.db" / "CURRENT").exists()


def test_walk_is_in_id_order_with_status(store: Store):
    store.apply_assignment([make_task("c"), make_task("a"), make_task("b")])
    store.put_status("b", TaskStatus(state=S.RUNNING, timestamp=5))
    tasks = list(store.walk_tasks())
    assert [t.id for t in tasks] == ["a", "b", "c"]
    assert tasks[1].status.state == S.RUNNING
    assert tasks[0].status.state == S.NEW


def test_task_data_is_stored_without_status(store: Store):
    task = make_task("a", state=S.RUNNING)
    store.put_task(task)
    assert store.get_task("a").status == TaskStatus()
    assert store.get_status("a") is None


def test_put_status_of_unknown_task_raises(store: Store):
    with pytest.raises(UnknownTask):
        store.put_status("nope", TaskStatus())


def test_get_unknown_task_raises(store: Store):
    with pytest.raises(UnknownTask):
        store.get_task("nope")


def test_assignment_flag_and_delete_whole_record(store: Store):
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
    s = Store.open(tmp_path)
    s.apply_assignment([make_task("a"), make_task("b")], meta=[("x", {"k": 1})])
    s.apply_assignment([make_task("c")], ["a"])
    s.close()
    s = Store.open(tmp_path)
    assert s.task_ids() == {"b", "c"}
    assert s.get_meta("x") == {"k": 1}
    s.close()


def test_status_write_survives_kill_9(tmp_path: Path):
    code = (
        "import os\n"
        "from reconciler.store import Store\n"
        "from reconciler.model import *\n"
        f"s = Store.open({str(tmp_path)!r})\n"
        "s.apply_assignment([Task(id='a', spec=TaskSpec(name='a', image='i'))])\n"
        "s.put_status('a', TaskStatus(state=TaskState.RUNNING, timestamp=9))\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    s = Store.open(tmp_path)
    assert s.get_status("a") == TaskStatus(state=S.RUNNING, timestamp=9)
    s.close()


def test_second_writer_gets_state_dir_in_use(tmp_path: Path):
    s = Store.open(tmp_path)
    code = f"from reconciler.store import Store\nStore.open({str(tmp_path)!r})\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "StateDirInUse" in proc.stderr
    assert "in use" in proc.stderr
    with pytest.raises(StateDirInUse):
        Store.open(tmp_path)
    s.close()


def test_read_only_open_works_while_writer_holds_it(tmp_path: Path):
    s = Store.open(tmp_path)
    s.apply_assignment([make_task("a")])
    ro = Store.open(tmp_path, read_only=True)
    assert ro.task_ids() == {"a"}
    ro.close()
    s.close()


def test_newer_store_is_refused(tmp_path: Path):
    s = Store.open(tmp_path)
    s.put_meta("format", FORMAT_VERSION + 1)
    s.close()
    with pytest.raises(StoreVersionError, match="newer than this agent"):
        Store.open(tmp_path)


def test_old_store_is_copied_aside_then_migrated(tmp_path: Path):
    path = db_path(tmp_path)
    path.mkdir(parents=True)
    legacy = Rdict(str(path), options=Options(raw_mode=True))
    legacy.put(b"t/a", b'{"id":"a","spec":{"name":"a","image":"i"},"desiredState":512}')
    legacy.put(b"a/a", b"1")
    legacy.close()
    s = Store.open(tmp_path)
    assert s.format_version == FORMAT_VERSION
    assert s.task_ids() == {"a"}
    s.close()
    backups = list(path.parent.glob("tasks.db.v0.*.bak"))
    assert len(backups) == 1
    old = Rdict(str(backups[0]), options=Options(raw_mode=True))
    assert old.get(b"m/format") is None
    assert old.get(b"t/a") is not None
    old.close()

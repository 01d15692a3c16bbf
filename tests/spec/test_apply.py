"""apply_file(): validate FILE as it would stand in DIR, plan, and write atomically."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reconciler.spec.apply import apply_file
from reconciler.spec.loader import load_directory
from reconciler.spec.problems import DesiredStateError
from tests.spec.helpers import safe_dir, task_set, write

WEB = "- name: web\n  image: localhost/busybox:latest"
WEB_BIG = WEB + "\n  resources: {memory: 64Mi}"
WEB_NEW = "- name: web\n  image: localhost/busybox:1"
JOB = "- name: job\n  image: localhost/busybox:latest"


def plan_lines(file: Path, d: Path, *, dry_run: bool) -> list[str]:
    return [str(line) for line in apply_file(file, d, dry_run=dry_run)]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", task_set(WEB, JOB))
    src = write(tmp_path / "src" / "web.yaml", task_set(WEB_BIG), mode=0o664)
    before = sorted(os.listdir(d)), (d / "web.yaml").read_bytes()
    assert plan_lines(src, d, dry_run=True) == ["remove job", "update web (resources)"]
    assert (sorted(os.listdir(d)), (d / "web.yaml").read_bytes()) == before


def test_apply_writes_the_file_under_its_basename_atomically(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", task_set(WEB))
    write(d / "job.yaml", task_set(JOB))
    src = write(tmp_path / "src" / "web.yaml", task_set(WEB_NEW, "- name: new\n  image: x"))
    assert plan_lines(src, d, dry_run=False) == [
        "unchanged job",
        "create new",
        "replace web (image)",
    ]
    # Applying the same file again changes nothing.
    assert plan_lines(src, d, dry_run=True) == ["unchanged job", "unchanged new", "unchanged web"]
    assert (d / "web.yaml").read_bytes() == src.read_bytes()
    mode = stat.S_IMODE(os.stat(d / "web.yaml").st_mode)
    assert mode & 0o022 == 0
    assert sorted(os.listdir(d)) == ["job.yaml", "web.yaml"]  # no temp file left behind
    assert sorted(load_directory(d).tasks) == ["job", "new", "web"]


def test_plan_lists_every_affected_name(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", task_set(WEB, "- name: old\n  image: x"))
    write(d / "job.yaml", task_set(JOB))
    src = write(tmp_path / "src" / "web.yaml", task_set(WEB_NEW, "- name: new\n  image: x"))
    assert plan_lines(src, d, dry_run=False) == [
        "unchanged job",
        "create new",
        "remove old",
        "replace web (image)",
    ]


def test_a_new_file_name_adds_to_the_directory(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", task_set(WEB))
    src = write(tmp_path / "job.yml", task_set(JOB))
    assert plan_lines(src, d, dry_run=False) == ["create job", "unchanged web"]
    assert sorted(os.listdir(d)) == ["job.yml", "web.yaml"]


def test_name_declared_in_another_file_is_an_error_and_nothing_is_written(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", task_set(WEB))
    src = write(tmp_path / "other.yaml", task_set(JOB, WEB))
    with pytest.raises(DesiredStateError) as e:
        apply_file(src, d, dry_run=False)
    assert [str(p) for p in e.value.problems] == [
        f"{src}:6: tasks[1].name: duplicate name 'web', also declared at {d / 'web.yaml'}:4"
    ]
    assert os.listdir(d) == ["web.yaml"]


def test_invalid_file_is_an_error_and_nothing_is_written(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", task_set(WEB))
    src = write(tmp_path / "web.yaml", task_set(WEB + "\n  network: wifi"))
    with pytest.raises(DesiredStateError) as e:
        apply_file(src, d, dry_run=False)
    assert [p.field for p in e.value.problems] == ["tasks[0].network"]
    assert e.value.problems[0].path == str(src)
    assert (d / "web.yaml").read_text() == task_set(WEB)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    src = write(tmp_path / "web.yaml", "")
    with pytest.raises(DesiredStateError, match="file is empty"):
        apply_file(src, d, dry_run=False)
    assert os.listdir(d) == []


def test_an_invalid_other_file_in_the_directory_blocks_the_apply(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "broken.yaml", "tasks: [")
    src = write(tmp_path / "web.yaml", task_set(WEB))
    with pytest.raises(DesiredStateError) as e:
        apply_file(src, d, dry_run=False)
    assert e.value.problems[0].path == str(d / "broken.yaml")
    assert os.listdir(d) == ["broken.yaml"]


def test_replacing_the_broken_file_itself_is_allowed(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", "tasks: [")
    write(d / "job.yaml", task_set(JOB))
    src = write(tmp_path / "web.yaml", task_set(WEB))
    assert plan_lines(src, d, dry_run=False) == ["unchanged job", "create web"]


def test_unsafe_directory_is_refused(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    os.chmod(d, 0o777)
    src = write(tmp_path / "web.yaml", task_set(WEB))
    with pytest.raises(DesiredStateError, match="writable by group or others"):
        apply_file(src, d, dry_run=False)
    assert os.listdir(d) == []


@pytest.mark.parametrize("name", ["web.json", ".web.yaml", "web.yaml~", "#web.yaml#"])
def test_a_file_name_the_agent_would_ignore_is_refused(tmp_path: Path, name: str) -> None:
    d = safe_dir(tmp_path / "d")
    src = write(tmp_path / name, task_set(WEB))
    with pytest.raises(DesiredStateError, match=r"only reads \*\.yaml and \*\.yml"):
        apply_file(src, d, dry_run=False)
    assert os.listdir(d) == []


def test_missing_directory_is_empty_and_created_by_a_real_apply(tmp_path: Path) -> None:
    d = tmp_path / "etc" / "desired.d"
    src = write(tmp_path / "web.yaml", task_set(WEB))
    assert plan_lines(src, d, dry_run=True) == ["create web"]
    assert not d.exists()
    assert plan_lines(src, d, dry_run=False) == ["create web"]
    assert sorted(load_directory(d).tasks) == ["web"]


def test_unreadable_source_file_is_an_error(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    with pytest.raises(DesiredStateError, match="does not exist"):
        apply_file(tmp_path / "nope.yaml", d, dry_run=True)


def test_a_failed_write_leaves_the_target_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", task_set(WEB))
    src = write(tmp_path / "web.yaml", task_set(WEB_NEW))

    def broken_replace(a: str, b: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        apply_file(src, d, dry_run=False)
    assert os.listdir(d) == ["web.yaml"]
    assert (d / "web.yaml").read_text() == task_set(WEB)


def test_a_new_file_is_private_and_a_new_directory_too(tmp_path: Path) -> None:
    d = tmp_path / "etc" / "desired.d"
    src = write(tmp_path / "web.yaml", task_set(WEB + '\n  env: {PASSWORD: "s3cret"}'))
    old = os.umask(0o002)  # a umask that leaves group bits open changes nothing
    try:
        apply_file(src, d, dry_run=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d.parent).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(d / "web.yaml").st_mode) == 0o600
    assert sorted(load_directory(d).tasks) == ["web"]


def test_a_replaced_file_keeps_its_mode_without_group_or_other_write(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", task_set(WEB), mode=0o640)
    write(d / "job.yaml", task_set(JOB), mode=0o444)
    apply_file(write(tmp_path / "web.yaml", task_set(WEB_NEW)), d, dry_run=False)
    apply_file(write(tmp_path / "job.yaml", task_set(JOB + "\n  pull: never")), d, dry_run=False)
    assert stat.S_IMODE(os.stat(d / "web.yaml").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(d / "job.yaml").st_mode) == 0o444
    assert (d / "web.yaml").read_text() == task_set(WEB_NEW)


def test_a_missing_directory_under_an_unsafe_parent_is_refused_and_not_created(
    tmp_path: Path,
) -> None:
    parent = safe_dir(tmp_path / "drop")
    os.chmod(parent, 0o777)
    d = parent / "etc" / "desired.d"
    src = write(tmp_path / "web.yaml", task_set(WEB))
    with pytest.raises(DesiredStateError) as e:
        apply_file(src, d, dry_run=False)
    assert [str(p) for p in e.value.problems] == [
        f"{d}:0: permissions: directory {parent} on the way to it is writable by group or "
        f"others (mode 0777); refusing it, since whoever can write it can swap what is below "
        f"it: chmod go-w {parent}"
    ]
    assert os.listdir(parent) == []

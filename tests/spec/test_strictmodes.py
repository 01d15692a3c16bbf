"""Who may write the desired state, as sshd's StrictModes: every directory on the way to the
desired directory, the directory itself (a symlink only to a safe target) and each file (a
symlink only to a safe target). A refused directory is not listed; a refused file is not parsed,
so nothing it holds is printed.

Tests that chown to another uid need root: they fail under CI when not root, and skip elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.spec.loader import load_directory, resolve_checked
from reconciler.spec.problems import DesiredStateError
from tests.contract import missing
from tests.spec.helpers import safe_dir, task_set, write

WEB = "- name: web\n  image: localhost/busybox:latest"
SECRET = "hunter2-do-not-print"
OTHER_UID = 12345


def need_root() -> None:
    if os.geteuid() != 0:
        missing("this test chowns files to another uid, which needs root")


def error_lines(path: str | Path) -> list[str]:
    with pytest.raises(DesiredStateError) as e:
        load_directory(path)
    return [str(p) for p in e.value.problems]


def desired_in(parent: Path) -> Path:
    d = safe_dir(parent / "desired")
    write(d / "web.yaml", task_set(WEB))
    return d


# ------------------------------------------------------------------ directories on the way


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_writable_directory_on_the_way_is_refused(tmp_path: Path, mode: int) -> None:
    parent = safe_dir(tmp_path / "parent")
    d = desired_in(parent)
    os.chmod(parent, mode)
    assert error_lines(d) == [
        f"{d}:0: permissions: directory {parent} on the way to it is writable by group or "
        f"others (mode {mode:04o}); refusing it, since whoever can write it can swap what is "
        f"below it: chmod go-w {parent}"
    ]
    os.chmod(parent, 0o755)
    assert sorted(load_directory(d).tasks) == ["web"]


def test_a_directory_high_above_is_checked_too(tmp_path: Path) -> None:
    top = safe_dir(tmp_path / "a")
    d = desired_in(safe_dir(top / "b" / "c"))
    os.chmod(top, 0o777)
    [line] = error_lines(d)
    assert line.startswith(f"{d}:0: permissions: directory {top} on the way to it is writable")


def test_a_root_owned_sticky_directory_on_the_way_is_allowed(tmp_path: Path) -> None:
    need_root()
    sticky = safe_dir(tmp_path / "tmp")
    os.chmod(sticky, 0o1777)
    d = desired_in(sticky)
    assert sorted(load_directory(d).tasks) == ["web"]


def test_a_sticky_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    need_root()
    sticky = safe_dir(tmp_path / "tmp")
    d = desired_in(sticky)
    os.chmod(sticky, 0o1777)
    os.chown(sticky, OTHER_UID, OTHER_UID)
    lines = error_lines(d)
    assert any(f"directory {sticky} on the way to it is writable" in line for line in lines)
    assert any(f"owned by uid {OTHER_UID}" in line for line in lines)


def test_a_directory_on_the_way_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    need_root()
    parent = safe_dir(tmp_path / "home")
    d = desired_in(parent)
    os.chown(parent, OTHER_UID, OTHER_UID)
    assert error_lines(d) == [
        f"{d}:0: permissions: directory {parent} on the way to it is owned by uid {OTHER_UID}, "
        f"not by root or the agent's user (uid 0); refusing it"
    ]


def test_a_refused_directory_is_not_listed(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "broken.yaml", f"tasks: [{SECRET}")
    os.chmod(d, 0o777)
    [line] = error_lines(d)
    assert line.startswith(f"{d}:0: permissions: directory is writable by group or others")


# --------------------------------------------------------------- a symlinked desired directory


def test_a_symlinked_directory_to_a_safe_target_is_followed(tmp_path: Path) -> None:
    target = desired_in(safe_dir(tmp_path / "real"))
    link = tmp_path / "desired.d"
    os.symlink(target, link)
    desired = load_directory(link)
    assert sorted(desired.tasks) == ["web"]
    assert desired.origin["web"][0] == str(link / "web.yaml")  # the path as found


def test_a_relative_symlink_is_resolved_from_where_it_sits(tmp_path: Path) -> None:
    desired_in(safe_dir(tmp_path / "real"))
    safe_dir(tmp_path / "etc")
    os.symlink("../real/desired", tmp_path / "etc" / "desired.d")
    assert sorted(load_directory(tmp_path / "etc" / "desired.d").tasks) == ["web"]


def test_a_symlink_to_an_empty_directory_in_an_unsafe_place_is_refused(tmp_path: Path) -> None:
    """The attack: point the desired directory at an empty one, and every task is removed."""
    unsafe = safe_dir(tmp_path / "unsafe")
    empty = safe_dir(unsafe / "empty")
    os.chmod(unsafe, 0o777)
    link = tmp_path / "desired.d"
    os.symlink(empty, link)
    [line] = error_lines(link)
    assert line.startswith(
        f"{link}:0: permissions: directory {unsafe} on the way to it is writable by group"
    )


def test_a_symlink_to_an_unsafe_directory_names_the_target(tmp_path: Path) -> None:
    target = desired_in(safe_dir(tmp_path / "real"))
    os.chmod(target, 0o777)
    link = tmp_path / "desired.d"
    os.symlink(target, link)
    [line] = error_lines(link)
    assert line.startswith(
        f"{link}:0: permissions: directory (resolved to {target}) is writable by group or others"
    )
    assert line.endswith(f"chmod go-w {target}")


def test_a_symlink_loop_is_a_clean_error(tmp_path: Path) -> None:
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    [line] = error_lines(tmp_path / "a")
    assert line.startswith(f"{tmp_path / 'a'}:0: directory: cannot be read: ")
    assert "symbolic links" in line


def test_a_dangling_directory_symlink_does_not_exist(tmp_path: Path) -> None:
    os.symlink(tmp_path / "gone", tmp_path / "desired.d")
    assert error_lines(tmp_path / "desired.d") == [
        f"{tmp_path / 'desired.d'}:0: directory: does not exist"
    ]


def test_dot_dot_after_a_symlink_follows_the_kernel(tmp_path: Path) -> None:
    """``link/../x`` is the parent of the link's target, not the link's own directory."""
    real = safe_dir(tmp_path / "a" / "b")
    desired_in(tmp_path / "a")
    os.symlink(real, tmp_path / "link")
    resolved, problems = resolve_checked(str(tmp_path / "link" / ".." / "desired"))
    assert (resolved, problems) == (str(tmp_path / "a" / "desired"), [])
    assert sorted(load_directory(tmp_path / "link" / ".." / "desired").tasks) == ["web"]


# ------------------------------------------------------------------------- symlinked files


def test_a_symlinked_file_in_an_unsafe_directory_is_refused_unprinted(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    unsafe = safe_dir(tmp_path / "drop")
    target = write(unsafe / "web.yaml", f"tasks: [{SECRET}")
    os.chmod(unsafe, 0o777)
    os.symlink(target, d / "web.yaml")
    lines = error_lines(d)
    assert lines == [
        f"{d / 'web.yaml'}:0: permissions: directory {unsafe} on the way to it is writable by "
        f"group or others (mode 0777); refusing it, since whoever can write it can swap what "
        f"is below it: chmod go-w {unsafe}"
    ]
    assert SECRET not in "\n".join(lines)


def test_a_symlinked_writable_file_is_refused_unprinted(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    target = write(tmp_path / "web.yaml", f"tasks: [{SECRET}", mode=0o666)
    os.symlink(target, d / "web.yaml")
    [line] = error_lines(d)
    assert line.startswith(
        f"{d / 'web.yaml'}:0: permissions: file (resolved to {target}) is writable by group"
    )
    assert SECRET not in line


def test_a_writable_file_is_never_parsed(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", f"tasks: [{SECRET}", mode=0o646)
    [line] = error_lines(d)
    assert "writable by group or others" in line
    assert SECRET not in line


def test_a_file_owned_by_another_user_is_never_parsed(tmp_path: Path) -> None:
    need_root()
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", f"tasks: [{SECRET}", mode=0o644)
    os.chown(d / "web.yaml", OTHER_UID, OTHER_UID)
    [line] = error_lines(d)
    assert f"owned by uid {OTHER_UID}" in line
    assert SECRET not in line


def test_a_symlinked_file_through_a_chain_of_links_is_followed_when_safe(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    target = write(tmp_path / "store" / "v2" / "web.yaml", task_set(WEB))
    os.symlink(tmp_path / "store" / "v2", tmp_path / "store" / "current")
    os.symlink("../store/current/web.yaml", d / "web.yaml")
    assert target.exists()
    assert sorted(load_directory(d).tasks) == ["web"]


def test_a_symlink_to_a_directory_is_skipped_like_any_non_file(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    os.symlink(safe_dir(tmp_path / "sub"), d / "sub.yaml")
    assert load_directory(d).tasks == {}

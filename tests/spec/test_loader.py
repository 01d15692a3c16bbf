"""The desired directory: which files count, empty and missing cases, duplicates, ownership."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.core.model import TaskState
from reconciler.spec.loader import (
    MAX_FILE_BYTES,
    DesiredSet,
    is_desired_file_name,
    load_directory,
    load_paths,
)
from reconciler.spec.problems import DesiredStateError
from tests.contract import missing
from tests.spec.helpers import HEADER, safe_dir, task_set, write

WEB = "- name: web\n  image: localhost/busybox:latest"
JOB = '- name: job\n  image: localhost/busybox:latest\n  command: ["true"]'


def error_lines(path: str | Path) -> list[str]:
    with pytest.raises(DesiredStateError) as e:
        load_directory(path)
    assert str(e.value).splitlines() == [str(p) for p in e.value.problems]
    return [str(p) for p in e.value.problems]


def test_existing_directory_without_files_is_a_valid_empty_state(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    assert load_directory(d) == DesiredSet(tasks={}, origin={})


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert error_lines(missing) == [f"{missing}:0: directory: does not exist"]


def test_a_file_in_place_of_the_directory_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path / "f", "x")
    assert error_lines(f) == [f"{f}:0: directory: is not a directory"]


def test_unreadable_directory_is_an_error(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    os.chmod(d, 0o300)
    try:
        if os.geteuid() != 0:
            assert "cannot be read" in error_lines(d)[0]
            return
        # Root reads any directory; drop the capabilities that let it, as an unprivileged
        # agent would lack them, and load in a child process.
        code = (
            "import sys\n"
            "from reconciler.spec.loader import load_directory\n"
            "from reconciler.spec.problems import DesiredStateError\n"
            "try:\n"
            f"    load_directory({str(d)!r})\n"
            "except DesiredStateError as e:\n"
            "    print(e.problems[0])\n"
        )
        proc = subprocess.run(
            [
                "setpriv",
                "--bounding-set=-dac_override,-dac_read_search",
                sys.executable,
                "-c",
                code,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "cannot be read" in proc.stdout, proc.stdout + proc.stderr
    finally:
        os.chmod(d, 0o755)


def test_union_of_every_yaml_and_yml_file(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "a.yaml", task_set(WEB))
    write(d / "b.yml", task_set(JOB))
    desired = load_directory(d)
    assert sorted(desired.tasks) == ["job", "web"]
    assert desired.origin == {"web": (str(d / "a.yaml"), 4), "job": (str(d / "b.yml"), 4)}


@pytest.mark.parametrize(
    "name",
    [
        ".hidden.yaml",
        "web.yaml~",
        "#web.yaml#",
        ".web.yaml.swp",
        ".web.yaml.swx",
        ".#web.yaml",
        "4913",
        "web.yaml.bak",
        "web.yaml.orig",
        "web.json",
        "README.md",
        "web.YAML.tmp",
        ".web.yaml.1234.tmp",
    ],
)
def test_editor_files_backups_and_other_extensions_are_ignored(tmp_path: Path, name: str) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", task_set(WEB))
    write(d / name, "this: [is not valid")  # would be an error if it were read
    assert not is_desired_file_name(name)
    assert sorted(load_directory(d).tasks) == ["web"]


def test_subdirectories_are_not_read(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "sub" / "web.yaml", task_set(WEB))
    safe_dir(d / "dir.yaml")
    assert load_directory(d).tasks == {}


def test_empty_file_is_an_error_never_an_empty_set(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", task_set(WEB))
    write(d / "empty.yaml", "")
    assert error_lines(d) == [f"{d / 'empty.yaml'}:1: file: file is empty"]


@pytest.mark.parametrize("text", ["  \n\n\t\n", "# only a comment\n", "---\n"])
def test_whitespace_comment_only_and_null_documents_are_errors(tmp_path: Path, text: str) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "x.yaml", text)
    lines = error_lines(d)
    assert len(lines) == 1
    assert lines[0].startswith(f"{d / 'x.yaml'}:")
    assert lines[0].endswith(("file is empty", "holds no YAML document", "document is empty"))


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    path = d / "x.yaml"
    write(path, "")
    path.write_bytes(HEADER.encode() + b"  - name: \xff\n")
    assert error_lines(d) == [f"{path}:4: file: not valid UTF-8 text"]


def test_duplicate_name_across_files_gives_both_locations(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "a.yaml", task_set(JOB, WEB))
    write(d / "b.yaml", task_set(WEB))
    assert error_lines(d) == [
        f"{d / 'b.yaml'}:4: tasks[0].name: duplicate name 'web', also declared at {d / 'a.yaml'}:7"
    ]


def test_duplicate_name_within_one_file(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "a.yaml", task_set(WEB, JOB, WEB))
    a = d / "a.yaml"
    assert error_lines(d) == [f"{a}:9: tasks[2].name: duplicate name 'web', also declared at {a}:4"]


def test_multi_document_files(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    text = (
        task_set(WEB)
        + "---\n"
        + task_set(JOB, "- name: stopped\n  image: x\n  desiredState: shutdown")
    )
    write(d / "all.yaml", text)
    desired = load_directory(d)
    assert sorted(desired.tasks) == ["job", "stopped", "web"]
    assert desired.origin["job"] == (str(d / "all.yaml"), 10)
    assert desired.tasks["stopped"].desired_state == TaskState.SHUTDOWN


def test_multi_document_errors_carry_the_line_in_the_file(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    text = task_set(WEB) + "---\n" + task_set("- name: job\n  image: x\n  pull: sometimes")
    write(d / "all.yaml", text)
    [line] = error_lines(d)
    assert line.startswith(f"{d / 'all.yaml'}:12: tasks[0].pull: must be one of")


def test_empty_document_between_others_is_an_error(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "all.yaml", task_set(WEB) + "---\n---\n" + task_set(JOB))
    [line] = error_lines(d)
    assert line == f"{d / 'all.yaml'}:7: document: document is empty"


def test_problems_of_every_file_are_reported_sorted(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "b.yaml", task_set("- name: B\n  image: x"))
    write(d / "a.yaml", task_set("- name: a\n  image: x\n  network: wifi"))
    write(d / "c.yaml", "")
    lines = error_lines(d)
    assert [line.split(": ")[0] for line in lines] == [
        f"{d / 'a.yaml'}:6",
        f"{d / 'b.yaml'}:4",
        f"{d / 'c.yaml'}:1",
    ]


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_group_or_world_writable_directory_is_refused(tmp_path: Path, mode: int) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", task_set(WEB))
    os.chmod(d, mode)
    [line] = error_lines(d)
    assert line.startswith(f"{d}:0: permissions: directory is writable by group or others")
    assert f"chmod go-w {d}" in line


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_group_or_world_writable_file_is_refused(tmp_path: Path, mode: int) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", task_set(WEB), mode=mode)
    [line] = error_lines(d)
    assert line.startswith(f"{d / 'web.yaml'}:0: permissions: file is writable by group or others")


def test_read_only_and_private_modes_are_fine(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    os.chmod(d, 0o700)
    write(d / "a.yaml", task_set(WEB), mode=0o600)
    write(d / "b.yaml", task_set(JOB), mode=0o444)
    assert sorted(load_directory(d).tasks) == ["job", "web"]


def test_file_or_directory_owned_by_another_non_root_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing("this test chowns files to another uid, which needs root")
    d = safe_dir(tmp_path / "d")
    write(d / "web.yaml", task_set(WEB))
    os.chown(d / "web.yaml", 12345, 12345)
    [line] = error_lines(d)
    assert line.startswith(f"{d / 'web.yaml'}:0: permissions: file is owned by uid 12345")
    os.chown(d / "web.yaml", 0, 0)
    os.chown(d, 12345, 12345)
    [line] = error_lines(d)
    assert line.startswith(f"{d}:0: permissions: directory is owned by uid 12345")


def test_symlinked_files_are_followed_and_dangling_ones_reported(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    target = write(tmp_path / "elsewhere.yaml", task_set(WEB))
    os.symlink(target, d / "web.yaml")
    assert sorted(load_directory(d).tasks) == ["web"]
    os.symlink(tmp_path / "gone.yaml", d / "gone.yaml")
    assert error_lines(d) == [f"{d / 'gone.yaml'}:0: file: is a symlink to nothing"]


def test_path_is_reported_as_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "x.yaml", "")
    monkeypatch.chdir(tmp_path)
    assert error_lines("./d") == ["./d/x.yaml:1: file: file is empty"]


def test_load_paths_mixes_files_and_directories_and_reports_everything(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "a.yaml", task_set(WEB))
    write(d / "bad.yaml", task_set("- name: bad\n  image: x\n  pull: no"))
    extra = write(tmp_path / "extra.txt", task_set(WEB))  # named explicitly: read whatever its name
    missing = tmp_path / "missing.yaml"
    with pytest.raises(DesiredStateError) as e:
        load_paths([d, extra, missing, d / "a.yaml"])
    assert [str(p) for p in e.value.problems] == [
        f"{d / 'bad.yaml'}:6: tasks[0].pull: "
        "must be one of missing, always, never, not the boolean false",
        f"{extra}:4: tasks[0].name: duplicate name 'web', also declared at {d / 'a.yaml'}:4",
        f"{missing}:0: file: does not exist",
    ]


def test_load_paths_of_valid_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", task_set(WEB))
    b = write(tmp_path / "b.yaml", task_set(JOB))
    assert sorted(load_paths([a, b]).tasks) == ["job", "web"]
    assert load_paths([]).tasks == {}


def test_a_fifo_named_explicitly_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo, 0o644)
    with pytest.raises(DesiredStateError) as e:
        load_paths([fifo])
    assert [str(p) for p in e.value.problems] == [f"{fifo}:0: file: is not a regular file"]


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "big.yaml", "#" * (MAX_FILE_BYTES + 1))
    assert error_lines(d) == [f"{d / 'big.yaml'}:0: file: is larger than {MAX_FILE_BYTES} bytes"]

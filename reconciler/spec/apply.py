"""``reconciler apply -f FILE``: validate a file as it would stand in the desired directory, then
put it there atomically.

This module owns the one write the offline manager's tooling makes. The rule is "all or
nothing": FILE is judged together with every other file of the directory (the file of the same
base name is the one it replaces), so a name already declared elsewhere, an unsafe directory or
any invalid file stops the apply before a byte is written. The write itself is a temp file in
the directory (a dotfile, which the watcher ignores), fsync, rename over the target, fsync of
the directory: the agent sees the old file or the new one, never a half-written one. The same
``write_atomically``, which never follows a link, writes the agent's files in its state dir.

Desired-state files often hold secrets in env values (passwords, tokens), so a new file is
written 0600 and a directory that apply creates is 0700; a file it replaces keeps its mode
(without group or other write, which the agent would refuse). Before anything is created, the
directories above a missing desired directory are checked as the agent checks them.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from reconciler.core.session import DesiredTask
from reconciler.spec.loader import (
    Declared,
    DesiredFile,
    check_way,
    directory_files,
    is_desired_file_name,
    merge,
    parse_file,
    read_file,
    read_files,
)
from reconciler.spec.plan import PlanLine, plan
from reconciler.spec.problems import DesiredStateError, Problem

__all__ = ["apply_file", "write_atomically"]

FILE_MODE = 0o600
DIR_MODE = 0o700
PARENT_MODE = 0o755


def _current_tasks(files: list[DesiredFile]) -> dict[str, DesiredTask]:
    """Best effort: the tasks of the directory's files that are valid on their own."""
    declared: list[Declared] = []
    for f in files:
        data, problems = read_file(f.path, real=f.real)
        if data is None or problems:
            continue
        found, problems = parse_file(data, f.path)
        if not problems:
            declared.extend(found)
    return merge(declared)[0].tasks


def apply_file(file: Path, desired_dir: Path, *, dry_run: bool) -> list[PlanLine]:
    """Validate FILE as ``desired_dir/<basename>`` and, unless ``dry_run``, write it there.

    Returns the plan, one line per affected name, sorted: ``create``, ``replace (fields)``,
    ``update (fields)``, ``remove`` (a name whose only declaration was in the replaced file)
    or ``unchanged``. Problems in FILE name it by the path given.

    Raises ``DesiredStateError`` listing every problem, writing nothing, when FILE is unreadable
    or invalid, its base name is not a ``*.yaml``/``*.yml`` name the agent reads, the directory
    is unsafe or unreadable, another file of the directory is invalid, or a name is declared
    twice. A missing directory counts as empty and is created (mode 0700; missing parents
    0755) by a real apply, once the directories above it pass the agent's checks. Raises
    ``OSError`` if the write itself fails; the target is then unchanged.
    """
    shown = os.fspath(file)
    basename = os.path.basename(shown)
    problems: list[Problem] = []
    if not is_desired_file_name(basename):
        problems.append(
            Problem(
                shown,
                0,
                "file",
                "the agent only reads *.yaml and *.yml files whose names do not start with "
                "'.' or '#'; rename the file",
            )
        )
    data, more = read_file(shown, check_owner=False)  # the copy in the directory is ours
    problems.extend(more)
    new_declared: list[Declared] = []
    if data is not None:
        new_declared, more = parse_file(data, shown)
        problems.extend(more)

    dir_shown = os.fspath(desired_dir)
    dir_exists = os.path.lexists(dir_shown)
    files: list[DesiredFile] = []
    if dir_exists:
        files, more = directory_files(dir_shown)
    else:
        more = _missing_directory_problems(dir_shown)
    problems.extend(more)
    target = os.path.join(dir_shown, basename)
    others = [f for f in files if os.path.basename(f.path) != basename]
    other_declared, more = read_files(others)
    problems.extend(more)
    new_set, dups = merge([*other_declared, *new_declared])
    problems.extend(dups)
    if problems:
        raise DesiredStateError(
            sorted(dict.fromkeys(problems), key=lambda p: (p.path, p.line, p.field))
        )
    assert data is not None
    lines = plan(_current_tasks(files), new_set.tasks)
    if not dry_run:
        if not dir_exists:
            _make_directory(dir_shown)
        write_atomically(target, data)
    return lines


def _missing_directory_problems(directory: str) -> list[Problem]:
    """The problems of the directories above a desired directory that does not exist yet."""
    parent = os.path.dirname(os.path.abspath(directory))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    try:
        return check_way(parent, directory)
    except OSError as e:
        return [Problem(directory, 0, "directory", f"cannot be created: {e.strerror or e}")]


def _make_directory(directory: str) -> None:
    """Create ``directory`` 0700 and any missing parent 0755, whatever the umask."""
    parent = os.path.dirname(os.path.abspath(directory))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=PARENT_MODE, exist_ok=True)
    os.mkdir(directory, DIR_MODE)
    os.chmod(directory, DIR_MODE)


def write_atomically(
    target: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int | None = None,
    replace: bool = True,
) -> None:
    """Replace ``target`` with ``data``: temp dotfile in the same directory, fsync, rename.

    The one atomic write of a file in a directory the caller owns (the desired directory, the
    state dir), never following a link: the temp file has a random name and is created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW``, and the rename replaces a link at ``target`` rather than
    writing through it. The file gets ``mode`` if given, set exactly (``fchmod``); otherwise a
    new file gets 0600 and a replaced regular file keeps its mode, less group and other write.
    Without ``replace``, an existing ``target`` raises ``FileExistsError`` and is left alone
    (the temp file is linked into place, which refuses an existing name atomically). Raises
    ``OSError``; on failure the temp file is removed and the target is unchanged.
    """
    target = os.fspath(target)
    directory = os.path.dirname(target) or "."
    if mode is None:
        mode = _kept_mode(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    # mkstemp opens with O_CREAT | O_EXCL | O_NOFOLLOW under a fresh random name
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _kept_mode(target: str) -> int:
    """The mode a replaced regular file keeps (less group and other write), else 0600."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return FILE_MODE
    if not stat.S_ISREG(st.st_mode):
        return FILE_MODE
    return stat.S_IMODE(st.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH)

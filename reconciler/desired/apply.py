"""``reconciler apply -f FILE``: validate a file as it would stand in the desired directory, then
put it there atomically.

This module owns the one write the offline manager's tooling makes. The rule is "all or
nothing": FILE is judged together with every other file of the directory (the file of the same
base name is the one it replaces), so a name already declared elsewhere, an unsafe directory or
any invalid file stops the apply before a byte is written. The write itself is a temp file in
the directory (a dotfile, which the watcher ignores), fsync, rename over the target, fsync of
the directory: the agent sees the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from reconciler.desired.loader import (
    Declared,
    directory_files,
    is_desired_file_name,
    merge,
    parse_file,
    read_file,
    read_files,
)
from reconciler.desired.plan import PlanLine, plan
from reconciler.desired.problems import DesiredStateError, Problem
from reconciler.session import DesiredTask

__all__ = ["apply_file"]

FILE_MODE = 0o644
DIR_MODE = 0o755


def _current_tasks(files: list[str]) -> dict[str, DesiredTask]:
    """Best effort: the tasks of the directory's files that are valid on their own."""
    declared: list[Declared] = []
    for path in files:
        data, problems = read_file(path)
        if data is None or problems:
            continue
        found, problems = parse_file(data, path)
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
    twice. A missing directory counts as empty and is created (mode 0755) by a real apply.
    Raises ``OSError`` if the write itself fails; the target is then unchanged.
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
    files: list[str] = []
    if dir_exists:
        files, more = directory_files(dir_shown)
        problems.extend(more)
    target = os.path.join(dir_shown, basename)
    others = [f for f in files if os.path.basename(f) != basename]
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
            os.makedirs(dir_shown, mode=DIR_MODE, exist_ok=True)
        write_atomically(target, data)
    return lines


def write_atomically(target: str, data: bytes) -> None:
    """Replace ``target`` with ``data``: temp dotfile in the same directory, fsync, rename.

    The file gets mode 0644. Raises ``OSError``; on failure the temp file is removed and the
    target is unchanged.
    """
    directory = os.path.dirname(target) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

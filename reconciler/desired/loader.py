"""Reading the desired directory (or any files and directories) into one validated desired set.

This module owns the file-level rules of PRODUCT.md's offline manager:

- which files count: ``*.yaml`` and ``*.yml`` directly in the directory, not dotfiles and not
  editor leftovers (``foo.yaml~``, ``#foo.yaml#``, ``.foo.yaml.swp``, vim's ``4913``);
- ownership, as sshd's StrictModes: the directory and every file must be owned by root or by
  the agent's own user and must not be writable by group or others, because whoever can write
  them decides what runs as root on the host;
- an empty file is an error, an existing directory without files is a valid empty set, a
  missing or unreadable directory is an error;
- a name is declared once across all files; a duplicate is reported with both locations.

Everything is collected: one call returns every problem of every file, so that ``reconciler
validate`` and the agent's log show the whole story at once. Reading is plain blocking file
I/O; the file session runs it off the event loop.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.desired.problems import DesiredStateError, Problem
from reconciler.desired.schema import check_document
from reconciler.desired.yamlsource import decode, load_documents
from reconciler.session import DesiredTask

__all__ = [
    "MAX_FILE_BYTES",
    "Declared",
    "DesiredSet",
    "is_desired_file_name",
    "load_directory",
    "load_paths",
]

MAX_FILE_BYTES = 4 * 1024 * 1024
"""A desired-state file larger than this is refused rather than parsed."""


@dataclass(frozen=True, slots=True)
class DesiredSet:
    """A valid desired state: tasks by name, and where each name is declared (path, line)."""

    tasks: dict[str, DesiredTask] = field(default_factory=dict)
    origin: dict[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Declared:
    """One valid task as found in a file: the task, the file's path as found, the line of its
    name and its FIELD prefix (``tasks[2]``)."""

    task: DesiredTask
    path: str
    line: int
    field: str = "task"


def is_desired_file_name(name: str) -> bool:
    """Whether a directory entry's name counts as a desired-state file.

    ``*.yaml`` and ``*.yml`` only; dotfiles (vim's ``.foo.yaml.swp``, emacs' ``.#foo.yaml``,
    our own temp files) and ``#foo.yaml#`` are ignored. Backups such as ``foo.yaml~`` and
    vim's ``4913`` probe fail the suffix test.
    """
    return not name.startswith((".", "#")) and name.endswith((".yaml", ".yml"))


def check_ownership(st: os.stat_result, path: str, what: str) -> list[Problem]:
    """sshd StrictModes for one file or directory: refuse group/other-writable or foreign-owned."""
    problems = []
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problems.append(
            Problem(
                path,
                0,
                "permissions",
                f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"refusing it, since it decides what runs on this host: chmod go-w {path}",
            )
        )
    me = os.geteuid()
    if st.st_uid not in (0, me):
        problems.append(
            Problem(
                path,
                0,
                "permissions",
                f"{what} is owned by uid {st.st_uid}, not by root or the agent's user "
                f"(uid {me}); refusing it",
            )
        )
    return problems


def _os_problem(path: str, what: str, e: OSError) -> Problem:
    if isinstance(e, FileNotFoundError):
        return Problem(path, 0, what, "does not exist")
    if isinstance(e, NotADirectoryError):
        return Problem(path, 0, what, "is not a directory")
    return Problem(path, 0, what, f"cannot be read: {e.strerror or e}")


def read_file(path: str, *, check_owner: bool = True) -> tuple[bytes | None, list[Problem]]:
    """Read one file's bytes after the ownership check; problems instead of exceptions.

    Opened non-blocking, so a FIFO or device given by mistake is refused instead of hanging.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None, [Problem(path, 0, "file", "is not a regular file")]
            problems = check_ownership(st, path, "file") if check_owner else []
            if st.st_size > MAX_FILE_BYTES:
                problems.append(Problem(path, 0, "file", f"is larger than {MAX_FILE_BYTES} bytes"))
                return None, problems
            data = f.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:  # grew while we read it
                problems.append(Problem(path, 0, "file", f"is larger than {MAX_FILE_BYTES} bytes"))
                return None, problems
    except OSError as e:
        return None, [_os_problem(path, "file", e)]
    return data, problems


def parse_file(data: bytes, path: str) -> tuple[list[Declared], list[Problem]]:
    """Parse and validate one file's content; ``path`` is how problems name the file."""
    text, problems = decode(data, path)
    if text is None:
        return [], problems
    documents, problems = load_documents(text, path)
    declared: list[Declared] = []
    for doc in documents:
        tasks, more = check_document(
            doc.data, path=path, source=doc.source, start_line=doc.start_line
        )
        problems.extend(more)
        declared.extend(Declared(task, path, line, prefix) for task, line, prefix in tasks)
    return declared, problems


def directory_files(path: str | Path) -> tuple[list[str], list[Problem]]:
    """The desired-state files directly in a directory, sorted, as paths joined to ``path``.

    The directory itself must exist, be a directory, be readable and pass the ownership rule.
    Entries that are not regular files (after following symlinks) are skipped, except dangling
    symlinks, which are reported: a link that points nowhere was meant to point somewhere.
    """
    shown = os.fspath(path)
    try:
        st = os.stat(shown)
    except OSError as e:
        return [], [_os_problem(shown, "directory", e)]
    if not stat.S_ISDIR(st.st_mode):
        return [], [Problem(shown, 0, "directory", "is not a directory")]
    problems = check_ownership(st, shown, "directory")
    try:
        names = sorted(os.listdir(shown))
    except OSError as e:
        return [], [*problems, _os_problem(shown, "directory", e)]
    files: list[str] = []
    for name in names:
        if not is_desired_file_name(name):
            continue
        full = os.path.join(shown, name)
        try:
            if not stat.S_ISREG(os.stat(full).st_mode):
                continue
        except FileNotFoundError:
            if os.path.islink(full):
                problems.append(Problem(full, 0, "file", "is a symlink to nothing"))
            continue  # else: removed while we looked; the next change event re-reads
        except OSError as e:
            problems.append(_os_problem(full, "file", e))
            continue
        files.append(full)
    return files, problems


def merge(declared: Iterable[Declared]) -> tuple[DesiredSet, list[Problem]]:
    """Combine declarations into one set; every repeated name is a problem naming both places."""
    tasks: dict[str, DesiredTask] = {}
    origin: dict[str, tuple[str, int]] = {}
    problems: list[Problem] = []
    for d in declared:
        name = d.task.name
        if name in origin:
            first_path, first_line = origin[name]
            problems.append(
                Problem(
                    d.path,
                    d.line,
                    f"{d.field}.name",
                    f"duplicate name {name!r}, also declared at {first_path}:{first_line}",
                )
            )
            continue
        tasks[name] = d.task
        origin[name] = (d.path, d.line)
    return DesiredSet(tasks=tasks, origin=origin), problems


def _sorted(problems: Iterable[Problem]) -> list[Problem]:
    return sorted(dict.fromkeys(problems), key=lambda p: (p.path, p.line, p.field, p.message))


def read_files(files: Iterable[str]) -> tuple[list[Declared], list[Problem]]:
    """Read and parse files in order, collecting declarations and problems."""
    declared: list[Declared] = []
    problems: list[Problem] = []
    for path in files:
        data, more = read_file(path)
        problems.extend(more)
        if data is not None:
            found, more = parse_file(data, path)
            declared.extend(found)
            problems.extend(more)
    return declared, problems


def _validated(files: Iterable[str], problems: list[Problem]) -> DesiredSet:
    """Read, parse and merge ``files``; raise every problem (with ``problems`` found so far)."""
    declared, more = read_files(files)
    result, dups = merge(declared)
    problems = [*problems, *more, *dups]
    if problems:
        raise DesiredStateError(_sorted(problems))
    return result


def load_directory(path: str | Path) -> DesiredSet:
    """Read and validate the whole desired directory.

    Returns the desired set (empty for a directory without desired-state files). Raises
    ``DesiredStateError`` listing every problem: a missing, unreadable or unsafe directory, an
    unsafe, unreadable, empty or invalid file, and every duplicate name.
    """
    files, problems = directory_files(path)
    return _validated(files, problems)


def load_paths(paths: Sequence[str | Path]) -> DesiredSet:
    """Validate files and directories together, as ``reconciler validate PATH...`` does.

    A directory contributes its desired-state files by the directory rules; a file named
    explicitly is read whatever its name. A file reached twice is read once. Names must be
    unique across everything given. Raises ``DesiredStateError`` with every problem found.
    """
    problems: list[Problem] = []
    files: list[str] = []
    seen: set[str] = set()
    for p in paths:
        shown = os.fspath(p)
        if os.path.isdir(shown):
            found, more = directory_files(shown)
            problems.extend(more)
        else:
            found = [shown]
        for f in found:
            key = os.path.realpath(f)
            if key not in seen:
                seen.add(key)
                files.append(f)
    return _validated(files, problems)

"""Reading the desired directory (or any files and directories) into one validated desired set.

This module owns the file-level rules of the offline manager:

- which files count: ``*.yaml`` and ``*.yml`` directly in the directory, not dotfiles and not
  editor leftovers (``foo.yaml~``, ``#foo.yaml#``, ``.foo.yaml.swp``, vim's ``4913``);
- who may write them, as sshd's StrictModes (below);
- an empty file is an error, an existing directory without files is a valid empty set, a
  missing or unreadable directory is an error;
- a name is declared once across all files; a duplicate is reported with both locations.

**Who may write it.** Whoever can write the desired directory, or any directory above it,
decides what runs as root on the host: they can edit the files, or swap the directory for an
empty one and have every task removed. So the path is walked from ``/`` the way the kernel
resolves it, and every directory on it must be owned by root or the agent's user and not be
writable by group or others. The one exception is a root-owned directory with the sticky bit,
such as ``/tmp``, on the way: there nobody can rename or remove what they do not own. A symlink
(the desired directory itself, a directory above it, or a file in it) is followed only when its
target, and every directory on the way to that target, passes the same checks; the directory
holding the link has been checked already. The desired directory and each file must then pass
the strict rule themselves. A refused directory is not listed and a refused file is not parsed,
so nothing of what they hold is acted on or printed.

**Never dies, always bounded.** Each file is read with the limits of ``yamlsource`` (size,
depth, values, integers, control characters). Anything that still goes wrong while reading one
file, whatever the exception, becomes a problem line for that file, and a file reports at most
``MAX_PROBLEMS_PER_FILE`` problems, so the log of a hostile file stays short.

Everything is collected: one call returns every problem of every file, so that ``reconciler
validate`` and the agent's log show the whole story at once. Reading is plain blocking file
I/O; the file session runs it off the event loop.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.core.session import DesiredTask
from reconciler.spec.deps import dependency_problems
from reconciler.spec.problems import DesiredStateError, Problem, describe
from reconciler.spec.schema import check_document
from reconciler.spec.yamlsource import MAX_FILE_BYTES, decode, load_documents

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_PROBLEMS_PER_FILE",
    "Declared",
    "DesiredFile",
    "DesiredSet",
    "check_way",
    "is_desired_file_name",
    "load_directory",
    "load_paths",
    "resolve_checked",
]

MAX_PROBLEMS_PER_FILE = 50
"""More problems than this in one file are summed up in one line: fix the first ones first."""

_MAX_SYMLINKS = 40  # as the kernel's ELOOP limit


@dataclass(frozen=True, slots=True)
class DesiredSet:
    """A valid desired state: tasks by name, and where each name is declared (path, line)."""

    tasks: dict[str, DesiredTask] = field(default_factory=dict)
    origin: dict[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Declared:
    """One valid task as found in a file: the task, the file's path as found, the line of its
    name, its FIELD prefix (``tasks[2]``) and the line of each ``dependsOn`` entry."""

    task: DesiredTask
    path: str
    line: int
    field: str = "task"
    dep_lines: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class DesiredFile:
    """A file to read: ``path`` as found (what problems name) and ``real``, the checked path
    without symlinks that is opened (None: open ``path`` itself, following links)."""

    path: str
    real: str | None = None


def is_desired_file_name(name: str) -> bool:
    """Whether a directory entry's name counts as a desired-state file.

    ``*.yaml`` and ``*.yml`` only; dotfiles (vim's ``.foo.yaml.swp``, emacs' ``.#foo.yaml``,
    our own temp files) and ``#foo.yaml#`` are ignored. Backups such as ``foo.yaml~`` and
    vim's ``4913`` probe fail the suffix test.
    """
    return not name.startswith((".", "#")) and name.endswith((".yaml", ".yml"))


# ------------------------------------------------------------------------------ ownership


def check_ownership(
    st: os.stat_result, path: str, what: str, *, fix: str | None = None, on_the_way: bool = False
) -> list[Problem]:
    """sshd StrictModes for one file or directory: refuse group/other-writable or foreign-owned.

    ``path`` is what the problems name; ``fix`` (default ``path``) is the path in the hint.
    A directory ``on_the_way`` to the desired state passes when it is root-owned and sticky
    (``/tmp``): there others may add entries but never replace ours.
    """
    if on_the_way and st.st_uid == 0 and st.st_mode & stat.S_ISVTX:
        return []
    fix = fix or path
    why = (
        "whoever can write it can swap what is below it"
        if on_the_way
        else "it decides what runs on this host"
    )
    problems = []
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problems.append(
            Problem(
                path,
                0,
                "permissions",
                f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"refusing it, since {why}: chmod go-w {fix}",
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


def _on_the_way(st: os.stat_result, directory: str, shown: str) -> list[Problem]:
    what = f"directory {directory} on the way to it"
    return check_ownership(st, shown, what, fix=directory, on_the_way=True)


def resolve_checked(path: str, shown: str | None = None) -> tuple[str, list[Problem]]:
    """The real path of ``path``, and the problems of every directory on the way to it.

    ``path`` is walked from ``/`` the way the kernel resolves it. Every directory passed through
    must be owned by root or the agent's user and not be writable by group or others, except a
    root-owned directory with the sticky bit (``/tmp``). A symlink is followed into its target,
    whose own way is checked the same way. The final component itself is not checked: the
    caller applies the rule of a desired directory or file to it. Problems name ``shown``
    (default ``path``).

    Raises ``OSError`` as the kernel would: ``FileNotFoundError`` for a missing component
    (a dangling symlink included), ``NotADirectoryError``, ``ELOOP`` for too many symlinks,
    ``PermissionError``.
    """
    shown = path if shown is None else shown
    full = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    todo = full.split("/")[::-1]
    current = "/"
    checked: set[str] = set()
    problems: list[Problem] = []
    links = 0
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        if current not in checked:  # the directory that holds ``name``
            checked.add(current)
            problems.extend(_on_the_way(os.lstat(current), current, shown))
        nxt = os.path.join(current, name)
        st = os.lstat(nxt)
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), shown)
            target = os.readlink(nxt)
            if target.startswith("/"):
                current = "/"
            todo.extend(target.split("/")[::-1])
            continue
        if any(p not in ("", ".") for p in todo) and not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), shown)
        current = nxt
    return current, problems


def check_way(directory: str, shown: str) -> list[Problem]:
    """The problems of ``directory`` and of every directory on the way to it, all taken as
    directories on the way to ``shown``, an entry to be made in ``directory``.

    Raises ``OSError`` as ``resolve_checked`` does.
    """
    real, problems = resolve_checked(directory, shown)
    return [*problems, *_on_the_way(os.lstat(real), real, shown)]


def _os_problem(path: str, what: str, e: OSError) -> Problem:
    if isinstance(e, FileNotFoundError):
        return Problem(path, 0, what, "does not exist")
    if isinstance(e, NotADirectoryError):
        return Problem(path, 0, what, "is not a directory")
    return Problem(path, 0, what, f"cannot be read: {e.strerror or e}")


def _crash(path: str, what: str, e: Exception) -> Problem:
    """A problem for an unexpected exception: bounded, one line, no traceback."""
    return Problem(path, 0, what, f"could not be read ({describe(e)})")


def _resolved_to(shown: str, real: str) -> str:
    full = shown if os.path.isabs(shown) else os.path.join(os.getcwd(), shown)
    return "" if os.path.normpath(full) == real else f" (resolved to {real})"


# ---------------------------------------------------------------------------------- files


def read_file(
    path: str, *, real: str | None = None, check_owner: bool = True
) -> tuple[bytes | None, list[Problem]]:
    """Read one file's bytes after the ownership check; problems instead of exceptions.

    Opens ``real`` (a resolved path, opened without following a symlink) or else ``path``;
    problems name ``path``. Opened non-blocking, so a FIFO or device given by mistake is
    refused instead of hanging. A file refused for its ownership or mode is not read at all.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if real else 0)
    what = "file" + (_resolved_to(path, real) if real else "")
    try:
        fd = os.open(real or path, flags)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None, [Problem(path, 0, "file", "is not a regular file")]
            if check_owner:
                problems = check_ownership(st, path, what, fix=real)
                if problems:
                    return None, problems
            if st.st_size > MAX_FILE_BYTES:
                return None, [Problem(path, 0, "file", f"is larger than {MAX_FILE_BYTES} bytes")]
            data = f.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:  # grew while we read it
                return None, [Problem(path, 0, "file", f"is larger than {MAX_FILE_BYTES} bytes")]
    except OSError as e:
        return None, [_os_problem(path, "file", e)]
    return data, []


def parse_file(data: bytes, path: str) -> tuple[list[Declared], list[Problem]]:
    """Parse and validate one file's content; ``path`` is how problems name the file.

    Never raises: any exception becomes one problem for the file. At most
    ``MAX_PROBLEMS_PER_FILE`` problems are returned, plus one line counting the rest.
    """
    try:
        declared, problems = _parse(data, path)
    except Exception as e:  # a bug or resource exhaustion must not end the caller's loop
        return [], [_crash(path, "file", e)]
    if len(problems) > MAX_PROBLEMS_PER_FILE:
        problems.sort(key=lambda p: (p.line, p.field, p.message))
        rest = problems[MAX_PROBLEMS_PER_FILE:]
        problems = problems[:MAX_PROBLEMS_PER_FILE]
        message = (
            f"stopped after {MAX_PROBLEMS_PER_FILE} problems; more from this line on are not shown"
        )
        problems.append(Problem(path, rest[0].line, "file", message))
    return declared, problems


def _parse(data: bytes, path: str) -> tuple[list[Declared], list[Problem]]:
    if len(data) > MAX_FILE_BYTES:
        return [], [Problem(path, 0, "file", f"is larger than {MAX_FILE_BYTES} bytes")]
    text, problems = decode(data, path)
    if text is None:
        return [], problems
    documents, problems = load_documents(text, path)
    # A value the reader refused (a 40-digit integer) reads as null; the schema's complaint
    # about that null would only repeat the problem.
    refused = {p.field for p in problems}
    declared: list[Declared] = []
    for doc in documents:
        if len(problems) > MAX_PROBLEMS_PER_FILE:
            break  # enough to fix first; the rest is not worth the time
        tasks, more = check_document(
            doc.data,
            path=path,
            source=doc.source,
            start_line=doc.start_line,
            limit=MAX_PROBLEMS_PER_FILE + 1 - len(problems),
        )
        problems.extend(p for p in more if p.field not in refused)
        declared.extend(
            Declared(task, path, line, prefix, dep_lines) for task, line, prefix, dep_lines in tasks
        )
    return declared, problems


# ----------------------------------------------------------------------------- directories


def directory_files(path: str | Path) -> tuple[list[DesiredFile], list[Problem]]:
    """The desired-state files directly in a directory, sorted by name.

    The directory must exist, be a directory, be readable and pass the ownership rule, and so
    must every directory on the way to it (symlinks included); an unsafe one is not listed.
    Entries that are not regular files (after following symlinks) are skipped, except dangling
    symlinks, which are reported: a link that points nowhere was meant to point somewhere. A
    symlinked file whose target's way is unsafe is refused. Never raises.
    """
    shown = os.fspath(path)
    try:
        return _directory_files(shown)
    except Exception as e:  # pragma: no cover - every OSError is handled below
        return [], [_crash(shown, "directory", e)]


def _directory_files(shown: str) -> tuple[list[DesiredFile], list[Problem]]:
    try:
        real, problems = resolve_checked(shown)
        st = os.lstat(real)
    except OSError as e:
        return [], [_os_problem(shown, "directory", e)]
    if not stat.S_ISDIR(st.st_mode):
        return [], [Problem(shown, 0, "directory", "is not a directory")]
    what = "directory" + _resolved_to(shown, real)
    problems.extend(check_ownership(st, shown, what, fix=real))
    if problems:
        return [], problems
    try:
        names = sorted(os.listdir(real))
    except OSError as e:
        return [], [_os_problem(shown, "directory", e)]
    files: list[DesiredFile] = []
    for name in names:
        if not is_desired_file_name(name):
            continue
        found, more = _entry(os.path.join(shown, name), os.path.join(real, name))
        problems.extend(more)
        if found is not None:
            files.append(found)
    return files, problems


def _entry(shown: str, inside: str) -> tuple[DesiredFile | None, list[Problem]]:
    """One directory entry: a file to read, or nothing (with problems for a bad symlink)."""
    try:
        st = os.lstat(inside)
        if not stat.S_ISLNK(st.st_mode):
            return (DesiredFile(shown, inside) if stat.S_ISREG(st.st_mode) else None), []
        target, problems = resolve_checked(inside, shown)
        if not stat.S_ISREG(os.lstat(target).st_mode):
            return None, []
    except FileNotFoundError:
        if os.path.islink(inside):
            return None, [Problem(shown, 0, "file", "is a symlink to nothing")]
        return None, []  # removed while we looked; the next change event re-reads
    except OSError as e:
        return None, [_os_problem(shown, "file", e)]
    if problems:
        return None, problems
    return DesiredFile(shown, target), []


# ---------------------------------------------------------------------------- desired set


def merge(declared: Iterable[Declared]) -> tuple[DesiredSet, list[Problem]]:
    """Combine declarations into one set; every repeated name is a problem naming both places."""
    tasks: dict[str, DesiredTask] = {}
    origin: dict[str, tuple[str, int]] = {}
    first: dict[str, Declared] = {}
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
        first[name] = d
    for name, bad in dependency_problems(tasks).items():
        d = first[name]
        for i, message in bad:
            line = d.dep_lines[i] if i < len(d.dep_lines) else d.line
            problems.append(Problem(d.path, line, f"{d.field}.dependsOn[{i}].task", message))
    return DesiredSet(tasks=tasks, origin=origin), problems


def _sorted(problems: Iterable[Problem]) -> list[Problem]:
    return sorted(dict.fromkeys(problems), key=lambda p: (p.path, p.line, p.field, p.message))


def read_files(files: Iterable[DesiredFile]) -> tuple[list[Declared], list[Problem]]:
    """Read and parse files in order, collecting declarations and problems. Never raises."""
    declared: list[Declared] = []
    problems: list[Problem] = []
    for f in files:
        try:
            data, more = read_file(f.path, real=f.real)
        except Exception as e:  # pragma: no cover - read_file turns OSError into problems
            data, more = None, [_crash(f.path, "file", e)]
        problems.extend(more)
        if data is not None:
            found, more = parse_file(data, f.path)
            declared.extend(found)
            problems.extend(more)
    return declared, problems


def _validated(files: Iterable[DesiredFile], problems: list[Problem]) -> DesiredSet:
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
    unsafe, unreadable, empty or invalid file, and every duplicate name. Raises nothing else,
    whatever the directory holds.
    """
    try:
        files, problems = directory_files(path)
        return _validated(files, problems)
    except DesiredStateError:
        raise
    except Exception as e:  # pragma: no cover - the steps above turn errors into problems
        raise DesiredStateError([_crash(os.fspath(path), "directory", e)]) from None


def load_paths(paths: Sequence[str | Path]) -> DesiredSet:
    """Validate files and directories together, as ``reconciler validate PATH...`` does.

    A directory contributes its desired-state files by the directory rules; a file named
    explicitly is read whatever its name (its own ownership and mode are checked, not the
    directories above it). A file reached twice is read once. Names must be unique across
    everything given. Raises ``DesiredStateError`` with every problem found.
    """
    problems: list[Problem] = []
    files: list[DesiredFile] = []
    seen: set[str] = set()
    for p in paths:
        shown = os.fspath(p)
        if os.path.isdir(shown):
            found, more = directory_files(shown)
            problems.extend(more)
        else:
            found = [DesiredFile(shown)]
        for f in found:
            key = os.path.realpath(f.real or f.path)
            if key not in seen:
                seen.add(key)
                files.append(f)
    return _validated(files, problems)

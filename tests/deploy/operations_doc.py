"""docs/operations.md's "Production setup" as the walk reads and runs it, on one machine.

- ``section(title)``: the text under the page's heading ``title`` (any level), up to the next
  heading of that level or above; ``block_with(text, needle)``: the one ``sh`` block of ``text``
  that contains ``needle``; ``inline_command(text, start)``: the one inline code span that
  starts so, on one line.
- ``rewrite(text, replacements)``: ``substitute``, each target required: a rewrite whose target
  left the page fails, instead of running something else.
- ``on_host(script, root)``: a block as it would run on a host whose filesystem is ``root``:
  ``/etc/``, ``/var/lib/`` and ``/run/`` move under ``root``, the repository's ``deploy/`` files
  are taken from this checkout, and ``install``'s owners are dropped (a test need not run as
  root, and need not find a ``nats`` user). ``without_systemctl`` takes out the ``systemctl``
  lines (there is no systemd to talk to) and returns them for the test to check.
- ``run_sh(script, cwd, allowed=...)``: runs a block with ``sh -e`` and this checkout's
  ``reconciler`` first on ``PATH``, after ``confined`` made sure that it names no system
  directory of the machine's (only the hosts' directories in ``allowed``, and this checkout)
  and no ``systemctl``: the walk may run as root, and must never install onto the machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from reconciler.testing.natsserver import substitute
from tests.contract import REPO

OPERATIONS = REPO / "docs" / "operations.md"
BIN = Path(sys.executable).parent
"""Where this checkout's ``reconciler`` command is: the page's commands run it."""

SYSTEM = re.compile(r"(?<![\w.:/-])/(?:etc|var|run|usr/local|opt|srv|lib|home|root|boot)\b")
"""A path into the machine's own system directories, where no walked block may write."""


def headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """The Markdown headings among ``lines``, outside fenced blocks (where ``# `` starts a shell
    comment): line index, level and title."""
    found, fenced = [], False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#+) (.+)$", line)):
            found.append((i, len(m.group(1)), m.group(2)))
    return found


def section(title: str) -> str:
    """The text under the page's heading ``title`` (any level), up to the next heading of its
    level or above."""
    lines = OPERATIONS.read_text().splitlines(keepends=True)
    marks = headings([line.rstrip("\n") for line in lines])
    at = [k for k, (_, _, t) in enumerate(marks) if t == title]
    assert len(at) == 1, f"operations.md: {len(at)} headings {title!r}"
    start, level, _ = marks[at[0]]
    end = next((i for i, lv, _ in marks[at[0] + 1 :] if lv <= level), len(lines))
    return "".join(lines[start + 1 : end])


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def block_with(text: str, needle: str) -> str:
    """The one ``sh`` block of ``text`` that contains ``needle``."""
    found = [b for b in sh_blocks(text) if needle in b]
    assert len(found) == 1, f"operations.md: {len(found)} sh blocks with {needle!r}"
    return found[0]


def inline_command(text: str, start: str) -> str:
    """The one inline code span of ``text`` that starts with ``start``, its lines joined."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]
    found = [s for s in spans if s.startswith(start)]
    assert len(found) == 1, f"operations.md: {len(found)} inline commands {start!r}"
    return found[0]


def rewrite(text: str, replacements: Mapping[str, str]) -> str:
    """``text`` with every target replaced; a target that does not occur fails."""
    try:
        return substitute(text, replacements)
    except ValueError as err:
        raise AssertionError(f"operations.md changed under the walk: {err}") from err


def on_host(script: str, root: Path) -> str:
    """``script`` as it runs on a host whose filesystem is ``root``; see the module docstring."""
    script = re.sub(r"(?<![\w/.-])deploy/", f"{REPO}/deploy/", script)
    script = re.sub(r"^(install(?: -d)?) -o \S+ -g \S+ ", r"\1 ", script, flags=re.MULTILINE)
    for system in ("/etc/", "/var/lib/", "/run/"):
        script = re.sub(rf"(?<![\w.:/-]){system}", f"{root}{system}", script)
    return script


def without_systemctl(script: str) -> tuple[str, list[str]]:
    """``script`` without its ``systemctl`` lines, and those lines."""
    lines = script.splitlines()
    calls = [line for line in lines if line.startswith("systemctl ")]
    kept = [line for line in lines if not line.startswith("systemctl ")]
    return "\n".join(kept) + "\n", calls


def confined(script: str, allowed: Sequence[Path] = ()) -> str:
    """``script``, once it is sure to leave the machine's own system alone: it names no system
    directory but under ``allowed`` (the hosts' roots) or this checkout, and no ``systemctl``."""
    scan = script
    for inside in sorted({str(REPO), *map(str, allowed)}, key=len, reverse=True):
        scan = scan.replace(inside, "ALLOWED")
    stray = SYSTEM.findall(scan) + re.findall(r"\bsystemctl\b", scan)
    assert not stray, f"a walked block still reaches the machine: {stray}\n{script}"
    return script


def environment() -> dict[str, str]:
    """The environment the page's blocks run in: this checkout's ``reconciler`` first on
    ``PATH``, and the directory of ``nats-server`` (Debian's ``/usr/sbin``) on it."""
    path = [str(BIN), *os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin"]
    return {**os.environ, "PATH": os.pathsep.join(path)}


def run_sh(
    script: str, cwd: Path, *, code: int | None = 0, allowed: Sequence[Path] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``sh -e`` in ``cwd`` once it is ``confined`` (to ``allowed``); its
    exit code must be ``code`` (None: any, for the caller to judge)."""
    done = subprocess.run(
        ["sh", "-e", "-c", confined(script, allowed)],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert code is None or done.returncode == code, (
        f"exit {done.returncode}, not {code}:\n{script}\n{done.stdout}\n{done.stderr}"
    )
    return done

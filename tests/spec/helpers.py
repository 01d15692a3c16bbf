"""Helpers for desired-state tests: files written with safe modes whatever the umask."""

from __future__ import annotations

import os
from pathlib import Path

HEADER = "apiVersion: reconciler/v1\nkind: TaskSet\ntasks:\n"


def write(path: Path, text: str, *, mode: int = 0o644) -> Path:
    """Write ``text`` to ``path`` (creating a 0755 parent) and set ``mode``."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True)
        os.chmod(path.parent, 0o755)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def task_set(*tasks: str) -> str:
    """A TaskSet document whose tasks are given as YAML blocks starting with '- '."""
    body = "".join("  " + t.strip("\n").replace("\n", "\n  ") + "\n" for t in tasks)
    return HEADER + body


def safe_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    return path

"""docs/architecture.md's module map matches the tree: every package and module is in it, and
nothing in it is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
MAPPED = (".py", ".html", ".css", ".js")


def mapped_paths() -> set[str]:
    """Every path the map's code block names: indentation (two spaces a level) nests entries."""
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"## Module map\n.*?```\n(.*?)```", text, re.DOTALL)
    assert block is not None, "docs/architecture.md has no module map"
    stack: list[str] = []
    paths: set[str] = set()
    for line in block.group(1).splitlines():
        match = re.match(r"^( *)(\S+)", line)
        if match is None:
            continue
        indent, name = len(match.group(1)), match.group(2)
        if indent % 2 or not (name.endswith("/") or name.endswith(MAPPED)):
            continue  # a description's continuation line
        level = indent // 2
        stack[level:] = [name]
        paths.add("".join(stack))
    return paths


def tree_paths() -> set[str]:
    """Every package (as ``dir/``) and every module or page file under reconciler/ and runtime/,
    a package's ``__init__.py`` and ``__main__.py`` aside; the hostile corpus is one entry."""
    out: set[str] = {"reconciler/", "runtime/"}
    for top in ("reconciler", "runtime"):
        for path in (ROOT / top).rglob("*"):
            rel = path.relative_to(ROOT)
            if "__pycache__" in rel.parts or "hostile" in rel.parts[:-1]:
                continue
            if path.is_dir():
                out.add(f"{rel}/")
            elif path.suffix in MAPPED and path.name not in ("__init__.py", "__main__.py"):
                out.add(str(rel))
    return out


def test_every_package_and_module_is_in_the_module_map() -> None:
    missing = sorted(tree_paths() - mapped_paths())
    assert not missing, f"docs/architecture.md's module map lacks: {missing}"


def test_the_module_map_names_nothing_that_is_gone() -> None:
    gone = sorted(mapped_paths() - tree_paths())
    assert not gone, f"docs/architecture.md's module map names what no longer exists: {gone}"


def test_the_map_parser_reads_nesting() -> None:
    paths = mapped_paths()
    assert "reconciler/core/lifecycle.py" in paths
    assert "runtime/podman/client.py" in paths
    assert "reconciler/testing/hostile/" in paths

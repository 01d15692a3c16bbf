"""Safe YAML loading that remembers where every value came from.

PRODUCT.md wants each problem reported at the line of the offending value, and wants YAML read
with a safe loader only. PyYAML's ``safe_load`` throws the positions away, so this module
composes the node graph with ``yaml.SafeLoader`` and builds the Python values itself, recording
for every value its line (``SourceMap.lines``), for every mapping entry the line of its key
(``SourceMap.key_lines``) and for every scalar the text as written (``SourceMap.raw``; env values
are "taken as their text", so ``1.10`` stays ``1.10`` and ``yes`` stays ``yes``).

Paths are tuples of mapping keys (str) and sequence indexes (int), the same shape as
``jsonschema``'s ``ValidationError.absolute_path``, so a schema error maps straight to a line.

Only the SafeLoader's constructors ever run, for scalars. Beyond that, the builder:

- keeps timestamps as the strings they were written as (nothing in the schema is a date);
- turns every mapping key into its text, and refuses non-scalar keys;
- reports duplicate keys, which PyYAML would silently resolve to the last one;
- refuses recursive aliases and caps the number of values per file, so an alias bomb ("billion
  laughs") cannot take the agent down.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from reconciler.desired.problems import Problem

__all__ = ["Document", "FieldPath", "SourceMap", "format_field", "load_documents"]

FieldPath = tuple[str | int, ...]

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

MAX_VALUES_PER_FILE = 100_000
"""A cap on the values one file may expand to (aliases included): far above any real file."""


def format_field(path: FieldPath, prefix: str = "") -> str:
    """``("tasks", 0, "resources", "memory")`` -> ``tasks[0].resources.memory``.

    ``prefix`` is prepended (``task`` gives ``task.image``); an empty result is ``document``.
    Keys that are not identifier-like are quoted: ``labels["app.example/tier"]``.
    """
    out = prefix
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _PLAIN_KEY.fullmatch(part):
            out += f"[{json.dumps(part)}]"
        else:
            out = f"{out}.{part}" if out else part
    return out or "document"


@dataclass(frozen=True, slots=True)
class SourceMap:
    """Where the values of one document sit in its file, seen from ``prefix`` down.

    Lookups take paths relative to ``prefix``; ``child`` narrows the view to a sub-value, so
    the task validator can use task-relative paths for a task inside a file.
    """

    lines: Mapping[FieldPath, int] = field(default_factory=dict)
    key_lines: Mapping[FieldPath, int] = field(default_factory=dict)
    raw: Mapping[FieldPath, str] = field(default_factory=dict)
    prefix: FieldPath = ()

    def child(self, path: FieldPath) -> SourceMap:
        return SourceMap(self.lines, self.key_lines, self.raw, self.prefix + path)

    def line(self, path: FieldPath) -> int:
        """The line of the value at ``path``, or of its nearest ancestor that has one; else 0."""
        full = self.prefix + path
        while True:
            if full in self.lines:
                return self.lines[full]
            if not full:
                return 0
            full = full[:-1]

    def key_line(self, path: FieldPath) -> int:
        """The line of the key of the mapping entry at ``path``, falling back to ``line``."""
        return self.key_lines.get(self.prefix + path) or self.line(path)

    def raw_text(self, path: FieldPath) -> str | None:
        """The text of the scalar at ``path`` as written, if it came from YAML."""
        return self.raw.get(self.prefix + path)


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document of a file: its value, its 1-based index and its start line."""

    data: Any
    index: int
    start_line: int
    source: SourceMap


_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"


class _TooLarge(Exception):
    pass


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, path: str, problems: list[Problem]) -> None:
        self.loader = loader
        self.path = path
        self.problems = problems
        self.count = 0
        self.lines: dict[FieldPath, int] = {}
        self.key_lines: dict[FieldPath, int] = {}
        self.raw: dict[FieldPath, str] = {}
        self.merged: dict[int, int] = {}  # id(mapping node) -> entries that came from merges

    def problem(self, line: int, fpath: FieldPath, message: str) -> None:
        self.problems.append(Problem(self.path, line, format_field(fpath), message))

    def build(self, node: yaml.Node, fpath: FieldPath, active: frozenset[int]) -> Any:
        self.count += 1
        if self.count > MAX_VALUES_PER_FILE:
            raise _TooLarge
        line = node.start_mark.line + 1
        self.lines[fpath] = line
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, fpath)
        if id(node) in active:
            self.problem(line, fpath, "recursive YAML alias")
            return None
        active = active | {id(node)}
        if node.tag not in (_SEQ, _MAP):
            self.problem(line, fpath, f"invalid YAML: unsupported tag {node.tag!r}")
            return None
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*fpath, i), active) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, fpath, active)
        raise AssertionError(f"unknown YAML node {node!r}")  # pragma: no cover

    def scalar(self, node: yaml.ScalarNode, fpath: FieldPath) -> Any:
        self.raw[fpath] = node.value
        if node.tag == "tag:yaml.org,2002:timestamp":
            return node.value
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            self.problem(node.start_mark.line + 1, fpath, _yaml_message(e))
            return None

    def mapping(self, node: yaml.MappingNode, fpath: FieldPath, active: frozenset[int]) -> Any:
        if id(node) not in self.merged:
            explicit = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
            try:
                self.loader.flatten_mapping(node)  # resolves "<<" merge keys, merged first
            except yaml.YAMLError as e:
                self.problem(node.start_mark.line + 1, fpath, _yaml_message(e))
                return {}
            self.merged[id(node)] = len(node.value) - explicit
        n_merged = self.merged[id(node)]
        out: dict[str, Any] = {}
        # Explicit entries first, so they override merged ones without counting as duplicates.
        entries = node.value[n_merged:] + node.value[:n_merged]
        for i, (key_node, value_node) in enumerate(entries):
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(key_line, fpath, "mapping keys must be plain scalars")
                continue
            key = key_node.value
            kpath = (*fpath, key)
            if key in out:
                if i >= len(entries) - n_merged:
                    continue  # a merged entry that an explicit one overrides
                first = self.key_lines.get(kpath, 0)
                self.problem(key_line, kpath, f"duplicate key (first given at line {first})")
                continue
            self.key_lines[kpath] = key_line
            out[key] = self.build(value_node, kpath, active)
        return out


def _yaml_message(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        parts = [p for p in (e.context, e.problem) if p]
        if parts:
            return "invalid YAML: " + ", ".join(parts)
    return f"invalid YAML: {e}"


def _error_line(e: yaml.YAMLError) -> int:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        if mark is not None:
            return int(mark.line) + 1
    return 1


def decode(data: bytes, path: str) -> tuple[str | None, list[Problem]]:
    """Decode a file's bytes as UTF-8 (a BOM is allowed); a problem names the first bad line."""
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return None, [Problem(path, line, "file", "not valid UTF-8 text")]


def load_documents(text: str, path: str) -> tuple[list[Document], list[Problem]]:
    """Compose every YAML document of ``text`` with the safe loader, keeping positions.

    Returns the documents read and the problems found. An empty or whitespace-only text, or
    one without any document (comments only), is a problem: editors truncate a file before
    they write it, and that moment must never read as "run nothing". A syntax error stops the
    file at that point. Never raises for bad input.
    """
    if not text.strip():
        return [], [Problem(path, 1, "file", "file is empty")]
    problems: list[Problem] = []
    documents: list[Document] = []
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node() said there is one
                break
            builder = _Builder(loader, path, problems)
            before = len(problems)
            start = node.start_mark.line + 1
            try:
                data = builder.build(node, (), frozenset())
            except _TooLarge:
                problems.append(
                    Problem(
                        path,
                        start,
                        "document",
                        f"expands to more than {MAX_VALUES_PER_FILE} values (alias bomb?)",
                    )
                )
                break
            if data is None and len(problems) > before:
                continue  # the root itself was refused; "document is empty" would mislead
            source = SourceMap(builder.lines, builder.key_lines, builder.raw)
            documents.append(Document(data, len(documents) + 1, start, source))
    except yaml.YAMLError as e:
        problems.append(Problem(path, _error_line(e), "yaml", _yaml_message(e)))
    finally:
        loader.dispose()
    if not documents and not problems:
        problems.append(Problem(path, 1, "file", "file holds no YAML document"))
    return documents, problems

"""Safe, bounded YAML loading that remembers where every value came from.

Each problem is reported at the line of the offending value, and YAML is read with a safe loader
only. PyYAML's ``safe_load`` throws the positions away, so this module composes the node graph
with libyaml's safe loader (``yaml.CSafeLoader``) and builds the Python values itself, recording
for every value its line (``SourceMap.lines``), for every mapping entry the line of its key
(``SourceMap.key_lines``) and for every scalar the text as written (``SourceMap.raw``; env values
are taken as their text, so ``1.10`` stays ``1.10`` and ``yes`` stays ``yes``).

Paths are tuples of mapping keys (str) and sequence indexes (int), the same shape as
``jsonschema``'s ``ValidationError.absolute_path``, so a schema error maps straight to a line.

**Hostile input has a bounded cost.** The limits are ``reconciler.spec.limits``'s, which the
fleet's values share. Whoever can drop a file in the desired directory must not
be able to stall or kill the agent, so a file is refused, with a problem line, before anything
is built from it when it breaks one of these limits:

- more than ``MAX_FILE_BYTES`` (1 MiB): far above any real task file, small enough to read;
- a control character other than TAB, CR and LF (a NUL or an escape sequence is never meant),
  as written or spelled with an escape in a quoted string (``"\\e"``);
- nesting deeper than ``MAX_DEPTH`` (64) levels: Python and every library after this one
  recurse per level, so a ``[[[[...]]]]`` of 10,000 levels would raise ``RecursionError``;
- more than ``MAX_VALUES_PER_FILE`` values, where an alias counts as every value it repeats and
  a merge key as every entry it copies. An alias bomb ("billion laughs") or a merge-key bomb
  (``aN: &aN {<<: [*aN-1, *aN-1]}``) fits in a few hundred bytes yet expands exponentially;
  counted this way it is refused after a few thousand parser events. Aliases also add to the
  nesting depth of where they are used, and a recursive alias is refused.

These counts are taken from libyaml's event stream, which costs almost nothing per event and
holds no tree, before the node graph is composed. Libyaml is used rather than the pure-Python
parser because it is about fourteen times faster, which keeps a 1 MiB file well under the
time budget; a PyYAML built without libyaml falls back to the pure-Python safe loader, with
the same limits at a higher cost. While building values:

- integers of more than ``MAX_INT_DIGITS`` (18) digits are refused: no field needs them, and
  Python refuses to convert past 4,300 digits anyway (quote such a value to make it text);
- only the safe constructors ever run, for scalars; any tag they do not know is a problem;
- timestamps stay the strings they were written as (nothing in the schema is a date);
- every mapping key becomes its text, and non-scalar keys are refused;
- duplicate keys are reported (PyYAML would silently keep the last one).

Nothing here raises for bad input: every failure becomes a ``Problem``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from reconciler.spec.limits import (
    MAX_BYTES,
    MAX_DEPTH,
    MAX_INT_DIGITS,
    control_character,
    control_problem,
    int_digits,
)
from reconciler.spec.problems import Problem

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_INT_DIGITS",
    "MAX_VALUES_PER_FILE",
    "Document",
    "FieldPath",
    "SourceMap",
    "decode",
    "format_field",
    "load_documents",
]

FieldPath = tuple[str | int, ...]

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

MAX_FILE_BYTES = MAX_BYTES
"""A desired-state file larger than this is refused rather than parsed."""

MAX_VALUES_PER_FILE = 20_000
"""The values one file may hold, every alias and merge key counted as what it expands to.

A full task is about 100 values, so this allows some 200 full tasks (or 2,000 minimal ones) in
one file, and bounds what validating a file can cost.
"""

_Loader = type[yaml.CSafeLoader] | type[yaml.SafeLoader]
LOADER: _Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""The safe loader: libyaml's when PyYAML has it."""

_INT = "tag:yaml.org,2002:int"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_MERGE = "tag:yaml.org,2002:merge"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


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


# ------------------------------------------------------------------------ the event budget


class _Open:
    """A collection being read by the event pass: what it is, and where the pass stands in it."""

    __slots__ = ("anchor", "children", "height", "is_map", "key", "start")

    def __init__(self, is_map: bool, start: int, anchor: str | None) -> None:
        self.is_map = is_map
        self.start = start  # the value count when it began
        self.anchor = anchor
        self.children = 0
        self.height = 0  # the deepest child's height
        self.key: str | int = "?"  # in a mapping: the key of the value being read

    def slot(self) -> str | int | None:
        """The path part of the child being read; None while reading a mapping key."""
        if not self.is_map:
            return self.children
        return None if self.children % 2 == 0 else self.key


class _OverBudget(Exception):
    def __init__(self, line: int, fpath: FieldPath, message: str) -> None:
        self.line = line
        self.fpath = fpath
        self.message = message


class _Budget:
    """Counts values, nesting and aliases over libyaml's events, without building anything.

    ``anchors`` maps each anchor defined so far in the document to the number of values it
    expands to and its height (0 for a scalar); an alias adds both where it is used.
    """

    def __init__(self) -> None:
        self.count = 0
        self.stack: list[_Open] = []
        self.anchors: dict[str, tuple[int, int]] = {}
        self.open_anchors: set[str] = set()

    def fpath(self) -> FieldPath:
        parts = [o.slot() for o in self.stack]
        return tuple(p for p in parts if p is not None)

    def over(self, event: yaml.Event, message: str) -> _OverBudget:
        mark = event.start_mark
        return _OverBudget(mark.line + 1 if mark is not None else 0, self.fpath(), message)

    def add(self, event: yaml.Event, n: int) -> None:
        self.count += n
        if self.count > MAX_VALUES_PER_FILE:
            raise self.over(
                event,
                f"the file holds more than {MAX_VALUES_PER_FILE} values, counting each alias "
                "and merge key as every value it repeats (an alias bomb?)",
            )

    def depth(self, event: yaml.Event, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self.over(event, f"nesting is deeper than {MAX_DEPTH} levels (aliases included)")

    def done(self, key: str | int, height: int) -> None:
        """A node ended; ``key`` is how its parent names it if it is a mapping key."""
        if not self.stack:
            return
        parent = self.stack[-1]
        parent.height = max(parent.height, height)
        if parent.is_map and parent.children % 2 == 0:
            parent.key = key
        parent.children += 1

    def feed(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.ScalarEvent):
            self.add(event, 1)
            if event.anchor is not None:
                self.anchors[event.anchor] = (1, 0)
            self.done(event.value, 0)
        elif isinstance(event, yaml.AliasEvent):
            name = str(event.anchor)
            if name in self.open_anchors:
                raise self.over(event, "recursive YAML alias")
            size, height = self.anchors.get(name, (1, 0))  # unknown: the composer reports it
            self.add(event, size)
            self.depth(event, len(self.stack) + height)
            self.done(f"*{name}", height)
        elif isinstance(event, yaml.CollectionStartEvent):
            self.add(event, 1)
            self.depth(event, len(self.stack) + 1)
            self.stack.append(
                _Open(isinstance(event, yaml.MappingStartEvent), self.count - 1, event.anchor)
            )
            if event.anchor is not None:
                self.open_anchors.add(event.anchor)
        elif isinstance(event, yaml.CollectionEndEvent):
            node = self.stack.pop()
            height = node.height + 1
            if node.anchor is not None:
                self.open_anchors.discard(node.anchor)
                self.anchors[node.anchor] = (self.count - node.start, height)
            self.done("?", height)
        elif isinstance(event, yaml.DocumentStartEvent):
            self.anchors.clear()  # anchors are per document


def _check_budget(text: str, path: str) -> Problem | None:
    """The first limit ``text`` breaks, from its event stream; None when it keeps to them.

    A syntax error ends the count without a problem: composing stops at the same point and
    reports it with the documents before it.
    """
    budget = _Budget()
    try:
        for event in yaml.parse(text, Loader=LOADER):
            budget.feed(event)
    except _OverBudget as e:
        fpath = format_field(e.fpath) if e.fpath else "file"
        return Problem(path, e.line, fpath, e.message)
    except yaml.YAMLError:
        pass
    return None


def _control_character(text: str, path: str) -> Problem | None:
    """A problem for the first control character other than TAB, CR and LF, if any."""
    at = control_character(text)
    if at is None:
        return None
    return Problem(path, text.count("\n", 0, at) + 1, "file", control_problem(text[at]))


# --------------------------------------------------------------------------- the builder


class _TooLarge(Exception):
    pass


class _Builder:
    def __init__(
        self, loader: yaml.CSafeLoader | yaml.SafeLoader, path: str, problems: list[Problem]
    ) -> None:
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
        # The event pass already bounds the size and depth; this count is a second guard.
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
            self.problem(line, fpath, f"invalid YAML: unsupported tag {_short(node.tag)}")
            return None
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*fpath, i), active) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, fpath, active)
        raise AssertionError(f"unknown YAML node {type(node).__name__}")  # pragma: no cover

    def scalar(self, node: yaml.ScalarNode, fpath: FieldPath) -> Any:
        line = node.start_mark.line + 1
        self.raw[fpath] = node.value
        at = control_character(node.value)  # spelled with an escape: "\e", "\x00"
        if at is not None:
            self.problem(line, fpath, control_problem(node.value[at]))
            return None
        if node.tag == _TIMESTAMP:
            return node.value
        if node.tag == _INT and int_digits(node.value) > MAX_INT_DIGITS:
            self.problem(
                line,
                fpath,
                f"an integer may have at most {MAX_INT_DIGITS} digits; quote it to make it text",
            )
            return None
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            self.problem(line, fpath, _yaml_message(e))
        except Exception:  # a safe constructor choking on an explicit tag (!!int '')
            self.problem(
                line, fpath, f"invalid YAML: {_short(node.value)} is not a valid {node.tag}"
            )
        return None

    def mapping(self, node: yaml.MappingNode, fpath: FieldPath, active: frozenset[int]) -> Any:
        if id(node) not in self.merged:
            explicit = sum(1 for k, _ in node.value if k.tag != _MERGE)
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
            at = control_character(key)
            if at is not None:
                self.problem(key_line, fpath, f"a key {control_problem(key[at])}")
                continue
            if key in out:
                if i >= len(entries) - n_merged:
                    continue  # a merged entry that an explicit one overrides
                first = self.key_lines.get(kpath, 0)
                self.problem(key_line, kpath, f"duplicate key (first given at line {first})")
                continue
            self.key_lines[kpath] = key_line
            out[key] = self.build(value_node, kpath, active)
        return out


def _short(text: object, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _yaml_message(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        parts = [p for p in (e.context, e.problem) if p]
        if parts:
            return "invalid YAML: " + ", ".join(parts)
    if isinstance(e, yaml.reader.ReaderError) and isinstance(e.character, int):
        return f"invalid YAML: the character U+{e.character:04X} is not allowed"
    return f"invalid YAML: {e}"


def _error_line(e: yaml.YAMLError, text: str) -> int:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        if mark is not None:
            return int(mark.line) + 1
    if isinstance(e, yaml.reader.ReaderError) and 0 <= e.position <= len(text):
        return text.count("\n", 0, e.position) + 1
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
    they write it, and that moment must never read as "run nothing". A text over the limits
    above is one problem and no document. A syntax error stops the file at that point.
    Never raises for bad input.
    """
    refused = _control_character(text, path)
    if refused is not None:
        return [], [refused]
    if not text.strip():
        return [], [Problem(path, 1, "file", "file is empty")]
    if len(text) > MAX_FILE_BYTES:  # characters: a text is never shorter than its UTF-8
        return [], [Problem(path, 0, "file", f"is larger than {MAX_FILE_BYTES} bytes")]
    refused = _check_budget(text, path)
    if refused is not None:
        return [], [refused]
    problems: list[Problem] = []
    documents: list[Document] = []
    loader = LOADER(text)
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
            except _TooLarge:  # pragma: no cover - the event pass refuses such a file first
                problems.append(
                    Problem(path, start, "file", f"holds more than {MAX_VALUES_PER_FILE} values")
                )
                break
            if data is None and len(problems) > before:
                continue  # the root itself was refused; "document is empty" would mislead
            source = SourceMap(builder.lines, builder.key_lines, builder.raw)
            documents.append(Document(data, len(documents) + 1, start, source))
    except yaml.YAMLError as e:
        problems.append(Problem(path, _error_line(e, text), "yaml", _yaml_message(e)))
    finally:
        loader.dispose()
    if not documents and not problems:
        problems.append(Problem(path, 1, "file", "file holds no YAML document"))
    return documents, problems

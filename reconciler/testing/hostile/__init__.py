"""The hostile corpus: files that once crashed, stalled or bloated the desired-state reader.

Small cases are seed files in this directory (``*.yaml``: merge-key bombs, billion laughs,
python tags, control characters, invalid UTF-8, BOMs, recursive aliases, out-of-range fields).
Big cases are generated here, so the repository stays small: 10,000 levels of nesting, a
5,000-digit integer, a 4 MiB ``[1,1,...]``, a file one byte over 1 MiB, thousands of empty
documents, the most expensive files that still fit every limit.

``corpus()`` returns them all by name; the few in ``ACCEPTED`` are valid. ``check_lines`` says
what is wrong with a reader's output for one file: every line must read ``PATH:LINE: FIELD:
problem``, one short line each. The tests and ``bench/_reliability_input.py`` share both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["ACCEPTED", "SEEDS", "check_lines", "corpus", "generated"]

SEEDS = Path(__file__).resolve().parent

_HEADER = "apiVersion: reconciler/v1\nkind: TaskSet\ntasks:\n"
_MIB = 1024 * 1024
_MAX_LINE = 1000


def _task(i: int) -> str:
    return f"  - {{name: t{i}, image: x}}\n"


def _full_task(i: int) -> str:
    return (
        f"  - name: t{i}\n    image: localhost/busybox:latest\n    command: [sh, -c, 'x']\n"
        f"    env: {{A: b, C: '1.10'}}\n    ports: ['{1000 + i}:80']\n"
        "    restart: {delay: 5s, maxDelay: 1m}\n"
        "    healthcheck: {test: [CMD, x], interval: 5s}\n"
        "    resources: {cpus: 1, memory: 64Mi}\n"
    )


_GENERATORS: dict[str, Callable[[], str | bytes]] = {
    "deep_flow_10k": lambda: "a: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "deep_block_10k": lambda: "- " * 10_000 + "x\n",
    "deep_maps_10k": lambda: "{a: " * 10_000 + "}" * 10_000 + "\n",
    "deep_65": lambda: "a: " + "[" * 64 + "]" * 64 + "\n",
    "int_5000_digits": lambda: "a: " + "7" * 5000 + "\n",
    "ones_4mib": lambda: "[" + "1," * (2 * _MIB - 1) + "1]",
    "ones_1mib": lambda: "[" + "1," * (_MIB // 2 - 2) + "1]\n",
    "over_1mib_by_one": lambda: "#" * _MIB + "\n",
    "empty_documents_5000": lambda: "---\n" * 5000,
    "empty_documents_200k": lambda: "---\n" * 200_000,
    "null_documents_mixed": lambda: (_HEADER + _task(0) + "---\n~\n---\n") * 2000,
    "long_scalar_1mib": lambda: _HEADER + "  - name: web\n    image: " + "x" * (_MIB - 100) + "\n",
    "long_key_1mib": lambda: (
        _HEADER + "  - name: web\n    image: x\n    " + "k" * (_MIB - 100) + ": 1\n"
    ),
    "many_duplicate_keys": lambda: "{" + "a: 1, " * 19_000 + "}\n",
    "many_unknown_keys": lambda: (
        _HEADER + "  - name: web\n    image: x\n" + "".join(f"    k{i}: 1\n" for i in range(9_000))
    ),
    "many_bad_env_names": lambda: (
        _HEADER
        + "  - name: web\n    image: x\n    env:\n"
        + "".join(f"      {i}E: v\n" for i in range(9_000))
    ),
    "many_empty_tasks": lambda: _HEADER[:-1] + " [" + "{}, " * 19_000 + "]\n",
    "many_valid_tasks": lambda: _HEADER + "".join(_task(i) for i in range(3_990)),
    "many_full_tasks": lambda: _HEADER + "".join(_full_task(i) for i in range(500)),
    "many_valid_env": lambda: (
        _HEADER
        + "  - name: web\n    image: x\n    env:\n"
        + "".join(f"      E{i}: v\n" for i in range(9_990))
    ),
    "many_valid_documents": lambda: (
        "---\n{apiVersion: reconciler/v1, kind: TaskSet, tasks: []}\n" * 2_850
    ),
    "many_aliases_of_a_big_anchor": lambda: (
        "a: &a [" + "x, " * 999 + "x]\n" + "".join(f"b{i}: *a\n" for i in range(30))
    ),
    "long_duration": lambda: (
        _HEADER + "  - name: web\n    image: x\n    stopGracePeriod: " + "1s" * 200_000 + "\n"
    ),
    "control_char_at_the_end": lambda: _HEADER + _task(0) * 10_000 + "\x00",
    "invalid_utf8_at_the_end": lambda: (_HEADER + _task(0) * 10_000).encode() + b"\xff",
    "crlf_only": lambda: "\r\n" * 100_000,
    "bom_then_nothing": lambda: "\ufeff",
}


ACCEPTED = frozenset(
    {
        "bom_valid",
        "double_bom",
        "long_scalar_1mib",
        "many_full_tasks",
        "many_valid_documents",
        "many_valid_env",
        "many_valid_tasks",
    }
)
"""The cases that are valid: costly, yet within every limit."""


def generated() -> dict[str, bytes]:
    """The generated cases, by name."""
    out: dict[str, bytes] = {}
    for name, make in _GENERATORS.items():
        data = make()
        out[name] = data.encode() if isinstance(data, str) else data
    return out


def corpus() -> dict[str, bytes]:
    """Every case, seed files and generated ones, by name."""
    out = {path.stem: path.read_bytes() for path in sorted(SEEDS.glob("*.yaml"))}
    out.update(generated())
    return out


def _line_pattern(path: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(path)}:(\d+): (\S[^\n]*?): (\S[^\n]*)")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_lines(lines: Iterable[str], paths: Iterable[str]) -> list[str]:
    """What is wrong with problem ``lines`` about files at ``paths``; empty when all is well.

    Each line must be ``PATH:LINE: FIELD: problem`` for one of ``paths``, with no control
    character and at most 1000 characters.
    """
    patterns = [_line_pattern(p) for p in paths]
    wrong: list[str] = []
    for line in lines:
        shown = line[:200]
        if len(line) > _MAX_LINE:
            wrong.append(f"longer than {_MAX_LINE} characters: {shown!r}")
        elif _CONTROL.search(line):
            wrong.append(f"holds a control character: {shown!r}")
        elif not any(p.fullmatch(line) for p in patterns):
            wrong.append(f"not PATH:LINE: FIELD: problem: {shown!r}")
    return wrong

"""Hypothesis strategies over the desired-state schema, valid and broken, and the one check of a
reader's answer that the fuzz test and the reliability bench share.

``documents()`` draws a TaskSet whose tasks are built field by field from the task schema's
properties (``VALID_FIELDS`` must cover every one of them), then may break it three ways: a
field replaced by a hostile value (huge or special numbers, long or control-character text,
nesting, odd keys), an unknown field, or the YAML text itself mutated (truncated, a snippet
spliced in, a line repeated). A document drawn without any breakage must be accepted in full.
``texts()`` draws YAML-looking text from scratch, for the parser's corners.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import yaml
from hypothesis import strategies as st

from reconciler.spec.limits import control_character
from reconciler.spec.loader import parse_file
from reconciler.spec.schema import TASK_SCHEMA
from reconciler.spec.units import parse_duration
from reconciler.testing.hostile import check_lines

__all__ = ["VALID_FIELDS", "Case", "Verdict", "check_case", "documents", "judge", "texts"]

FUZZ_PATH = "fuzz/tasks.yaml"

_WORD = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8)
_DURATION = st.sampled_from(["0", "0s", "500ms", "1s", "10s", "1m30s", "5m", "1h", "1h30m", "24h"])
_GRACE = st.sampled_from(["0", "500ms", "10s", "1m", "59m59s", "1h"])
_SIZE = st.one_of(
    st.integers(1, 1024**4),
    st.sampled_from(["1", "64Mi", "1.5Gi", "10K", "1G", "1Ti", "1024Gi"]),
)
_ABS = st.builds(lambda parts: "/" + "/".join(parts), st.lists(_WORD, min_size=1, max_size=3))
_MOUNT = st.one_of(
    st.builds(
        lambda s, t, ro: {"type": "bind", "source": s, "target": t, "readOnly": ro},
        _ABS,
        _ABS,
        st.booleans(),
    ),
    st.builds(lambda s, t: {"type": "volume", "source": s, "target": t}, _WORD, _ABS),
    st.builds(lambda t: {"type": "tmpfs", "target": t}, _ABS),
)


def _restart(r: dict[str, Any]) -> dict[str, Any]:
    """``maxDelay`` must not be shorter than ``delay`` (default 5s): order a drawn pair."""
    delay, max_delay = r.get("delay", "5s"), r.get("maxDelay", "5m")
    if parse_duration(max_delay) < parse_duration(delay):
        r["delay"], r["maxDelay"] = max_delay, delay
    return r


VALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "command": st.lists(st.text(max_size=10), min_size=1, max_size=3),
    "entrypoint": st.lists(st.text(max_size=10), max_size=2),
    "env": st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
        st.one_of(st.text(max_size=10), st.integers(-(10**17), 10**17), st.booleans(), st.none()),
        max_size=4,
    ),
    "labels": st.dictionaries(
        _WORD.map(lambda w: "app." + w),
        st.one_of(st.text(max_size=10), st.floats(allow_nan=False, allow_infinity=False)),
        max_size=3,
    ),
    "desiredState": st.sampled_from(["running", "shutdown"]),
    "resources": st.fixed_dictionaries(
        {},
        optional={
            "cpus": st.floats(0.001, 1024),
            "memory": _SIZE,
        },
    ),
    "ports": st.lists(st.integers(1, 65535), max_size=3, unique=True).map(
        lambda hosts: [f"{h}:80/tcp" for h in hosts]
    ),
    "mounts": st.lists(_MOUNT, max_size=3, unique_by=lambda m: m["target"].rstrip("/")),
    "network": st.sampled_from(["bridge", "host", "none"]),
    "user": st.one_of(
        st.sampled_from(["1000", "1000:1000", "nobody", "app:app"]), st.integers(0, 2**32 - 1)
    ),
    "workdir": _ABS,
    "devices": st.lists(st.sampled_from(["/dev/ttyUSB0", "/dev/null:/dev/x"]), max_size=2),
    "capAdd": st.lists(st.sampled_from(["NET_ADMIN", "CAP_SYS_TIME", "ALL"]), max_size=2),
    "capDrop": st.lists(st.sampled_from(["ALL", "MKNOD"]), max_size=2),
    "stopSignal": st.sampled_from(["SIGTERM", "term", "SIGRTMIN+3", "QUIT"]),
    "stopGracePeriod": _GRACE,
    "pull": st.sampled_from(["missing", "always", "never"]),
    "logs": st.fixed_dictionaries({}, optional={"maxSize": _SIZE}),
    "restart": st.fixed_dictionaries(
        {},
        optional={
            "condition": st.sampled_from(["any", "on-failure", "none"]),
            "delay": _DURATION,
            "maxDelay": _DURATION,
            "maxAttempts": st.integers(0, 10**18 - 1),
            "window": _DURATION,
        },
    ).map(_restart),
    "healthcheck": st.fixed_dictionaries(
        {
            "test": st.sampled_from(
                [["CMD-SHELL", "wget -q -O- localhost"], ["CMD", "/bin/true"], ["NONE"]]
            )
        },
        optional={
            "interval": st.sampled_from(["1s", "30s", "1h"]),
            "timeout": st.sampled_from(["1s", "3s"]),
            "retries": st.integers(1, 10),
            "startPeriod": _DURATION,
        },
    ),
    # start-first is refused beside host ports, devices or host networking, which this
    # generator combines freely: only stop-first is always valid here.
    "update": st.fixed_dictionaries(
        {},
        optional={
            "order": st.just("stop-first"),
            "monitor": _DURATION,
            "failureAction": st.sampled_from(["rollback", "pause", "continue"]),
        },
    ),
    # a dependency must name another task of the set: the set's generator adds those
    "dependsOn": st.just([]),
}
"""A strategy of valid values for every optional field of the task schema."""

_HOSTILE: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**40), 10**40),
    st.floats(),
    st.sampled_from(
        [
            float("inf"),
            float("nan"),
            "9" * 400 + "h",
            "1Pi",
            "2Ti",
            "25h",
            "-1s",
            "0",
            "",
            "\x00",
            "\x1b[31m",
            "a\nb",
            "x" * 5000,
            "${HOME}",
            "reconciler.node",
            "!!python/object/apply:os.system",
        ]
    ),
    st.text(max_size=30),
    st.recursive(
        st.one_of(st.none(), st.integers(), st.text(max_size=5)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=10,
    ),
)


@dataclass(frozen=True)
class Case:
    """One fuzz case: the file's text, and the task names it must yield when it is valid."""

    text: str
    valid_names: tuple[str, ...] | None  # None: the case may or may not be valid


@st.composite
def _task(draw: st.DrawFn, name: str, broken: bool) -> dict[str, Any]:
    task: dict[str, Any] = {"name": name, "image": "localhost/busybox:latest"}
    for field in draw(st.lists(st.sampled_from(sorted(VALID_FIELDS)), max_size=6, unique=True)):
        task[field] = draw(VALID_FIELDS[field])
    if broken:
        fields = [*TASK_SCHEMA["properties"], "unknownField", "Name"]
        for field in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3)):
            task[field] = draw(_HOSTILE)
    return task


def _mutate(text: str, how: int, at: int, snippet: str) -> str:
    at = at % (len(text) + 1)
    if how == 0:
        return text[: max(at, len(text) // 2)]
    if how == 1:
        return text[:at] + snippet + text[at:]
    lines = text.splitlines(keepends=True)
    i = at % len(lines)
    return "".join(lines[: i + 1] + lines[i:])


_SNIPPETS = st.sampled_from(
    [
        "&a ",
        "*a",
        "<<: *a\n",
        "[",
        "]",
        "{",
        "}",
        ": ",
        "- ",
        "---\n",
        "!!int ",
        "? ",
        "\t",
        "'",
        '"',
    ]
) | st.text(max_size=8)


@st.composite
def documents(draw: st.DrawFn) -> Case:
    """A TaskSet built from the schema's fields; valid unless a breakage was drawn."""
    names = draw(st.lists(_WORD, max_size=4, unique=True))
    broken = [draw(st.integers(0, 3)) == 0 for _ in names]
    tasks = [draw(_task(n, b)) for n, b in zip(names, broken, strict=True)]
    doc: dict[str, Any] = {"apiVersion": "reconciler/v1", "kind": "TaskSet", "tasks": tasks}
    header_broken = draw(st.integers(0, 9)) == 0
    if header_broken:
        doc[draw(st.sampled_from(["apiVersion", "kind", "tasks", "extra"]))] = draw(_HOSTILE)
    try:
        text = yaml.safe_dump(doc, sort_keys=draw(st.booleans()), allow_unicode=True)
    except ValueError:  # an integer past Python's digit limit: safe_dump cannot write it
        text = yaml.safe_dump({"tasks": "unwritable"})
        header_broken = True
    mutated = draw(st.integers(0, 4)) == 0
    if mutated:
        text = _mutate(text, draw(st.integers(0, 2)), draw(st.integers(0)), draw(_SNIPPETS))
    # A control character in a text or key is refused by rule, whether PyYAML writes it raw
    # (U+0085, NEL, as a line break) or escaped ("\e").
    raw_control = "\x85" in text or _holds_control(doc)
    valid = not (any(broken) or header_broken or mutated or raw_control)
    return Case(text, tuple(sorted(names)) if valid else None)


def _holds_control(value: object) -> bool:
    """Whether a text or key anywhere in ``value`` holds a refused control character."""
    if isinstance(value, str):
        return control_character(value) is not None
    if isinstance(value, dict):
        return any(_holds_control(k) or _holds_control(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_control(v) for v in value)
    return False


_YAMLISH = st.sampled_from([*"abz019 -:[]{},&*!|>'\"#%@`?\n\t\r.~<=", "\u00e9", "\ufeff"])


def texts() -> st.SearchStrategy[Case]:
    """YAML-looking text from scratch, and now and then raw bytes decoded as Latin-1."""
    return st.one_of(
        st.lists(_YAMLISH, max_size=80).map("".join),
        st.text(max_size=40),
        st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    ).map(lambda t: Case(t, None))


@dataclass(frozen=True)
class Verdict:
    """What went wrong with one case: an exception that escaped the reader, lines not in the
    PATH:LINE: FIELD: problem form, or a valid case refused. ``wrong`` lists them all."""

    escaped: str | None = None
    malformed: tuple[str, ...] = ()
    refused_valid: str | None = None

    @property
    def crashed(self) -> bool:
        return self.escaped is not None or bool(self.malformed)

    @property
    def wrong(self) -> list[str]:
        return [w for w in (self.escaped, *self.malformed, self.refused_valid) if w]


def judge(case: Case) -> Verdict:
    """Run one case through the reader and judge its answer."""
    try:
        declared, problems = parse_file(case.text.encode("utf-8", "surrogatepass"), FUZZ_PATH)
    except Exception as e:
        return Verdict(escaped=f"{type(e).__name__} escaped the reader: {str(e)[:200]}")
    malformed = tuple(check_lines((str(p) for p in problems), [FUZZ_PATH]))
    refused = None
    if case.valid_names is not None:
        names = tuple(sorted(d.task.name for d in declared))
        if problems:
            refused = f"a valid case was refused: {[str(p) for p in problems[:3]]}"
        elif names != case.valid_names:
            refused = f"a valid case declared {list(names)}, not {list(case.valid_names)}"
    return Verdict(malformed=malformed, refused_valid=refused)


def check_case(case: Case) -> list[str]:
    """Everything wrong with the reader's answer to ``case``; empty when all is well."""
    return judge(case).wrong

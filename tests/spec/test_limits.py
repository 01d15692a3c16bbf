"""The reader's limits: each one refused with an exact PATH:LINE: FIELD line, just past the limit,
and accepted at the limit. Also: a problem is always one bounded line, a file reports a bounded
number of problems, and no exception ever leaves the reader.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import reconciler.spec.loader as loader
import reconciler.spec.yamlsource as yamlsource
from reconciler.spec.loader import load_directory, load_paths
from reconciler.spec.problems import MAX_FIELD_CHARS, MAX_MESSAGE_CHARS, DesiredStateError, Problem
from reconciler.spec.yamlsource import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_INT_DIGITS,
    MAX_VALUES_PER_FILE,
)
from tests.spec.helpers import HEADER, safe_dir, write

TASK_HEAD = "  - name: web\n    image: localhost/busybox:latest\n"


def problems_of(tmp_path: Path, text: str | bytes) -> tuple[str, list[Problem]]:
    path = tmp_path / "tasks.yaml"
    write(path, "")
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(DesiredStateError) as e:
        load_paths([path])
    return str(path), e.value.problems


def lines_of(tmp_path: Path, text: str | bytes) -> list[str]:
    path, problems = problems_of(tmp_path, text)
    return [str(p).removeprefix(path + ":") for p in problems]


def accepted(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path / "ok.yaml", text)
    return sorted(load_paths([path]).tasks)


def task_with(field: str) -> str:
    """A TaskSet of one task whose field under test is on line 6."""
    return HEADER + TASK_HEAD + "    " + field + "\n"


# ---------------------------------------------------------------------------------- size


def test_a_file_of_exactly_the_size_limit_is_read(tmp_path: Path) -> None:
    text = task_with("pull: never")
    text += "#" * (MAX_FILE_BYTES - len(text) - 1) + "\n"
    assert len(text.encode()) == MAX_FILE_BYTES
    assert accepted(tmp_path, text) == ["web"]


def test_one_byte_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    text = "x" * (MAX_FILE_BYTES + 1)
    assert lines_of(tmp_path, text) == [f"0: file: is larger than {MAX_FILE_BYTES} bytes"]


# ------------------------------------------------------------------------------- nesting


def nested(levels: int) -> str:
    """A document whose value under ``a`` makes ``levels`` collections in all, root included."""
    return "a: " + "[" * (levels - 1) + "x" + "]" * (levels - 1) + "\n"


def test_nesting_at_the_limit_is_only_a_schema_matter(tmp_path: Path) -> None:
    lines = lines_of(tmp_path, nested(MAX_DEPTH))
    assert "nesting" not in "\n".join(lines)
    assert "1: a: unknown field; known: apiVersion, kind, tasks" in lines


def test_nesting_past_the_limit_is_refused_with_its_line_and_field(tmp_path: Path) -> None:
    [line] = lines_of(tmp_path, nested(MAX_DEPTH + 1))
    field = "a" + "[0]" * (MAX_DEPTH - 1)
    assert line == f"1: {field}: nesting is deeper than {MAX_DEPTH} levels (aliases included)"


def test_ten_thousand_levels_are_refused_cleanly(tmp_path: Path) -> None:
    for text in (nested(10_000), "a: " + "- " * 10_000 + "x\n", "{a: " * 10_000 + "}" * 10_000):
        lines = lines_of(tmp_path, text)
        assert len(lines) == 1, lines
        assert "nesting" in lines[0] or "invalid YAML" in lines[0]


def test_aliases_count_towards_the_nesting_depth(tmp_path: Path) -> None:
    text = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 80))
    [line] = lines_of(tmp_path, text)
    assert (
        line
        == f"{MAX_DEPTH}: a{MAX_DEPTH - 1}[0]: nesting is deeper than 64 levels (aliases included)"
    )


# -------------------------------------------------------------------------------- values


def test_an_alias_bomb_is_refused_from_the_events(tmp_path: Path) -> None:
    text = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 10)
    )
    [line] = lines_of(tmp_path, text)
    assert line.startswith("5: a4[")
    assert f"more than {MAX_VALUES_PER_FILE} values" in line
    assert "alias bomb" in line


@pytest.mark.parametrize("n", [24, 28])
def test_a_merge_key_bomb_is_refused_from_the_events(tmp_path: Path, n: int) -> None:
    text = "a0: &a0 {k: v}\n" + "".join(
        f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}\n" for i in range(1, n + 1)
    )
    [line] = lines_of(tmp_path, text)
    assert line.startswith('12: a11["<<"][1]: the file holds more than')


def test_merge_keys_and_aliases_within_the_limit_still_work(tmp_path: Path) -> None:
    text = HEADER + (
        "  - &base\n    name: web\n    image: x\n    env: {A: '1'}\n  - <<: *base\n    name: job\n"
    )
    path = write(tmp_path / "m.yaml", text)
    desired = load_paths([path])
    assert desired.tasks["job"].spec.env == (("A", "1"),)


def test_a_flat_list_past_the_value_limit_is_refused(tmp_path: Path) -> None:
    text = "[" + "1," * MAX_VALUES_PER_FILE + "1]"
    [line] = lines_of(tmp_path, text)
    assert line.startswith(f"1: [{MAX_VALUES_PER_FILE - 1}]: the file holds more than")


def test_a_stream_of_thousands_of_empty_documents_is_short_to_report(tmp_path: Path) -> None:
    lines = lines_of(tmp_path, "---\n" * 5000)
    assert len(lines) == loader.MAX_PROBLEMS_PER_FILE + 1
    assert lines[0].endswith(": document: document is empty")
    assert lines[-1].endswith("more from this line on are not shown")


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("a: &x [*x]\n", "1", "a[0]"),
        ("a: &x {<<: *x}\n", "1", 'a["<<"]'),
        ("a: &x {b: [{c: *x}]}\n", "1", "a.b[0].c"),
    ],
)
def test_recursive_aliases_and_merges_are_refused(
    tmp_path: Path, text: str, line: str, field: str
) -> None:
    assert lines_of(tmp_path, text) == [f"{line}: {field}: recursive YAML alias"]


# ------------------------------------------------------------------------------ integers


def test_integers_of_eighteen_digits_are_read(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.yaml", task_with("restart: {maxAttempts: 999999999999999999}"))
    assert load_paths([path]).tasks["web"].spec.restart.max_attempts == 10**18 - 1


@pytest.mark.parametrize(
    "value", ["1" * (MAX_INT_DIGITS + 1), "9" * 5000, "-" + "1" * 19, "0x" + "f" * 19, "1_" * 19]
)
def test_longer_integers_are_refused_before_conversion(tmp_path: Path, value: str) -> None:
    lines = lines_of(tmp_path, task_with(f"restart: {{maxAttempts: {value}}}"))
    assert lines == [
        "6: tasks[0].restart.maxAttempts: an integer may have at most 18 digits; "
        "quote it to make it text"
    ]


def test_a_long_number_quoted_as_an_env_value_is_text(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.yaml", task_with(f"env: {{ID: '{'7' * 40}'}}"))
    assert load_paths([path]).tasks["web"].spec.env == (("ID", "7" * 40),)


@pytest.mark.parametrize("tagged", ["!!int ''", "!!int 'x'", "!!float 'x'", "!!bool maybe"])
def test_explicit_tags_the_constructors_choke_on_are_problems(tmp_path: Path, tagged: str) -> None:
    [line] = lines_of(tmp_path, task_with(f"env: {{A: {tagged}}}"))
    assert line.startswith("6: tasks[0].env.A: invalid YAML: ")


# --------------------------------------------------------------------- control characters


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f", "\x85", "\x9b", "\x0c"])
def test_control_characters_are_refused_at_their_line(tmp_path: Path, char: str) -> None:
    text = task_with(f"env: {{A: 'x{char}y'}}")
    assert lines_of(tmp_path, text) == [
        f"6: file: holds the control character U+{ord(char):04X}; only TAB, CR and LF are allowed"
    ]


def test_tab_cr_and_lf_are_fine(tmp_path: Path) -> None:
    text = (HEADER + TASK_HEAD + "    env: {A: 'x\ty'}\n").replace("\n", "\r\n")
    assert accepted(tmp_path, text) == ["web"]


def test_a_byte_order_mark_is_allowed_once(tmp_path: Path) -> None:
    assert accepted(tmp_path, "\ufeff" + task_with("pull: never")) == ["web"]


# --------------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(
    ("field", "ok", "too_much", "fragment"),
    [
        ("stopGracePeriod", "1h", "1h1s", "longer than the limit of 1h"),
        ("restart: {maxDelay: 24h, delay", "24h", "24h1ms", "longer than the limit of 24h"),
        ("restart: {maxDelay", "24h", "25h", "longer than the limit of 24h"),
        ("restart: {window", "24h", "1441m", "longer than the limit of 24h"),
        ("healthcheck: {test: [NONE], interval", "24h", "86401s", "longer than the limit of 24h"),
        ("healthcheck: {test: [NONE], timeout", "24h", "9" * 400 + "h", "too long to be meant"),
        ("healthcheck: {test: [NONE], startPeriod", "24h", "99999999h", "longer than"),
    ],
)
def test_durations_are_bounded(
    tmp_path: Path, field: str, ok: str, too_much: str, fragment: str
) -> None:
    close = "}" if "{" in field else ""
    assert accepted(tmp_path, task_with(f"{field}: {ok}{close}")) == ["web"]
    [line] = lines_of(tmp_path, task_with(f"{field}: {too_much}{close}"))
    key = field.replace(": {test: [NONE], ", ".").replace(": {maxDelay: 24h, ", ".")
    key = key.replace(": {", ".")
    assert line.startswith(f"6: tasks[0].{key}: "), line
    assert fragment in line


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("1Ti", None),
        (str(1024**4), None),
        ("1025Gi", "more than the limit of 1Ti"),
        (str(1024**4 + 1), "must be at most 1Ti"),
        ("2T", "more than the limit of 1Ti"),
        ("1.0e+300", "must be at most 1Ti"),
        (".inf", "must be a size"),
        ("9" * 100 + "Gi", "too long to be meant"),
    ],
)
def test_memory_is_at_most_one_tebibyte(tmp_path: Path, value: str, fragment: str | None) -> None:
    text = task_with(f"resources: {{memory: {value}}}")
    if fragment is None:
        assert accepted(tmp_path, text) == ["web"]
        return
    lines = lines_of(tmp_path, text)
    assert all(line.startswith("6: tasks[0].resources.memory: ") for line in lines), lines
    assert any(fragment in line for line in lines), lines


def test_log_size_is_bounded_too(tmp_path: Path) -> None:
    [line] = lines_of(tmp_path, task_with("logs: {maxSize: 2Ti}"))
    assert line.startswith("6: tasks[0].logs.maxSize: size '2Ti' is more than the limit of 1Ti")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("1024", None),
        ("0.001", None),
        ("1025", "must be at most 1024, not 1025"),
        (".inf", "must be at most 1024"),
        (".nan", "must be a finite number"),
        ("1.0e+400", "must be at most 1024"),
    ],
)
def test_cpus_are_at_most_1024_and_finite(tmp_path: Path, value: str, fragment: str | None) -> None:
    text = task_with(f"resources: {{cpus: {value}}}")
    if fragment is None:
        assert accepted(tmp_path, text) == ["web"]
        return
    lines = lines_of(tmp_path, text)
    assert all(line.startswith("6: tasks[0].resources.cpus: ") for line in lines), lines
    assert any(fragment in line for line in lines), lines


# ----------------------------------------------------------------------------- env names


@pytest.mark.parametrize("name", ["A", "_", "_A1", "path", "MY_VAR_2"])
def test_env_names_that_a_shell_can_export_are_fine(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "ok.yaml", task_with(f"env: {{{name}: x}}"))
    assert load_paths([path]).tasks["web"].spec.env == ((name, "x"),)


@pytest.mark.parametrize("name", ["1A", "A-B", "A.B", "A B", "Ä", "''", "A=B", "'$X'"])
def test_other_env_names_are_refused(tmp_path: Path, name: str) -> None:
    [problem] = problems_of(tmp_path, task_with(f"env: {{{name}: x}}"))[1]
    assert problem.line == 6
    assert problem.field.startswith("tasks[0].env")
    assert "is not a usable environment variable name" in problem.message


# ------------------------------------------------------------------- bounded problem lines


def test_a_huge_key_gives_a_short_line(tmp_path: Path) -> None:
    key = "k" * 500_000
    [problem] = problems_of(tmp_path, task_with(f"{key}: 1"))[1]
    assert len(problem.field) <= MAX_FIELD_CHARS
    assert len(problem.message) <= MAX_MESSAGE_CHARS
    assert problem.line == 6


def test_problem_lines_never_hold_control_characters_or_newlines() -> None:
    p = Problem("a\nb.yaml", 1, 'env["X\\n"]', "bad\nvalue \x1b[31mred\u2028" + "x" * 1000)
    text = str(p)
    assert "\n" not in text and "\x1b" not in text and "\u2028" not in text
    assert text.startswith("a\\nb.yaml:1: ")
    assert len(p.message) == MAX_MESSAGE_CHARS
    assert p.message.endswith("...")


def test_a_file_reports_a_bounded_number_of_problems(tmp_path: Path) -> None:
    text = HEADER[:-1] + " [" + "{}, " * 500 + "]\n"
    lines = lines_of(tmp_path, text)
    assert len(lines) == loader.MAX_PROBLEMS_PER_FILE + 1
    [summary] = [line for line in lines if "not shown" in line]
    assert summary == "3: file: stopped after 50 problems; more from this line on are not shown"


# -------------------------------------------------------------------------- never raises


@pytest.mark.parametrize("error", [RecursionError, MemoryError, ValueError, KeyError, OSError])
def test_any_exception_while_reading_a_file_is_a_problem_for_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    d = safe_dir(tmp_path / "d")
    write(d / "a.yaml", task_with("pull: never"))
    write(d / "b.yaml", task_with("pull: never").replace("web", "job"))
    real = loader.check_document
    calls: list[object] = []

    def exploding(data: object, **kw: object) -> object:
        calls.append(data)
        if len(calls) == 1:
            raise error("x" * 100_000)
        return real(data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(loader, "check_document", exploding)
    with pytest.raises(DesiredStateError) as e:
        load_directory(d)
    [problem] = e.value.problems
    assert (problem.path, problem.line, problem.field) == (str(d / "a.yaml"), 0, "file")
    assert problem.message.startswith(f"could not be read ({error.__name__}: ")
    assert "xxxx" in problem.message
    assert len(problem.message) <= MAX_MESSAGE_CHARS
    assert len(calls) == 2  # the other file was still read


@pytest.mark.parametrize(
    "text",
    [
        nested(MAX_DEPTH + 1),
        "a0: &a0 {k: v}\n"
        + "".join(f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}\n" for i in range(1, 25)),
        "a: &x {b: [{c: *x}]}\n",
        task_with("restart: {maxAttempts: " + "1" * 19 + "}"),
        task_with("pull: never\n    pull: always"),
        task_with("pull: never"),
    ],
)
def test_the_pure_python_loader_keeps_the_same_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """PyYAML without libyaml falls back to its pure-Python safe loader: same answers."""
    path = write(tmp_path / "t.yaml", text)

    def answer() -> list[str]:
        try:
            return sorted(load_paths([path]).tasks)
        except DesiredStateError as e:
            return list(e.lines())

    with_libyaml = answer()
    monkeypatch.setattr(yamlsource, "LOADER", yaml.SafeLoader)
    assert answer() == with_libyaml


def test_a_character_libyaml_refuses_is_reported_at_its_line(tmp_path: Path) -> None:
    text = task_with("env: {A: 'x\ufffe'}")
    assert lines_of(tmp_path, text) == [
        "6: yaml: invalid YAML: the character U+FFFE is not allowed"
    ]

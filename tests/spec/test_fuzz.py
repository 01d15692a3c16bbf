"""The desired-state reader against hostile input: generated over the schema, and a corpus.

Whatever it reads, the reader answers with problem lines in the ``PATH:LINE: FIELD: problem``
form (or a valid set), never with an exception; valid documents are accepted in full. Cost is
the bench's business (``bench/_reliability_input.py``); here a generous guard only catches a
hang.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings

from reconciler.spec.loader import load_directory
from reconciler.spec.problems import DesiredStateError
from reconciler.spec.schema import TASK_SCHEMA
from reconciler.testing.hostile import ACCEPTED, check_lines, corpus, generated
from reconciler.testing.hostile.strategies import VALID_FIELDS, Case, check_case, documents, texts

HANG_GUARD = 120  # seconds; a hang, not a slow read

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@contextlib.contextmanager
def hang_guard(seconds: int = HANG_GUARD) -> Iterator[None]:
    def hung(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"the reader ran for {seconds}s: a hang")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_the_generator_covers_every_optional_task_field() -> None:
    assert set(VALID_FIELDS) == set(TASK_SCHEMA["properties"]) - {"name", "image"}


@FUZZ
@given(documents())
def test_generated_task_sets_get_clean_answers(case: Case) -> None:
    with hang_guard():
        assert check_case(case) == []


@FUZZ
@given(texts())
def test_yaml_looking_text_gets_clean_answers(case: Case) -> None:
    with hang_guard():
        assert check_case(case) == []


CORPUS = corpus()


def test_the_corpus_stays_small_on_disk() -> None:
    seeds = set(CORPUS) - set(generated())
    assert len(seeds) >= 20
    assert sum(len(CORPUS[name]) for name in seeds) < 64 * 1024


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_hostile_file_gets_a_clean_answer(tmp_path: Path, name: str) -> None:
    d = tmp_path / "desired"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    path = d / "tasks.yaml"
    path.write_bytes(CORPUS[name])
    os.chmod(path, 0o644)
    with hang_guard():
        try:
            desired = load_directory(d)
        except DesiredStateError as e:
            lines = e.lines()
        else:
            assert name in ACCEPTED, f"{name} was accepted: {sorted(desired.tasks)[:5]}"
            return
    assert name not in ACCEPTED, lines
    assert lines
    assert check_lines(lines, [str(path)]) == []
    assert len(lines) <= 51


def test_python_tags_in_the_corpus_never_run(tmp_path: Path) -> None:
    marker = Path("/tmp/reconciler-pwned")
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()
    d = tmp_path / "d"
    d.mkdir(mode=0o755)
    (d / "x.yaml").write_bytes(CORPUS["python_tags"])
    os.chmod(d / "x.yaml", 0o644)
    with pytest.raises(DesiredStateError, match="unsupported tag"):
        load_directory(d)
    assert not marker.exists()

"""Durations and sizes: the spellings the reference promises, clear errors for the rest, and
the bounds that keep every value finite."""

from __future__ import annotations

import pytest

from reconciler.spec.units import (
    UnitError,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("2m30s", 150.0),
        ("0s", 0.0),
        ("0", 0.0),
        ("1h0m0s", 3600.0),
        ("250ms", 0.25),
    ],
)
def test_parse_duration_accepts_go_style_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("10", "has no unit"),
        ("", "empty duration"),
        ("10x", "invalid duration '10x'"),
        ("-5s", "invalid duration"),
        ("5 s", "invalid duration"),
        ("s", "invalid duration"),
        ("1d", "invalid duration"),
        (10, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_parse_duration_rejects_other_spellings_with_a_hint(value: object, fragment: str) -> None:
    with pytest.raises(UnitError, match=fragment) as e:
        parse_duration(value)  # type: ignore[arg-type]
    assert "such as 500ms, 10s, 5m or 1h30m" in str(e.value)


@pytest.mark.parametrize("seconds", [0.0, 0.5, 1.0, 10.0, 90.0, 300.0, 5400.0, 3601.0, 1.25])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1024, 1024),
        ("1024", 1024),
        ("10Ki", 10 * 1024),
        ("64Mi", 64 * 1024**2),
        ("1Gi", 1024**3),
        ("2Ti", 2 * 1024**4),
        ("10K", 10_000),
        ("10k", 10_000),
        ("5M", 5_000_000),
        ("1G", 1_000_000_000),
        ("1.5Gi", 1536 * 1024**2),
        (64.0, 64),
    ],
)
def test_parse_size_accepts_bytes_and_kubernetes_suffixes(value: object, size: int) -> None:
    assert parse_size(value) == size  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("64MB", "unknown suffix 'MB'"),
        ("64mb", "unknown suffix 'mb'"),
        ("64 Mi", "invalid size"),
        ("Mi", "invalid size"),
        ("", "invalid size"),
        ("-1", "invalid size"),
        (-1, "negative"),
        (1.5, "whole"),
        ("1.5", "whole number of bytes"),
        (True, "boolean"),
        ([1], "not a list"),
    ],
)
def test_parse_size_rejects_other_spellings(value: object, fragment: str) -> None:
    with pytest.raises(UnitError, match=fragment):
        parse_size(value)  # type: ignore[arg-type]


def test_unit_error_is_a_value_error() -> None:
    assert issubclass(UnitError, ValueError)


def test_a_duration_above_its_maximum_is_refused_never_infinite() -> None:
    assert parse_duration("1h", maximum=3600) == 3600.0
    with pytest.raises(UnitError, match="longer than the limit of 1h"):
        parse_duration("1h1ms", maximum=3600)
    with pytest.raises(UnitError, match="longer than the limit of 8760h"):
        parse_duration("8761h")  # the ceiling when no maximum is given
    with pytest.raises(UnitError, match="too long to be meant"):
        parse_duration("9" * 400 + "h")


def test_a_size_above_its_maximum_is_refused() -> None:
    assert parse_size("1Ti", maximum=1024**4) == 1024**4
    for value in ("1025Gi", 1024**4 + 1, float(2**41)):
        with pytest.raises(UnitError, match="more than the limit of 1Ti"):
            parse_size(value, maximum=1024**4)
    with pytest.raises(UnitError, match="more than the limit"):
        parse_size("9" * 30)
    with pytest.raises(UnitError, match="too long to be meant"):
        parse_size("9" * 100 + "Mi")


@pytest.mark.parametrize("text", ["\u0661s", "\u0663\u0660Mi"])
def test_only_ascii_digits_count(text: str) -> None:
    with pytest.raises(UnitError):
        parse_duration(text) if text.endswith("s") else parse_size(text)


@pytest.mark.parametrize(
    ("size", "text"), [(1024**4, "1Ti"), (64 * 1024**2, "64Mi"), (3072, "3Ki"), (1000, "1000")]
)
def test_format_size_picks_the_largest_binary_suffix(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size

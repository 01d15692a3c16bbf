"""Durations and sizes: the spellings PRODUCT.md promises, and clear errors for the rest."""

from __future__ import annotations

import pytest

from reconciler.desired.units import UnitError, format_duration, parse_duration, parse_size


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

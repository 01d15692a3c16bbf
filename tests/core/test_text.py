"""``printable``: the one sanitiser of text from outside (health output, runtime errors)."""

from __future__ import annotations

import pytest

from reconciler.core.text import REPLACEMENT, printable
from reconciler.spec.limits import control_character


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, é and 😀", "plain text, é and 😀"),
        ("tab\tcr\rlf\n", "tab\tcr\rlf\n"),
        ("\x1b[1;31mERROR\x1b[0m: disk full", "ERROR: disk full"),
        ("\x1b]0;pwned title\x07after", "after"),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("\x9b2Jcleared", "cleared"),
        ("nul\x00bell\x07del\x7f", f"nul{REPLACEMENT}bell{REPLACEMENT}del{REPLACEMENT}"),
        ("lone \ud800 surrogate", f"lone {REPLACEMENT} surrogate"),
        ("\x1b", REPLACEMENT),
    ],
)
def test_printable_drops_escape_sequences_and_replaces_control_characters(
    text: str, shown: str
) -> None:
    assert printable(text) == shown
    assert control_character(printable(text)) is None
    printable(text).encode("utf-8")  # never a lone surrogate left

"""Text from outside made safe to show and to send: the one sanitiser. Pure.

A health check's output, a runtime's error and a host's name end up in status messages, the
node value, logs and pages. They may hold terminal escape sequences (a health check that
prints in colour) or other control characters, which every reader of a fleet value refuses
(``reconciler.fleet.values.load_json``) and which a terminal would obey. ``printable`` drops
ANSI escape sequences (CSI such as ``ESC [ 31 m``, OSC such as a window title, and two-byte
escapes) and replaces every other control character but TAB, CR and LF, and any lone
surrogate, with U+FFFD.

Used where such text enters: every status the state machine records
(``reconciler.core.lifecycle``), a health check's output (``runtime.podman.health``), and every
text an agent writes to NATS (``reconciler.fleet.values``).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["REPLACEMENT", "printable"]

REPLACEMENT: Final = "\ufffd"

_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: ESC [ parameters intermediates final
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: ESC ] ... BEL or ST
    r"|\x9b[0-?]*[ -/]*[@-~]"  # the one-byte CSI
    r"|\x1b[@-Z\\-_]"  # a two-byte escape
)
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` without ANSI escape sequences, its other control characters (but TAB, CR and
    LF) and lone surrogates replaced by U+FFFD."""
    if text.isprintable() or not _UNPRINTABLE.search(text):
        return text
    return _UNPRINTABLE.sub(REPLACEMENT, _ANSI.sub("", text))

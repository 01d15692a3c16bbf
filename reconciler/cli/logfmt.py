"""The command line's logs: one ``key=value`` line per record on stderr.

``ts=... level=... logger=... msg="..."``; an exception's traceback is added as ``exc=`` (its
tail, bounded, so a ``RecursionError`` cannot make a 400 KB line). podman-py and urllib3 stay at
warning unless debug is asked for.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

__all__ = ["MAX_TRACEBACK", "KeyValueFormatter", "setup_logging"]

MAX_TRACEBACK = 8000
"""The longest traceback a log line carries (its tail, where the error is)."""


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..."`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds")
        msg = record.getMessage()
        line = (
            f"ts={ts.replace('+00:00', 'Z')} level={record.levelname.lower()} "
            f"logger={record.name} msg={json.dumps(msg)}"
        )
        if record.exc_info:
            exc = self.formatException(record.exc_info)
            if len(exc) > MAX_TRACEBACK:
                exc = "..." + exc[-MAX_TRACEBACK:]
            line += " exc=" + json.dumps(exc)
        return line


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("urllib3", "podman"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("asyncio").addFilter(_not_tls_eof_noise)


def _not_tls_eof_noise(record: logging.LogRecord) -> bool:
    """asyncio warns on every TLS connection nats-py closes ("returning true from
    eof_received() has no effect when using ssl"): nothing an operator can act on."""
    return "eof_received()" not in record.getMessage()

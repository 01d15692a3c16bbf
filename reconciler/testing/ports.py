"""Free loopback TCP ports for the servers tests and benchmarks start (NATS, HTTP, Prometheus).

The kernel picks a port that is free now; a server started right after binds it. Another process
could take it in between, which on a test machine does not happen often enough to be worth a
retry loop.
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

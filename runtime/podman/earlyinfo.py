"""The start-up read of ``podman info``: the one podman call that does not go through the client.

Every other podman request the runtime makes goes through ``runtime.podman.client`` (its lanes,
deadlines and error translation). This one is made before the client exists, on purpose, and
commit 4649975 measured why: ``podman info`` takes podman about a fifth of a second (it runs
the OCI runtime and conmon to learn their versions; 0.23-0.30 s here), and readiness waits for
the node description built from it. So ``reconciler run`` asks for it in a thread as soon as it
knows the URL, while it still checks its flags, opens its store and imports the rest of the
agent; the executor's first ``describe`` then takes that answer (``PodmanExecutor(node_info=)``)
instead of asking again.

To ask at once, the thread must not first import podman-py, which takes about as long as the
answer itself: ~0.13 s for ``podman``, ~0.17 s for ``runtime.podman.client``, against ~0.03 s
for this module (``python -X importtime``, best of 5, on this 2-core host), while the agent's
main thread is importing the same modules. So this module speaks HTTP over the unix socket with
the standard library alone, with one timeout (``INFO_TIMEOUT``, the client's read deadline),
and never raises: any failure is None, and ``describe`` then asks through the client. Neither
it nor the package's ``__init__`` imports podman-py.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
from typing import Any

log = logging.getLogger(__name__)

INFO_TIMEOUT = 30.0
"""Seconds ``read_info`` may take (the read deadline of every other podman call)."""

MAX_INFO_BYTES = 1 << 20
"""The most of ``podman info``'s answer read (it is a few KB)."""


def socket_path(url: str) -> str | None:
    """The path of a ``unix://`` (or ``unix:``) URL; None for any other kind of URL."""
    for prefix in ("unix://", "unix:"):
        if url.startswith(prefix):
            return url[len(prefix) :]
    return None


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("d", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s


def read_info(url: str, timeout: float = INFO_TIMEOUT) -> dict[str, Any] | None:
    """podman's ``info`` from the API on ``url`` (``unix:///path``), or None when it does not
    answer it. Blocking; never raises (see the module docstring for why it is not a client
    call)."""
    path = socket_path(url)
    if path is None:
        return None
    conn = _UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", "/v4.0.0/libpod/info")
        resp = conn.getresponse()
        if resp.status != 200:
            return None
        body = json.loads(resp.read(MAX_INFO_BYTES + 1)[:MAX_INFO_BYTES])
    except (OSError, ValueError, http.client.HTTPException) as err:
        log.debug("podman info failed url=%s err=%r", url, err)
        return None
    finally:
        conn.close()
    return body if isinstance(body, dict) else None

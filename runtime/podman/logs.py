"""``reconciler logs``: a container's log copied to the command's standard output.

The command runs outside any agent, so there is no executor to ask: this is the runtime's side
of it, one ``client.logs`` call (its deadline for podman's answer, its error translation) and a
copy of what podman sends, stdout and stderr alike, flushed as it comes so a followed log reads
live. Finding the socket is the caller's (``discovery``).
"""

from __future__ import annotations

import sys
from typing import BinaryIO

from runtime.podman import client
from runtime.podman.errors import NotFound


def container_logs(
    url: str, ref: str, *, follow: bool, tail: int | None, out: BinaryIO | None = None
) -> None:
    """Copy the log of container ``ref`` (a name or an id) to ``out`` (standard output by
    default): its last ``tail`` lines only when ``tail`` is given, and on until the container
    stops when ``follow`` is set.

    Raises ``LookupError`` if the container does not exist, and the client's
    ``ReconcilerError`` (``RuntimeUnavailable`` included) when podman fails.
    """
    sink = sys.stdout.buffer if out is None else out
    try:
        for frame in client.logs(url, ref, follow=follow, tail=tail):
            sink.write(frame)
            sink.flush()
    except NotFound as err:
        raise LookupError(f"no container {ref}") from err

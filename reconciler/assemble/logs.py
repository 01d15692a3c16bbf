"""The podman runtime for ``reconciler logs``: a task's container logs, without an agent.

The command line picks no runtime itself; this is the composition layer's one call for it. The
socket is ``--podman-url`` or the first candidate that answers (the agent's own service in the
state dir, then the usual sockets), and the logs are read through the runtime's client.
"""

from __future__ import annotations

from pathlib import Path

from runtime.podman.discovery import answers, candidates
from runtime.podman.logs import container_logs as podman_logs

__all__ = ["container_logs"]


def container_logs(
    state_dir: Path, podman_url: str | None, ref: str, *, follow: bool, tail: int | None
) -> None:
    """Print the container logs of ``ref`` (a container id or name). Raises ``ConnectionError``
    when no podman answers, ``LookupError`` when podman has no such container, and the
    runtime's ``ReconcilerError`` when podman fails."""
    urls = [podman_url] if podman_url else candidates(state_dir)
    url = next((u for u in urls if answers(u)), None)
    if url is None:
        raise ConnectionError("no podman API answers; pass --podman-url")
    podman_logs(url, ref, follow=follow, tail=tail)

"""``reconciler logs NAME|ID [-f] [--tail N]``: a task's container logs, from podman.

The task is found in the store (opened read-only, so the agent may or may not run), then its
container's logs are read through the podman runtime's client, at ``--podman-url`` or the first
podman socket that answers.
"""

from __future__ import annotations

import argparse
import contextlib

from reconciler.assemble.logs import container_logs
from reconciler.cli.exits import EXIT_OK, Failure, NotFound
from reconciler.cli.options import state_dir
from reconciler.cli.tasks import find_view, read_views
from reconciler.core.errors import ReconcilerError

__all__ = ["logs"]


def logs(args: argparse.Namespace) -> int:
    """Print the logs (following them with ``-f`` until Ctrl-C). Raises ``NotFound`` for an
    unknown task or container, ``Failure`` when no podman answers or podman fails."""
    view = find_view(read_views(state_dir(args)), args.ref)
    ref = view.container_id or f"{view.name}.{view.id}"
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends -f
            container_logs(
                state_dir(args), args.podman_url, ref, follow=args.follow, tail=args.tail
            )
    except (ConnectionError, ReconcilerError) as err:
        raise Failure(str(err)) from err
    except LookupError as err:
        raise NotFound(str(err)) from err
    return EXIT_OK

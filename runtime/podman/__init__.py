"""The podman runtime: real containers through podman's REST API (podman-py).

``PodmanExecutor`` is the entry point the composition root (``reconciler.assemble``) picks; the
rest of the package is its parts: ``spec`` (TaskSpec -> create arguments, pure), ``client``
(every podman call, with its deadline, and the one place podman errors are translated),
``lanes`` (bounded thread pools per class of call), ``transport`` (abortable unix-socket HTTP),
``probe`` (the liveness probe behind ``runtime_up``), ``events`` (the single event-stream
reader), ``controller`` (one task's container, with ``container``, ``health`` and ``wait``),
``cgroups`` (verifying live updates), ``discovery`` (finding podman's socket, or starting a
service), ``earlyinfo`` (the start-up ``podman info``, the one call made outside the client)
and ``logs`` (``reconciler logs``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.podman.executor import PodmanExecutor

__all__ = ["PodmanExecutor"]


def __getattr__(name: str) -> Any:
    # Imported on first use, not with the package, so that importing ``earlyinfo`` loads no
    # podman-py: ``reconciler run`` imports it in a thread to ask for ``podman info`` at once
    # (about 0.23 s in podman; readiness waits for it). Importing the executor with the package
    # would hold that request back by the executor's import, ~0.21 s against ~0.03 s for
    # ``earlyinfo`` (``python -X importtime``, best of 5, this 2-core host).
    if name == "PodmanExecutor":
        from runtime.podman.executor import PodmanExecutor

        return PodmanExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

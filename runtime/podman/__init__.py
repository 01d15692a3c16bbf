"""The podman runtime: real containers through podman's REST API (podman-py).

``PodmanExecutor`` is the entry point the composition root (``reconciler.cli``) picks; the rest
of the package is its parts: ``spec`` (TaskSpec -> create arguments, pure), ``client`` (the REST
calls with their deadlines, and the one place podman errors are translated), ``lanes`` (bounded
thread pools per class of call), ``transport`` (abortable unix-socket HTTP), ``probe`` (the
liveness probe behind ``runtime_up``), ``events`` (the single event-stream reader),
``controller`` (one task's container), ``cgroups`` (verifying live updates), ``discovery``
(finding podman's socket) and ``service`` (a private ``podman system service`` for tests,
benchmarks and hosts without a socket).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.podman.executor import PodmanExecutor

__all__ = ["PodmanExecutor"]


def __getattr__(name: str) -> Any:
    # Imported on first use, not with the package: a part as light as ``discovery`` can then be
    # used (at the agent's start, from a thread) without loading podman-py.
    if name == "PodmanExecutor":
        from runtime.podman.executor import PodmanExecutor

        return PodmanExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The podman runtime: real containers through podman's REST API (podman-py).

``PodmanExecutor`` is the entry point the composition root (``reconciler.cli``) picks; the rest
of the package is its parts: ``spec`` (TaskSpec -> create arguments, pure), ``client`` (the
bounded thread pool and the one place podman errors are translated), ``events`` (the single
event-stream reader), ``controller`` (one task's container), ``cgroups`` (verifying live
updates) and ``service`` (a private ``podman system service`` for tests, benchmarks and hosts
without a socket).
"""

from runtime.podman.executor import PodmanExecutor

__all__ = ["PodmanExecutor"]

"""TaskSpec -> podman-py ``containers.create()`` keyword arguments: a pure function.

This module owns the mapping from the desired-state task schema onto what podman 4.3's REST API
accepts through podman-py, and nothing else: no I/O, so every field can be unit-tested without
podman. The quirks it encodes were observed on podman 4.3.1 with podman-py 5.8:

* ``stop_signal`` must be a signal *number* (the name "SIGTERM" gives a 500);
* ``nano_cpus`` is silently ignored, so CPU limits are ``cpu_period`` + ``cpu_quota``;
* health-check durations are nanoseconds, and ``Timeout`` must be non-zero or the healthcheck
  endpoint fails with "exceeded timeout of 0s";
* named volumes go through ``volumes`` (the API's ``mounts`` only takes bind and tmpfs);
* log rotation needs an explicit ``k8s-file`` driver for the size to apply.

It trusts the ``TaskSpec``: every value was validated where it entered (the desired-state
schema, for files and the fleet alike), so nothing is checked twice here. What is left is
conversion; a value podman cannot take even so (a signal name this platform lacks) raises
``SpecError``, a ``PermanentError``, so ``resolve()`` rejects the task instead of retrying it.
"""

from __future__ import annotations

import math
import signal
from typing import Any

from reconciler.core.codec import spec_hash
from reconciler.core.errors import PermanentError
from reconciler.core.model import MountType, TaskSpec

NODE_LABEL = "reconciler.node"
TASK_ID_LABEL = "reconciler.task.id"
TASK_NAME_LABEL = "reconciler.task.name"
SPEC_HASH_LABEL = "reconciler.task.spec-hash"
ROLLED_BACK_FROM_LABEL = "reconciler.task.rolled-back-from"
"""On a rollback's container: the spec hash of the update that failed."""
RESERVED_LABEL_PREFIX = "reconciler."

CPU_PERIOD_US = 100_000
"""The CFS period used for CPU limits: 100 ms, the kernel's and docker's default."""

MIN_CPU_QUOTA_US = 1_000
"""The kernel refuses CFS quotas below 1 ms."""

_NS = 1_000_000_000


class SpecError(PermanentError):
    """The task spec cannot be turned into a podman container."""


def container_name(spec: TaskSpec, task_id: str) -> str:
    """The container's name: ``<task name>.<instance id>`` (docs/operations.md)."""
    return f"{spec.name}.{task_id}"


def signal_number(name: str | None) -> int | None:
    """A signal name ("SIGTERM", "TERM", "sigkill") or number ("15") as a number."""
    if name is None or name == "":
        return None
    text = name.strip().upper()
    if text.isdigit():
        num = int(text)
        if 0 < num < signal.NSIG:
            return num
        raise SpecError(f"stopSignal: {name!r} is not a valid signal number")
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise SpecError(f"stopSignal: unknown signal {name!r}") from None


def container_labels(
    spec: TaskSpec, *, task_id: str, node_id: str, rolled_back_from: str | None = None
) -> dict[str, str]:
    """The task's own labels plus the reserved ones, which always win."""
    labels = {k: v for k, v in spec.labels if not k.startswith(RESERVED_LABEL_PREFIX)}
    labels[TASK_NAME_LABEL] = spec.name
    labels[TASK_ID_LABEL] = task_id
    labels[NODE_LABEL] = node_id
    labels[SPEC_HASH_LABEL] = spec_hash(spec)
    if rolled_back_from:
        labels[ROLLED_BACK_FROM_LABEL] = rolled_back_from
    return labels


def cpu_limits(cpus: float | None) -> tuple[int, int] | None:
    """(period, quota) in microseconds for a CPU limit, or None for no limit."""
    if cpus is None:
        return None
    return CPU_PERIOD_US, max(MIN_CPU_QUOTA_US, round(cpus * CPU_PERIOD_US))


def _ns(seconds: float) -> int:
    return round(seconds * _NS)


def create_kwargs(
    spec: TaskSpec, *, task_id: str, node_id: str, rolled_back_from: str | None = None
) -> dict[str, Any]:
    """The keyword arguments for podman-py's ``containers.create()`` for one task instance.

    ``rolled_back_from`` (a rollback's failed spec hash) becomes a label. Pure and
    deterministic. Raises ``SpecError`` for a spec podman cannot run.
    """
    if not spec.image:
        raise SpecError("image: must not be empty")
    kw: dict[str, Any] = {
        "image": spec.image,
        "name": container_name(spec, task_id),
        "labels": container_labels(
            spec, task_id=task_id, node_id=node_id, rolled_back_from=rolled_back_from
        ),
        # One size-capped log per container; podman rotates it (k8s-file is the driver that
        # honours the size on podman 4.3).
        "log_config": {"Type": "k8s-file", "Config": {"size": int(spec.log_max_size)}},
        "stop_timeout": max(0, math.ceil(spec.stop_grace_period)),
    }
    kw.update(_process(spec))
    kw.update(_resources(spec))
    kw.update(_ports(spec))
    kw.update(_mounts(spec))
    kw["network_mode"] = str(spec.network)
    kw.update(_privileges(spec))
    kw.update(_healthcheck(spec))
    return kw


def _process(spec: TaskSpec) -> dict[str, Any]:
    """What the container runs: command, entrypoint and environment."""
    kw: dict[str, Any] = {}
    if spec.command is not None:
        kw["command"] = list(spec.command)
    if spec.entrypoint is not None:
        kw["entrypoint"] = list(spec.entrypoint)
    if spec.env:
        kw["environment"] = {k: v for k, v in spec.env}
    return kw


def _resources(spec: TaskSpec) -> dict[str, Any]:
    """CPU (period and quota: podman ignores ``nano_cpus``) and memory limits."""
    kw: dict[str, Any] = {}
    cpu = cpu_limits(spec.resources.cpus)
    if cpu is not None:
        kw["cpu_period"], kw["cpu_quota"] = cpu
    if spec.resources.memory is not None:
        kw["mem_limit"] = int(spec.resources.memory)
    return kw


def _ports(spec: TaskSpec) -> dict[str, Any]:
    """``{"80/tcp": host}``, with several host bindings of one container port as a list."""
    if not spec.ports:
        return {}
    ports: dict[str, list[int | tuple[str, int]]] = {}
    for p in spec.ports:
        binding: int | tuple[str, int] = (p.host_ip, p.host_port) if p.host_ip else p.host_port
        ports.setdefault(f"{p.container_port}/{p.protocol}", []).append(binding)
    return {"ports": {k: (v[0] if len(v) == 1 else v) for k, v in ports.items()}}


def _mounts(spec: TaskSpec) -> dict[str, Any]:
    """Bind and tmpfs mounts through ``mounts``, named volumes through ``volumes``."""
    mounts: list[dict[str, Any]] = []
    volumes: dict[str, dict[str, str]] = {}
    for m in spec.mounts:
        if m.type == MountType.VOLUME:
            volumes[m.source] = {"bind": m.target, "mode": "ro" if m.read_only else "rw"}
        elif m.type == MountType.TMPFS:
            mounts.append({"type": "tmpfs", "source": "tmpfs", "target": m.target})
        else:
            mount: dict[str, Any] = {"type": "bind", "source": m.source, "target": m.target}
            if m.read_only:
                mount["read_only"] = True
            mounts.append(mount)
    kw: dict[str, Any] = {}
    if mounts:
        kw["mounts"] = mounts
    if volumes:
        kw["volumes"] = volumes
    return kw


def _privileges(spec: TaskSpec) -> dict[str, Any]:
    """Who the process runs as and where, its devices, capabilities and stop signal."""
    kw: dict[str, Any] = {}
    if spec.user is not None:
        kw["user"] = spec.user
    if spec.workdir is not None:
        kw["working_dir"] = spec.workdir
    if spec.devices:
        kw["devices"] = [
            d.host if not d.container or d.container == d.host else f"{d.host}:{d.container}"
            for d in spec.devices
        ]
    if spec.cap_add:
        kw["cap_add"] = list(spec.cap_add)
    if spec.cap_drop:
        kw["cap_drop"] = list(spec.cap_drop)
    sig = signal_number(spec.stop_signal)
    if sig is not None:
        kw["stop_signal"] = sig
    return kw


def _healthcheck(spec: TaskSpec) -> dict[str, Any]:
    """The health check, durations in nanoseconds (none when the agent runs no check)."""
    hc = spec.healthcheck
    if hc is None or not runs_healthcheck(spec):
        return {}
    return {
        "healthcheck": {
            "Test": list(hc.test),
            "Interval": _ns(hc.interval),
            "Timeout": _ns(hc.timeout),
            "Retries": max(1, hc.retries),
            "StartPeriod": _ns(hc.start_period),
        }
    }


def runs_healthcheck(spec: TaskSpec) -> bool:
    """Whether the agent has to run a health check for this spec."""
    hc = spec.healthcheck
    return hc is not None and bool(hc.test) and hc.test[0] != "NONE"

"""The JSON forms of the model, and the one compact JSON encoder.

The store, the HTTP API and the fleet's buckets exchange the same JSON-ready dicts of tasks,
specs, statuses and node descriptions; this module is the one place that writes and reads them
(``node_to_dict``/``node_from_dict`` are the one node codec: ``/v1/node``, the fleet heartbeat
and the manager's reading of it).
Durations are float seconds and sizes integer bytes in that form. ``compact`` is the encoder
every writer of JSON bytes uses (no spaces; keys sorted where a value is hashed or compared).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from reconciler.core.model import (
    _DEFAULT_UPDATE,
    IN_PLACE_FIELDS,
    Dependency,
    DependencyCondition,
    Device,
    FailureAction,
    HealthCheck,
    Mount,
    MountType,
    NetworkMode,
    NodeDescription,
    PortMapping,
    Protocol,
    PullPolicy,
    Resources,
    RestartCondition,
    RestartPolicy,
    Rollback,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    UpdateOrder,
    UpdatePolicy,
)
from reconciler.core.policy import policy_from_dict, policy_to_dict

_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_ENCODE_SORTED = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def compact(value: Any, *, sort_keys: bool = False) -> bytes:
    """``value`` as compact JSON bytes (ASCII, as ``json.dumps`` writes by default: the spec
    hash on every container depends on these exact bytes); ``sort_keys`` where bytes are hashed
    or compared."""
    return (_ENCODE_SORTED if sort_keys else _ENCODE)(value).encode()


# ---------------------------------------------------------------------------- serialisation


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def spec_to_dict(spec: TaskSpec) -> dict[str, Any]:
    """A JSON-ready dict of the spec, in canonical units (seconds, bytes)."""
    r = spec.restart
    hc = spec.healthcheck
    u = spec.update
    return _drop_none(
        {
            "name": spec.name,
            "image": spec.image,
            "command": list(spec.command) if spec.command is not None else None,
            "entrypoint": list(spec.entrypoint) if spec.entrypoint is not None else None,
            "env": [list(kv) for kv in spec.env],
            "labels": [list(kv) for kv in spec.labels],
            "resources": _drop_none({"cpus": spec.resources.cpus, "memory": spec.resources.memory}),
            "ports": [[p.host_port, p.container_port, p.protocol, p.host_ip] for p in spec.ports],
            "mounts": [[m.type, m.target, m.source, m.read_only] for m in spec.mounts],
            "network": spec.network,
            "user": spec.user,
            "workdir": spec.workdir,
            "devices": [[d.host, d.container] for d in spec.devices],
            "capAdd": list(spec.cap_add),
            "capDrop": list(spec.cap_drop),
            "stopSignal": spec.stop_signal,
            "stopGracePeriod": spec.stop_grace_period,
            "pull": spec.pull,
            "logMaxSize": spec.log_max_size,
            "restart": [r.condition, r.delay, r.max_delay, r.max_attempts, r.window],
            "healthcheck": (
                [list(hc.test), hc.interval, hc.timeout, hc.retries, hc.start_period]
                if hc is not None
                else None
            ),
            "update": ([u.order, u.monitor, u.failure_action] if u != _DEFAULT_UPDATE else None),
            "dependsOn": [[d.task, d.condition] for d in spec.depends_on] or None,
        }
    )


def spec_hash(spec: TaskSpec) -> str:
    """A short, stable hash of the fields whose change forces a replacement.

    It is put on every container as a label, so that a container can be matched to its desired
    spec without the store (after a store rebuild). Fields updated in place, and those only the
    local manager reads (``update``, ``dependsOn``), are left out.
    """
    d = {
        k: v
        for k, v in spec_to_dict(spec).items()
        if k not in IN_PLACE_FIELDS and k not in ("update", "dependsOn")
    }
    return hashlib.sha256(compact(d, sort_keys=True)).hexdigest()[:16]


def spec_from_dict(d: dict[str, Any]) -> TaskSpec:
    res = d.get("resources", {})
    hc = d.get("healthcheck")
    cmd = d.get("command")
    ep = d.get("entrypoint")
    r = d.get("restart")
    u = d.get("update")
    return TaskSpec(
        name=d["name"],
        image=d["image"],
        command=tuple(cmd) if cmd is not None else None,
        entrypoint=tuple(ep) if ep is not None else None,
        env=tuple((k, v) for k, v in d.get("env", ())),
        labels=tuple((k, v) for k, v in d.get("labels", ())),
        resources=Resources(cpus=res.get("cpus"), memory=res.get("memory")),
        ports=tuple(PortMapping(h, c, Protocol(p), ip) for h, c, p, ip in d.get("ports", ())),
        mounts=tuple(Mount(MountType(t), tg, s, ro) for t, tg, s, ro in d.get("mounts", ())),
        network=NetworkMode(d.get("network", "bridge")),
        user=d.get("user"),
        workdir=d.get("workdir"),
        devices=tuple(Device(h, c) for h, c in d.get("devices", ())),
        cap_add=tuple(d.get("capAdd", ())),
        cap_drop=tuple(d.get("capDrop", ())),
        stop_signal=d.get("stopSignal"),
        stop_grace_period=d.get("stopGracePeriod", 10.0),
        pull=PullPolicy(d.get("pull", "missing")),
        log_max_size=d.get("logMaxSize", 10 * 1024 * 1024),
        restart=(
            RestartPolicy(RestartCondition(r[0]), *r[1:]) if r is not None else RestartPolicy()
        ),
        healthcheck=(
            HealthCheck(tuple(hc[0]), hc[1], hc[2], hc[3], hc[4]) if hc is not None else None
        ),
        update=(
            UpdatePolicy(UpdateOrder(u[0]), float(u[1]), FailureAction(u[2]))
            if u is not None
            else _DEFAULT_UPDATE
        ),
        depends_on=tuple(Dependency(t, DependencyCondition(c)) for t, c in d.get("dependsOn", ())),
    )


def status_to_dict(status: TaskStatus) -> dict[str, Any]:
    return _drop_none(
        {
            "state": int(status.state),
            "timestamp": status.timestamp,
            "message": status.message,
            "err": status.err,
            "containerId": status.container_id,
            "pid": status.pid,
            "exitCode": status.exit_code,
            "updateFailed": True if status.update_failed else None,
        }
    )


def status_from_dict(d: dict[str, Any]) -> TaskStatus:
    return TaskStatus(
        state=TaskState(d["state"]),
        timestamp=d.get("timestamp", 0.0),
        message=d.get("message", ""),
        err=d.get("err"),
        container_id=d.get("containerId"),
        pid=d.get("pid"),
        exit_code=d.get("exitCode"),
        update_failed=bool(d.get("updateFailed", False)),
    )


def task_to_dict(task: Task, *, with_status: bool = True) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": task.id,
        "spec": spec_to_dict(task.spec),
        "desiredState": int(task.desired_state),
        "nodeId": task.node_id,
    }
    if task.rollback is not None:
        d["rollback"] = [task.rollback.image_from, task.rollback.failed_hash]
    if with_status:
        d["status"] = status_to_dict(task.status)
    return d


def task_from_dict(d: dict[str, Any], status: TaskStatus | None = None) -> Task:
    if status is None:
        status = status_from_dict(d["status"]) if "status" in d else TaskStatus()
    return Task(
        id=d["id"],
        spec=spec_from_dict(d["spec"]),
        desired_state=TaskState(d["desiredState"]),
        status=status,
        node_id=d.get("nodeId", ""),
        rollback=Rollback(*d["rollback"]) if d.get("rollback") else None,
    )


# ----------------------------------------------------------------------------- the node

#: The description's fields that only the runtime knows: null until it answered.
_DESCRIBED: Final = ("hostname", "os", "arch", "cpus", "memoryBytes", "runtime", "runtimeVersion")


def node_to_dict(node: NodeDescription | None, *, version: str) -> dict[str, Any]:
    """A node's description as JSON: the fields ``/v1/node`` and the fleet's heartbeat share.

    Every field is null until the runtime described the node (``node`` None), except
    ``version``, the agent's, which the caller gives because it is known before (the local API
    shows the described one, the heartbeat its session's). Keys in the order ``/v1/node``
    writes them.
    """
    if node is None:
        return {**dict.fromkeys(_DESCRIBED), "version": version, "policy": None}
    return {
        "hostname": node.hostname,
        "os": node.os,
        "arch": node.arch,
        "cpus": node.cpus,
        "memoryBytes": node.memory_bytes,
        "runtime": node.runtime_name,
        "runtimeVersion": node.runtime_version,
        "version": version,
        "policy": policy_to_dict(node.policy) if node.policy is not None else None,
    }


def node_from_dict(doc: Mapping[str, Any]) -> NodeDescription | None:
    """The description in ``doc`` (a ``node_to_dict`` form, possibly inside a larger object),
    or None when it has none yet (every described field null or absent).

    ``doc`` may come from another host: a description is whole or absent, its texts are
    strings and its sizes whole non-negative numbers; anything else raises ``ValueError``
    naming the field. ``version`` is optional (``agent_version`` "" without it). ``policy``,
    the node's policy for fleet tasks (``reconciler.core.policy``), is null or absent for a
    node that checks nothing (a desired directory, or an agent older than the policy).
    """
    if all(doc.get(key) is None for key in _DESCRIBED):
        return None
    version = doc.get("version")
    policy = doc.get("policy")
    return NodeDescription(
        hostname=_text(doc, "hostname"),
        os=_text(doc, "os"),
        arch=_text(doc, "arch"),
        cpus=_count(doc, "cpus"),
        memory_bytes=_count(doc, "memoryBytes"),
        runtime_name=_text(doc, "runtime"),
        runtime_version=_text(doc, "runtimeVersion"),
        agent_version=version if isinstance(version, str) else "",
        policy=policy_from_dict(policy) if policy is not None else None,
    )


def _text(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string in a node's description")
    return value


def _count(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key}: expected a whole non-negative number in a node's description")
    return value

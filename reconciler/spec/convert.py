"""Converting a schema-valid task into a ``TaskSpec``, with the checks that span fields.

The schema has accepted every value on its own; what is left is what involves several values
(``maxDelay`` not below ``delay``, a host port or a mount target given twice, the shape of a
health-check test) and the conversion itself into the canonical units and types of
``reconciler.core.model``: durations in seconds, sizes in bytes, enums, sorted maps.

Canonical form, so equal intent compares equal: env and labels are sorted by key; signals are
upper case with the ``SIG`` prefix; env and label values are the scalar's text as written in the
YAML (``1.10`` stays ``1.10``, ``yes`` stays ``yes``); from JSON, booleans are ``true``/``false``
and null is the empty string.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import MISSING
from typing import Any

from reconciler.core.model import (
    Dependency,
    DependencyCondition,
    FailureAction,
    HealthCheck,
    Mount,
    MountType,
    NetworkMode,
    PortMapping,
    PullPolicy,
    Resources,
    RestartCondition,
    RestartPolicy,
    TaskSpec,
    UpdateOrder,
    UpdatePolicy,
)
from reconciler.spec.formats import parse_device, parse_port, parse_signal
from reconciler.spec.problems import Problem
from reconciler.spec.units import format_duration, parse_duration, parse_size
from reconciler.spec.yamlsource import FieldPath, SourceMap, format_field

__all__ = ["Converter"]


def _text(value: object, raw: str | None) -> str:
    """A scalar's text: as written in YAML when known, else its JSON spelling."""
    if raw is not None:
        return raw
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not MISSING}


_RESTART = RestartPolicy()
_UPDATE = UpdatePolicy()
_HEALTH = _defaults(HealthCheck)
_SPEC = _defaults(TaskSpec)


class Converter:
    """Cross-field checks and conversion of one schema-valid task."""

    def __init__(self, data: Mapping[str, Any], *, path: str, field: str, source: SourceMap):
        self.data = data
        self.path = path
        self.field = field
        self.source = source
        self.problems: list[Problem] = []

    def problem(self, p: FieldPath, message: str) -> None:
        self.problems.append(
            Problem(self.path, self.source.line(p), format_field(p, self.field), message)
        )

    def scalar_map(self, key: str) -> tuple[tuple[str, str], ...]:
        m = self.data.get(key) or {}
        return tuple(sorted((k, _text(v, self.source.raw_text((key, k)))) for k, v in m.items()))

    def duration(self, p: FieldPath, default: float) -> float:
        node: Any = self.data
        for part in p:
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return parse_duration(node)

    def ports(self) -> tuple[PortMapping, ...]:
        out: list[PortMapping] = []
        seen: dict[tuple[str, int, str], int] = {}
        for i, text in enumerate(self.data.get("ports", ())):
            port = parse_port(text)
            key = (port.host_ip, port.host_port, port.protocol)
            if key in seen:
                self.problem(
                    ("ports", i),
                    f"host port {port.host_port}/{port.protocol} is already published by "
                    f"ports[{seen[key]}]",
                )
            seen.setdefault(key, i)
            out.append(port)
        return tuple(out)

    def mounts(self) -> tuple[Mount, ...]:
        out: list[Mount] = []
        seen: dict[str, int] = {}
        for i, m in enumerate(self.data.get("mounts", ())):
            target = m["target"]
            if target.rstrip("/") in seen:
                self.problem(
                    ("mounts", i, "target"),
                    f"{target!r} is already mounted by mounts[{seen[target.rstrip('/')]}]",
                )
            seen.setdefault(target.rstrip("/"), i)
            out.append(
                Mount(
                    type=MountType(m["type"]),
                    target=target,
                    source=m.get("source", ""),
                    read_only=m.get("readOnly", False),
                )
            )
        return tuple(out)

    def restart(self) -> RestartPolicy:
        r = self.data.get("restart") or {}
        policy = RestartPolicy(
            condition=RestartCondition(r.get("condition", "any")),
            delay=self.duration(("restart", "delay"), _RESTART.delay),
            max_delay=self.duration(("restart", "maxDelay"), _RESTART.max_delay),
            max_attempts=int(r.get("maxAttempts", 0)),
            window=self.duration(("restart", "window"), _RESTART.window),
        )
        if policy.max_delay < policy.delay:
            where = ("restart", "maxDelay") if "maxDelay" in r else ("restart", "delay")
            self.problem(
                where,
                f"maxDelay ({format_duration(policy.max_delay)}) must not be shorter than "
                f"delay ({format_duration(policy.delay)})",
            )
        return policy

    def healthcheck(self) -> HealthCheck | None:
        h = self.data.get("healthcheck")
        if h is None:
            return None
        test = tuple(h["test"])
        kind = test[0]
        if kind == "CMD-SHELL" and len(test) != 2:
            self.problem(
                ("healthcheck", "test"),
                'CMD-SHELL takes exactly one shell command: ["CMD-SHELL", "wget -q -O- localhost"]',
            )
        elif kind == "CMD" and len(test) < 2:
            self.problem(("healthcheck", "test"), 'CMD needs a command: ["CMD", "/bin/true"]')
        elif kind == "NONE" and len(test) != 1:
            self.problem(("healthcheck", "test"), 'NONE takes no arguments: ["NONE"]')
        elif kind not in ("CMD", "CMD-SHELL", "NONE"):
            self.problem(
                ("healthcheck", "test", 0),
                f"must be CMD, CMD-SHELL or NONE, not {kind!r}, such as "
                '["CMD-SHELL", "wget -q -O- localhost:8080"]',
            )
        timeout = self.duration(("healthcheck", "timeout"), _HEALTH["timeout"])
        interval = self.duration(("healthcheck", "interval"), _HEALTH["interval"])
        for key, seconds in (("interval", interval), ("timeout", timeout)):
            if seconds <= 0:
                self.problem(("healthcheck", key), "must be greater than 0")
        return HealthCheck(
            test=test,
            interval=interval,
            timeout=timeout,
            retries=int(h.get("retries", _HEALTH["retries"])),
            start_period=self.duration(("healthcheck", "startPeriod"), _HEALTH["start_period"]),
        )

    def update(self) -> UpdatePolicy:
        u = self.data.get("update") or {}
        policy = UpdatePolicy(
            order=UpdateOrder(u.get("order", "stop-first")),
            monitor=self.duration(("update", "monitor"), _UPDATE.monitor),
            failure_action=FailureAction(u.get("failureAction", "rollback")),
        )
        if policy.order == UpdateOrder.START_FIRST:
            why = []
            if self.data.get("ports"):
                why.append("host ports")
            if self.data.get("devices"):
                why.append("devices")
            if self.data.get("network") == "host":
                why.append("network: host")
            if why:
                self.problem(
                    ("update", "order"),
                    f"start-first runs two instances at once, which cannot share "
                    f"{' or '.join(why)}; use stop-first",
                )
        return policy

    def depends_on(self) -> tuple[Dependency, ...]:
        out: list[Dependency] = []
        seen: dict[str, int] = {}
        for i, dep in enumerate(self.data.get("dependsOn", ())):
            name = dep["task"]
            if name == self.data.get("name"):
                self.problem(("dependsOn", i, "task"), "a task cannot depend on itself")
            elif name in seen:
                self.problem(
                    ("dependsOn", i, "task"),
                    f"{name!r} is already listed at dependsOn[{seen[name]}]",
                )
            seen.setdefault(name, i)
            out.append(Dependency(name, DependencyCondition(dep.get("condition", "started"))))
        return tuple(out)

    def spec(self) -> TaskSpec:
        d = self.data
        res = d.get("resources") or {}
        logs = d.get("logs") or {}
        command = d.get("command")
        entrypoint = d.get("entrypoint")
        user = d.get("user")
        signal = d.get("stopSignal")
        return TaskSpec(
            name=d["name"],
            image=d["image"],
            command=tuple(command) if command is not None else None,
            entrypoint=tuple(entrypoint) if entrypoint is not None else None,
            env=self.scalar_map("env"),
            labels=self.scalar_map("labels"),
            resources=Resources(
                cpus=float(res["cpus"]) if "cpus" in res else None,
                memory=parse_size(res["memory"]) if "memory" in res else None,
            ),
            ports=self.ports(),
            mounts=self.mounts(),
            network=NetworkMode(d.get("network", "bridge")),
            user=str(user) if user is not None else None,
            workdir=d.get("workdir"),
            devices=tuple(parse_device(t) for t in d.get("devices", ())),
            cap_add=tuple(d.get("capAdd", ())),
            cap_drop=tuple(d.get("capDrop", ())),
            stop_signal=parse_signal(signal) if signal is not None else None,
            stop_grace_period=self.duration(("stopGracePeriod",), _SPEC["stop_grace_period"]),
            pull=PullPolicy(d.get("pull", "missing")),
            log_max_size=parse_size(logs["maxSize"])
            if "maxSize" in logs
            else _SPEC["log_max_size"],
            restart=self.restart(),
            healthcheck=self.healthcheck(),
            update=self.update(),
            depends_on=self.depends_on(),
        )

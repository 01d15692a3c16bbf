"""A node's policy for fleet tasks, and the one check of a task spec against it. Pure.

A task that reaches a node from the fleet's manager session may ask for the host: a bind mount
of any path, a device, a capability, the host's network, an image from any registry. A node
allows none of that unless its operator said so with ``reconciler run``'s flags
(``--allow-bind``, ``--allow-device``, ``--allow-cap``, ``--allow-host-network``,
``--allow-registry``), which make one ``Policy``. ``check(spec, policy)`` returns one ``Refusal``
per field the policy does not allow, each naming the field path as the task's YAML spells it
(``mounts[0]``, ``devices[1]``, ``capAdd[0]``, ``network``, ``image``) and the flag that
would allow it. Both sides use it: the agent refuses a task before anything is pulled or
created, and the manager's scheduler places a task only on nodes whose policy allows it.

The rules:

* **Paths** (bind sources, device paths) are normalised first (``.``, ``..``, repeated
  slashes), then matched against each allowed prefix by whole components: ``/var/log``
  allows ``/var/log`` and ``/var/log/x``, not ``/var/logs``. A path that is not absolute is
  never allowed. ``resolve`` (the agent passes ``os.path.realpath``) also follows symbolic
  links on the host, so a link under an allowed prefix cannot lead out of it.
* **Capabilities** compare without case and without a ``CAP_`` prefix; ``--allow-cap ALL``
  allows every one (``capAdd: [ALL]`` only then).
* **Registries**: with none given, any image runs. Once one is, an image runs only when its
  name's registry part is one of them. The registry part follows the docker reference rule:
  the first ``/``-separated component, when there is more than one and it contains ``.`` or
  ``:`` or is ``localhost`` (podman's name for local images); a name without one is refused.

The policy's JSON form (the node value's ``policy``, ``/v1/node``): ``allowBind``,
``allowDevice``, ``allowCap``, ``allowRegistry`` (lists of strings) and ``allowHostNetwork``
(a boolean). ``policy_from_dict`` reads it from another host as hostile input.
"""

from __future__ import annotations

import enum
import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from reconciler.core.model import MountType, NetworkMode, TaskSpec

__all__ = [
    "ALL_CAPS",
    "Policy",
    "PolicyFlag",
    "Refusal",
    "check",
    "image_registry",
    "normal_cap",
    "normal_path",
    "policy_from_dict",
    "policy_to_dict",
    "under",
]

ALL_CAPS: Final = "ALL"
"""``--allow-cap ALL``: every capability."""

MAX_ENTRIES: Final = 256
"""The most entries a list of a policy read from another host may hold."""


class PolicyFlag(enum.StrEnum):
    """The ``reconciler run`` flag that allows one kind of request."""

    BIND = "--allow-bind"
    DEVICE = "--allow-device"
    CAP = "--allow-cap"
    HOST_NETWORK = "--allow-host-network"
    REGISTRY = "--allow-registry"


@dataclass(frozen=True, slots=True)
class Policy:
    """What a node allows fleet tasks; the default allows nothing of the host, and any image."""

    binds: tuple[str, ...] = ()  # host path prefixes
    devices: tuple[str, ...] = ()  # host device path prefixes
    caps: tuple[str, ...] = ()  # capability names, normalised; ALL for every one
    host_network: bool = False
    registries: tuple[str, ...] = ()  # empty: any registry

    @classmethod
    def of(
        cls,
        *,
        binds: Iterable[str] = (),
        devices: Iterable[str] = (),
        caps: Iterable[str] = (),
        host_network: bool = False,
        registries: Iterable[str] = (),
    ) -> Policy:
        """A policy from the flags' texts: paths normalised, names as compared. Raises
        ``ValueError`` naming the flag for a path that is not absolute or an empty name."""
        return cls(
            binds=_paths(binds, PolicyFlag.BIND),
            devices=_paths(devices, PolicyFlag.DEVICE),
            caps=_names(caps, PolicyFlag.CAP, normal_cap),
            host_network=host_network,
            registries=_names(registries, PolicyFlag.REGISTRY, str.lower),
        )


@dataclass(frozen=True, slots=True)
class Refusal:
    """One field of a task that a node's policy does not allow, and the flag that would."""

    field: str  # the field path, as the task's YAML spells it: mounts[0], network
    text: str  # what is not allowed, in words
    flag: PolicyFlag

    def __str__(self) -> str:
        return f"{self.field}: {self.text} is not allowed on this node ({self.flag})"


Resolve = Callable[[str], str]


def check(spec: TaskSpec, policy: Policy, *, resolve: Resolve | None = None) -> list[Refusal]:
    """Every field of ``spec`` that ``policy`` does not allow, in field order (empty: allowed).
    ``resolve`` maps a normalised host path to the one it really names (symbolic links
    followed); without it, paths are compared as written."""
    out: list[Refusal] = []
    binds = _resolved(policy.binds, resolve)
    for i, m in enumerate(spec.mounts):
        if m.type is MountType.BIND and not _path_allowed(m.source, binds, resolve):
            out.append(Refusal(f"mounts[{i}]", f"a bind mount of {m.source}", PolicyFlag.BIND))
    devices = _resolved(policy.devices, resolve)
    for i, d in enumerate(spec.devices):
        if not _path_allowed(d.host, devices, resolve):
            out.append(Refusal(f"devices[{i}]", f"device {d.host}", PolicyFlag.DEVICE))
    if ALL_CAPS not in policy.caps:
        for i, cap in enumerate(spec.cap_add):
            if normal_cap(cap) not in policy.caps:
                out.append(Refusal(f"capAdd[{i}]", f"capability {cap}", PolicyFlag.CAP))
    if spec.network is NetworkMode.HOST and not policy.host_network:
        out.append(Refusal("network", "the host's network", PolicyFlag.HOST_NETWORK))
    if policy.registries:
        registry = image_registry(spec.image)
        if registry is None:
            text = f"image {spec.image}, which names no registry,"
            out.append(Refusal("image", text, PolicyFlag.REGISTRY))
        elif registry not in policy.registries:
            text = f"image {spec.image} from registry {registry}"
            out.append(Refusal("image", text, PolicyFlag.REGISTRY))
    return out


# ---------------------------------------------------------------------------------- rules


def normal_path(path: str) -> str | None:
    """``path`` with ``.``, ``..`` and repeated slashes resolved lexically; None when it is
    not absolute (or holds a NUL)."""
    if not path.startswith("/") or "\0" in path:
        return None
    return "/" + posixpath.normpath(path).lstrip("/")


def under(path: str, prefix: str) -> bool:
    """Whether normalised ``path`` is ``prefix`` or below it, by whole components."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def normal_cap(name: str) -> str:
    """A capability name as compared: upper case, without ``CAP_``."""
    upper = name.strip().upper()
    return upper.removeprefix("CAP_")


def image_registry(image: str) -> str | None:
    """The registry part of an image name (lower case), or None when it names none."""
    name = image.split("@", 1)[0]
    first, sep, _ = name.partition("/")
    if not sep:
        return None
    if "." in first or ":" in first or first == "localhost":
        return first.lower()
    return None


def _path_allowed(path: str, prefixes: tuple[str, ...], resolve: Resolve | None) -> bool:
    norm = normal_path(path)
    if norm is None:
        return False
    if resolve is not None:
        norm = normal_path(resolve(norm)) or norm
    return any(under(norm, p) for p in prefixes)


def _resolved(prefixes: tuple[str, ...], resolve: Resolve | None) -> tuple[str, ...]:
    if resolve is None:
        return prefixes
    return tuple(normal_path(resolve(p)) or p for p in prefixes)


def _paths(texts: Iterable[str], flag: PolicyFlag) -> tuple[str, ...]:
    out = []
    for text in texts:
        norm = normal_path(text)
        if norm is None:
            raise ValueError(f"{flag}: expected an absolute path, got {text!r}")
        out.append(norm)
    return tuple(dict.fromkeys(out))


def _names(texts: Iterable[str], flag: PolicyFlag, norm: Callable[[str], str]) -> tuple[str, ...]:
    out = []
    for text in texts:
        name = norm(text.strip())
        if not name or any(c.isspace() or c == "/" for c in name):
            raise ValueError(f"{flag}: expected a name, got {text!r}")
        out.append(name)
    return tuple(dict.fromkeys(out))


# ------------------------------------------------------------------------------ JSON form


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    return {
        "allowBind": list(policy.binds),
        "allowDevice": list(policy.devices),
        "allowCap": list(policy.caps),
        "allowHostNetwork": policy.host_network,
        "allowRegistry": list(policy.registries),
    }


def policy_from_dict(doc: object, where: str = "policy") -> Policy:
    """A policy's JSON form read from another host. Raises ``ValueError`` naming the field."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where}: expected an object")
    host_network = doc.get("allowHostNetwork", False)
    if not isinstance(host_network, bool):
        raise ValueError(f"{where}.allowHostNetwork: expected true or false")
    try:
        return Policy.of(
            binds=_strings(doc, "allowBind", where),
            devices=_strings(doc, "allowDevice", where),
            caps=_strings(doc, "allowCap", where),
            host_network=host_network,
            registries=_strings(doc, "allowRegistry", where),
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _strings(doc: Mapping[str, Any], key: str, where: str) -> list[str]:
    raw = doc.get(key, [])
    if (
        not isinstance(raw, list)
        or len(raw) > MAX_ENTRIES
        or not all(isinstance(s, str) and len(s) <= 4096 for s in raw)
    ):
        raise ValueError(f"{where}.{key}: expected a list of at most {MAX_ENTRIES} strings")
    return raw

"""The node's policy for fleet tasks: the one check, table by table."""

from __future__ import annotations

import pytest

from reconciler.core.model import Device, Mount, MountType, NetworkMode, TaskSpec
from reconciler.core.policy import (
    Policy,
    PolicyFlag,
    check,
    image_registry,
    policy_from_dict,
    policy_to_dict,
)


def bind(source: str) -> TaskSpec:
    return TaskSpec("t", "localhost/app", mounts=(Mount(MountType.BIND, "/x", source),))


def texts(spec: TaskSpec, policy: Policy) -> list[str]:
    return [str(r) for r in check(spec, policy)]


def test_the_default_policy_allows_a_plain_task_and_any_image() -> None:
    spec = TaskSpec(
        "t",
        "nginx",
        mounts=(Mount(MountType.VOLUME, "/data", "data"), Mount(MountType.TMPFS, "/tmp")),
    )
    assert check(spec, Policy()) == []


def test_a_refused_bind_names_the_field_and_the_flag() -> None:
    assert texts(bind("/etc"), Policy()) == [
        "mounts[0]: a bind mount of /etc is not allowed on this node (--allow-bind)"
    ]


@pytest.mark.parametrize(
    ("allowed", "source", "ok"),
    [
        ("/var/log", "/var/log", True),
        ("/var/log", "/var/log/x", True),
        ("/var/log/", "/var/log/x/y", True),
        ("/var/log", "/var/logs", False),
        ("/var/log", "/var", False),
        ("/var/log", "/var/log/../../etc", False),
        ("/var/log", "/var/log/./x/../y", True),
        ("/var/log", "//var//log//z", True),
        ("/var/log", "/var/lo", False),
        ("/", "/etc", True),
        ("/etc", "/", False),
        ("/srv/../etc", "/etc/passwd", True),  # the flag's own path is normalised too
    ],
)
def test_bind_prefixes_match_by_whole_normalised_components(
    allowed: str, source: str, ok: bool
) -> None:
    assert (check(bind(source), Policy.of(binds=[allowed])) == []) is ok


def test_resolve_follows_links_out_of_an_allowed_prefix() -> None:
    links = {"/var/log/evil": "/"}
    policy = Policy.of(binds=["/var/log"])
    spec = bind("/var/log/evil")
    assert check(spec, policy) == []  # as written, it is under the prefix
    refused = check(spec, policy, resolve=lambda p: links.get(p, p))
    assert [r.field for r in refused] == ["mounts[0]"]


def test_devices_caps_network_each_name_their_flag() -> None:
    spec = TaskSpec(
        "t",
        "localhost/app",
        devices=(Device("/dev/dri/card0", "/dev/dri/card0"), Device("/dev/sda", "/dev/sda")),
        cap_add=("NET_ADMIN", "cap_sys_admin"),
        network=NetworkMode.HOST,
    )
    refused = check(spec, Policy.of(devices=["/dev/dri"], caps=["CAP_NET_ADMIN"]))
    assert [(r.field, r.flag) for r in refused] == [
        ("devices[1]", PolicyFlag.DEVICE),
        ("capAdd[1]", PolicyFlag.CAP),
        ("network", PolicyFlag.HOST_NETWORK),
    ]
    assert (
        str(refused[0])
        == "devices[1]: device /dev/sda is not allowed on this node (--allow-device)"
    )
    assert check(spec, Policy.of(devices=["/dev"], caps=["ALL"], host_network=True)) == []


def test_cap_all_in_a_task_needs_allow_cap_all() -> None:
    spec = TaskSpec("t", "localhost/app", cap_add=("ALL",))
    assert [r.field for r in check(spec, Policy.of(caps=["SYS_ADMIN"]))] == ["capAdd[0]"]
    assert check(spec, Policy.of(caps=["all"])) == []


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("nginx", None),
        ("library/nginx:1.25", None),
        ("docker.io/library/nginx", "docker.io"),
        ("Registry.Example:5000/app@sha256:abc", "registry.example:5000"),
        ("localhost/app:1", "localhost"),
        ("localhost:5000/app", "localhost:5000"),
        ("quay.io/podman/hello", "quay.io"),
        ("myorg/app", None),
    ],
)
def test_image_registry_follows_the_reference_rule(image: str, registry: str | None) -> None:
    assert image_registry(image) == registry


@pytest.mark.parametrize(
    ("image", "refused"),
    [
        ("localhost/app", False),
        ("quay.io/podman/hello", False),
        ("docker.io/library/nginx", True),
        ("nginx", True),  # no registry part: refused once registries are given
    ],
)
def test_registries_once_given_are_the_only_ones(image: str, refused: bool) -> None:
    spec = TaskSpec("t", image)
    result = check(spec, Policy.of(registries=["localhost", "QUAY.io"]))
    assert [r.flag for r in result] == ([PolicyFlag.REGISTRY] if refused else [])
    assert check(spec, Policy()) == []


def test_flags_that_are_not_paths_or_names_are_refused() -> None:
    with pytest.raises(ValueError, match="--allow-bind: expected an absolute path"):
        Policy.of(binds=["var/log"])
    with pytest.raises(ValueError, match="--allow-registry: expected a name"):
        Policy.of(registries=[""])


def test_the_json_form_round_trips_and_hostile_input_names_the_field() -> None:
    policy = Policy.of(binds=["/var/log"], caps=["ALL"], host_network=True, registries=["x.io"])
    assert policy_from_dict(policy_to_dict(policy)) == policy
    assert policy_from_dict({}) == Policy()
    with pytest.raises(ValueError, match=r"policy\.allowBind: expected a list"):
        policy_from_dict({"allowBind": "/"})
    with pytest.raises(ValueError, match=r"policy\.allowHostNetwork"):
        policy_from_dict({"allowHostNetwork": "yes"})
    with pytest.raises(ValueError, match="policy: --allow-bind: expected an absolute path"):
        policy_from_dict({"allowBind": ["relative"]})

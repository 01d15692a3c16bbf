"""TaskSpec -> podman create arguments, checked field by field without podman."""

from __future__ import annotations

import signal
from dataclasses import replace

import pytest
from podman.domain.containers_create import CreateMixin

from reconciler.core.codec import spec_hash
from reconciler.core.errors import PermanentError
from reconciler.core.model import (
    Device,
    HealthCheck,
    Mount,
    MountType,
    NetworkMode,
    PortMapping,
    Protocol,
    Resources,
    TaskSpec,
)
from runtime.podman.spec import (
    SpecError,
    container_name,
    create_kwargs,
    runs_healthcheck,
    signal_number,
)

FULL = TaskSpec(
    name="web",
    image="localhost/busybox:latest",
    command=("httpd", "-f", "-p", "8080"),
    entrypoint=("/bin/sh", "-c"),
    env=(("MODE", "edge"), ("N", "1")),
    labels=(("tier", "web"), ("reconciler.node", "spoofed")),
    resources=Resources(cpus=0.5, memory=64 * 1024 * 1024),
    ports=(PortMapping(8080, 80), PortMapping(5353, 53, Protocol.UDP, "127.0.0.1")),
    mounts=(
        Mount(MountType.BIND, "/data", "/srv/web", True),
        Mount(MountType.VOLUME, "/var/lib/web", "webdata"),
        Mount(MountType.TMPFS, "/tmp"),
    ),
    network=NetworkMode.HOST,
    user="1000:1000",
    workdir="/srv",
    devices=(Device("/dev/ttyUSB0", "/dev/ttyUSB0"), Device("/dev/null", "/dev/xnull")),
    cap_add=("NET_ADMIN",),
    cap_drop=("ALL",),
    stop_signal="SIGINT",
    stop_grace_period=7.5,
    log_max_size=5 * 1024 * 1024,
    healthcheck=HealthCheck(
        ("CMD-SHELL", "true"), interval=30, timeout=3, retries=4, start_period=2
    ),
)


def kw(spec: TaskSpec = FULL) -> dict[str, object]:
    return create_kwargs(spec, task_id="abc123", node_id="node-1")


def test_container_is_named_after_task_name_and_instance_id() -> None:
    assert container_name(FULL, "abc123") == "web.abc123"
    assert kw()["name"] == "web.abc123"


def test_labels_carry_task_labels_and_the_reserved_ones_which_win() -> None:
    assert kw()["labels"] == {
        "tier": "web",
        "reconciler.task.name": "web",
        "reconciler.task.id": "abc123",
        "reconciler.node": "node-1",
        "reconciler.task.spec-hash": spec_hash(FULL),
    }


def test_the_spec_hash_ignores_resources_and_follows_every_other_field() -> None:
    assert spec_hash(replace(FULL, resources=Resources(cpus=2.0))) == spec_hash(FULL)
    assert spec_hash(replace(FULL, image="localhost/other:1")) != spec_hash(FULL)
    assert spec_hash(replace(FULL, env=())) != spec_hash(FULL)


def test_command_entrypoint_env_user_workdir() -> None:
    k = kw()
    assert k["image"] == "localhost/busybox:latest"
    assert k["command"] == ["httpd", "-f", "-p", "8080"]
    assert k["entrypoint"] == ["/bin/sh", "-c"]
    assert k["environment"] == {"MODE": "edge", "N": "1"}
    assert k["user"] == "1000:1000"
    assert k["working_dir"] == "/srv"


def test_unset_optional_fields_are_left_to_the_image() -> None:
    k = kw(TaskSpec(name="a", image="img"))
    for key in (
        "command",
        "entrypoint",
        "environment",
        "user",
        "working_dir",
        "healthcheck",
        "cpu_quota",
        "mem_limit",
        "ports",
        "mounts",
        "volumes",
        "devices",
        "stop_signal",
    ):
        assert key not in k
    assert k["network_mode"] == "bridge"


def test_cpus_become_period_and_quota_and_memory_bytes() -> None:
    k = kw()
    assert (k["cpu_period"], k["cpu_quota"]) == (100_000, 50_000)
    assert k["mem_limit"] == 64 * 1024 * 1024
    assert "nano_cpus" not in k  # ignored by podman 4.3
    tiny = kw(TaskSpec(name="a", image="i", resources=Resources(cpus=0.001)))
    assert tiny["cpu_quota"] == 1_000  # the kernel's minimum


def test_ports_map_container_port_and_protocol_to_host_bindings() -> None:
    assert kw()["ports"] == {"80/tcp": 8080, "53/udp": ("127.0.0.1", 5353)}
    two = TaskSpec(name="a", image="i", ports=(PortMapping(1, 80), PortMapping(2, 80)))
    assert kw(two)["ports"] == {"80/tcp": [1, 2]}


def test_bind_and_tmpfs_are_mounts_and_named_volumes_are_volumes() -> None:
    k = kw()
    assert k["mounts"] == [
        {"type": "bind", "source": "/srv/web", "target": "/data", "read_only": True},
        {"type": "tmpfs", "source": "tmpfs", "target": "/tmp"},
    ]
    assert k["volumes"] == {"webdata": {"bind": "/var/lib/web", "mode": "rw"}}


def test_network_devices_capabilities() -> None:
    k = kw()
    assert k["network_mode"] == "host"
    assert k["devices"] == ["/dev/ttyUSB0", "/dev/null:/dev/xnull"]
    assert k["cap_add"] == ["NET_ADMIN"]
    assert k["cap_drop"] == ["ALL"]


def test_stop_signal_is_a_number_and_grace_is_the_stop_timeout() -> None:
    k = kw()
    assert k["stop_signal"] == int(signal.SIGINT)
    assert k["stop_timeout"] == 8
    assert signal_number("TERM") == 15
    assert signal_number("sigkill") == 9
    assert signal_number("10") == 10
    assert signal_number(None) is None


def test_logs_rotate_at_the_max_size() -> None:
    assert kw()["log_config"] == {"Type": "k8s-file", "Config": {"size": 5 * 1024 * 1024}}


def test_healthcheck_in_nanoseconds_with_a_timeout() -> None:
    assert kw()["healthcheck"] == {
        "Test": ["CMD-SHELL", "true"],
        "Interval": 30_000_000_000,
        "Timeout": 3_000_000_000,
        "Retries": 4,
        "StartPeriod": 2_000_000_000,
    }
    assert runs_healthcheck(FULL)
    none = TaskSpec(name="a", image="i", healthcheck=HealthCheck(("NONE",)))
    assert "healthcheck" not in kw(none)
    assert not runs_healthcheck(none)


@pytest.mark.parametrize(
    "spec",
    [
        TaskSpec(name="a", image=""),
        TaskSpec(name="a", image="i", stop_signal="SIGNOPE"),
    ],
)
def test_what_podman_cannot_take_even_from_a_valid_spec_is_a_permanent_error(
    spec: TaskSpec,
) -> None:
    with pytest.raises(SpecError):
        kw(spec)
    assert issubclass(SpecError, PermanentError)


def test_podman_py_renders_every_keyword() -> None:
    # podman-py raises TypeError for a keyword it does not know: this keeps spec.py honest.
    payload = CreateMixin._render_payload(kw())
    assert payload["name"] == "web.abc123"
    assert payload["stop_signal"] == int(signal.SIGINT)
    assert payload["netns"] == {"nsmode": "host"}
    assert payload["log_configuration"]["size"] == 5 * 1024 * 1024
    assert payload["healthconfig"]["Timeout"] == 3_000_000_000

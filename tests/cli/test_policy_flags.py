"""``reconciler run``'s --allow-* flags: parsed into the node's policy, or refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli.exits import UsageError
from reconciler.core.policy import Policy
from reconciler.testing.agents import agent_options


def test_the_flags_make_the_policy_and_their_absence_allows_nothing_of_the_host(
    tmp_path: Path,
) -> None:
    assert agent_options(tmp_path).policy == Policy()
    opts = agent_options(
        tmp_path,
        *("--allow-bind", "/var/log/", "--allow-bind", "/srv//data"),
        *("--allow-device", "/dev/dri", "--allow-cap", "cap_net_admin"),
        *("--allow-host-network", "--allow-registry", "Quay.io"),
    )
    assert opts.policy == Policy(
        binds=("/var/log", "/srv/data"),
        devices=("/dev/dri",),
        caps=("NET_ADMIN",),
        host_network=True,
        registries=("quay.io",),
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--allow-bind", "var/log"), "--allow-bind: expected an absolute path, got 'var/log'"),
        (("--allow-device", ""), "--allow-device: expected an absolute path"),
        (("--allow-registry", "a b"), "--allow-registry: expected a name"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_the_flag(
    tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        agent_options(tmp_path, *flags)

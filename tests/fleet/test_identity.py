"""The fleet's identities, purely: the permission template, the users list's JSON form, the list's
rules and the users file (reconciler.fleet.identity)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import bcrypt
import pytest

from reconciler.fleet.buckets import CONTROL, LEADER, buckets
from reconciler.fleet.identity import (
    BCRYPT_ROUNDS,
    READS,
    USERS_KEY,
    USERS_VARIABLE,
    Identity,
    IdentityError,
    Role,
    added,
    decode_users,
    encode_users,
    hash_password,
    new_password,
    permissions,
    removed,
    render_users_file,
    users_in_file,
)
from reconciler.fleet.options import checked_options
from tests.contract import require_nats_server
from tests.fleet.identities import install

FAKE_HASH = "$2a$04$" + "a" * 53


def ident(name: str, role: Role = Role.NODE) -> Identity:
    return Identity(name, role, FAKE_HASH)


# ------------------------------------------------------------------------- the template


def test_a_node_is_confined_to_its_own_keys_and_inbox() -> None:
    perms = permissions(Role.NODE, "node-a")
    assert perms is not None
    assert perms.publish == (
        "$JS.API.CONSUMER.CREATE.KV_reconciler_assignments.*.$KV.reconciler_assignments.node-a.*",
        "$JS.API.CONSUMER.CREATE.KV_reconciler_control.*.$KV.reconciler_control.node.node-a",
        "$JS.API.CONSUMER.CREATE.KV_reconciler_control.*.$KV.reconciler_control.fleet",
        "$KV.reconciler_nodes.node-a",
        "$KV.reconciler_status.node-a.*",
        "$JS.API.DIRECT.GET.KV_reconciler_status.$KV.reconciler_status.node-a.*",
    )
    assert perms.subscribe == ("_INBOX.node-a.>",)
    other = permissions(Role.NODE, "node-b")
    assert other is not None
    assert not any("node-a" in s for s in other.publish + other.subscribe)


def test_a_manager_may_do_everything() -> None:
    assert permissions(Role.MANAGER, "boss") is None


def test_readers_watch_with_filters_only_and_never_the_users_key() -> None:
    for role in (Role.OPERATOR, Role.VIEWER):
        perms = permissions(role, "alice")
        assert perms is not None
        assert perms.subscribe == ("_INBOX.alice.>",)
        api = [s for s in perms.publish if s.startswith("$JS.API.")]
        # every API subject is a filtered consumer create: no bare create, direct get,
        # STREAM.MSG.GET, stream or consumer management
        assert api and all(s.startswith("$JS.API.CONSUMER.CREATE.KV_") for s in api)
        assert all(len(s.split(".")) > 6 for s in api)
        control = [s for s in api if f"KV_{CONTROL}." in s]
        assert [c.rsplit(f"$KV.{CONTROL}.", 1)[1] for c in control] == ["node.*"]
        assert not any(USERS_KEY in s or s.endswith(f"$KV.{CONTROL}.>") for s in perms.publish)
        assert not any(LEADER in s for s in perms.publish)
    assert set(READS) < {b.name for b in buckets()}


def test_an_operator_writes_services_and_availability_and_a_viewer_nothing() -> None:
    operator, viewer = permissions(Role.OPERATOR, "op"), permissions(Role.VIEWER, "view")
    assert operator is not None and viewer is not None
    writes = [s for s in operator.publish if s.startswith("$KV.")]
    assert writes == ["$KV.reconciler_services.>", "$KV.reconciler_control.node.*"]
    assert not [s for s in viewer.publish if s.startswith("$KV.")]
    assert set(viewer.publish) < set(operator.publish)


def test_a_name_must_be_one_subject_token() -> None:
    for bad in ("a.b", "node-a.>", "*", "", "a b", "x" * 129):
        with pytest.raises(IdentityError, match="cannot name fleet keys"):
            permissions(Role.NODE, bad)
        with pytest.raises(IdentityError):
            Identity.issue(bad, Role.NODE, "pw")


def test_credentials_that_name_a_user_give_the_connection_its_inbox(tmp_path: Path) -> None:
    path = tmp_path / "c.creds"
    path.write_text('user: "node-a"\npassword: "x"\n')
    assert checked_options("nats://h:4222", creds=str(path)).inbox_prefix == "_INBOX.node-a"
    path.write_text('user: "not one token"\npassword: "x"\n')
    assert checked_options("nats://h:4222", creds=str(path)).inbox_prefix == "_INBOX"
    path.write_text("token: t\n")
    assert checked_options("nats://h:4222", creds=str(path)).inbox_prefix == "_INBOX"


# ------------------------------------------------------------------------- passwords


def test_passwords_are_random_and_hashes_are_bcrypt_2a_at_the_set_cost() -> None:
    first, second = new_password(), new_password()
    assert first != second and len(first) >= 43
    hashed = hash_password(first)
    assert hashed.startswith(f"$2a${BCRYPT_ROUNDS}$")
    assert bcrypt.checkpw(first.encode(), hashed.encode())
    assert not bcrypt.checkpw(second.encode(), hashed.encode())


# ------------------------------------------------------------------------- the JSON form


def test_the_list_round_trips_sorted_by_name() -> None:
    people = (ident("zed", Role.VIEWER), ident("boss", Role.MANAGER), ident("node-a"))
    data = encode_users(people)
    assert [i["name"] for i in json.loads(data)] == ["boss", "node-a", "zed"]
    assert decode_users(data) == tuple(sorted(people, key=lambda i: i.name))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b"{}", "expected a JSON list"),
        (b"[1]", r"\[0\]: expected an object"),
        (b'[{"name": "a", "role": "node"}]', r"\[0\]\.hash: expected a bcrypt hash"),
        (b'[{"name": "a.b", "role": "node", "hash": "h"}]', r"\[0\]\.name: name 'a.b'"),
        (b'[{"name": 7, "role": "node", "hash": "h"}]', r"\[0\]\.name: expected a string"),
        (b'[{"name": "a", "role": "root", "hash": "h"}]', r"\[0\]\.role: expected one of"),
        (b'[{"name": "a", "role": ["node"], "hash": "h"}]', r"\[0\]\.role: expected one of"),
        (b'[{"name": "a", "role": "node", "hash": "secret"}]', "expected a bcrypt hash"),
        (b'[{"name": "a", "role": "node", "hash": "h", "pw": 1}]', "unknown field 'pw'"),
        (b" " * (1 << 20) + b"[]", "over the"),
    ],
)
def test_a_hostile_list_is_refused_saying_why(data: bytes, message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        decode_users(data)


def test_a_name_twice_is_refused() -> None:
    data = encode_users([ident("a")])[:-1] + b"," + encode_users([ident("a")])[1:]
    with pytest.raises(IdentityError, match="'a' appears twice"):
        decode_users(data)


# ------------------------------------------------------------------------- the rules


def test_adding_refuses_an_existing_name_unless_rotating_with_the_same_role() -> None:
    people = (ident("boss", Role.MANAGER), ident("node-a"))
    assert [i.name for i in added(people, ident("node-b"), rotate=False)] == [
        "boss",
        "node-a",
        "node-b",
    ]
    with pytest.raises(IdentityError, match=r"already an identity \(node\): pass --rotate"):
        added(people, ident("node-a"), rotate=False)
    fresh = Identity("node-a", Role.NODE, "$2a$04$" + "b" * 53)
    assert added(people, fresh, rotate=True)[1] == fresh
    with pytest.raises(IdentityError, match="--rotate keeps the role"):
        added(people, ident("node-a", Role.OPERATOR), rotate=True)
    with pytest.raises(IdentityError, match="nothing to rotate"):
        added(people, ident("node-c"), rotate=True)


def test_removing_refuses_the_last_manager() -> None:
    people = (ident("boss", Role.MANAGER), ident("node-a"))
    assert removed(people, "node-a") == (people[0],)
    assert removed(people, "nobody") == people
    with pytest.raises(IdentityError, match="boss is the last manager"):
        removed(people, "boss")
    two = (*people, ident("deputy", Role.MANAGER))
    assert [i.name for i in removed(two, "boss")] == ["node-a", "deputy"]


# ------------------------------------------------------------------------- the users file


def test_the_users_file_says_it_is_generated_and_records_every_identity() -> None:
    people = (ident("boss", Role.MANAGER), ident("node-a"), ident("op", Role.OPERATOR))
    text = render_users_file(people, command="reconciler manager node add op")
    assert text.startswith(
        "# The fleet's NATS users, generated by `reconciler manager node add op`."
    )
    assert f"\n{USERS_VARIABLE} = [\n" in text
    assert users_in_file(text) == people
    assert text.count(FAKE_HASH) == 2 * len(people)  # the record and the password
    block = text[text.index('user: "node-a"') : text.index('user: "op"')]
    node = permissions(Role.NODE, "node-a")
    assert node is not None
    assert all(json.dumps(s) in block for s in node.publish + node.subscribe)
    boss = text[text.index('user: "boss"') : text.index('user: "node-a"')]
    assert "permissions" not in boss


def test_an_empty_users_file_is_refused() -> None:
    with pytest.raises(IdentityError, match="locks everyone out"):
        render_users_file([], command="x")


def test_a_damaged_record_in_a_users_file_names_its_line() -> None:
    text = render_users_file([ident("boss", Role.MANAGER)], command="x")
    broken = text.replace('"role":"manager"', '"role":"god"')
    with pytest.raises(IdentityError, match=r"f:8\.role: expected one of"):
        users_in_file(broken, where="f")


def test_nats_server_accepts_the_shipped_account_with_a_generated_users_file(
    tmp_path: Path,
) -> None:
    binary = require_nats_server()
    install(tmp_path)
    (tmp_path / "server.conf").write_text("listen: 127.0.0.1:-1\ninclude fleet.conf\n")
    check = subprocess.run(
        [binary, "-t", "-c", str(tmp_path / "server.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr

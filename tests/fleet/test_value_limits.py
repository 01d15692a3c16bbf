"""The one parser of every value read from NATS (``reconciler.fleet.values.load_json``): the
desired files' limits, each refusal a ``BadValue`` that says what and where; what is within the
limits still parses. And every writer's output passes it (the round trip), texts from outside
made printable first."""

from __future__ import annotations

import json

import pytest

from reconciler.core.codec import compact
from reconciler.core.model import Availability, NodeDescription, TaskState
from reconciler.core.session import NamedStatus
from reconciler.fleet.values import (
    MAX_VALUE_BYTES,
    BadValue,
    BadValues,
    load_json,
    node_value,
    parse_status,
    status_value,
)
from reconciler.manager.health import parse_heartbeat
from reconciler.manager.services import parse_service_file
from reconciler.spec.limits import MAX_BYTES, MAX_DEPTH, MAX_INT_DIGITS
from reconciler.spec.problems import DesiredStateError
from reconciler.testing.hostile.values import KINDS, hostile_values


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"ready": true, "memoryBytes": Infinity}', "Infinity is not a number JSON allows"),
        (b'{"a": NaN}', "NaN is not a number"),
        (b"[-Infinity]", "-Infinity is not a number"),
        (b'{"cpus": 1e400}', "1e400 is out of range"),
        (b'{"cpus": ' + b"9" * 5000 + b"}", f"at most {MAX_INT_DIGITS} digits"),
        (b"-" + b"1" * 19, f"at most {MAX_INT_DIGITS} digits"),
        (b"[" * 65 + b"]" * 65, f"deeper than {MAX_DEPTH} levels"),
        (b'{"a":' * 100_000, f"deeper than {MAX_DEPTH} levels"),
        (b'{"hostname": "h\xff"}', "not UTF-8: byte 0xff at offset 15"),
        (json.dumps({"a": 1}).encode("utf-16"), "not UTF-8"),
        (b'{"message": "\\u001b[31mred"}', "value.message: holds the control character U\\+001B"),
        (b'{"l": {"k\\u0000": "v"}}', "value.l: a key holds the control character U\\+0000"),
        (b'{"a": ["ok", "\\u0085"]}', r"value.a\[1\]: holds the control character U\+0085"),
        (b'{"a": "\\ud800"}', "U\\+D800, a lone surrogate"),
        (b'{"a": 1', "not valid JSON"),
        (b" " * (MAX_VALUE_BYTES + 1), "over the 1048576-byte limit"),
    ],
)
def test_a_value_past_a_limit_is_a_bad_value_saying_which(data: bytes, problem: str) -> None:
    with pytest.raises(BadValue, match=problem):
        load_json(data)


def test_values_within_the_limits_parse() -> None:
    assert MAX_VALUE_BYTES == MAX_BYTES == 1 << 20  # one limit, the desired files'
    assert load_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    assert load_json(b"-" + b"9" * MAX_INT_DIGITS) == -(10**MAX_INT_DIGITS - 1)
    assert (
        load_json(b'"tab\\tcr\\rlf\\n \\u00e9 \\ud83d\\ude00"') == "tab\tcr\rlf\n \u00e9 \U0001f600"
    )
    assert load_json(b"[1.5e300, -0.0]") == [1.5e300, -0.0]
    big = b'"' + b"x" * (MAX_VALUE_BYTES - 2) + b'"'
    assert len(load_json(big)) == MAX_VALUE_BYTES - 2


def test_no_hostile_value_raises_anything_but_bad_value() -> None:
    seen = 0
    for value in hostile_values(7, 3000, 64 << 10):
        try:
            doc = load_json(value)
        except BadValue:
            continue
        seen += 1
        assert not isinstance(doc, dict) or {"ready", "availability"} <= doc.keys()
    assert 0 < seen < 3000  # some kinds are well-formed JSON, bad only in their fields
    assert "oversized" in KINDS


def test_bad_values_are_reported_once_per_key_and_revision() -> None:
    seen = BadValues(limit=3)
    assert seen.first("b", "k", 1)
    assert not seen.first("b", "k", 1)  # read again: a watch restarted
    assert seen.first("b", "k", 2)  # a new bad revision
    seen.good("b", "k")
    assert seen.first("b", "k", 2)  # bad again after a good value
    assert seen.first("other", "k", 2)  # buckets apart
    assert seen.first("b", "x", 1) and seen.first("b", "y", 1)  # past the limit: forgotten
    assert seen.first("b", "k", 2)


# ------------------------------------------------------------------------- round trip

HOSTILE_TEXT = "\x1b[31mfailed\x1b[0m\x00 \x07bell \ud800 tab\tnewline\n\x9b"


def test_what_an_agent_writes_passes_the_parser_even_from_hostile_text() -> None:
    node = NodeDescription(HOSTILE_TEXT, "linux", "arm64", 4, 8 << 30, "podman", "4\x1b", "0.1")
    heartbeat = node_value(
        node_id="a",
        node=node,
        ready=True,
        availability=Availability.ACTIVE,
        labels={"k\x01": HOSTILE_TEXT},
        version="0.1",
        now=0.0,
    )
    beat = parse_heartbeat(heartbeat)
    assert beat.hostname == "failed\ufffd \ufffdbell \ufffd tab\tnewline\n\ufffd"
    assert beat.labels == {"k\ufffd": "failed\ufffd \ufffdbell \ufffd tab\tnewline\n\ufffd"}
    status = NamedStatus(
        name="web",
        id="t1",
        state=TaskState.FAILED,
        message="health check failed: " + HOSTILE_TEXT,
        err=HOSTILE_TEXT * 500,
        container_id="c",
        exit_code=1,
        updated_at=0.0,
        restarts=0,
    )
    written = status_value(status)
    doc = load_json(written)
    assert (
        doc["message"] == "health check failed: failed\ufffd \ufffdbell \ufffd tab\tnewline\n\ufffd"
    )
    assert "\x1b" not in doc["error"] and len(doc["error"]) <= 1000
    assert parse_status(written).state is TaskState.FAILED


def test_what_a_manager_writes_passes_the_parser() -> None:
    text = json.dumps(
        {
            "apiVersion": "reconciler/v1",
            "kind": "ServiceSet",
            "services": [
                {
                    "name": "web",
                    "image": "localhost/busybox:latest",
                    "env": {"GREETING": "h\u00e9llo\ttab"},
                    "command": ["sh", "-c", "echo 'line\nline'"],
                    "replicas": 2,
                }
            ],
        }
    )
    (service,) = parse_service_file(text.encode(), "s.yaml")
    assert load_json(service.value)["name"] == "web"
    assert load_json(service.assignment)["env"] == {"GREETING": "h\u00e9llo\ttab"}
    for written in (compact({"availability": "drain"}), compact({"id": "manager-1"})):
        assert load_json(written)


def test_a_desired_file_cannot_spell_a_control_character_with_an_escape() -> None:
    text = (
        '{"apiVersion": "reconciler/v1", "kind": "ServiceSet", "services": '
        '[{"name": "web", "image": "x", "env": {"A": "\\u001b[31m"}}]}'
    )
    with pytest.raises(DesiredStateError, match="control character U\\+001B"):
        parse_service_file(text.encode(), "s.yaml")

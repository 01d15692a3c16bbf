"""Hostile fleet values: a seeded generator of what a stolen credential could write to a bucket.

``hostile_values(seed, count, limit)`` yields ``count`` values, each of them bad for *every*
bucket a manager or an agent reads (so writing one anywhere must never change what either
does): ``NaN`` and ``Infinity`` where numbers go, integers of 19 to thousands of digits,
nesting past 64 levels, bytes that are not UTF-8 (and UTF-16), control characters and
escape sequences in texts and keys, lone surrogates, wrong types, text that is not JSON, and
now and then a value over ``limit`` bytes (which the server itself refuses). Each kind is
built around a plausible value (a heartbeat, a status, a task), so that a reader that skips
a check meets the hostile part where it looks.

``KINDS`` names them; the fuzz tests and benchmarks share the generator.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any, Final

__all__ = ["KINDS", "hostile_values"]

_PLAUSIBLE: Final[tuple[dict[str, Any], ...]] = (
    {"ready": True, "hostname": "h", "os": "linux", "arch": "amd64", "cpus": 4,
     "memoryBytes": 1 << 30, "runtime": "podman", "runtimeVersion": "4", "labels": {}},
    {"id": "t1", "state": "running", "message": "ok", "updatedAt": "2026-01-01T00:00:00Z",
     "restarts": 0},
    {"name": "web", "image": "localhost/busybox:latest", "resources": {"cpus": 1}},
    {"availability": "active", "heartbeatPeriod": "5s", "managers": []},
)  # fmt: skip
_NOT_FOR_ANY: Final = {
    "ready": "yes",
    "availability": 7,
    "heartbeatPeriod": True,
    "state": 1,
    "id": [],
    "name": 5,
}
"""Fields every reader refuses: a value holding them is bad in every bucket."""


def _plausible(rng: random.Random) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(rng.choice(_PLAUSIBLE)))  # a deep copy
    return doc


def _with(rng: random.Random, raw: str) -> bytes:
    """A plausible value with ``raw`` (JSON text) as one of its fields' values."""
    doc = _plausible(rng)
    field = rng.choice(sorted(doc))
    text = json.dumps({**doc, field: "@@"}).replace('"@@"', raw, 1)
    return text.encode()


def _number(rng: random.Random) -> bytes:
    return _with(rng, rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-2e400"]))


def _huge_int(rng: random.Random) -> bytes:
    digits = rng.choice([19, 20, 40, 400, 4300, 5000])
    return _with(rng, rng.choice("123456789") + "7" * (digits - 1))


def _deep(rng: random.Random) -> bytes:
    depth = rng.choice([64, 65, 100, 1000, 3000])
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
    return _with(rng, opener * depth + "1" + closer * depth)


def _not_utf8(rng: random.Random) -> bytes:
    value = bytearray(_with(rng, '"xxxxxxxx"'))
    at = value.index(b"xxxxxxxx") + rng.randrange(8)
    value[at] = rng.choice([0x80, 0xC0, 0xFF, 0xFE, 0xED])
    if rng.random() < 0.2:
        return json.dumps(_plausible(rng)).encode("utf-16")
    return bytes(value)


def _control(rng: random.Random) -> bytes:
    char = rng.choice([0, 1, 7, 8, 0x0B, 0x0C, 0x1B, 0x1F, 0x7F, 0x85, 0x9B])
    escaped = f"\\u{char:04x}"
    if rng.random() < 0.5:  # in a key
        doc = _plausible(rng)
        return json.dumps({**doc, "@@": 1}).replace("@@", f"k{escaped}", 1).encode()
    colour = "\\u001b[31m" if char == 0x1B else escaped
    return _with(rng, f'"health {colour}failed"')


def _surrogate(rng: random.Random) -> bytes:
    return _with(rng, rng.choice(['"\\ud800"', '"a\\udfff"', '"\\udbff x"']))


def _wrong_type(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return rng.choice([b"[]", b'"text"', b"42", b"null", b"true", b"[{}]", b"-0.5"])
    doc = {**_plausible(rng), **_NOT_FOR_ANY}
    return json.dumps(doc).encode()


def _not_json(rng: random.Random) -> bytes:
    whole = json.dumps(_plausible(rng)).encode()
    return rng.choice(
        [
            whole[: rng.randrange(1, len(whole) - 1)],
            whole + b"}",
            b"\xef\xbb\xbf" + whole,
            b"\x00" + bytes(rng.randrange(256) for _ in range(rng.randrange(64))),
            b"",
            b"{'single': 'quotes'}",
        ]
    )


_KINDS: Final[dict[str, Callable[[random.Random], bytes]]] = {
    "number": _number,
    "huge_int": _huge_int,
    "deep": _deep,
    "not_utf8": _not_utf8,
    "control": _control,
    "surrogate": _surrogate,
    "wrong_type": _wrong_type,
    "not_json": _not_json,
}
KINDS: Final = (*_KINDS, "oversized")


def hostile_values(seed: int, count: int, limit: int) -> Iterator[bytes]:
    """``count`` hostile values (see the module docstring), the same for the same ``seed``;
    about one in 200 is over ``limit`` bytes, the others fit in it."""
    rng = random.Random(seed)
    makers = list(_KINDS.values())
    for _ in range(count):
        if rng.random() < 0.005:
            yield b"[" + b"1," * (limit // 2) + b"1]"
            continue
        value = rng.choice(makers)(rng)
        if len(value) > limit:  # a deep or long one that does not fit this bucket
            value = value[: limit - 1]
        yield value

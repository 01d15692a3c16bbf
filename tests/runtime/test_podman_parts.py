"""The podman runtime's pure parts: error translation, timestamps, cgroup reading."""

from __future__ import annotations

from pathlib import Path

import podman.errors
import pytest
import requests

from reconciler.core.clock import SystemClock
from reconciler.core.errors import PermanentError, TemporaryError
from reconciler.core.executor import NullObserver
from runtime.podman import PodmanExecutor, cgroups
from runtime.podman.container import parse_timestamp_ns
from runtime.podman.errors import (
    ImageMissing,
    NameConflict,
    NotFound,
    RuntimeUnavailable,
    translate,
)
from runtime.podman.health import health_detail


class _Resp:
    def __init__(self, status: int) -> None:
        self.status_code = status


def api_error(status: int | None, text: str) -> podman.errors.APIError:
    return podman.errors.APIError(
        text, response=_Resp(status) if status else None, explanation=text
    )  # type: ignore[arg-type]


def test_connection_refused_is_temporary_runtime_unavailable() -> None:
    err = api_error(None, "http://d/v5/libpod/containers/create")
    err.__cause__ = requests.exceptions.ConnectionError("connection refused")
    out = translate(err, what="creating")
    assert isinstance(out, RuntimeUnavailable) and isinstance(out, TemporaryError)
    assert isinstance(translate(TimeoutError("timed out"), what="x"), TemporaryError)
    assert isinstance(translate(FileNotFoundError(2, "no socket"), what="x"), RuntimeUnavailable)


@pytest.mark.parametrize(
    ("status", "text", "kind"),
    [
        (404, "no container with name or ID", NotFound),
        (500, "container 0f76 does not exist in database: no such container", NotFound),
        (500, 'the container name "a.1" is already in use by 6e8b', NameConflict),
        (500, "localhost/nope:latest: image not known", ImageMissing),
        (500, "database is locked", TemporaryError),
        (503, "service unavailable", TemporaryError),
        (500, "statfs /nonexist: no such file or directory", PermanentError),
        (400, "invalid signal", PermanentError),
    ],
)
def test_podman_answers_translate_by_meaning(status: int, text: str, kind: type) -> None:
    out = translate(api_error(status, text), what="op")
    assert isinstance(out, kind)
    assert text in str(out)


def test_transient_server_errors_are_not_permanent() -> None:
    out = translate(api_error(500, "database is locked"), what="op")
    assert not isinstance(out, PermanentError)


def test_timestamps_parse_to_nanoseconds() -> None:
    assert parse_timestamp_ns("2026-11-23T19:29:17.170605026Z") == 1795462157_170605026
    assert parse_timestamp_ns("2026-11-23T20:29:17.5+01:00") == 1795462157_500000000
    assert parse_timestamp_ns("0001-01-01T00:00:00Z") == 0
    assert parse_timestamp_ns("") == 0
    assert parse_timestamp_ns("garbage") == 0


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_cgroup_v1_limits(tmp_path: Path) -> None:
    cg = "/libpod_parent/libpod-abc"
    _write(tmp_path / "memory/libpod_parent/libpod-abc/memory.limit_in_bytes", "134217728")
    _write(tmp_path / "cpu/libpod_parent/libpod-abc/cpu.cfs_quota_us", "25000")
    _write(tmp_path / "cpu/libpod_parent/libpod-abc/cpu.cfs_period_us", "100000")
    assert cgroups.read_limits(cg, tmp_path) == cgroups.Limits(134217728, 25000, 100000)
    _write(
        tmp_path / "memory/libpod_parent/libpod-abc/memory.limit_in_bytes", "9223372036854771712"
    )
    _write(tmp_path / "cpu/libpod_parent/libpod-abc/cpu.cfs_quota_us", "-1")
    assert cgroups.read_limits(cg, tmp_path) == cgroups.Limits(None, None, 100000)


def test_cgroup_v2_limits(tmp_path: Path) -> None:
    _write(tmp_path / "machine.slice/libpod-abc.scope/memory.max", "67108864")
    _write(tmp_path / "machine.slice/libpod-abc.scope/cpu.max", "50000 100000")
    limits = cgroups.read_limits("/machine.slice/libpod-abc.scope", tmp_path)
    assert limits == cgroups.Limits(67108864, 50000, 100000)


def test_unreadable_cgroup_is_unverifiable(tmp_path: Path) -> None:
    assert cgroups.read_limits("/nowhere", tmp_path) is None
    assert cgroups.read_limits("", tmp_path) is None


def test_memory_matches_up_to_page_rounding() -> None:
    assert cgroups.memory_matches(100_000_000 - 256, 100_000_000)
    assert not cgroups.memory_matches(64 << 20, 128 << 20)
    assert cgroups.memory_matches(None, None)
    assert not cgroups.memory_matches(None, 1)


async def test_the_first_describe_takes_the_info_read_at_start_up_and_later_ones_ask_podman(
    tmp_path: Path,
) -> None:
    async def early() -> dict[str, object]:
        return {"host": {"hostname": "edge-7", "cpus": 3, "memTotal": 1024}, "version": {}}

    ex = PodmanExecutor(
        url=f"unix://{tmp_path}/no-podman.sock",
        node_id="n1",
        clock=SystemClock(),
        observer=NullObserver(),
        agent_version="t",
        node_info=early(),
        image_gc_threshold=15.0,
    )
    try:
        node = await ex.describe()
        assert (node.hostname, node.cpus, node.memory_bytes) == ("edge-7", 3, 1024)
        with pytest.raises(TemporaryError):  # nobody answers on that socket
            await ex.describe()
    finally:
        await ex.close()


async def test_describe_asks_podman_when_the_early_info_got_no_answer(tmp_path: Path) -> None:
    async def unanswered() -> None:
        return None

    ex = PodmanExecutor(
        url=f"unix://{tmp_path}/no-podman.sock",
        node_id="n1",
        clock=SystemClock(),
        observer=NullObserver(),
        agent_version="t",
        node_info=unanswered(),
        image_gc_threshold=15.0,
    )
    try:
        with pytest.raises(TemporaryError):
            await ex.describe()
    finally:
        await ex.close()


def test_a_health_checks_output_reaches_the_message_without_escape_sequences() -> None:
    verdict = {
        "Status": "unhealthy",
        "FailingStreak": 3,
        "Log": [{"Output": "\x1b[31mFAIL\x1b[0m: db down\x07\n"}],
    }
    shown = "3 consecutive checks failed (last output: FAIL: db down\ufffd)"
    assert health_detail(verdict) == shown

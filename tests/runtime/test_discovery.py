"""Podman socket discovery for ``reconciler run``: the order PRODUCT.md gives, the fallback
service it starts (with a stand-in podman), and the start-up ``podman info`` read."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime.podman import discovery
from runtime.podman.discovery import (
    UnsafeSocketDir,
    answers,
    candidates,
    find_podman,
    first_answering,
    prepare_socket_dir,
    rediscovery,
    start_service,
    state_dir_socket,
)
from runtime.podman.earlyinfo import read_info
from tests.contract import give_to_another_user

HANG_GUARD = 30.0


def test_candidates_follow_the_contract_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    (tmp_path / "podman").mkdir(mode=0o700)  # left by an earlier run
    monkeypatch.setenv("CONTAINER_HOST", "unix:///custom/podman.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    assert candidates(tmp_path) == [
        "unix:///custom/podman.sock",
        "unix:///run/podman/podman.sock",
        "unix:///run/user/1234/podman/podman.sock",
        f"unix://{tmp_path}/podman/podman.sock",
    ]
    monkeypatch.delenv("CONTAINER_HOST")
    assert candidates(tmp_path)[0] == "unix:///run/podman/podman.sock"


def test_a_state_dir_too_deep_for_a_socket_path_gets_a_short_stand_in(
    monkeypatch: pytest.MonkeyPatch,
):
    deep = Path("/var/lib/" + "x" * 120)
    digest = hashlib.sha256(str(deep).encode()).hexdigest()[:16]
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    assert state_dir_socket(deep) == f"unix:///run/user/1234/reconciler-{digest}/podman.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    url = state_dir_socket(deep)
    assert url == f"unix:///tmp/reconciler-{os.geteuid()}-{digest}/podman.sock"
    assert len(url) - len("unix://") <= 107


def test_the_stand_in_is_the_same_name_in_every_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    deep = tmp_path / ("x" * 120)
    code = (
        "import sys; from pathlib import Path; "
        "from runtime.podman.discovery import state_dir_socket; "
        "print(state_dir_socket(Path(sys.argv[1])))"
    )
    urls = {
        subprocess.run(
            [sys.executable, "-c", code, str(deep)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")  # str hashes differ between these two
    }
    assert urls == {state_dir_socket(deep)}


def test_explicit_url_is_used_as_given(tmp_path: Path):
    assert find_podman("unix:///nowhere.sock", tmp_path) == ("unix:///nowhere.sock", None)


def test_answers_only_a_podman_ping(tmp_path: Path):
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve_once() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

    t = threading.Thread(target=serve_once)
    t.start()
    try:
        assert answers(f"unix://{path}")
    finally:
        t.join()
        server.close()
    assert not answers(f"unix://{tmp_path / 'missing.sock'}")
    assert not answers("tcp://127.0.0.1:1")


def test_an_explicit_url_is_never_rediscovered(tmp_path: Path):
    assert rediscovery("unix:///given.sock", tmp_path) is None


def test_rediscovery_finds_container_hosts_socket_once_it_appears(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    path = tmp_path / "later.sock"
    monkeypatch.setenv("CONTAINER_HOST", f"unix://{path}")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "no-runtime-dir"))
    find = rediscovery(None, tmp_path / "state")
    assert find is not None
    assert find() != f"unix://{path}"  # not there yet

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

    t = threading.Thread(target=serve)
    t.start()
    try:
        assert find() == f"unix://{path}"  # first in the order, so it wins
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        t.join()


def test_first_answering_is_none_when_nothing_answers(tmp_path: Path):
    assert first_answering([]) is None
    assert first_answering([f"unix://{tmp_path}/a.sock", "tcp://127.0.0.1:1"]) is None


def _serve_once(path: Path, response: bytes) -> tuple[threading.Thread, list[bytes]]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            seen.append(conn.recv(4096))
            conn.sendall(response)
        server.close()

    t = threading.Thread(target=serve)
    t.start()
    return t, seen


def test_read_info_returns_podmans_info_from_the_libpod_api(tmp_path: Path):
    body = b'{"host": {"hostname": "edge-1", "cpus": 4}, "version": {"Version": "4.3.1"}}'
    t, seen = _serve_once(
        tmp_path / "s.sock",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body,
    )
    info = read_info(f"unix://{tmp_path}/s.sock")
    t.join()
    assert info == {"host": {"hostname": "edge-1", "cpus": 4}, "version": {"Version": "4.3.1"}}
    assert seen[0].startswith(b"GET /v4.0.0/libpod/info HTTP/1.1")


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnot j",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
        b"garbage, not http at all",
        b"",
    ],
)
def test_read_info_is_none_when_podman_does_not_answer_it(tmp_path: Path, response: bytes):
    t, _ = _serve_once(tmp_path / "s.sock", response)
    assert read_info(f"unix://{tmp_path}/s.sock", timeout=5) is None
    t.join()


def test_read_info_is_none_without_a_socket(tmp_path: Path):
    assert read_info(f"unix://{tmp_path}/none.sock") is None
    assert read_info("tcp://127.0.0.1:1") is None


FAKE_PODMAN = """#!{python}
# A stand-in for podman: records how it was started, then answers pings on the socket it was
# given until it is terminated, or says why not and exits.
import http.server, json, os, socketserver, sys
url = sys.argv[-1]
path = url[len("unix://"):]
if os.environ.get("FAIL"):
    print(os.environ["FAIL"], file=sys.stderr)
    sys.exit(1)
record = {{"argv": sys.argv[1:], "cwd": os.getcwd(), "mark": os.environ.get("MARK")}}
with open(os.path.join(os.path.dirname(path), "record.json"), "w") as f:
    json.dump(record, f)

class Ping(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

socketserver.UnixStreamServer(path, Ping).serve_forever()
"""


@pytest.fixture
def fake_podman(tmp_path: Path) -> str:
    path = tmp_path / "podman"
    path.write_text(FAKE_PODMAN.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="rcs-", dir="/tmp"))  # a socket path under 108 bytes
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_a_started_service_gets_the_callers_arguments_environment_and_directory(
    fake_podman: str, short_dir: Path, tmp_path: Path
) -> None:
    url = f"unix://{short_dir}/svc/s.sock"
    work = tmp_path / "work"
    work.mkdir()
    own = start_service(
        url,
        wait=HANG_GUARD,
        podman=fake_podman,
        podman_args=["--root", "/r"],
        env={**os.environ, "MARK": "mine"},
        cwd=work,
    )
    try:
        assert own.running and answers(url)
        record = json.loads((short_dir / "svc" / "record.json").read_text())
        assert record == {
            "argv": ["--root", "/r", "system", "service", "--time=0", url],
            "cwd": str(work),
            "mark": "mine",
        }
        assert own.log_path == short_dir / "svc" / "service.log"
    finally:
        own.stop()
    assert not own.running
    assert not answers(url)


def test_a_service_that_exits_at_once_fails_with_what_it_said(
    fake_podman: str, short_dir: Path
) -> None:
    with pytest.raises(RuntimeError, match="did not come up: no storage for you"):
        start_service(
            f"unix://{short_dir}/s.sock",
            wait=HANG_GUARD,
            podman=fake_podman,
            env={**os.environ, "FAIL": "no storage for you"},
        )


def test_a_service_needs_podman_installed(short_dir: Path) -> None:
    with pytest.raises(RuntimeError, match="not installed"):
        start_service(f"unix://{short_dir}/s.sock", podman="no-such-podman-binary")


def test_the_start_up_info_read_loads_no_podman_py() -> None:
    # What lets reconciler run ask for podman info at once, in a thread, while the rest of the
    # agent (podman-py included) is still being imported (see runtime.podman.earlyinfo).
    code = (
        "import sys; import runtime.podman.earlyinfo; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('podman', 'requests') "
        "or m in ('runtime.podman.client', 'runtime.podman.executor')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _serve_pings(path: Path) -> Callable[[], None]:
    """A tiny podman stand-in answering every ping on ``path``; returns its stop."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

    t = threading.Thread(target=serve)
    t.start()

    def stop() -> None:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        t.join()

    return stop


FIND_IN_A_NEW_PROCESS = """
import sys
from pathlib import Path
from runtime.podman import discovery
discovery.ROOTFUL_SOCKET = sys.argv[2]
print(discovery.find_podman(None, Path(sys.argv[1])))
"""


def test_a_later_run_finds_the_socket_an_earlier_one_left(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, short_dir: Path
) -> None:
    monkeypatch.delenv("CONTAINER_HOST", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))  # no rootless podman socket in it
    state = tmp_path / ("deep" * 30)  # too deep: the own socket is under $XDG_RUNTIME_DIR
    own = state_dir_socket(state)
    assert own.startswith(f"unix://{short_dir}/reconciler-")
    prepare_socket_dir(own)  # what the earlier run did
    stop = _serve_pings(Path(own.removeprefix("unix://")))
    try:
        out = subprocess.run(
            [sys.executable, "-c", FIND_IN_A_NEW_PROCESS, str(state), str(tmp_path / "no.sock")],
            capture_output=True,
            text=True,
            check=True,
            timeout=HANG_GUARD,
        )
    finally:
        stop()
    assert out.stdout.strip() == repr((own, None))


def _plant(kind: str, directory: Path, tmp_path: Path) -> None:
    if kind == "symlink":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        directory.symlink_to(elsewhere)
    elif kind == "group-writable":
        directory.mkdir()
        directory.chmod(0o770)
    elif kind == "a file":
        directory.write_text("")
    else:
        directory.mkdir(mode=0o700)
        give_to_another_user(directory)


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("symlink", "is a symlink"),
        ("group-writable", "is writable by group or others (mode 0770)"),
        ("a file", "is not a directory"),
        ("another user's", "is owned by uid"),
    ],
)
def test_a_planted_socket_dir_is_refused_never_asked_and_never_served(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str, why: str
) -> None:
    monkeypatch.delenv("CONTAINER_HOST", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "no-runtime-dir"))
    monkeypatch.setattr(discovery, "ROOTFUL_SOCKET", str(tmp_path / "no.sock"))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    planted = state / "podman"
    _plant(kind, planted, tmp_path)
    own = state_dir_socket(state)
    with pytest.raises(UnsafeSocketDir, match=re.escape(f"socket dir {planted}: it {why}")):
        prepare_socket_dir(own)
    assert own not in candidates(state)
    assert find_podman(None, state) == (f"unix://{tmp_path / 'no.sock'}", None)
    if kind == "symlink":
        assert list((tmp_path / "elsewhere").iterdir()) == []


def test_the_own_socket_dir_is_created_private(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    own = state_dir_socket(tmp_path / "state")
    prepare_socket_dir(own)
    prepare_socket_dir(own)  # a second run finds it and accepts it
    made = tmp_path / "state" / "podman"
    assert stat.S_IMODE(os.lstat(made).st_mode) == 0o700
    assert own in candidates(tmp_path / "state")

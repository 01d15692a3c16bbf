"""Podman socket discovery for ``reconciler run``: the order PRODUCT.md gives, and the fallback."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from runtime.podman.discovery import (
    answers,
    candidates,
    find_podman,
    first_answering,
    rediscovery,
    state_dir_socket,
)
from runtime.podman.earlyinfo import read_info


def test_candidates_follow_the_contract_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
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


def test_a_state_dir_too_deep_for_a_socket_path_gets_a_short_stand_in():
    deep = Path("/var/lib/" + "x" * 120)
    url = state_dir_socket(deep)
    assert url.startswith("unix:///tmp/reconciler-")
    assert len(url) - len("unix://") <= 107


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

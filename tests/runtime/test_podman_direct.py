"""The calls made outside the agent's loop (``client.ping``, ``client.logs``, ``logs``), against a
tiny fake podman on a unix socket.

They go through the client's transport and deadlines from the calling thread: a socket that
never answers fails at the deadline instead of hanging, a missing container is a clear "no
container" error, and a followed log is not cut by the deadline while its container is quiet.
Each test's waits have a generous hang guard; no test asserts a duration.
"""

from __future__ import annotations

import http.server
import io
import shutil
import socketserver
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.podman import client
from runtime.podman.errors import NotFound, RuntimeUnavailable
from runtime.podman.logs import container_logs

HANG_GUARD = 30.0


def frame(stream: int, data: bytes) -> bytes:
    """One frame of podman's multiplexed log stream (1 stdout, 2 stderr)."""
    return struct.pack(">BxxxL", stream, len(data)) + data


class FakeLogs:
    """Answers ``_ping``, ``/containers/{name}/exists`` and ``/containers/{name}/logs``.

    ``containers`` maps a name to its log frames. ``hang`` holds every answer until the test
    ends; ``quiet_for`` holds a log's answer that long (seconds) before sending it, as podman
    does with a followed log until its container writes a line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.containers: dict[str, list[bytes]] = {}
        self.hang = False
        self.quiet_for = 0.0
        self.queries: list[str] = []
        self.release = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                fake.queries.append(self.path)
                if fake.hang:
                    fake.release.wait()
                    return
                bare = self.path.split("?")[0]
                name = bare.split("/")[-2]
                if bare.endswith("/_ping"):
                    self._send(200, b"OK")
                elif name not in fake.containers:
                    self._send(
                        404, b'{"cause": "no such container", "message": "no such container"}'
                    )
                elif bare.endswith("/exists"):
                    self._send(204, b"")
                else:
                    fake.release.wait(fake.quiet_for)
                    self._send(200, b"".join(fake.containers[name]))

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                if not isinstance(sys.exc_info()[1], BrokenPipeError):  # a client gave up
                    super().handle_error(request, client_address)

        self._server = Server(str(path), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))
        self._thread.start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(HANG_GUARD)


@pytest.fixture
def fake() -> Iterator[FakeLogs]:
    base = Path(tempfile.mkdtemp(prefix="rcd-", dir="/tmp"))
    server = FakeLogs(base / "p.sock")
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(base, ignore_errors=True)


def test_a_ping_is_answered_by_podman(fake: FakeLogs) -> None:
    assert client.ping(fake.url, deadline=HANG_GUARD)
    assert fake.queries[0].endswith("/_ping")


def test_a_ping_to_a_socket_that_never_answers_is_false_at_its_deadline(fake: FakeLogs) -> None:
    fake.hang = True
    assert client.ping(fake.url, deadline=0.2) is False


def test_a_ping_to_no_socket_is_false(tmp_path: Path) -> None:
    assert client.ping(f"unix://{tmp_path}/none.sock") is False


def test_logs_copy_every_frame_and_ask_for_the_tail(fake: FakeLogs) -> None:
    fake.containers["web.1"] = [frame(1, b"one\n"), frame(2, b"oops\n"), frame(1, b"two\n")]
    out = io.BytesIO()
    container_logs(fake.url, "web.1", follow=False, tail=2, out=out)
    assert out.getvalue() == b"one\noops\ntwo\n"
    logs_query = next(q for q in fake.queries if "/logs" in q)
    assert "tail=2" in logs_query and "follow=False" in logs_query


def test_logs_of_a_missing_container_say_no_container(fake: FakeLogs) -> None:
    with pytest.raises(NotFound, match="no such container"):
        list(client.logs(fake.url, "gone.1", follow=False, tail=None))
    with pytest.raises(LookupError, match=r"^no container gone\.1$"):
        container_logs(fake.url, "gone.1", follow=True, tail=None, out=io.BytesIO())
    assert not any("/logs" in q for q in fake.queries)  # asked whether it exists, and stopped


def test_logs_from_a_podman_that_never_answers_fail_at_the_deadline(fake: FakeLogs) -> None:
    fake.hang = True
    with pytest.raises(RuntimeUnavailable, match=r"did not answer within 0\.2s"):
        list(client.logs(fake.url, "web.1", follow=True, tail=None, deadline=0.2))


def test_a_followed_log_is_not_cut_by_the_deadline_while_its_container_is_quiet(
    fake: FakeLogs,
) -> None:
    fake.containers["web.1"] = [frame(1, b"late\n")]
    fake.quiet_for = 1.0  # podman sends nothing until the container writes a line
    got = list(client.logs(fake.url, "web.1", follow=True, tail=None, deadline=0.1))
    assert got == [b"late\n"]
    with pytest.raises(RuntimeUnavailable):  # the same wait, not followed, is past the deadline
        list(client.logs(fake.url, "web.1", follow=False, tail=None, deadline=0.1))

"""Finding podman's API socket for ``reconciler run``, and starting one when none answers.

The documented order (docs/cli.md, "Finding podman"): ``--podman-url``, else
``$CONTAINER_HOST``, then the rootful socket, then the rootless one, then a socket under the
state dir left by an earlier run. If none answers, the agent starts its own ``podman system
service`` on that state-dir socket, with its own environment passed on (``CONTAINERS_CONF``
included) and the host's default storage, so images and containers are the ones ``podman`` on
the command line sees. The agent stops that service on exit; containers keep running under
conmon.

Discovery is not only for start-up: ``rediscovery`` gives the executor a callable that walks the
same order again while podman is down, so a socket that appears later (a socket-activated
``podman.socket``, ``$CONTAINER_HOST``'s socket created after the agent) is found and used. An
explicit ``--podman-url`` gets none: it is never replaced.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROOTFUL_SOCKET = "/run/podman/podman.sock"
SUN_PATH_MAX = 107


def socket_path(url: str) -> str | None:
    for prefix in ("unix://", "unix:"):
        if url.startswith(prefix):
            return url[len(prefix) :]
    return None


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether a podman API on ``url`` (``unix:///path``) answers ``/_ping``."""
    path = socket_path(url)
    if path is None:
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
        return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
    finally:
        s.close()


def state_dir_socket(state_dir: Path) -> str:
    """The socket under the state dir, or a short stand-in if that path is too long."""
    path = state_dir / "podman" / "podman.sock"
    if len(str(path)) > SUN_PATH_MAX:
        short = Path("/tmp") / f"reconciler-{abs(hash(str(state_dir))) % 10**10}" / "podman.sock"
        return f"unix://{short}"
    return f"unix://{path}"


def candidates(state_dir: Path) -> list[str]:
    urls = []
    if os.environ.get("CONTAINER_HOST"):
        urls.append(os.environ["CONTAINER_HOST"])
    urls.append(f"unix://{ROOTFUL_SOCKET}")
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    urls.append(f"unix://{runtime_dir}/podman/podman.sock")
    urls.append(state_dir_socket(state_dir))
    return urls


class OwnService:
    """A ``podman system service`` the agent started itself, stopped on ``stop()``."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.proc = proc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_service(url: str, *, wait: float = 20.0) -> OwnService:
    """Start ``podman system service --time=0 URL`` and wait until it answers.

    Raises ``RuntimeError`` if podman is not installed or the service does not come up.
    """
    podman = shutil.which("podman")
    if podman is None:
        raise RuntimeError("podman is not installed (no podman binary on PATH)")
    path = socket_path(url)
    assert path is not None
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    log_path = Path(path).parent / "service.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [podman, "system", "service", "--time=0", url],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=dict(os.environ),
            start_new_session=True,
        )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if answers(url, timeout=1.0):
            log.info("started podman service url=%s pid=%d", url, proc.pid)
            return OwnService(url, proc)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    with contextlib.suppress(Exception):
        proc.kill()
        proc.wait(timeout=5)
    tail = log_path.read_text(errors="replace")[-500:] if log_path.exists() else ""
    raise RuntimeError(f"podman system service on {url} did not come up: {tail.strip()}")


def first_answering(urls: Iterable[str], *, timeout: float = 2.0) -> str | None:
    """The first of ``urls`` that answers a ping now, or None."""
    return next((url for url in urls if answers(url, timeout)), None)


REDISCOVERY_PING_TIMEOUT = 1.0
"""Per candidate while podman is down: a hung socket must not hold rediscovery for long."""


def rediscovery(explicit: str | None, state_dir: Path) -> Callable[[], str | None] | None:
    """What the executor runs while podman is down to find a socket that appeared later.

    None for an explicit URL, which is never replaced. Otherwise a blocking callable that
    returns the first candidate (in the same order as at start-up) that answers now, or None.
    """
    if explicit:
        return None

    def find() -> str | None:
        return first_answering(candidates(state_dir), timeout=REDISCOVERY_PING_TIMEOUT)

    return find


def find_podman(explicit: str | None, state_dir: Path) -> tuple[str, OwnService | None]:
    """The URL to use and, if the agent had to start one, its own service.

    With ``explicit`` set, that URL is used as is (the agent retries until it answers).
    Otherwise the first candidate that answers wins; if none does, a service is started on
    the state-dir socket. If that fails too, the state-dir URL is returned without a service,
    and the agent keeps retrying it.
    """
    if explicit:
        return explicit, None
    url = first_answering(candidates(state_dir))
    if url is not None:
        log.info("found podman url=%s", url)
        return url, None
    own = state_dir_socket(state_dir)
    try:
        return own, start_service(own)
    except RuntimeError as err:
        log.error("cannot start podman service err=%r", str(err))
        return own, None


INFO_TIMEOUT = 30.0
"""Seconds ``read_info`` may take (the read deadline of every other podman call)."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("d", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s


def read_info(url: str, timeout: float = INFO_TIMEOUT) -> dict[str, Any] | None:
    """podman's ``info`` from the API on ``url`` (``unix:///path``), or None when it does not
    answer it (never raises). Blocking, and light on purpose: the standard library alone, so
    a thread can ask at once while the agent is still starting (``podman info`` takes podman a
    fifth of a second: it runs the OCI runtime and conmon to learn their versions), before
    podman-py is even imported."""
    path = socket_path(url)
    if path is None:
        return None
    conn = _UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", "/v4.0.0/libpod/info")
        resp = conn.getresponse()
        if resp.status != 200:
            return None
        body = json.loads(resp.read(MAX_INFO_BYTES + 1)[:MAX_INFO_BYTES])
    except (OSError, ValueError, http.client.HTTPException) as err:
        log.debug("podman info failed url=%s err=%r", url, err)
        return None
    finally:
        conn.close()
    return body if isinstance(body, dict) else None


MAX_INFO_BYTES = 1 << 20
"""The most of ``podman info``'s answer read (it is a few KB)."""


def container_logs(url: str, ref: str, *, follow: bool, tail: int | None) -> None:
    """Copy a container's logs to stdout/stderr (``reconciler logs``).

    Raises ``LookupError`` if the container does not exist.
    """
    import sys

    import podman
    import podman.errors

    with podman.PodmanClient(base_url=url) as client:
        try:
            container = client.containers.get(ref)
        except podman.errors.NotFound as err:
            raise LookupError(f"no container {ref}") from err
        kwargs: dict[str, object] = {
            "stream": True,
            "follow": follow,
            "stdout": True,
            "stderr": True,
        }
        if tail is not None:
            kwargs["tail"] = tail
        for chunk in container.logs(**kwargs):
            data = chunk if isinstance(chunk, bytes) else str(chunk).encode()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

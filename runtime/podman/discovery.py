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
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from runtime.podman.client import ping
from runtime.podman.earlyinfo import socket_path

log = logging.getLogger(__name__)

ROOTFUL_SOCKET = "/run/podman/podman.sock"
SUN_PATH_MAX = 107


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether a podman API on ``url`` answers ``/_ping`` within ``timeout`` seconds. Only a
    unix socket (``unix:///path``) is asked: discovery never dials another kind of URL."""
    return socket_path(url) is not None and ping(url, deadline=timeout)


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
    """A ``podman system service`` started by ``start_service``, stopped on ``stop()``."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.url = url
        self.proc = proc
        self.log_path = log_path
        """Where the service writes its output (beside its socket)."""

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds. Containers
        keep running under conmon. Idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_service(
    url: str,
    *,
    wait: float = 20.0,
    podman: str = "podman",
    podman_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> OwnService:
    """Start ``podman [PODMAN_ARGS] system service --time=0 URL`` and wait until it answers.

    The service writes its output to ``service.log`` beside its socket. It gets this process's
    environment unless ``env`` is given, and this process's working directory (where conmon
    leaves its files too) unless ``cwd`` is. ``podman_args`` go before the command: the agent
    passes none (the host's storage), the test harness (``reconciler.testing.podman``) its own
    ``--root``, ``--runroot`` and ``--tmpdir``. Raises ``RuntimeError`` if ``podman`` is not
    installed or the service does not answer within ``wait`` seconds.
    """
    binary = shutil.which(podman)
    if binary is None:
        raise RuntimeError(f"{podman} is not installed (no {podman} binary on PATH)")
    path = socket_path(url)
    if path is None:
        raise ValueError(f"not a unix socket URL: {url}")
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    log_path = Path(path).parent / "service.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [binary, *podman_args, "system", "service", "--time=0", url],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=dict(os.environ if env is None else env),
            cwd=cwd,
            start_new_session=True,
        )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if answers(url, timeout=1.0):
            log.info("started podman service url=%s pid=%d", url, proc.pid)
            return OwnService(url, proc, log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.05)  # polling a process that is starting: it tells no one when it is ready
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

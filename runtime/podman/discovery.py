"""Finding podman's API socket for ``reconciler run``, and starting one when none answers.

The documented order (docs/cli.md, "Finding podman"): ``--podman-url``, else
``$CONTAINER_HOST``, then the rootful socket, then the rootless one, then a socket under the
state dir left by an earlier run. If none answers, the agent starts its own ``podman system
service`` on that state-dir socket, with its own environment passed on (``CONTAINERS_CONF``
included) and the host's default storage, so images and containers are the ones ``podman`` on
the command line sees. The agent stops that service on exit; containers keep running under
conmon.

**The agent's own socket** is ``<state-dir>/podman/podman.sock``. A unix socket path holds at
most 107 bytes, so for a deeper state dir it is
``$XDG_RUNTIME_DIR/reconciler-<digest>/podman.sock``, else
``/tmp/reconciler-<uid>-<digest>/podman.sock``, the digest a SHA-256 of the state dir's
absolute path: the same name in every run, so a later agent finds the socket an earlier one
left. Its directory must be the agent's: it is created 0700 (never with "exist ok"), and one
that exists must be a real directory (not a link), owned by the agent's user and not writable
by group or others. Otherwise a neighbour could have the agent talk to a socket of theirs (and
hand it every task's environment); such a directory is refused (``UnsafeSocketDir``): it is not
asked, no service is started there, and the error says why.

Discovery is not only for start-up: ``rediscovery`` gives the executor a callable that walks the
same order again while podman is down, so a socket that appears later (a socket-activated
``podman.socket``, ``$CONTAINER_HOST``'s socket created after the agent) is found and used. An
explicit ``--podman-url`` gets none: it is never replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
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


SOCKET_DIR_MODE = 0o700
OWN_SOCKET = "podman.sock"


class UnsafeSocketDir(RuntimeError):
    """The own socket's directory is a link, not a directory, someone else's or writable by
    others: neither asked nor used."""


def state_dir_socket(state_dir: Path) -> str:
    """The agent's own socket URL: under the state dir, or a stable short stand-in if that path
    is too long for a unix socket (see the module docstring)."""
    path = state_dir / "podman" / OWN_SOCKET
    if len(str(path)) <= SUN_PATH_MAX:
        return f"unix://{path}"
    digest = hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:16]
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isabs(runtime_dir):
        short = Path(runtime_dir) / f"reconciler-{digest}" / OWN_SOCKET
        if len(str(short)) <= SUN_PATH_MAX:
            return f"unix://{short}"
    return f"unix://{Path('/tmp') / f'reconciler-{os.geteuid()}-{digest}' / OWN_SOCKET}"


def socket_dir_problem(directory: Path) -> str | None:
    """Why ``directory`` may not hold the agent's own socket, or None when it may. Raises
    ``FileNotFoundError`` when it does not exist."""
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not by the agent's user (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def prepare_socket_dir(url: str) -> None:
    """Create the own socket's directory 0700, or check the one that exists. Raises
    ``UnsafeSocketDir``."""
    path = socket_path(url)
    if path is None:
        raise ValueError(f"not a unix socket URL: {url}")
    directory = Path(path).parent
    try:
        os.mkdir(directory, SOCKET_DIR_MODE)
    except FileExistsError:
        pass  # checked below, whatever it is
    except OSError as err:
        raise UnsafeSocketDir(f"cannot create podman socket dir {directory}: {err}") from err
    problem = socket_dir_problem(directory)
    if problem is not None:
        raise UnsafeSocketDir(f"refusing podman socket dir {directory}: it {problem}")


def _own_socket_if_safe(state_dir: Path) -> str | None:
    url = state_dir_socket(state_dir)
    path = socket_path(url)
    try:
        safe = path is not None and socket_dir_problem(Path(path).parent) is None
    except OSError:
        return None  # no directory, no socket: nothing to ask
    return url if safe else None


def candidates(state_dir: Path) -> list[str]:
    """The URLs to ask, in order. The own socket is left out while its directory is not safe
    (``prepare_socket_dir`` says why when the agent would start a service there)."""
    urls = []
    if os.environ.get("CONTAINER_HOST"):
        urls.append(os.environ["CONTAINER_HOST"])
    urls.append(f"unix://{ROOTFUL_SOCKET}")
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    urls.append(f"unix://{runtime_dir}/podman/podman.sock")
    own = _own_socket_if_safe(state_dir)
    if own is not None:
        urls.append(own)
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
    log_flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(log_path, log_flags, 0o600), "ab") as out:
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
    and the agent keeps retrying it. If its directory is refused, the first candidate is
    returned instead (the refused socket is never asked), and the error is logged.
    """
    if explicit:
        return explicit, None
    url = first_answering(candidates(state_dir))
    if url is not None:
        log.info("found podman url=%s", url)
        return url, None
    own = state_dir_socket(state_dir)
    try:
        prepare_socket_dir(own)
    except UnsafeSocketDir as err:
        # never the refused socket: wait on the first candidate, rediscovery finds any other
        log.error("cannot start podman service err=%r", str(err))
        return candidates(state_dir)[0], None
    try:
        return own, start_service(own)
    except RuntimeError as err:
        log.error("cannot start podman service err=%r", str(err))
        return own, None

"""A private ``podman system service``: its own storage, run dir, tmp dir and short socket.

This module owns starting and stopping a podman API service the agent (or a test, or a
benchmark) does not share with anyone. ``reconciler run`` falls back to starting one under the
state dir when no socket answers; the e2e tests and ``bench/`` start one per session so they never
touch the host's containers.

Each service gets ``--root``, ``--runroot`` *and* ``--tmpdir`` under one base directory: without
its own tmpdir podman shares ``/run/libpod`` (events log, locks) with the host's podman. The
socket path must stay under 108 bytes (the ``sun_path`` limit), so callers pass a short base
directory such as one made by ``tempfile.mkdtemp(prefix="rcp-", dir="/tmp")``.
``CONTAINERS_CONF`` is passed on, which is how hosts with cgroups in hybrid mode select runc;
``registries_conf`` becomes the service's ``CONTAINERS_REGISTRIES_CONF`` (a test marks a local
registry insecure there, as an operator would in the host's registries.conf).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SUN_PATH_MAX = 107
TEST_IMAGE = "localhost/busybox:latest"
TEST_IMAGE_TARBALL = Path(
    os.environ.get("RECONCILER_TEST_IMAGE", "/var/tmp/reconciler-test-image/busybox-rootfs.tar")
)
TEST_IMAGE_CHANGES = ("ENV PATH=/bin", 'CMD ["/bin/sh"]')


class ServiceError(RuntimeError):
    """The service could not be started or did not answer."""


def _answers(sock_path: Path) -> bool:
    """One HTTP ping over the unix socket, without podman-py (usable before imports settle)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect(str(sock_path))
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
        data = s.recv(64)
        return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False
    finally:
        s.close()


class PodmanService:
    """One private ``podman system service --time=0`` process."""

    def __init__(
        self,
        base_dir: Path | str,
        *,
        containers_conf: Path | str | None = None,
        podman: str = "podman",
        registries_conf: Path | str | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.podman = podman
        self.containers_conf = Path(containers_conf) if containers_conf else None
        self.registries_conf = Path(registries_conf) if registries_conf else None
        self.socket_path = self.base_dir / "s.sock"
        if len(str(self.socket_path)) > SUN_PATH_MAX:
            raise ServiceError(f"socket path {self.socket_path} is longer than {SUN_PATH_MAX}")
        self.log_path = self.base_dir / "service.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def storage_args(self) -> list[str]:
        b = self.base_dir
        return ["--root", str(b / "root"), "--runroot", str(b / "run"), "--tmpdir", str(b / "tmp")]

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.containers_conf is not None:
            env["CONTAINERS_CONF"] = str(self.containers_conf)
        if self.registries_conf is not None:
            env["CONTAINERS_REGISTRIES_CONF"] = str(self.registries_conf)
        env.pop("CONTAINER_HOST", None)
        return env

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the service and return once it answers on its socket."""
        if self.running:
            return
        for sub in ("root", "run", "tmp"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                [self.podman, *self.storage_args, "system", "service", "--time=0", self.url],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
                # conmon, which podman starts per container, writes an "oom" marker file into
                # its working directory when a container is OOM-killed: keep that in ours.
                cwd=self.base_dir,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceError(
                    f"podman system service exited with {self._proc.returncode}: {self.log_tail()}"
                )
            if self.socket_path.exists() and _answers(self.socket_path):
                return
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"podman system service did not answer within {timeout}s")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the service (SIGTERM, then SIGKILL). Containers keep running under conmon."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def run(self, *args: str, check: bool = True, timeout: float = 120.0) -> str:
        """Run a podman CLI command against this service (``podman --url ... ARGS``)."""
        out = subprocess.run(
            [self.podman, "--url", self.url, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and out.returncode != 0:
            raise ServiceError(f"podman {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def import_test_image(self, tarball: Path = TEST_IMAGE_TARBALL) -> None:
        """Import the busybox rootfs left by scripts/build-test-image, unless already there."""
        if self._image_exists():
            return
        if not tarball.is_file():
            raise ServiceError(f"{tarball} is missing: run scripts/build-test-image first")
        changes: list[str] = []
        for c in TEST_IMAGE_CHANGES:
            changes += ["--change", c]
        self.run("import", "--quiet", *changes, str(tarball), TEST_IMAGE)

    def _image_exists(self) -> bool:
        out = subprocess.run(
            [self.podman, "--url", self.url, "image", "exists", TEST_IMAGE],
            capture_output=True,
            env=self.env,
        )
        return out.returncode == 0

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def destroy(self) -> None:
        """Remove every container, stop the service, unmount and delete the base directory."""
        if self.running:
            with contextlib.suppress(Exception):
                self.run("rm", "--all", "--force", "--time", "0", check=False, timeout=120)
        self.stop()
        _unmount_under(self.base_dir)
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _unmount_under(base: Path) -> None:
    """Lazily unmount whatever podman left mounted under ``base`` (overlay, shm, netns)."""
    prefix = str(base.resolve()) + "/"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    targets = [m.split()[1] for m in mounts if len(m.split()) > 1]
    for target in sorted((t for t in targets if t.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)

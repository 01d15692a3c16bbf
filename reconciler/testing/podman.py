"""A private ``podman system service`` for tests and benchmarks: its own storage, run dir, tmp
dir and short socket.

The e2e tests and ``bench/`` start one per session so they never touch the host's containers.
Starting and stopping the process is the product's own ``discovery.start_service`` (what
``reconciler run`` falls back to when no socket answers); this harness adds what only a private
service needs, and nothing it repeats:

* ``--root``, ``--runroot`` *and* ``--tmpdir`` under one base directory: without its own tmpdir
  podman shares ``/run/libpod`` (events log, locks) with the host's podman;
* the base directory as the service's working directory: conmon, which podman starts per
  container, writes an "oom" marker file into its working directory when a container is
  OOM-killed;
* ``CONTAINERS_CONF`` passed on (how hosts with cgroups in hybrid mode select runc),
  ``registries_conf`` as the service's ``CONTAINERS_REGISTRIES_CONF`` (a test marks a local
  registry insecure there, as an operator would in the host's registries.conf), and no
  ``CONTAINER_HOST``;
* the podman CLI against the service (``run``), the busybox test image, and a teardown that
  removes every container and unmounts what podman left.

The socket path must stay under 108 bytes (the ``sun_path`` limit), so callers pass a short base
directory such as one made by ``tempfile.mkdtemp(prefix="rcp-", dir="/tmp")``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

from runtime.podman.discovery import SUN_PATH_MAX, OwnService, start_service

TEST_IMAGE = "localhost/busybox:latest"
TEST_IMAGE_TARBALL = Path(
    os.environ.get("RECONCILER_TEST_IMAGE", "/var/tmp/reconciler-test-image/busybox-rootfs.tar")
)
TEST_IMAGE_CHANGES = ("ENV PATH=/bin", 'CMD ["/bin/sh"]')


class ServiceError(RuntimeError):
    """The service could not be started or did not answer."""


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
        """Where ``start_service`` has the service write (beside its socket)."""
        self._own: OwnService | None = None

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
        return self._own is not None and self._own.running

    def start(self, timeout: float = 30.0) -> None:
        """Start the service and return once it answers on its socket. Raises
        ``ServiceError`` when it does not."""
        if self.running:
            return
        for sub in ("root", "run", "tmp"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        try:
            self._own = start_service(
                self.url,
                wait=timeout,
                podman=self.podman,
                podman_args=self.storage_args,
                env=self.env,
                cwd=self.base_dir,
            )
        except RuntimeError as err:
            raise ServiceError(str(err)) from err

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the service (SIGTERM, then SIGKILL). Containers keep running under conmon."""
        own, self._own = self._own, None
        if own is not None:
            own.stop(timeout)

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

"""A real container registry on a loopback port, and a podman service that trusts it.

Debian's ``docker-registry`` package (the CNCF distribution registry) serves images over plain
HTTP from a temporary storage dir, with a minimal config. The registry can be stopped and
started again on the same port and storage, so a test can make it unreachable and bring it
back. ``RegistryWorld`` pairs it with a private podman service whose ``registries.conf`` marks
the registry insecure, which is how an operator would let a host pull from a local mirror
(the agent itself never turns TLS verification off).

Images are made from the busybox test tarball with ``podman import``: the same root filesystem
with another ``--change`` (an ``ENV``) is another image with another ID, so a test can build a
"good" and a "bad" build of one repository offline.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

from reconciler.testing.podman import TEST_IMAGE_CHANGES, TEST_IMAGE_TARBALL, PodmanService
from reconciler.testing.polling import Fatal, wait_until
from tests.contract import missing
from tests.e2e.agent_support import CONTAINERS_CONF, free_port
from tests.e2e.conftest import ensure_tarball, require_podman

REGISTRY = "/usr/bin/docker-registry"


def require_registry() -> None:
    if not Path(REGISTRY).is_file():
        missing(f"{REGISTRY} is missing (Debian package docker-registry; run scripts/setup)")


class Registry:
    """One ``docker-registry serve`` process on ``127.0.0.1:<port>``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        (base / "data").mkdir(parents=True, exist_ok=True)
        self.config = base / "config.yml"
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {base / 'data'}\n"
            f"http:\n  addr: {self.host}\n  secret: reconciler-tests\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        with open(self.base / "registry.log", "ab") as log:
            self._proc = subprocess.Popen(
                [REGISTRY, "serve", str(self.config)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc = self._proc

        def answers() -> bool:
            if proc.poll() is not None:
                raise Fatal(f"docker-registry exited with {proc.returncode}")
            with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as resp:
                return bool(resp.status == 200)

        wait_until(answers, f"docker-registry answering on {self.host}", within=timeout)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


class RegistryWorld:
    """A registry and a private podman service that may pull from it."""

    def __init__(self, *, root_tmpfs_mib: int | None = None) -> None:
        """``root_tmpfs_mib``: podman's graph root on a tmpfs of that size (needs root)."""
        require_registry()
        self.root_tmpfs_mib = root_tmpfs_mib
        self.base = Path(tempfile.mkdtemp(prefix="rcr-", dir="/tmp"))
        self.registry = Registry(self.base / "registry")
        conf = self.base / "registries.conf"
        conf.write_text(f'[[registry]]\nlocation = "{self.registry.host}"\ninsecure = true\n')
        require_podman()
        ensure_tarball()
        self.podman = PodmanService(
            self.base / "podman", containers_conf=CONTAINERS_CONF, registries_conf=conf
        )

    def start(self) -> RegistryWorld:
        try:
            if self.root_tmpfs_mib is not None:
                root = self.podman.base_dir / "root"
                root.mkdir(parents=True)
                subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", f"size={self.root_tmpfs_mib}m", "tmpfs", root],
                    check=True,
                    capture_output=True,
                )
            self.registry.start()
            self.podman.start()
            self.podman.import_test_image()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self.podman.destroy()
        self.registry.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def ref(self, repo: str, tag: str) -> str:
        """A reference to ``repo:tag`` in the registry."""
        return f"{self.registry.host}/{repo}:{tag}"

    def build(self, ref: str, *, env: str) -> str:
        """An image ``ref`` (local only) from the busybox tarball with ``ENV BUILD=<env>``: the
        same files, another ID per ``env``. Returns its image ID."""
        changes: list[str] = []
        for c in (*TEST_IMAGE_CHANGES, f"ENV BUILD={env}"):
            changes += ["--change", c]
        out = self.podman.run("import", "--quiet", *changes, str(TEST_IMAGE_TARBALL), ref)
        return out.strip().removeprefix("sha256:")

    def build_unique(self, ref: str, *, extra_bytes: int) -> str:
        """An image ``ref`` (local only) of the busybox files plus ``extra_bytes`` of random
        data: a layer of its own, so removing it frees its space. Returns its image ID."""
        tar = self.base / f"layer-{os.getpid()}-{time.monotonic_ns()}.tar"
        shutil.copyfile(TEST_IMAGE_TARBALL, tar)
        with tarfile.open(tar, "a") as t:
            data = os.urandom(extra_bytes)
            info = tarfile.TarInfo("blob")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        changes: list[str] = []
        for c in TEST_IMAGE_CHANGES:
            changes += ["--change", c]
        try:
            out = self.podman.run("import", "--quiet", *changes, str(tar), ref)
        finally:
            tar.unlink()
        return out.strip().removeprefix("sha256:")

    def push(self, ref: str) -> None:
        """Push a local image to the registry (plain HTTP)."""
        self.podman.run("push", "--quiet", "--tls-verify=false", ref, ref)

    def untag(self, ref: str) -> None:
        self.podman.run("rmi", ref)

    def image_id(self, ref: str) -> str | None:
        out = self.podman.run("image", "inspect", "--format", "{{.Id}}", ref, check=False).strip()
        return out or None

"""Fixtures for end-to-end tests against a real, private podman service.

``podman_service`` (one per session) starts ``podman system service`` with its own ``--root``,
``--runroot`` and ``--tmpdir`` under a short ``/tmp/rcp-*`` directory (unix socket paths must
stay under 108 bytes), with ``CONTAINERS_CONF`` pointing at ``deploy/containers.conf`` (runc,
ulimits), and imports the busybox test image from the tarball ``scripts/build-test-image``
leaves (building it first when it is missing). Teardown removes every container, stops the
service and deletes the directory, so the host's own podman is never touched.

When podman (or runc, or busybox) is missing, the tests skip on a developer machine and FAIL
under CI (``CI`` set), naming what is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from reconciler.testing.podman import TEST_IMAGE_TARBALL, PodmanService
from runtime.podman import PodmanExecutor
from tests.contract import missing as absent
from tests.e2e.agent_support import Harness
from tests.e2e.browser_support import Browser, require_chromium
from tests.e2e.podman_support import RecordingObserver, new_executor, new_id

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "deploy" / "containers.conf"


def require_podman() -> None:
    missing = [b for b in ("podman", "runc", "busybox") if shutil.which(b) is None]
    if not missing:
        return
    absent(f"podman e2e tests need {', '.join(missing)} (run scripts/setup)")


def ensure_tarball() -> None:
    if TEST_IMAGE_TARBALL.is_file():
        return
    subprocess.run(
        ["bash", str(REPO / "scripts" / "build-test-image"), "--tarball-only"], check=True
    )


def start_service(conf: Path = CONTAINERS_CONF) -> PodmanService:
    require_podman()
    ensure_tarball()
    base = Path(tempfile.mkdtemp(prefix="rcp-", dir="/tmp"))
    svc = PodmanService(base, containers_conf=conf)
    try:
        svc.start()
        svc.import_test_image()
    except BaseException:
        svc.destroy()
        raise
    return svc


@pytest.fixture(scope="session")
def podman_service() -> Iterator[PodmanService]:
    svc = start_service()
    yield svc
    svc.destroy()


@pytest.fixture
def private_podman_service() -> Iterator[PodmanService]:
    """A service of this test's own, for tests that stop or reconfigure it."""
    svc = start_service()
    yield svc
    svc.destroy()


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture
def node_id() -> str:
    """A node id per test, so tests sharing the service never see each other's containers."""
    return f"node-{new_id()}"


@pytest.fixture
async def podman_executor(
    podman_service: PodmanService, node_id: str, observer: RecordingObserver
) -> AsyncIterator[PodmanExecutor]:
    ex = new_executor(podman_service.url, node_id, observer)
    await ex.start()
    try:
        yield ex
    finally:
        await ex.close()


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A headless Chromium of this test's own (``browser_support.Browser``), quit at the end."""
    require_chromium()
    b = Browser()
    try:
        yield b
    finally:
        b.quit()


@pytest.fixture
def harness(podman_service: PodmanService) -> Iterator[Harness]:
    """One test's agent world on the shared podman service (see ``agent_support.Harness``)."""
    with Harness(podman_service) as h:
        yield h

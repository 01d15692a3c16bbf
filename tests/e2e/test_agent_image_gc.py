"""The image GC end to end: a real agent, a real registry, and podman's graph root on a small
tmpfs that the test fills up.

The agent pulls images of its own; when the graph root's filesystem falls under
``--image-gc-threshold``, it removes the ones no kept instance or desired task names, and
keeps the image of a desired task that has no container, the images of running tasks, and the
images it never used (an operator's). While the disk stays under the threshold a pull is
refused, saying why; once there is room the pull goes through.

Mounting a tmpfs needs root (CI runs as root); elsewhere the test skips, and under CI a missing
privilege fails it like any missing component.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.contract import missing
from tests.e2e.agent_support import Harness, task
from tests.e2e.registry_support import RegistryWorld

pytestmark = pytest.mark.e2e

MIB = 1 << 20
THRESHOLD = 30  # percent; the tmpfs is small, so the test fills it far below this


@pytest.fixture
def world() -> Iterator[RegistryWorld]:
    if os.geteuid() != 0:
        missing("the image GC test mounts a tmpfs as podman's graph root, which needs root")
    w = RegistryWorld(root_tmpfs_mib=64).start()
    yield w
    w.close()


def free_percent(path: Path) -> float:
    st = os.statvfs(path)
    return 100.0 * st.f_bavail / st.f_blocks


def fill(path: Path, *, leave: int) -> Path:
    """A file that leaves about ``leave`` bytes free on ``path``'s filesystem."""
    st = os.statvfs(path)
    filler = path / "filler"
    size = st.f_bavail * st.f_frsize - leave
    with open(filler, "wb") as f:
        chunk = b"\0" * MIB
        while size > 0:
            f.write(chunk[: min(size, MIB)])
            size -= MIB
    return filler


def replaced(h: Harness, name: str, old: str) -> dict[str, Any] | None:
    v = h.current(name)
    return v if v and v["id"] != old and v["state"] == "running" else None


def test_the_agents_unneeded_images_go_when_the_disk_runs_short_and_pulls_wait(
    world: RegistryWorld,
) -> None:
    refs = {n: world.ref("gc-app", f"v{n}") for n in range(1, 6)}
    ids = {}
    for n, ref in refs.items():
        ids[n] = world.build_unique(ref, extra_bytes=3 * MIB)
        world.push(ref)
        world.untag(ref)  # only the registry has it: the agent pulls it
    operator = "localhost/operator-tool:1"
    world.build_unique(operator, extra_bytes=MIB)
    root = world.podman.base_dir / "root"

    with Harness(world.podman) as h:
        forever = {"restart": {"delay": "1s"}}
        h.desired.write("t.yaml", [task("web", image=refs[1], **forever)])
        agent = h.start_agent("--image-gc-threshold", str(THRESHOLD))
        first = h.wait_state("web", "running")
        for n in (2, 3):  # each update keeps the old instance, and its image, in the history
            h.desired.write("t.yaml", [task("web", image=refs[n], **forever)])
            first = h.wait_for(lambda old=first["id"]: replaced(h, "web", old), f"web on v{n}")
        job = task("job", image=refs[4], command=["true"], restart={"condition": "none"})
        h.desired.write("t.yaml", [task("web", image=refs[3], **forever), job])
        done = h.wait_state("job", "complete")
        h.podman("rm", f"job.{done['id']}")  # the job's container goes; the task stays desired
        h.wait_for(lambda: not h.named("job"), "the job's container gone")

        # web leaves the desired set with its history; api runs the image web last ran.
        h.desired.write("t.yaml", [task("api", image=refs[3], **forever), job])
        h.wait_state("api", "running")
        h.wait_for(lambda: not h.named("web"), "web's containers removed")
        assert all(world.image_id(refs[n]) for n in (1, 2, 3, 4))
        assert agent.metric("reconciler_images_removed_total") == 0

        filler = fill(root, leave=3 * MIB)
        assert free_percent(root) < THRESHOLD

        def removed() -> bool:
            return world.image_id(refs[1]) is None and world.image_id(refs[2]) is None

        h.wait_for(removed, "the unneeded images removed")
        assert agent.metric("reconciler_images_removed_total") == 2
        assert world.image_id(refs[3]) == ids[3]  # api runs it
        assert world.image_id(refs[4]) == ids[4]  # the job is desired, without a container
        assert world.image_id(operator) is not None  # never the agent's
        assert world.image_id("localhost/busybox:latest") is not None
        assert free_percent(root) < THRESHOLD  # what is left is needed

        # Still under the threshold: a new image is not pulled, and the task says why.
        h.desired.write(
            "t.yaml",
            [task("api", image=refs[3], **forever), job, task("new", image=refs[5], **forever)],
        )

        def refused() -> dict[str, Any] | None:
            v = h.current("new")
            ok = v and v["error"] and "is not pulled now" in v["error"]
            return v if ok else None

        view = h.wait_for(refused, "the pull refused")
        assert view["state"] == "preparing"
        assert f"under the image GC threshold of {THRESHOLD}%" in view["error"]
        assert (agent.metric("reconciler_image_pulls_total", result="refused") or 0) >= 1
        assert world.image_id(refs[5]) is None

        filler.unlink()
        h.wait_state("new", "running", timeout=120)
        assert world.image_id(refs[5]) == ids[5]
        assert agent.metric("reconciler_images_removed_total") == 2

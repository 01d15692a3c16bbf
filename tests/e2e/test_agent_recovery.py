"""End to end: the agent's own files and disk fail, and the containers keep running.

A store is never silently re-created. A corrupt one (a missing or garbage ``CURRENT``, a garbage
``MANIFEST``, a truncated SST, an undecodable row) is moved aside and rebuilt from podman: every
container keeps its id and ``State.StartedAt``. A kill -9 loop over ten real tasks restarts
none of them. A full disk makes the node not ready with the reason, and it recovers without a
restart once space returns; SIGTERM exits 0 throughout.

The agent is a real ``reconciler run`` subprocess against a private podman service.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from tests.contract import missing
from tests.e2e.agent_support import Harness, task
from tests.e2e.test_agent_crash import all_running, started

pytestmark = pytest.mark.e2e


def db(h: Harness) -> Path:
    return h.state_dir / "worker" / "tasks.db"


def _missing_current(path: Path) -> None:
    (path / "CURRENT").unlink()


def _garbage_current(path: Path) -> None:
    (path / "CURRENT").write_text("garbage\n")


def _garbage_manifest(path: Path) -> None:
    next(path.glob("MANIFEST-*")).write_bytes(b"\x00\xfe" * 256)


def _truncated_sst(path: Path) -> None:
    raw = Rdict(str(path), options=Options(raw_mode=True))
    raw.flush()  # make sure the rows sit in an SST
    raw.close()
    sst = max(path.glob("*.sst"), key=lambda p: p.stat().st_size)
    with open(sst, "r+b") as f:
        f.truncate(sst.stat().st_size // 2)


def _undecodable_row(path: Path) -> None:
    raw = Rdict(str(path), options=Options(raw_mode=True))
    raw.put(b"s/zzzz", b"\xff not a status row")
    raw.close()


@pytest.mark.parametrize(
    "damage",
    [_missing_current, _garbage_current, _garbage_manifest, _truncated_sst, _undecodable_row],
)
def test_a_corrupt_store_is_rebuilt_and_every_container_keeps_running(
    harness: Harness, damage: Callable[[Path], None]
) -> None:
    h = harness
    names = ["web", "db", "cache"]
    h.desired.write("three.yaml", [task(n) for n in names])
    first = h.start_agent()
    before_ps = h.wait_for(lambda: all_running(h, names), "3 tasks running")
    before = started(h)
    assert first.terminate() == 0

    damage(db(h))
    second = h.start_agent()
    after_ps = h.wait_for(lambda: all_running(h, names), "3 tasks running after the rebuild")
    assert started(h) == before  # same containers, never restarted
    assert {v["name"]: v["id"] for v in after_ps} == {v["name"]: v["id"] for v in before_ps}
    assert second.metric("reconciler_store_rebuilds_total") == 1
    assert len(list(db(h).parent.glob("tasks.db.corrupt-*"))) == 1
    assert "moved it aside" in second.log_tail(200)
    assert len(h.containers()) == 3  # no duplicate was created
    assert second.terminate() == 0


def test_twenty_kill_9_rounds_over_ten_tasks_restart_nothing(harness: Harness) -> None:
    h = harness
    names = [f"svc-{i}" for i in range(10)]
    h.desired.write("ten.yaml", [task(n) for n in names])
    h.start_agent()
    h.wait_for(lambda: all_running(h, names), "10 tasks running")
    before = started(h)
    for round_ in range(20):
        h.agent.kill9()
        assert started(h) == before, f"round {round_}"
        agent = h.start_agent()
        assert agent.readyz()[0] == 200
        assert started(h) == before, f"round {round_}"
    assert all(v["restarts"] == 0 for v in h.ps(all_=False))
    assert len(h.containers()) == 10


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        missing("mounting a small tmpfs for the full-disk test needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Fill the filesystem of ``path`` to the last byte; returns the filler file."""
    filler = path / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def test_a_full_disk_makes_the_node_unready_and_it_recovers_without_a_restart(
    harness: Harness,
) -> None:
    h = harness
    with small_tmpfs(h.state_dir, "48m"):
        h.desired.write("web.yaml", [task("web")])
        agent = h.start_agent()
        h.wait_state("web", "running")
        before = started(h)

        filler = fill(h.state_dir)
        h.desired.write("db.yaml", [task("db")])  # the agent must write to take this

        def unready() -> str | None:
            status, text = agent.readyz()
            return text if status == 503 and "store write failed" in text else None

        reason = h.wait_for(unready, "the node to turn unready because of the store")
        assert "No space left" in reason or "previous error" in reason
        assert agent.alive
        assert started(h)["web"] == before["web"]  # what runs keeps running
        assert agent.get("/healthz")[0] == 200

        filler.unlink()  # space returns: no restart needed
        agent.wait_ready()
        h.wait_state("db", "running")
        assert started(h)["web"] == before["web"]
        assert agent.terminate() == 0


def test_sigterm_while_the_disk_is_full_exits_0(harness: Harness) -> None:
    h = harness
    with small_tmpfs(h.state_dir, "48m"):
        h.desired.write("web.yaml", [task("web")])
        agent = h.start_agent()
        h.wait_state("web", "running")
        fill(h.state_dir)
        h.desired.write("db.yaml", [task("db")])
        h.wait_for(lambda: agent.readyz()[0] == 503 or None, "the node to turn unready")
        assert agent.terminate() == 0
        assert h.named("web", running=True)

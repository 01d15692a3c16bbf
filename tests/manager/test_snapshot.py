"""The manager page's snapshot: what it says of nodes, services and tasks, and that it is built
only when someone reads it, once per batch of changes."""

from __future__ import annotations

from reconciler.core.clock import FakeClock
from reconciler.fleet.buckets import NODES
from reconciler.manager.snapshot import FleetSnapshot, ManagerState, Snapshots
from reconciler.testing.fleetworld import GRACE, SECRET, World, heartbeat, two_nodes


def test_nodes_show_the_managers_verdict_labels_heartbeat_and_task_counts() -> None:
    snap = two_nodes().snapshot()
    assert list(snap.nodes) == ["a", "b"]
    a, b = snap.nodes["a"], snap.nodes["b"]
    assert (a.state, a.row.tasks, a.running) == ("ready", 1, 1)
    assert (b.state, b.row.tasks, b.running) == ("ready", 1, 0)  # web-2 failed there
    assert dict(a.row.labels) == {"site": "north", "by": "operator"}
    assert dict(a.row.engine_labels) == {"site": "north"}
    assert a.row.heartbeat_at == "2023-11-14T22:13:20.000Z"
    assert a.row.hostname == "a.lab"


def test_services_show_desired_and_running_replicas_and_what_is_unassigned() -> None:
    snap = two_nodes().snapshot()
    web, edge = snap.services["web"], snap.services["edge"]
    assert (web.mode, web.desired, web.running, web.unassigned) == ("replicated", 2, 1, 0)
    assert (edge.desired, edge.running, edge.unassigned) == (1, 0, 1)
    assert list(snap.services) == ["edge", "web"]


def test_tasks_show_node_state_and_restarts() -> None:
    snap = two_nodes().snapshot()
    assert list(snap.tasks) == ["a.web-1", "b.web-2"]
    failed = snap.tasks["b.web-2"]
    assert (failed.node, failed.state, failed.restarts, failed.error) == (
        "b",
        "failed",
        3,
        "exit code 1",
    )


def test_an_unassigned_task_says_why_no_node_took_it() -> None:
    snap = two_nodes().snapshot()
    (edge,) = snap.unassigned.values()
    assert (edge.service, edge.task, edge.node) == ("edge", "edge-1", None)
    assert edge.reason == "no node matches its placement constraints"


def test_a_silent_node_shows_down_and_the_tasks_only_it_could_run_are_unassigned() -> None:
    w = two_nodes()
    w.service("pinned", placement={"constraints": ["node.labels.site==south"]})
    w.assign("b", "pinned-1").status("b", "pinned-1", "running")
    later = GRACE * 3
    w.node("a", later, site="north")  # a keeps beating, b has gone quiet
    snap = w.snapshot(later)
    assert snap.nodes["b"].state == "down" and snap.nodes["a"].state == "ready"
    pinned = snap.unassigned["pinned-1"]
    assert pinned.reason == "no node it may run on is ready"
    assert pinned.node == "b"  # still held by the down node
    assert snap.services["pinned"].unassigned == 1


def test_draining_paused_and_invalid_are_said_in_words() -> None:
    w = two_nodes()
    w.put("reconciler_control", "node.a", b'{"availability": "drain"}')
    w.put("reconciler_control", "node.b", b'{"availability": "pause"}')
    w.put("reconciler_services", "bad", b'{"image": "x", "replicas": "two"}')
    snap = w.snapshot()
    assert [n.state for n in snap.nodes.values()] == ["draining", "paused"]
    assert snap.services["bad"].mode == "invalid" and snap.services["bad"].desired is None
    assert snap.services["edge"].unassigned == 1
    reason = snap.unassigned["edge-1"].reason
    assert reason == "no node matches its placement constraints"
    no_fit = w.service("any").snapshot().unassigned["any-1"].reason
    assert no_fit == "every node it may run on is paused or draining"


def test_a_fleet_without_nodes_says_so() -> None:
    snap = World().service("web", replicas=2).snapshot()
    assert [u.reason for u in snap.unassigned.values()] == ["no node has joined the fleet"] * 2
    assert snap.nodes == {} and snap.tasks == {}


def test_no_env_value_reaches_the_snapshot() -> None:
    assert SECRET not in repr(two_nodes().snapshot())


# ------------------------------------------------------------------------------ Snapshots


class Builder:
    def __init__(self) -> None:
        self.world = two_nodes()
        self.builds = 0
        self.kept: list[FleetSnapshot | None] = []

    def __call__(self, keep: FleetSnapshot | None) -> FleetSnapshot:
        self.builds += 1
        self.kept.append(keep)
        return self.world.snapshot(keep=keep)


def test_no_snapshot_is_built_while_no_one_reads() -> None:
    build = Builder()
    snaps = Snapshots(build, FakeClock().monotonic)
    for _ in range(100):
        snaps.changed()
        snaps.beat()
    assert build.builds == 0 and snaps.changes.version == 0
    snaps.current()
    for _ in range(100):
        snaps.changed()
        snaps.beat()
    assert build.builds == 1
    assert snaps.changes.version == 1  # stale once; later changes cost a flag check


def test_many_changes_between_two_reads_cost_one_build_shared_by_every_reader() -> None:
    build = Builder()
    snaps = Snapshots(build, FakeClock().monotonic)
    first = snaps.current()
    assert snaps.current() is first and build.builds == 1
    for _ in range(10):
        snaps.changed()
    second = snaps.current()
    assert second is not first and snaps.current() is second and build.builds == 2


def test_heartbeats_alone_refresh_the_page_at_most_once_per_period() -> None:
    now = [0.0]
    snaps = Snapshots(Builder(), lambda: now[0], beat_refresh=5.0)
    snaps.current()
    snaps.changed()  # at 0
    snaps.current()
    version = snaps.changes.version
    for now[0] in (1.0, 2.0, 4.9):
        snaps.beat()
    assert snaps.changes.version == version
    now[0] = 5.0
    snaps.beat()
    assert snaps.changes.version == version + 1
    snaps.beat()  # stale already: the next read is fresh anyway
    assert snaps.changes.version == version + 1


def test_a_heartbeat_refresh_reads_the_nodes_and_keeps_the_tasks_as_they_were() -> None:
    now = [0.0]
    build = Builder()
    snaps = Snapshots(build, lambda: now[0], beat_refresh=5.0)
    first = snaps.current()
    build.world.node("a", 1.0, site="moved")
    now[0] = 10.0
    snaps.beat()
    second = snaps.current()
    assert build.kept == [None, first]
    assert second.tasks is first.tasks and second.services is first.services
    assert second.unassigned is first.unassigned
    assert dict(second.nodes["a"].row.engine_labels) == {"site": "moved"}
    assert second.nodes["a"].running == first.nodes["a"].running == 1
    snaps.beat()  # a heartbeat, then a real change before the next read: built whole
    snaps.changed()
    snaps.current()
    assert build.kept[-1] is None


def test_the_manager_state_is_part_of_the_picture() -> None:
    w = two_nodes()
    w.put(NODES, "c", heartbeat("c"))
    snap = w.snapshot()
    assert snap.manager == ManagerState("m-1", snap.manager.version, True, True, "ready")
    assert "c" in snap.nodes

"""The manager's status page as the server renders it, and its events: complete without
JavaScript, escaped, self-contained, allowed by its own policy, and never an env value."""

from __future__ import annotations

import base64
import hashlib
import json
import re

from reconciler.manager.page import CONTENT_SECURITY_POLICY, ManagerPage, delta_state
from reconciler.manager.snapshot import FleetSnapshot
from reconciler.testing.fleetworld import GRACE, SECRET, WALL, World, two_nodes
from reconciler.web.common import ICON_BAD, ICON_OK
from tests.web.test_agent_page import Links


class Holder:
    def __init__(self, world: World) -> None:
        self.snap = world.snapshot()

    def __call__(self) -> FleetSnapshot:
        return self.snap


def html_of(world: World) -> str:
    return ManagerPage(Holder(world), clock=lambda: WALL + 42).html().decode()


def rows(html: str, table: str) -> list[str]:
    """The data-key of every row of one table."""
    match = re.search(rf'<table id="{table}".*?<tbody>(.*?)</tbody>', html, re.DOTALL)
    assert match is not None, table
    return re.findall(r'<tr data-key="([^"]+)"', match.group(1))


def test_the_page_shows_nodes_services_tasks_and_unassigned_without_javascript() -> None:
    html = html_of(two_nodes())
    assert rows(html, "nodes") == ["a", "b"]
    assert rows(html, "services") == ["edge", "web"]
    assert rows(html, "tasks") == ["a.web-1", "b.web-2"]
    assert rows(html, "unassigned") == ["edge-1"]
    assert '<span class="st n-ready">ready</span>' in html
    assert "site=north" in html and "site=south" in html
    assert '<time class="ago" datetime="2023-11-14T22:13:20.000Z"' in html and ">42s</time>" in html
    assert '<span class="bad">1 of 2</span>' in html  # web: one running of two desired
    assert '<span class="st s-failed">failed</span>' in html
    assert '<td data-label="Restarts">3</td>' in html
    assert "error: exit code 1" in html
    assert "no node matches its placement constraints" in html
    assert "2 nodes: 2 ready" in html and "2 tasks: 1 running, 1 failed" in html
    assert "Snapshot of 2023-11-14 22:14:02 UTC" in html


def test_a_node_shows_the_labels_operators_set_apart_from_those_it_claims() -> None:
    w = two_nodes()
    w.node("b", claim="mine")
    html = html_of(w)
    assert '<td data-label="Labels">by=operator, site=north</td>' in html
    assert '<td data-label="Engine labels">site=north</td>' in html
    assert '<td data-label="Labels">site=south</td>' in html
    assert '<td data-label="Engine labels">claim=mine</td>' in html


def test_a_down_node_is_said_in_words_and_named_in_the_title() -> None:
    w = two_nodes()
    w.service("pinned", placement={"constraints": ["node.labels.site==south"]})
    w.assign("b", "pinned-1")
    w.now = GRACE * 3
    w.node("a", w.now, site="north")  # a keeps beating, b has gone quiet
    html = html_of(w)
    assert '<tr data-key="b" data-state="down"><th scope="row">b</th>' in html
    assert '<span class="st n-down">down</span>' in html
    assert "<title>(1 down, 2 unassigned) reconciler manager m-1</title>" in html
    assert f'href="{ICON_BAD}"' in html
    assert rows(html, "unassigned") == ["edge-1", "pinned-1"]
    assert '<td data-label="Held by">b</td>' in html


def test_a_node_under_pressure_says_so_and_why_nothing_new_goes_there() -> None:
    w = World().node("a", conditions={"diskPressure": True, "memoryPressure": False})
    html = html_of(w.service("web"))
    assert '<span class="st n-ready">ready</span> <small>diskPressure</small>' in html
    assert "every node it may run on is under disk or memory pressure" in html


def test_an_all_well_fleet_has_a_green_icon_and_a_plain_title() -> None:
    w = World().node("a").service("web").assign("a", "web-1").status("a", "web-1", "running")
    html = html_of(w)
    assert "<title>reconciler manager m-1</title>" in html
    assert f'href="{ICON_OK}"' in html
    assert "Every task is assigned." in html
    assert '<table id="unassigned" class="stack" hidden>' in html


def test_values_a_node_wrote_are_escaped_and_long_ones_cut() -> None:
    evil = '<img src=x onerror="alert(1)">'
    w = two_nodes()
    w.status("b", "web-2", "failed", error=evil, message="x" * 5000)
    w.node("b", site=evil)
    html = html_of(w)
    assert evil not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert "site=&lt;img src=x" in html  # the label, too
    assert "x" * 400 not in html and "x" * 397 + "..." in html


def test_no_env_value_reaches_the_page_or_its_events() -> None:
    w = two_nodes()
    page = ManagerPage(Holder(w), clock=lambda: WALL)
    assert SECRET not in page.html().decode()
    assert SECRET not in page.full(page.model()).decode()


def test_the_page_loads_nothing_from_anywhere_and_its_policy_allows_only_itself() -> None:
    links = Links()
    links.feed(html_of(two_nodes()))
    assert links.urls and all(url.startswith("data:") for url in links.urls), links.urls
    for kind, directive in (("script", "script-src"), ("style", "style-src")):
        (block,) = links.blocks[kind]
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in CONTENT_SECURITY_POLICY
    script = "".join(links.blocks["script"])
    assert re.findall(r"new EventSource\(\"([^\"]+)\"\)", script) == ["v1/events"]
    assert "fetch(" not in script and "XMLHttpRequest" not in script
    assert "{{" not in "".join(links.blocks["style"]) + script  # the shared parts are inlined


def test_the_first_event_is_the_whole_state_the_page_was_rendered_from() -> None:
    holder = Holder(two_nodes())
    page = ManagerPage(holder, clock=lambda: WALL)
    full = json.loads(page.full(page.model()))
    assert next(iter(full)) == "now" and full["full"] is True
    assert full["now"] == "2023-11-14T22:13:20.000Z"
    assert [n["node"] for n in full["nodes"]] == ["a", "b"]
    assert [(n["state"], n["tasks"], n["running"]) for n in full["nodes"]] == [
        ("ready", 1, 1),
        ("ready", 1, 0),
    ]
    assert [(s["service"], s["desired"], s["running"]) for s in full["services"]] == [
        ("edge", 1, 0),
        ("web", 2, 1),
    ]
    assert [(t["task"], t["node"], t["state"], t["restarts"]) for t in full["tasks"]] == [
        ("web-1", "a", "running", 1),
        ("web-2", "b", "failed", 3),
    ]
    assert [u["reason"] for u in full["unassigned"]] == [
        "no node matches its placement constraints"
    ]
    assert full["manager"]["leader"] is True


def test_a_delta_carries_only_the_rows_that_changed_and_the_keys_of_those_gone() -> None:
    w = two_nodes()
    old = w.snapshot()
    assert delta_state(old, w.snapshot()) is None  # rebuilt, nothing new
    w.status("b", "web-2", "running", id="i3")
    w.put("reconciler_services", "edge", None)
    delta = delta_state(old, w.snapshot())
    assert delta is not None
    assert [t["task"] for t in delta["tasks"]] == ["web-2"]
    assert [(s["service"], s["running"]) for s in delta["services"]] == [("web", 2)]
    assert [n["node"] for n in delta["nodes"]] == ["b"]  # its running count
    assert delta["removed"] == {"services": ["edge"], "unassigned": ["edge-1"]}
    assert "manager" not in delta


def test_event_bodies_are_shared_per_snapshot_and_stamped_when_sent() -> None:
    holder = Holder(two_nodes())
    now = [WALL]
    page = ManagerPage(holder, clock=lambda: now[0])
    model = page.model()
    first = page.full(model)
    now[0] += 5
    again = json.loads(page.full(model))
    assert again["now"] == "2023-11-14T22:13:25.000Z"
    del again["now"]
    assert json.dumps(again) == json.dumps(
        {k: v for k, v in json.loads(first).items() if k != "now"}
    )

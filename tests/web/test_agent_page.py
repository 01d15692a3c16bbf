"""The agent's status page as the server renders it: complete without JavaScript, escaped,
self-contained, and allowed by its own Content-Security-Policy."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import replace
from html.parser import HTMLParser

from reconciler.core.model import TaskState
from reconciler.core.snapshot import Snapshot
from reconciler.web import agent_page
from reconciler.web.agent_page import (
    CONTENT_SECURITY_POLICY,
    AgentPage,
    fmt_ago,
    fmt_bytes,
    fmt_time,
)
from tests.web.support import NOW, snapshot, view, with_state


class Holder:
    def __init__(self) -> None:
        self.snap = snapshot()

    def __call__(self) -> Snapshot:
        return self.snap


def page_for(**kw: object) -> str:
    holder = Holder()
    holder.snap = snapshot(**kw) if kw else holder.snap
    return AgentPage(holder, clock=lambda: NOW).html().decode()


class Links(HTMLParser):
    """Every URL-bearing attribute, and the text of inline scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.blocks: dict[str, list[str]] = {"script": [], "style": []}
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action", "srcset", "poster") and value is not None:
                self.urls.append(value)
        if tag in self.blocks and not dict(attrs).get("type"):
            self._in = tag

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self.blocks[self._in].append(data)


def test_the_page_shows_the_node_every_task_and_its_history() -> None:
    html = page_for()
    for text in ("node-a", "edge-1", "4.3.1", "ready", "site=north", "1h 0m"):
        assert text in html, text
    assert 'data-name="api"' in html and 'data-name="web"' in html
    assert '<span class="st s-running">running</span>' in html
    assert '<span class="st s-starting">starting</span>' in html
    assert "<details><summary>History: 1 earlier instance</summary>" in html
    assert "error: exit 1" in html
    assert "localhost/busybox:latest" in html
    assert "3 tasks" not in html and "2 tasks: 1 starting, 1 running" in html


def test_state_is_shown_by_text_as_well_as_colour() -> None:
    html = page_for(runtime_up=False, runtime_reason="podman hangs")
    assert 'class="bad">not ready</span>' in html
    assert 'class="why" data-k="agent.readyReason" data-f="reason">podman hangs</span>' in html
    assert 'class="bad">down</span>' in html


def test_a_rejected_desired_read_shows_file_line_and_problem() -> None:
    html = page_for(
        desired_valid=False,
        desired_errors=("/etc/d/web.yaml:7: tasks[0].image: required field is missing",),
        desired_errors_at=NOW,
    )
    row = "<tr><td><code>/etc/d/web.yaml</code></td><td>7</td><td>tasks[0].image: required"
    assert row in html
    assert '<section id="errors" class="card problems" aria-labelledby="h-problems">' in html
    assert 'class="w-invalid">invalid' in html


def test_without_errors_the_problem_table_is_hidden() -> None:
    assert 'aria-labelledby="h-problems" hidden>' in page_for()


def test_snapshot_text_is_escaped() -> None:
    evil = '<img src=x onerror="alert(1)">'
    html = page_for(
        tasks=(view("web", "w1", TaskState.FAILED, err=evil, message=evil),),
        desired_valid=False,
        desired_errors=(f"d/{evil}.yaml:1: x: {evil}",),
    )
    assert evil not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


def test_the_page_loads_nothing_from_anywhere() -> None:
    links = Links()
    links.feed(page_for())
    assert links.urls, "the favicon at least"
    for url in links.urls:
        assert url.startswith("data:"), url
    css = "".join(links.blocks["style"])
    assert "url(" not in css and "@import" not in css
    script = "".join(links.blocks["script"])
    assert re.findall(r"new EventSource\(\"([^\"]+)\"\)", script) == ["v1/events"]
    assert "fetch(" not in script and "XMLHttpRequest" not in script


def test_the_policy_allows_exactly_the_inline_script_and_style() -> None:
    links = Links()
    links.feed(page_for())
    for kind, directive in (("script", "script-src"), ("style", "style-src")):
        (block,) = links.blocks[kind]
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY


def test_the_favicon_follows_readiness() -> None:
    assert f'href="{agent_page.ICON_OK}"' in page_for()
    assert f'href="{agent_page.ICON_BAD}"' in page_for(runtime_up=False, runtime_reason="x")


def test_the_page_says_it_is_a_snapshot_until_its_script_runs() -> None:
    assert "Snapshot of 2023-11-14 22:13:20 UTC" in page_for()


def test_durations_times_and_sizes_read_as_on_the_page() -> None:
    def ago(seconds: float) -> str:
        return fmt_ago("2023-11-14T22:13:20.000Z", NOW + seconds)

    assert [ago(s) for s in (-5, 0, 59.9, 60, 3599, 3600, 86_399, 86_400 * 3 + 7200)] == [
        "0s",
        "0s",
        "59s",
        "1m 0s",
        "59m 59s",
        "1h 0m",
        "23h 59m",
        "3d 2h",
    ]
    assert fmt_ago(None, NOW) == "\u2014"
    assert fmt_time("2023-11-14T22:13:20.250Z") == "2023-11-14 22:13:20 UTC"
    assert fmt_time(None) == "never"
    assert [fmt_bytes(v) for v in (None, 512, 1536, 4 * 1024**3)] == [
        "\u2014",
        "512 B",
        "1.5 KiB",
        "4.0 GiB",
    ]


def test_events_carry_the_server_time_first_and_deltas_only_on_change() -> None:
    holder = Holder()
    now = [NOW]
    page = AgentPage(holder, clock=lambda: now[0])
    first = page.model()
    assert page.model() is first  # cached per snapshot object
    full = json.loads(page.full(first))
    assert full["full"] is True and full["now"] == "2023-11-14T22:13:20.000Z"
    assert next(iter(full)) == "now"
    holder.snap = replace(holder.snap)  # a new object, nothing new in it
    assert page.delta(first, page.model()) is None
    holder.snap = with_state(holder.snap, "web", TaskState.RUNNING)
    second = page.model()
    now[0] += 5
    delta = json.loads(page.delta(first, second) or b"")
    assert delta["now"] == "2023-11-14T22:13:25.000Z"
    assert [t["name"] for t in delta["tasks"]] == ["web"]
    now[0] += 5  # the cached body is reused with the time of the new call
    assert json.loads(page.delta(first, second) or b"")["now"] == "2023-11-14T22:13:30.000Z"


def test_the_page_and_its_first_event_name_the_same_rows_until_the_snapshot_changes() -> None:
    holder = Holder()
    page = AgentPage(holder, clock=lambda: NOW)
    named = re.search(r'<table id="tasks" class="tasks" data-rows="([^"]+)">', page.html().decode())
    assert named is not None
    assert json.loads(page.full(page.model()))["rows"] == named.group(1)
    holder.snap = with_state(holder.snap, "web", TaskState.RUNNING)
    assert json.loads(page.full(page.model()))["rows"] != named.group(1)
    other = AgentPage(Holder(), clock=lambda: NOW)  # another agent process: never the same name
    assert json.loads(other.full(other.model()))["rows"] != named.group(1)


def test_with_javascript_the_history_table_is_left_as_noscript_text() -> None:
    html = page_for()
    assert '<div class="scroll"><noscript><table class="history">' in html

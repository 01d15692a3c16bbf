"""End to end: the fleet manager's status page in a real headless Chromium, over a real fleet.

Everything runs as an operator runs it: a real nats-server, ``reconciler manager init``, a
``reconciler manager run`` subprocess with ``--listen``, two agent subprocesses (two node ids on
one private podman service) and ``reconciler manager apply``. The browser is the system's
Chromium (``tests/e2e/browser_support.Browser``, as for the agent page). The page
must show the service's replicas and its tasks on both nodes, then, without a reload, a stopped
node as down and its task moved to the other node, with the task no node may take listed as
unassigned with the reason. Its only requests go to the manager (DevTools Network events), and
the console stays free of errors. Waits are hang guards: how fast the page follows is measured
by ``bench/page.py``, not here.

The screenshot is saved under ``tests/artifacts/`` (git-ignored). With
``UPDATE_DOCS_IMAGES=1`` it also replaces ``docs/images/manager-page.png``, the README's picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from reconciler.testing.natsserver import NatsServer
from tests.e2e.agent_support import (
    FOREVER,
    IMAGE,
    REPO,
    AgentProcess,
    Harness,
    cli,
    free_port,
    new_id,
)
from tests.e2e.browser_support import ARTIFACTS, Browser, require_chromium
from tests.fleet.support import Manager

pytestmark = pytest.mark.e2e

DOCS_IMAGE = REPO / "docs" / "images" / "manager-page.png"


def heartbeat_every(url: str, period: str) -> None:
    async def run() -> None:
        m = await Manager.connect(url)
        try:
            await m.fleet(heartbeatPeriod=period)
        finally:
            await m.close()

    asyncio.run(run())


def service_file(path: Path) -> str:
    doc = {
        "apiVersion": "reconciler/v1",
        "kind": "ServiceSet",
        "services": [
            {
                "name": "web",
                "image": IMAGE,
                "command": FOREVER,
                "replicas": 2,
                "env": {"TOKEN": "never-on-the-page"},
                "placement": {"constraints": ["engine.labels.site==lab"]},
            },
            {
                "name": "edge",
                "image": IMAGE,
                "command": FOREVER,
                "placement": {"constraints": ["engine.labels.site==harbour"]},
            },
        ],
    }
    path.write_text(json.dumps(doc, indent=2))
    return str(path)


def start_manager(h: Harness, url: str) -> AgentProcess:
    listen = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "reconciler.cli", "manager", "run", "--nats", url]
    argv += ["--listen", listen, "--node-grace", "3s", "--lease", "3s"]
    manager = AgentProcess(argv, log_path=h.base / "manager.log", listen=listen)
    h.agents.append(manager)  # killed on cleanup like an agent
    manager.wait_ready()
    return manager


def table(browser: Browser, name: str) -> dict[str, dict[str, str]]:
    """One table of the page: row key -> {column label: cell text, "state": data-state}."""
    found: dict[str, dict[str, str]] = browser.js(
        """
        const out = {};
        for (const tr of document.querySelectorAll("#" + arguments[0] + " > tbody > tr")) {
          const row = {name: tr.cells[0].innerText, state: tr.dataset.state || ""};
          for (const td of tr.querySelectorAll("td[data-label]")) {
            row[td.dataset.label] = td.innerText;
          }
          out[tr.dataset.key] = row;
        }
        return out;
        """,
        name,
    )
    return found


def placed_on_both_nodes(
    h: Harness, browser: Browser, node_a: str, node_b: str
) -> dict[str, dict[str, str]]:
    """The page shows the service's replicas, and its tasks running on both nodes: the task
    rows, by key."""

    def spread() -> dict[str, dict[str, str]] | None:
        tasks = table(browser, "tasks")
        running = {k: r for k, r in tasks.items() if r["state"] == "running"}
        nodes = {r["Node"] for r in running.values()}
        return running if len(running) == 2 and nodes == {node_a, node_b} else None

    placed: dict[str, dict[str, str]] = h.wait_for(
        spread, "web-1 and web-2 running, one on each node"
    )
    assert sorted(r["name"] for r in placed.values()) == ["web-1", "web-2"]
    web = h.wait_for(
        lambda: (r := table(browser, "services").get("web")) and "2 of 2" in r["Running"] and r,
        "web's 2 of 2 replicas running",
    )
    assert web["Desired"] == "2" and web["Mode"] == "replicated"
    edge = table(browser, "unassigned")["edge-1"]
    assert edge["Reason"] == "no node matches its placement constraints"
    row = table(browser, "nodes")[node_a]
    assert (row["Engine labels"], row["Labels"]) == ("site=lab", "\u2014")  # its own claim
    assert "never-on-the-page" not in browser.js("return document.documentElement.outerHTML")
    return placed


def moved_off_a_stopped_node(
    h: Harness, browser: Browser, moved: str, node_a: str, node_b: str
) -> None:
    """Node b, stopped, is shown down, and its task moves to node a, without a reload."""
    h.wait_for(lambda: table(browser, "nodes")[node_b]["state"] == "down", "node b shown down")
    h.wait_for(
        lambda: (r := table(browser, "tasks").get(f"{node_a}.{moved}")) and r["state"] == "running",
        f"{moved} running on the other node",
    )
    assert f"{node_b}.{moved}" not in table(browser, "tasks")
    assert h.wait_for(
        lambda: "1 down" in browser.js("return document.title") or None,
        "the title names the down node",
    )


def asked_only_the_manager(browser: Browser, base: str) -> None:
    """The page was never reloaded and asked nothing of anyone but the manager."""
    assert browser.js("return window.__sameDocument === true"), "the page was reloaded"
    urls = browser.requested_urls()
    assert f"{base}/" in urls and f"{base}/v1/events" in urls, urls
    foreign = [u for u in urls if not u.startswith(f"{base}/")]
    assert foreign == [], f"the page asked someone other than the manager: {foreign}"
    assert f"{base}/favicon.ico" not in urls  # the icon is inline
    assert browser.console_errors() == []


def fits_a_phone(h: Harness, browser: Browser) -> None:
    """On a phone: no sideways scrolling; every row is a card."""
    browser.driver.set_window_size(390, 844)
    h.wait_for(lambda: browser.js("return window.innerWidth <= 420"), "a phone-sized window")
    width = browser.js("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page is wider than the phone: {width}"
    browser.screenshot(ARTIFACTS / "manager-page-phone.png")
    assert browser.console_errors() == []


def test_the_manager_page_follows_the_fleet_live_as_a_node_stops(
    harness: Harness, nats_server: NatsServer, browser: Browser
) -> None:
    h = harness
    url = nats_server.url
    init = cli("manager", "init", "--nats", url)
    assert init.returncode == 0, init.stderr
    heartbeat_every(url, "500ms")
    manager = start_manager(h, url)
    base = manager.base_url

    suffix = new_id()[:6]
    h.node_id = node_a = f"edge-1-{suffix}"  # the harness's own node: its containers cleaned
    node_b = f"edge-2-{suffix}"
    h.start_agent("--manager", url, "--node-label", "site=lab")
    agent_b = h.start_agent(
        "--manager",
        url,
        "--node-label",
        "site=lab",
        "--node-id",
        node_b,
        "--state-dir",
        str(h.base / "state-b"),
        port=free_port(),
    )
    try:
        browser.open(base + "/")
        browser.js("window.__sameDocument = true")  # gone if the page were ever reloaded
        h.wait_for(lambda: browser.text("live") == "Live", "the page's event stream to open")
        h.wait_for(
            lambda: (
                {k: r["state"] for k, r in table(browser, "nodes").items()}
                == {node_a: "ready", node_b: "ready"}
            ),
            "both nodes ready on the page",
        )
        applied = cli("manager", "apply", "-f", service_file(h.base / "web.yaml"), "--nats", url)
        assert applied.returncode == 0, applied.stderr
        placed = placed_on_both_nodes(h, browser, node_a, node_b)

        moved = next(r["name"] for r in placed.values() if r["Node"] == node_b)
        assert agent_b.terminate() == 0
        moved_off_a_stopped_node(h, browser, moved, node_a, node_b)

        asked_only_the_manager(browser, base)
        shot = ARTIFACTS / "manager-page.png"
        browser.screenshot(shot)
        if os.environ.get("UPDATE_DOCS_IMAGES") == "1":
            DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, DOCS_IMAGE)
        fits_a_phone(h, browser)
        assert manager.terminate() == 0
    finally:
        with contextlib.suppress(Exception):  # node b's containers, left by its agent
            h.foreign += [c["Id"] for c in h.containers(node=node_b)]


def test_without_javascript_the_manager_page_is_a_static_snapshot(
    harness: Harness, nats_server: NatsServer
) -> None:
    require_chromium()
    h = harness
    url = nats_server.url
    assert cli("manager", "init", "--nats", url).returncode == 0
    heartbeat_every(url, "500ms")
    manager = start_manager(h, url)
    h.start_agent("--manager", url, "--node-label", "site=lab")
    applied = cli("manager", "apply", "-f", service_file(h.base / "web.yaml"), "--nats", url)
    assert applied.returncode == 0, applied.stderr
    h.wait_for(
        lambda: manager.metric("reconciler_manager_tasks", state="running") == 2,
        "web's two tasks running",
    )

    def tables(b: Browser) -> dict[str, list[str]]:
        # every table's rows as text, without the durations (they tick)
        found: dict[str, list[str]] = b.js(
            """
            const out = {};
            for (const name of ["nodes", "services", "unassigned", "tasks"]) {
              out[name] = [...document.querySelectorAll("#" + name + " > tbody > tr")]
                .map((tr) => {
                  const copy = tr.cloneNode(true);
                  copy.querySelectorAll("time.ago").forEach((t) => t.remove());
                  return copy.textContent;
                });
            }
            return out;
            """
        )
        return found

    live = Browser()
    static = Browser(javascript=False)
    try:
        live.open(manager.base_url + "/")
        h.wait_for(lambda: live.text("live") == "Live", "the page's event stream to open")
        static.open(manager.base_url + "/")
        assert static.text("live").startswith("Snapshot of")
        tasks = table(static, "tasks")
        assert {(r["name"], r["state"]) for r in tasks.values()} == {
            ("web-1", "running"),
            ("web-2", "running"),
        }
        assert "2 of 2" in table(static, "services")["web"]["Running"]
        assert table(static, "unassigned")["edge-1"]["Reason"].startswith("no node matches")
        # the server's markup and the script's say the same (the script rebuilt every row)
        assert tables(live) == tables(static)
        assert static.requested_urls() == [manager.base_url + "/"]  # no script, no stream
        assert live.console_errors() == []
    finally:
        static.quit()
        live.quit()
    assert manager.terminate() == 0

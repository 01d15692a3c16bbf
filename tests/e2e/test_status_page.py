"""End to end: the agent's status page in a real headless Chromium, with real podman tasks.

The agent is a real ``reconciler run`` subprocess (``tests/e2e/agent_support.py``); the browser
is the system's Chromium, driven through Debian's chromium-driver by Selenium with a fresh
profile and the flags that keep it from talking to anything but the page. The tests act as an
operator does: write desired YAML, ``podman kill`` a container, break a file, and watch the page
follow without a reload. They check what the page shows, that its only requests go to the agent
(DevTools Network events), and that the console stays free of errors. Waits are hang guards:
how fast the page follows is measured by ``bench/page.py``, not here.

The browser is ``tests/e2e/browser_support.py``'s. The last screenshot is saved under
``tests/artifacts/`` (git-ignored). With
``UPDATE_DOCS_IMAGES=1`` it also replaces ``docs/images/agent-page.png``, the README's picture
(a committed file, so an ordinary test run leaves it alone).
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.e2e.agent_support import REPO, Harness, cli, task, taskset
from tests.e2e.browser_support import ARTIFACTS, Browser, require_chromium

pytestmark = pytest.mark.e2e

DOCS_IMAGE = REPO / "docs" / "images" / "agent-page.png"


def assert_only_the_agent_was_asked(browser: Browser, base: str) -> None:
    urls = browser.requested_urls()
    assert f"{base}/" in urls and f"{base}/v1/events" in urls, urls
    foreign = [u for u in urls if not u.startswith(f"{base}/")]
    assert foreign == [], f"the page asked someone other than the agent: {foreign}"
    assert f"{base}/favicon.ico" not in urls  # the icon is inline


def rows_follow_kills(h: Harness, browser: Browser) -> None:
    """podman kill: web's row turns failed (it is never restarted); api is replaced, and its
    killed instance moves to the history."""
    api = h.wait_state("api", "running")
    h.podman("kill", api["containerId"])
    h.wait_for(
        lambda: (r := browser.row("api")) and r["history"] >= 1 and r["state"] == "running",
        "api's replacement, with the killed instance in its history",
    )
    web = h.wait_state("web", "running")
    h.podman("kill", web["containerId"])
    failed = h.wait_for(
        lambda: (r := browser.row("web")) and r["state"] == "failed" and r,
        "web's row to show failed",
    )
    assert failed["id"] == web["id"]
    assert "137" in failed["text"]


def shows_a_broken_file(h: Harness, browser: Browser) -> None:
    """A broken desired file shows its file and line (the same ones ``reconciler validate``
    gives)."""
    broken = h.desired.write_text(
        "broken.yaml",
        taskset([{"name": "bad", "command": ["true"]}]),  # no image
    )
    check = cli("validate", str(broken))
    assert check.returncode == 2, check.stderr
    path, line, _ = check.stderr.splitlines()[0].split(":", 2)
    shown = h.wait_for(
        lambda: browser.js(
            "const e = document.getElementById('errors');"
            "return e.hidden ? null : [...e.querySelectorAll('tbody tr')]"
            ".map((r) => [...r.cells].map((c) => c.innerText));"
        ),
        "the desired source's problems on the page",
    )
    assert [path, line] in [row[:2] for row in shown], shown
    assert browser.js("return document.querySelector('[data-k=\"desired.status\"]').innerText")
    assert browser.js("return document.querySelector('.w-invalid') !== null")


def shows_the_history_on_a_click(h: Harness, browser: Browser) -> None:
    browser.driver.find_element("css selector", '#tasks > tbody[data-name="api"] summary').click()
    history = h.wait_for(
        lambda: browser.js(
            "return [...document.querySelectorAll("
            "'#tasks > tbody[data-name=\"api\"] details[open] table.history tbody tr')]"
            ".map((r) => r.innerText)"
        ),
        "api's history table",
    )
    assert len(history) == 1 and "failed" in history[0] and "137" in history[0], history


def fits_a_phone_and_filters(h: Harness, browser: Browser) -> None:
    """On a phone: no sideways scrolling, and the filter narrows the task cards."""
    browser.driver.set_window_size(390, 844)
    h.wait_for(lambda: browser.js("return window.innerWidth <= 420"), "a phone-sized window")
    width = browser.js("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page is wider than the phone: {width}"
    browser.driver.find_element("id", "filter").send_keys("web")
    shown = h.wait_for(
        lambda: browser.js(
            "const shown = [...document.querySelectorAll('#tasks > tbody')]"
            ".filter((b) => b.offsetParent !== null).map((b) => b.dataset.name);"
            "return shown.length === 1 ? shown : null;"
        ),
        "the filter to leave one task",
    )
    assert shown == ["web"]
    browser.screenshot(ARTIFACTS / "agent-page-phone.png")
    assert browser.console_errors() == []


def test_the_page_follows_the_agent_live_without_a_reload(
    harness: Harness, browser: Browser
) -> None:
    h = harness
    agent = h.start_agent()
    browser.open(agent.base_url + "/")
    browser.js("window.__sameDocument = true")  # gone if the page were ever reloaded
    h.wait_for(lambda: browser.text("live") == "Live", "the page's event stream to open")
    assert browser.row("web") is None

    # a task's row appears when its YAML is written
    h.desired.write(
        "tasks.yaml",
        [
            task("web", restart={"condition": "none"}),
            task("api", restart={"condition": "any", "delay": "1s"}),
        ],
    )
    for name in ("web", "api"):
        h.wait_for(
            lambda n=name: (browser.row(n) or {}).get("state") == "running",
            f"{name}'s row to show running",
        )
    rows_follow_kills(h, browser)
    shows_a_broken_file(h, browser)
    shows_the_history_on_a_click(h, browser)

    assert browser.js("return window.__sameDocument === true"), "the page was reloaded"
    assert_only_the_agent_was_asked(browser, agent.base_url)
    assert browser.console_errors() == []
    shot = ARTIFACTS / "agent-page.png"
    browser.screenshot(shot)
    if os.environ.get("UPDATE_DOCS_IMAGES") == "1":
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMAGE)
    fits_a_phone_and_filters(h, browser)


def test_without_javascript_the_page_shows_what_the_script_renders(harness: Harness) -> None:
    require_chromium()
    h = harness
    h.desired.write("tasks.yaml", [task("web"), task("db", restart={"condition": "none"})])
    agent = h.start_agent()
    for name in ("web", "db"):
        h.wait_state(name, "running")

    def rows(b: Browser) -> list[str]:
        # every task's rows as text
        found: list[str] = b.js(
            """
            return [...document.querySelectorAll("#tasks > tbody")].map((body) => {
              const copy = body.cloneNode(true);
              // durations tick; the script builds a history table only once it is opened
              copy.querySelectorAll("time.ago, table.history, noscript")
                .forEach((t) => t.remove());
              return copy.textContent;
            });
            """
        )
        return found

    live = Browser()
    static = Browser(javascript=False)
    try:
        live.open(agent.base_url + "/")
        h.wait_for(lambda: live.text("live") == "Live", "the page's event stream to open")
        # web's row is the server's, adopted; db's is rebuilt by the script once it fails
        db = h.wait_state("db", "running")
        h.podman("kill", db["containerId"])
        h.wait_for(lambda: (live.row("db") or {}).get("state") == "failed", "db's row failed")
        h.wait_state("db", "failed")

        static.open(agent.base_url + "/")
        assert static.text("live").startswith("Snapshot of")
        assert [static.row(n)["state"] for n in ("db", "web")] == ["failed", "running"]
        assert rows(live) == rows(static)
        assert static.requested_urls() == [agent.base_url + "/"]  # no script, so no stream
        assert live.console_errors() == []
    finally:
        static.quit()
        live.quit()

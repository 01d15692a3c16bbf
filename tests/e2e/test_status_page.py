"""End to end: the agent's status page in a real headless Chromium, with real podman tasks.

The agent is a real ``reconciler run`` subprocess (``tests/e2e/agent_support.py``); the browser
is the system's Chromium, driven through Debian's chromium-driver by Selenium with a fresh
profile and the flags that keep it from talking to anything but the page. The tests act as an
operator does: write desired YAML, ``podman kill`` a container, break a file, and watch the page
follow without a reload. They check what the page shows, that its only requests go to the agent
(DevTools Network events), and that the console stays free of errors. Waits are hang guards:
how fast the page follows is measured by ``bench/page.py``, not here.

The last screenshot is saved under ``tests/artifacts/`` (git-ignored). With
``UPDATE_DOCS_IMAGES=1`` it also replaces ``docs/images/agent-page.png``, the README's picture
(a committed file, so an ordinary test run leaves it alone).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from reconciler.testing.podman import PodmanService
from tests.contract import missing as absent
from tests.e2e.agent_support import REPO, Harness, cli, task, taskset

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
ARTIFACTS = REPO / "tests" / "artifacts"
DOCS_IMAGE = REPO / "docs" / "images" / "agent-page.png"


def require_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (the dev extra)")
    if missing:
        absent(f"status-page browser tests need {', '.join(missing)} (run scripts/setup)")


class Browser:
    """One headless Chromium with a fresh profile, and what it logged since ``open``."""

    def __init__(self, *, javascript: bool = True) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        self.profile = Path(tempfile.mkdtemp(prefix="rcw-", dir="/tmp"))
        opts = Options()
        opts.binary_location = str(CHROMIUM)  # with both paths given, nothing is downloaded
        for flag in (*FLAGS, f"--user-data-dir={self.profile}", "--window-size=1200,1060"):
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        if not javascript:
            opts.add_experimental_option(
                "prefs", {"profile.managed_default_content_settings.javascript": 2}
            )
        try:
            self.driver = webdriver.Chrome(
                service=Service(executable_path=str(CHROMEDRIVER)), options=opts
            )
        except BaseException:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self._requests: list[str] = []
        self._console: list[dict[str, Any]] = []

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def open(self, url: str) -> None:
        """Load ``url``, with the logs started afresh (the blank start page is not ours)."""
        self.driver.get_log("performance")
        self.driver.get_log("browser")
        self._requests.clear()
        self._console.clear()
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def requested_urls(self) -> list[str]:
        """Every network URL the browser asked for since ``open`` (DevTools Network events).

        Browser-internal ``chrome://`` resources (its own start page) and inline ``data:`` URLs
        reach no host, so they are left out.
        """
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                url = message["params"]["request"]["url"]
                if urlsplit(url).scheme not in ("chrome", "data"):
                    self._requests.append(url)
        return list(self._requests)

    def console_errors(self) -> list[dict[str, Any]]:
        self._console += self.driver.get_log("browser")
        return [e for e in self._console if e.get("level") == "SEVERE"]

    def screenshot(self, path: Path) -> None:
        """The page's content (the body's box, so no empty window below it) as a PNG."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.find_element("tag name", "body").screenshot(str(path))

    # ------------------------------------------------------------------- the page

    def row(self, name: str) -> dict[str, Any] | None:
        """The task table's row group for ``name``: state, instance id, text; None if absent."""
        found: dict[str, Any] | None = self.js(
            """
            const body = [...document.querySelectorAll("#tasks > tbody")]
              .find((b) => b.dataset.name === arguments[0]);
            if (!body) return null;
            const id = body.querySelector('td[data-label="Instance"] code');
            const summary = body.querySelector("summary");  // "History: N earlier ..."
            return {state: body.dataset.state, id: id ? id.textContent : null,
                    text: body.rows[0].innerText,
                    history: summary ? parseInt(summary.textContent.split(" ")[1]) : 0};
            """,
            name,
        )
        return found

    def text(self, element_id: str) -> str:
        return str(self.js("return document.getElementById(arguments[0]).innerText", element_id))


@pytest.fixture
def harness(podman_service: PodmanService) -> Iterator[Harness]:
    with Harness(podman_service) as h:
        yield h


@pytest.fixture
def browser() -> Iterator[Browser]:
    require_chromium()
    b = Browser()
    try:
        yield b
    finally:
        b.quit()


def assert_only_the_agent_was_asked(browser: Browser, base: str) -> None:
    urls = browser.requested_urls()
    assert f"{base}/" in urls and f"{base}/v1/events" in urls, urls
    foreign = [u for u in urls if not u.startswith(f"{base}/")]
    assert foreign == [], f"the page asked someone other than the agent: {foreign}"
    assert f"{base}/favicon.ico" not in urls  # the icon is inline


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

    # podman kill: the row turns failed (web is never restarted); api is replaced, and its
    # killed instance moves to the history
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

    # a broken desired file shows its file and line (the same ones `reconciler validate` gives)
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

    # the history is one click away
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

    assert browser.js("return window.__sameDocument === true"), "the page was reloaded"
    assert_only_the_agent_was_asked(browser, agent.base_url)
    assert browser.console_errors() == []
    shot = ARTIFACTS / "agent-page.png"
    browser.screenshot(shot)
    if os.environ.get("UPDATE_DOCS_IMAGES") == "1":
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMAGE)

    # on a phone: no sideways scrolling, and the filter narrows the task cards
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

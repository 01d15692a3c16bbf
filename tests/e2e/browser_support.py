"""A real headless Chromium for the status pages' end-to-end tests (the agent's and the
manager's).

``Browser`` drives the system's Chromium through Debian's chromium-driver with Selenium, with a
fresh profile and the flags that keep it from talking to anything but the page; it records the
page's network requests (DevTools Network events) and console, and reads the agent page's task
rows. ``require_chromium`` fails under CI and skips elsewhere when the browser or its driver is
missing. Screenshots go under ``tests/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from tests.contract import missing as absent
from tests.e2e.agent_support import REPO

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


def require_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        absent(f"status-page browser tests need {', '.join(missing)} (run scripts/setup)")


class Browser:
    """One headless Chromium with a fresh profile, and what it logged since ``open``."""

    def __init__(self, *, javascript: bool = True) -> None:
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

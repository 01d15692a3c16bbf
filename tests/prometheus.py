"""A real Prometheus for the tests, and what they ask it about the shipped dashboard and alerts.

``running_prometheus(workdir, job, targets)`` starts Debian's ``prometheus`` on a free loopback
port with a config that scrapes ``targets`` every second as ``job`` (rules evaluated every
second too), its data and log in ``workdir``, and stops it on exit. ``Prometheus`` is the
running server: ``api`` and ``aapi`` query its HTTP API, ``value`` reads one series, and
``scraped`` waits until it has scraped its job a number of times, which is how a test knows the
series it asks about exist. The conftest's ``prometheus`` fixture starts one per call; tests
that share one server across a module use ``running_prometheus`` themselves.

``dashboard_targets`` lists the shipped Grafana dashboard's panel queries (the agents' or the
managers'), ``concrete`` replaces the dashboard's variables as Grafana would, and ``has_number``
says whether a query's answer holds a finite number. ``ALERTS`` is the shipped alert rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler.testing.polling import eventually, wait_until
from reconciler.testing.ports import free_port

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "grafana" / "dashboards" / "reconciler.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
SCRAPES_DEADLINE = 120.0
"""Seconds for a Prometheus to start and scrape a few times on a loaded machine."""


class PrometheusMissing(RuntimeError):
    """The prometheus server binary is not installed."""


@dataclass
class Prometheus:
    """A running Prometheus; see the module docstring."""

    url: str
    job: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>?<params>``'s data. Raises ``AssertionError`` on an error."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            with e:
                raise AssertionError(f"{params}: {e.code} {e.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]

    async def aapi(self, path: str, **params: str) -> Any:
        return await asyncio.to_thread(self.api, path, **params)

    def value(self, expr: str) -> float | None:
        """The value of an instant query that gives one series; None when it gives none."""
        result = self.api("query", query=expr)["result"]
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    async def avalue(self, expr: str) -> float | None:
        return await asyncio.to_thread(self.value, expr)

    def _scrapes(self) -> str:
        return f'sum_over_time(up{{job="{self.job}"}}[1m])'

    async def scraped(self, count: int) -> None:
        """Wait until the job has been scraped successfully ``count`` times."""
        await eventually(
            lambda: self._scraped(count),
            f"{count} scrapes by Prometheus",
            within=SCRAPES_DEADLINE,
            every=0.5,
            context=self.log_text,
        )

    def wait_scraped(self, count: int) -> None:
        """``scraped`` for synchronous tests."""
        wait_until(
            lambda: (self.value(self._scrapes()) or 0) >= count,
            f"{count} scrapes by Prometheus",
            within=SCRAPES_DEADLINE,
            every=0.5,
            context=self.log_text,
        )

    async def _scraped(self, count: int) -> bool:
        return (await self.avalue(self._scrapes()) or 0) >= count

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


@contextlib.contextmanager
def running_prometheus(workdir: Path, job: str, targets: Sequence[str]) -> Iterator[Prometheus]:
    """A Prometheus scraping ``targets`` as ``job`` every second; stopped on exit. Raises
    ``PrometheusMissing`` when the binary is not installed."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusMissing(
            "the prometheus server binary is not installed (Debian package: prometheus)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": job, "static_configs": [{"targets": list(targets)}]}
                ],
            }
        )
    )
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    try:
        yield Prometheus(f"http://127.0.0.1:{port}", job, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- the shipped dashboard


def concrete(expr: str, instance: str) -> str:
    """Replace the dashboard's Grafana variables with concrete values."""
    values = {
        # as Grafana does: regex-escaped, then escaped again inside the PromQL string
        "node": re.escape(instance).replace("\\", "\\\\"),
        "manager": re.escape(instance).replace("\\", "\\\\"),
        "task": ".*",
        "__rate_interval": "1m",
        "__interval": "15s",
        "__range": "5m",
    }
    out = re.sub(r"\$\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], expr)
    out = re.sub(r"\$(\w+)", lambda m: values[m.group(1)], out)
    assert "$" not in out, out
    return out


def dashboard_targets(*, fleet: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """The agents' panels' queries, or with ``fleet`` the managers', with their titles."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for target in p.get("targets", []):
                if ("$manager" in target["expr"]) == fleet:
                    out.append((p["title"], target))
    return out


def has_number(result: list[dict[str, Any]]) -> bool:
    """Whether a query's result holds a finite number (an instant or a range query's)."""
    for series in result:
        points = series.get("values") or [series["value"]]
        if any(math.isfinite(float(v)) for _, v in points):
            return True
    return False

"""bench page: what the status page costs the agent, how fast it follows, how fast it renders.

A child process (``python -m bench.page serve agent``) runs the agent's real HTTP server
(``reconciler.web.agent_routes.serve_agent``) over the scrape bench's snapshot: 1,000 current
task instances with
5 history instances each, the worst a node keeps. Like an idle agent after each resync pass, it
swaps in a new snapshot of new view objects with the same content every ``IDLE_SWAP`` seconds
(``BENCH_PAGE_IDLE_SWAP``, default 30: the agent's default resync interval), and on a command
from this process it changes one task and swaps that in. A real headless Chromium (the
system's, through chromium-driver) opens the page.

Figures (``name=value``):

* ``idle_cpu_no_page_pct`` and ``idle_cpu_one_page_pct``: the child's CPU, in percent of one
  core, over ``BENCH_PAGE_IDLE_SECONDS`` (default 90) with no page open and with one page open;
  ``page_idle_cpu_pct`` is the difference, what one watching page costs (goal < 0.05).
* ``update_p50_ms``, ``update_p99_ms``, ``update_max_ms``: from the child's swap of a changed
  snapshot to the page's DOM holding the change (a MutationObserver's timestamp in the browser,
  on the same wall clock), over ``BENCH_PAGE_UPDATES`` changes (default 30; goal < 100).
* ``render_1000_load_ms``: navigation start to the load event (the server-rendered page), and
  ``render_1000_live_ms``: to the first event applied (the script's own render of every row),
  medians over 5 loads (goal < 1000); ``page_html_bytes`` and ``full_event_bytes`` their sizes.

Then the same for the fleet manager's page, each figure prefixed ``manager_``: the child runs
the manager's route table (``reconciler.web.server.serve_routes`` with its ``ManagerPage``) over a
real ``FleetView`` of 20 nodes and 1,000 tasks (``bench/_page_fleet.py``); while idle, every
node's heartbeat arrives every ``HEARTBEAT`` seconds (5, the fleet default) as the manager's
watch applies it, and a command reports one task failed or running again. Its render figures
are ``manager_render_1000_load_ms`` and ``manager_render_1000_live_ms``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry

from bench._page_fleet import NODES_N, Fleet, node_id
from bench.scrape import build_snapshot
from bench.support import percentile
from reconciler.core.model import TaskState
from reconciler.core.snapshot import Changes, Snapshot
from reconciler.manager.page import ManagerPage
from reconciler.observe.metrics import Metrics
from reconciler.testing.polling import wait_until
from reconciler.testing.ports import free_port
from reconciler.web.agent_routes import serve_agent
from reconciler.web.server import Route, serve_routes

IDLE_SWAP = float(os.environ.get("BENCH_PAGE_IDLE_SWAP", "30"))
IDLE_SECONDS = float(os.environ.get("BENCH_PAGE_IDLE_SECONDS", "90"))
UPDATES = int(os.environ.get("BENCH_PAGE_UPDATES", "30"))
LOADS = 5
TARGET = "svc-0500"
MANAGER_TARGET = "svc25-10"
HEARTBEAT = 5.0
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


# ------------------------------------------------------------------------------ the child


class Source:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.changes = Changes()

    def __call__(self) -> Snapshot:
        return self.snap

    def swap(self, snap: Snapshot) -> None:
        self.snap = snap
        self.changes.bump()


def changed(snap: Snapshot, n: int) -> Snapshot:
    """``snap`` with TARGET's current instance failed or running, and message ``update n``."""
    state = TaskState.FAILED if n % 2 else TaskState.RUNNING
    tasks = tuple(
        replace(t, state=state, message=f"update {n}", updated_at=time.time())
        if t.name == TARGET and t.current
        else t
        for t in snap.tasks
    )
    return replace(snap, tasks=tasks)


async def follow_commands(change: Callable[[int], None]) -> None:
    """For each number read from stdin: ``change(n)``, then write the time it was made."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        n = int(line)
        stamp = time.time()
        change(n)
        sys.stdout.write(f"{stamp!r}\n")
        sys.stdout.flush()


async def serve_manager_child(port: int) -> None:
    fleet = Fleet()
    page = ManagerPage(fleet.snapshots.current)
    routes: dict[str, Route] = {"/healthz": lambda: (200, "text/plain", b"ok\n")}
    server = await serve_routes(
        "127.0.0.1", port, routes, page=page, changes=fleet.snapshots.changes
    )

    async def heartbeats() -> None:
        # every node beats once per HEARTBEAT, spread out as real nodes are
        i = 0
        while True:
            await asyncio.sleep(HEARTBEAT / NODES_N)
            fleet.beat(node_id(i % NODES_N))
            i += 1

    beats = asyncio.create_task(heartbeats())
    try:
        await follow_commands(lambda n: fleet.change(MANAGER_TARGET, n))
    finally:
        beats.cancel()
        server.close()
        await server.wait_closed()


async def serve_child(port: int) -> None:
    now = time.time()
    source = Source(replace(build_snapshot(now), started_at=now - 3600, desired_applied_at=now))
    metrics = Metrics(snapshot=source, registry=CollectorRegistry())
    server = await serve_agent(
        "127.0.0.1", port, snapshot=source, metrics=metrics, changes=source.changes
    )

    async def idle_swaps() -> None:
        while True:
            await asyncio.sleep(IDLE_SWAP)
            # what an idle agent does after a resync pass: new view objects, nothing new in them
            snap = source.snap
            source.swap(replace(snap, tasks=tuple(replace(t) for t in snap.tasks)))

    swapper = asyncio.create_task(idle_swaps())
    try:
        await follow_commands(lambda n: source.swap(changed(source.snap, n)))
    finally:
        swapper.cancel()
        server.close()
        await server.wait_closed()


# ----------------------------------------------------------------------------- the parent


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid``, in nanoseconds (schedstat, not 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total


def idle_cpu_pct(pid: int, seconds: float) -> float:
    start_cpu, start = cpu_ns(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_ns(pid) - start_cpu) / 1e9 / (time.monotonic() - start) * 100


def browser(profile: str) -> Any:
    """A headless Chromium (the system's, through chromium-driver) on a fresh ``profile``."""
    # Imported here: the server child this bench measures (``bench.page serve``) imports this
    # module too, and selenium would add about 10 MB and 0.06 s to the process being measured.
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def load_times(driver: Any, url: str) -> tuple[float, float]:
    """(load event, first event applied), in ms from navigation start."""
    driver.get(url)
    wait_until(
        lambda: bool(
            driver.execute_script("return performance.getEntriesByName('reconciler:live').length")
        ),
        within=60,
        what="the page's first event",
    )
    times = driver.execute_script(
        "const nav = performance.getEntriesByType('navigation')[0];"
        "return [nav.loadEventEnd, performance.getEntriesByName('reconciler:live')[0].startTime];"
    )
    return float(times[0]), float(times[1])


# Per page: the element whose children change, and the target's row in it.
WATCH = """
const [parent, row] = {
  agent: [document.getElementById("tasks"),
          (p) => [...p.tBodies].find((b) => b.dataset.name === arguments[0])?.rows[0]],
  manager: [document.getElementById("tasks").tBodies[0],
            (p) => [...p.rows].find((r) => r.dataset.key.endsWith("." + arguments[0]))],
}[arguments[1]];
window.__seen = {};
window.__want = null;
new MutationObserver(() => {
  const want = window.__want;
  if (want === null || window.__seen[want] !== undefined) return;
  const found = row(parent);
  if (found && found.textContent.includes(want)) {
    window.__seen[want] = performance.timeOrigin + performance.now();
  }
}).observe(parent, {childList: true});
"""


def update_latencies(driver: Any, child: subprocess.Popen[str], kind: str) -> list[float]:
    assert child.stdin is not None and child.stdout is not None
    driver.execute_script(WATCH, TARGET if kind == "agent" else MANAGER_TARGET, kind)
    out: list[float] = []
    for n in range(1, UPDATES + 1):
        want = f"update {n}"
        driver.execute_script("window.__want = arguments[0]", want)
        child.stdin.write(f"{n}\n")
        child.stdin.flush()
        swapped = float(child.stdout.readline())

        def seen(want: str = want) -> Any:
            return driver.execute_script("return window.__seen[arguments[0]]", want)

        wait_until(lambda: seen() is not None, within=30, what=f"the page to show {want!r}")
        out.append(float(seen()) - swapped * 1000)
        time.sleep(0.2)
    return out


def size(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as r:
        return len(r.read())


def first_event_size(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as r:
        fp: IO[bytes] = r
        while line := fp.readline():
            if line.startswith(b"data: "):
                json.loads(line[len(b"data: ") :])
                return len(line)
    return 0


def measure(kind: str) -> dict[str, float]:
    """Every figure of one page (``agent`` or ``manager``), served by a child process."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.page", "serve", kind, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    driver = None
    profile = tempfile.mkdtemp(prefix="rcb-page-", dir="/tmp")
    try:
        wait_until(lambda: _answers(base), within=60, what="the page server")
        html_bytes = size(base + "/")
        event_bytes = first_event_size(base + "/v1/events")
        time.sleep(2)  # let the closed stream and the start settle
        no_page = idle_cpu_pct(child.pid, IDLE_SECONDS)

        driver = browser(profile)
        loads = [load_times(driver, base + "/") for _ in range(LOADS)]
        time.sleep(2)
        one_page = idle_cpu_pct(child.pid, IDLE_SECONDS)
        latencies = update_latencies(driver, child, kind)
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        child.terminate()
        child.wait(30)
    return {
        "no_page": no_page,
        "one_page": one_page,
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies),
        "load": statistics.median(t[0] for t in loads),
        "live": statistics.median(t[1] for t in loads),
        "html_bytes": html_bytes,
        "event_bytes": event_bytes,
        "updates": len(latencies),
    }


def report(f: dict[str, float], prefix: str = "") -> None:
    p = prefix
    print(
        f"{p}idle_cpu_no_page_pct={f['no_page']:.4f} {p}idle_cpu_one_page_pct={f['one_page']:.4f}"
    )
    print(f"{p}page_idle_cpu_pct={f['one_page'] - f['no_page']:.4f}")  # signed: < 0 is noise
    print(
        f"{p}update_p50_ms={f['p50']:.1f} {p}update_p99_ms={f['p99']:.1f} "
        f"{p}update_max_ms={f['max']:.1f}"
    )
    print(f"{p}render_1000_load_ms={f['load']:.0f} {p}render_1000_live_ms={f['live']:.0f}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        child = serve_child if sys.argv[2] == "agent" else serve_manager_child
        asyncio.run(child(int(sys.argv[3])))
        return
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"bench page needs {path} (run scripts/setup)")
    agent = measure("agent")
    report(agent)
    print(
        f"tasks_current=1000 instances_total=6000 page_html_bytes={agent['html_bytes']:.0f} "
        f"full_event_bytes={agent['event_bytes']:.0f} idle_seconds={IDLE_SECONDS:.0f} "
        f"idle_swap_every_s={IDLE_SWAP:.0f} updates={agent['updates']:.0f}"
    )
    manager = measure("manager")
    report(manager, "manager_")
    print(
        f"manager_nodes={NODES_N} manager_tasks=1000 "
        f"manager_page_html_bytes={manager['html_bytes']:.0f} "
        f"manager_full_event_bytes={manager['event_bytes']:.0f} "
        f"manager_heartbeat_every_s={HEARTBEAT:.0f} manager_updates={manager['updates']:.0f}"
    )


def _answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
            return int(r.status) in (200, 503)
    except OSError:
        return False


if __name__ == "__main__":
    main()

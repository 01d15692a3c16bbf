"""What every test may use: the fakes, the real servers, and the per-test timeout's report.

- ``clock``, ``executor``, ``store``: a fake clock, the fake runtime on it, and a RocksDB store
  in the test's temporary directory; ``make_task`` builds a task with only what a test states.
- ``nats_server`` and ``nats_cluster``: the one way a test gets a real ``nats-server -js``
  (``reconciler.testing.natsserver``), on free loopback ports with a store of its own, killed at
  the end. A module marked ``nats_config(extra=..., env=..., files=...)`` gets its server with
  that config text appended, those environment variables and those files beside the config (the
  shipped permissions, say). ``fleet`` is that server with the fleet's buckets made
  (``tests.manager.harness.Fleet``), for tests that run managers and agents on it.
- ``prometheus``: starts Debian's ``prometheus`` scraping the given targets (``tests/prometheus``).
- A missing component (nats-server, prometheus) fails the test under CI and skips it elsewhere
  (``tests.contract.missing``).
- **The per-test timeout** (pytest-timeout, set in pyproject.toml): when a test runs past it,
  the failure names where every asyncio task of the running loop waits (``Task.print_stack``
  shows only a coroutine's own frame; ``reconciler.testing.tasks`` follows its awaits down),
  then every thread's stack, so a hang fails in minutes and says where it waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import nats
import pytest

from reconciler.core.clock import FakeClock
from reconciler.core.model import Resources, Task, TaskSpec, TaskState, TaskStatus
from reconciler.store.rocks import RocksStore
from reconciler.testing import natsserver
from reconciler.testing.fake import FakeExecutor
from reconciler.testing.natsserver import NatsServer, NatsServerMissing
from reconciler.testing.tasks import dump_tasks
from tests.contract import missing
from tests.manager.harness import Fleet
from tests.prometheus import Prometheus, PrometheusMissing, running_prometheus

_REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def executor(clock: FakeClock) -> FakeExecutor:
    return FakeExecutor(clock=clock)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RocksStore]:
    s = RocksStore.open(tmp_path / "state")
    yield s
    s.close()


def make_task(
    task_id: str = "t1",
    *,
    name: str | None = None,
    desired: TaskState = TaskState.RUNNING,
    state: TaskState = TaskState.NEW,
    image: str = "localhost/busybox:latest",
    memory: int | None = None,
) -> Task:
    return Task(
        id=task_id,
        spec=TaskSpec(name=name or f"n{task_id}", image=image, resources=Resources(memory=memory)),
        desired_state=desired,
        status=TaskStatus(state=state),
    )


# ------------------------------------------------------------------------------ NATS


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "nats_config(extra, env, files): the nats_server fixture's config text, environment "
        "and files beside the config",
    )


@pytest.fixture
def nats_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NatsServer]:
    """A running ``nats-server -js`` of this test's own; see the module docstring."""
    marker = request.node.get_closest_marker("nats_config")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    files: dict[str, Path] = options.pop("files", {})
    try:
        server = NatsServer(tmp_path / "nats", **options)
    except NatsServerMissing as err:
        missing(str(err))
    for name, source in files.items():
        shutil.copy(source, server.dir / name)
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
async def fleet(nats_server: NatsServer) -> AsyncIterator[Fleet]:
    """The fleet's buckets on ``nats_server``; see the module docstring."""
    nc = await nats.connect(nats_server.url)
    f = Fleet([nats_server.url])
    await f.init(nc)
    await nc.close()
    yield f


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[Sequence[NatsServer]]:
    """Three clustered ``nats-server -js``, each routed to the other two; killed at the end."""
    try:
        with natsserver.nats_cluster(tmp_path / "nats") as servers:
            yield servers
    except NatsServerMissing as err:
        missing(str(err))


# ------------------------------------------------------------------------ Prometheus


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str, str], Prometheus]]:
    """``start(job, target)``: a real Prometheus scraping ``target`` every second as ``job``;
    every one started is stopped at the end."""
    started = itertools.count(1)
    with contextlib.ExitStack() as stack:

        def start(job: str, target: str) -> Prometheus:
            workdir = tmp_path / f"prometheus-{next(started)}"
            try:
                return stack.enter_context(running_prometheus(workdir, job, [target]))
            except PrometheusMissing as err:
                missing(str(err))

        yield start


# ------------------------------------------------------------------ per-test timeout


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's signal method, with a report that names where asyncio tasks wait."""
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own timer

    def on_timeout(signum: int, frame: FrameType | None) -> None:
        __tracebackhide__ = True
        pytest.fail(
            f"Timeout: the test ran past {settings.timeout:.0f}s\n\n{_where_it_waits(frame)}",
            pytrace=False,
        )

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout's protocol
    signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


def _where_it_waits(interrupted: FrameType | None) -> str:
    """Every asyncio task of the running loop and where it waits; then the main thread's stack
    where the timeout interrupted it (from its first frame in the repository: pytest's own are
    noise), unless a loop runs there (its tasks said it all); then every other thread's."""
    loop = asyncio._get_running_loop()
    parts = [dump_tasks(loop) if loop is not None else "no asyncio event loop is running"]
    if loop is None and interrupted is not None:
        stack = traceback.extract_stack(interrupted)
        ours = [i for i, f in enumerate(stack) if _ours(f.filename)]
        stack = traceback.StackSummary.from_list(stack[ours[0] :] if ours else stack)
        parts += ["main thread:", "".join(stack.format()).rstrip()]
    names = {t.ident: t.name for t in threading.enumerate()}
    main = threading.main_thread().ident
    for ident, frame in sys._current_frames().items():
        if ident != main:
            parts.append(f"thread {names.get(ident, ident)!r}:")
            parts.append("".join(traceback.format_stack(frame)).rstrip())
    return "\n".join(parts)


def _ours(filename: str) -> bool:
    return filename.startswith(str(_REPO)) and not filename.startswith(str(_REPO / ".venv"))

"""The composition root: the one module that picks concrete implementations.

Everything else in ``reconciler`` receives its collaborators as arguments, which is what keeps
the core testable with fakes. Here the real ones are chosen: the podman runtime, the session
(the desired directory, or the fleet over NATS in fleet mode), the system clock and the HTTP
server. import-linter allows this module, and no other under ``reconciler/``, to import
``runtime``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler import __version__
from reconciler.cli.exits import EXIT_FAILURE, EXIT_OK, Failure, NotFound
from reconciler.core.clock import SystemClock

if TYPE_CHECKING:
    import concurrent.futures
    from typing import Any

    from reconciler.agent.agent import Agent
    from reconciler.cli.agent import AgentOptions
    from reconciler.core.model import NodeDescription
    from reconciler.core.session import Session
    from reconciler.store.recovery import OpenedStore

__all__ = ["container_logs", "read_podman_info", "run_agent"]

log = logging.getLogger("reconciler")

BOOT_ID_ENV = "RECONCILER_TEST_BOOT_ID"
"""For tests only, and undocumented on purpose: the boot id the agent takes instead of the
kernel's, so an end-to-end test can make the agent see a host reboot."""


def read_podman_info(url: str) -> concurrent.futures.Future[dict[str, Any] | None]:
    """Ask podman for its ``info`` in a thread of its own, now (see ``earlyinfo.read_info``):
    the node description readiness waits for is then ready when the agent needs it. Read-only,
    so it may begin before anything else is checked."""
    import concurrent.futures
    import threading

    future: concurrent.futures.Future[dict[str, Any] | None] = concurrent.futures.Future()

    def read() -> None:
        try:
            from runtime.podman.earlyinfo import read_info

            future.set_result(read_info(url))
        except BaseException as err:  # a bug: describe() then asks podman itself
            future.set_exception(err)

    threading.Thread(target=read, name="podman-info", daemon=True).start()
    return future


async def run_agent(
    opts: AgentOptions,
    opened: OpenedStore,
    node_id: str,
    info: concurrent.futures.Future[dict[str, Any] | None] | None = None,
) -> int:
    """Wire and run the agent until SIGTERM or SIGINT; containers keep running. ``info`` is a
    ``podman info`` already asked for on ``opts.podman_url``."""
    import sys

    from reconciler.agent.agent import Agent, AgentConfig
    from reconciler.web import server as http
    from runtime.podman.discovery import find_podman, rediscovery
    from runtime.podman.executor import PodmanExecutor

    clock = SystemClock()
    agent = Agent(
        config=AgentConfig(
            node_id=node_id,
            resync_interval=opts.resync_interval,
            labels=opts.labels,
            stats_interval=opts.stats_interval,
            state_dir=str(opts.state_dir),
            boot_id=os.environ.get(BOOT_ID_ENV) or None,
            image_gc_threshold=opts.image_gc_threshold,
        ),
        store=opened.store,
        clock=clock,
        store_origin=opened.origin,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host, port = opts.listen
    try:
        server = await http.serve(
            host, port, snapshot=agent.snapshot, metrics=agent.metrics, changes=agent.changes
        )
    except OSError as err:
        print(f"reconciler: cannot listen on {host}:{port}: {err}", file=sys.stderr)
        return EXIT_FAILURE
    log.info("listening addr=%s:%d", host, port)

    async def serve_http() -> None:
        """The supervised HTTP loop: serve; if the server fails, bind again."""
        nonlocal server
        if not server.is_serving():
            server.close()
            server = await http.serve(
                host, port, snapshot=agent.snapshot, metrics=agent.metrics, changes=agent.changes
            )
        await server.serve_forever()

    url, service = await asyncio.to_thread(find_podman, opts.podman_url, opts.state_dir)
    if info is None or url != opts.podman_url:
        info = read_podman_info(url)
    executor = PodmanExecutor(
        url=url,
        node_id=node_id,
        clock=clock,
        observer=agent,
        agent_version=__version__,
        discover=rediscovery(opts.podman_url, opts.state_dir),
        image_gc_threshold=opts.image_gc_threshold,
        node_info=_no_failure(asyncio.wrap_future(info)),
    )
    session = _session(opts, node_id, agent, clock)
    try:
        await agent.run(executor, session, stop, loops={"http": serve_http})
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
        if service is not None:
            await asyncio.to_thread(service.stop)
    log.info("stopped")
    return EXIT_OK


async def _no_failure(
    info: Awaitable[dict[str, Any] | None],
) -> dict[str, Any] | None:
    try:
        return await info
    except Exception:
        return None  # describe() asks podman itself


def _session(opts: AgentOptions, node_id: str, agent: Agent, clock: SystemClock) -> Session:
    if opts.manager is None:
        from reconciler.sessions.files import FileSession

        return FileSession(opts.desired)
    from reconciler.fleet.connect import redact
    from reconciler.sessions.nats import NatsSession

    def describe() -> tuple[NodeDescription | None, bool]:
        snap = agent.snapshot()
        return snap.node, snap.ready

    log.info("fleet mode managers=%s", ",".join(redact(u) for u in opts.manager.servers))

    def conditions() -> dict[str, bool]:
        return {c.key: holds for c, holds in agent.snapshot().conditions}

    return NatsSession(
        node_id=node_id,
        options=opts.manager,
        clock=clock,
        describe=describe,
        conditions=conditions,
        labels=opts.labels,
    )


def container_logs(
    state_dir: Path, podman_url: str | None, ref: str, *, follow: bool, tail: int | None
) -> None:
    """Print the container logs of ``ref`` (a container id or name). Raises ``Failure`` when
    no podman answers and ``NotFound`` when podman has no such container."""
    from runtime.podman.discovery import answers, candidates
    from runtime.podman.logs import container_logs as podman_logs

    urls = [podman_url] if podman_url else candidates(state_dir)
    url = next((u for u in urls if answers(u)), None)
    if url is None:
        raise Failure("no podman API answers; pass --podman-url")
    try:
        podman_logs(url, ref, follow=follow, tail=tail)
    except LookupError as err:
        raise NotFound(str(err)) from err

"""The one process runner: signals, supervised HTTP, health and readiness, shutdown.

``reconciler run`` and ``reconciler manager run`` both end here. The runner serves the program's
own routes with ``/healthz`` (its supervisor's verdict: every loop alive) and ``/readyz`` (its
readiness), supervises the HTTP server as the loop ``http`` (a server that failed binds again),
turns SIGTERM and SIGINT into a stop, and closes the server (and its event streams) once the
program has stopped. The page and ``/v1/*`` answer only the ``Host`` names the operator gave
(``--http-host``) besides IP literals and ``localhost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from reconciler.core.snapshot import Changes
from reconciler.core.supervisor import Supervisor
from reconciler.web.server import DEFAULT_LIMITS, Limits, Route, Server, probe_routes, serve_routes
from reconciler.web.sse import Page

__all__ = ["CannotListen", "Program", "run_process"]

log = logging.getLogger("reconciler")


class CannotListen(Exception):
    """The HTTP address could not be bound."""


class Program(Protocol):
    """What ``run_process`` runs: an agent or a manager."""

    @property
    def supervisor(self) -> Supervisor:
        """The supervisor of the program's loops: ``/healthz`` is its verdict."""
        ...

    @property
    def program(self) -> str:
        """ "agent" or "manager": how ``/healthz`` names its loops."""
        ...

    def readiness(self) -> tuple[bool, str]: ...

    def routes(self) -> dict[str, Route]:
        """The program's own routes (``/healthz`` and ``/readyz`` are the runner's)."""
        ...

    @property
    def page(self) -> Page[Any]: ...

    @property
    def changes(self) -> Changes: ...

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then stop cleanly."""
        ...


async def run_process(
    program: Program,
    listen: tuple[str, int],
    *,
    stop: asyncio.Event | None = None,
    listening: Callable[[tuple[str, int]], None] | None = None,
    hosts: frozenset[str] = frozenset(),
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Serve ``program``'s routes on ``listen`` and run it until SIGTERM or SIGINT (or ``stop``).
    ``listening`` is told the address bound (port 0 picks a free one). ``hosts``: the names
    the page and ``/v1/*`` answer besides IP literals and ``localhost``; ``limits``: the
    server's connection limits (``reconciler.web.server.serve_routes``).

    ``/healthz`` is the program's supervisor's verdict, ``/readyz`` its readiness. The HTTP
    server is the supervised loop ``http``: if it fails it binds again. Raises ``CannotListen``
    when the address cannot be bound at the start (nothing has run then).
    """
    stop = stop or asyncio.Event()
    supervisor = program.supervisor
    routes: Mapping[str, Route] = program.routes() | probe_routes(
        lambda: supervisor.health(program.program), program.readiness
    )
    page, changes = program.page, program.changes
    host, port = listen

    async def bind() -> Server:
        return await serve_routes(
            host, port, routes, page=page, changes=changes, hosts=hosts, limits=limits
        )

    try:
        server = await bind()
    except OSError as err:
        raise CannotListen(f"cannot listen on {host}:{port}: {err}") from err
    bound = server.sockets[0].getsockname()[:2]
    log.info("listening addr=%s:%d", bound[0], bound[1])
    if listening is not None:
        listening((bound[0], bound[1]))

    async def serve_http() -> None:
        """The supervised HTTP loop: serve; if the server failed, bind again."""
        nonlocal server
        if not server.is_serving():
            server.close()
            server = await bind()
        await server.serve_forever()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    supervisor.start("http", serve_http)
    try:
        await program.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        server.close()  # and its event streams
        with contextlib.suppress(Exception):
            await server.wait_closed()

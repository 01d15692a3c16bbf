"""Putting one node's agent together: its store, runtime, session, metrics and page.

``assemble_agent`` is the one place an agent is built, for ``reconciler run``, the test
harnesses and the benchmarks alike; they differ only in what they hand in (a fake runtime, an
in-memory session, a fake clock). Without a runtime, the agent runs on podman, found (or a
service of its own started) when it starts, after its HTTP server is up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler import __version__
from reconciler.agent.agent import Agent, AgentConfig
from reconciler.core.clock import Clock, SystemClock
from reconciler.core.executor import Executor
from reconciler.core.policy import Policy
from reconciler.core.session import Session
from reconciler.core.snapshot import Changes
from reconciler.core.store import Store, StoreOrigin
from reconciler.core.supervisor import Supervisor
from reconciler.fleet.options import NatsOptions, redact
from reconciler.web.agent_page import AgentPage
from reconciler.web.agent_routes import agent_routes
from reconciler.web.server import Route
from reconciler.web.sse import Page
from runtime.podman.earlyinfo import read_info

if TYPE_CHECKING:
    from runtime.podman.discovery import OwnService

__all__ = [
    "AgentOptions",
    "AssembledAgent",
    "assemble_agent",
    "fleet_session",
    "read_podman_info",
]

log = logging.getLogger("reconciler")

PodmanInfo = concurrent.futures.Future[dict[str, Any] | None]

BOOT_ID_ENV = "RECONCILER_TEST_BOOT_ID"
"""For tests only, and undocumented on purpose: the boot id the agent takes instead of the
kernel's, so an end-to-end test can make the agent see a host reboot."""


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """Everything ``reconciler run`` was asked to do, checked."""

    state_dir: Path
    desired: Path
    listen: tuple[str, int]
    podman_url: str | None
    node_id: str | None
    resync_interval: float
    stats_interval: float
    labels: tuple[tuple[str, str], ...]
    manager: NatsOptions | None  # fleet mode when set
    image_gc_threshold: float
    http_hosts: frozenset[str] = frozenset()  # names the page answers to (--http-host)
    # for fleet tasks only: the desired directory is trusted
    policy: Policy = field(default_factory=Policy)


def read_podman_info(url: str) -> PodmanInfo:
    """Ask podman for its ``info`` in a thread of its own, now: podman takes about 0.2 s to
    answer it and readiness waits for the node description it gives, so ``reconciler run``
    asks as soon as the URL is known and the answer is ready when the agent needs it. Read-only,
    so it may begin before anything else is checked."""
    future: PodmanInfo = concurrent.futures.Future()

    def read() -> None:
        try:
            future.set_result(read_info(url))
        except BaseException as err:  # a bug: describe() then asks podman itself
            future.set_exception(err)

    threading.Thread(target=read, name="podman-info", daemon=True).start()
    return future


@dataclass
class AssembledAgent:
    """One node's agent with its session, ready to ``run``. ``executor`` is the runtime handed
    in; without one, ``run`` finds (or starts) podman first, once the HTTP server is up."""

    agent: Agent
    session: Session
    store: Store
    options: AgentOptions
    executor: Executor | None = None
    info: PodmanInfo | None = None  # a ``podman info`` already asked for
    own_service: OwnService | None = None  # the podman service the agent started itself
    program: str = "agent"

    @property
    def supervisor(self) -> Supervisor:
        return self.agent.supervisor

    def readiness(self) -> tuple[bool, str]:
        return self.agent.readiness()

    def routes(self) -> dict[str, Route]:
        return agent_routes(self.agent.snapshot, self.agent.metrics)

    @property
    def page(self) -> Page[Any]:
        return AgentPage(self.agent.snapshot)

    @property
    def changes(self) -> Changes:
        return self.agent.changes

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; containers keep running. Stops the podman service the
        agent started itself, if any."""
        try:
            if self.executor is None:
                self.executor, self.own_service = await _podman(self.options, self.agent, self.info)
            await self.agent.run(self.executor, self.session, stop)
        finally:
            if self.own_service is not None:
                await asyncio.to_thread(self.own_service.stop)


def assemble_agent(
    options: AgentOptions,
    *,
    store: Store,
    node_id: str,
    origin: StoreOrigin = StoreOrigin.OPENED,
    clock: Clock | None = None,
    runtime: Callable[[Agent], Executor] | None = None,
    session: Session | Callable[[Agent], Session] | None = None,
    info: PodmanInfo | None = None,
    boot_id: str | None = None,
) -> AssembledAgent:
    """Put one node's agent together over ``store``. Does no I/O.

    ``runtime`` makes the executor for the agent (without it, the podman runtime at
    ``options.podman_url``, found or started when the agent runs); ``session`` is the manager
    session, or what makes it for the agent (without it, the desired directory, or the fleet when
    ``options.manager`` is set);
    ``info`` is a ``podman info`` already asked for; ``boot_id`` stands in for the kernel's.
    """
    clock = clock or SystemClock()
    agent = Agent(
        config=AgentConfig(
            node_id=node_id,
            resync_interval=options.resync_interval,
            labels=options.labels,
            stats_interval=options.stats_interval,
            state_dir=str(options.state_dir),
            boot_id=boot_id if boot_id is not None else os.environ.get(BOOT_ID_ENV) or None,
            image_gc_threshold=options.image_gc_threshold,
            policy=options.policy if options.manager is not None else None,
        ),
        store=store,
        clock=clock,
        store_origin=origin,
    )
    return AssembledAgent(
        agent=agent,
        session=(
            _session(options, agent)
            if session is None
            else session(agent)
            if callable(session)
            else session
        ),
        store=store,
        options=options,
        executor=runtime(agent) if runtime is not None else None,
        info=info,
    )


async def _podman(
    options: AgentOptions, agent: Agent, info: PodmanInfo | None
) -> tuple[Executor, OwnService | None]:
    """The podman runtime: the socket found (or a service of the agent's own started)."""
    # Imported here, not at the top: podman-py and the runtime take about 0.2 s to import
    # (``python -X importtime``, best of 5), and ``reconciler run`` imports this module before
    # it sends the podman info request (``runtime.podman.earlyinfo``, ~0.25 s in podman), so
    # importing them here makes the two overlap instead of adding up.
    from runtime.podman.discovery import find_podman, rediscovery
    from runtime.podman.executor import PodmanExecutor

    url, service = await asyncio.to_thread(find_podman, options.podman_url, options.state_dir)
    if info is None or url != options.podman_url:
        info = read_podman_info(url)
    executor = PodmanExecutor(
        url=url,
        node_id=agent.config.node_id,
        clock=agent.clock,
        observer=agent.events,
        agent_version=__version__,
        discover=rediscovery(options.podman_url, options.state_dir),
        image_gc_threshold=options.image_gc_threshold,
        node_info=_no_failure(asyncio.wrap_future(info)),
    )
    return executor, service


async def _no_failure(info: Awaitable[dict[str, Any] | None]) -> dict[str, Any] | None:
    try:
        return await info
    except Exception:
        return None  # describe() asks podman itself


def _session(options: AgentOptions, agent: Agent) -> Session:
    if options.manager is None:
        # Imported only when chosen: a fleet node never loads watchfiles (about 0.03 s).
        from reconciler.sessions.files import FileSession

        return FileSession(options.desired)
    log.info("fleet mode managers=%s", ",".join(redact(u) for u in options.manager.servers))
    return fleet_session(agent, options.manager, labels=options.labels)


def fleet_session(
    agent: Agent, nats: NatsOptions, *, labels: tuple[tuple[str, str], ...] = (), **tuning: Any
) -> Session:
    """The agent's session with the fleet over NATS, describing the node from the agent's
    snapshot; ``tuning`` sets ``NatsSession``'s timings (tests shorten the heartbeat)."""
    # Imported only in fleet mode: a node on the desired directory never loads nats-py (about
    # 0.06 s and a few MB).
    from reconciler.sessions.nats import NatsSession

    return NatsSession(
        node_id=agent.config.node_id,
        options=nats,
        clock=agent.clock,
        describe=lambda: (agent.snapshot().node, agent.snapshot().ready),
        conditions=lambda: {c.key: holds for c, holds in agent.snapshot().conditions},
        labels=labels,
        bad_value=agent.metrics.session_bad_value,
        **tuning,
    )

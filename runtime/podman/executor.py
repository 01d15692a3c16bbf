"""``PodmanExecutor``: the podman runtime behind ``reconciler.core.executor.Executor``.

This module owns the runtime's shared resources and their lifetime: the podman calls with their
lanes of bounded thread pools (``client.PodmanAPI``), one event stream (``events.EventStream``),
the liveness probe (``probe.Liveness``) and the reachability flag behind
``reconciler_runtime_up``, and the registry of live controllers. It also owns the node-wide
operations: ``describe`` (podman info), ``remove_orphans`` and ``resync``, each a single list or
info call.

Startup never needs podman: ``start()`` only launches the event supervisor and the probe, which
connect in the background and keep retrying. The probe alone turns ``runtime_up`` to false, within
seconds of podman hanging; then every call in flight and the event stream are ended (their
waiters retry when podman is back), and calls fail at once until it answers again. The first
answer turns it back up, and the event stream reconnects at once. Nothing is restarted when
podman returns: containers keep running under conmon, and waiters re-attach by inspecting.
Waits that re-attach to containers this process did not start (after an agent restart, or an
event stream lost) take their first look from one shared list call (``listing``), not one
inspect each. The first ``describe`` (which readiness waits for) can take a ``podman info``
the composition root asked for while the agent was still starting (``node_info``).

When the URL came from discovery (``discover`` is given), discovery runs again while podman is
down, and the executor follows a socket that appears later; an explicit URL is never replaced.

``resync()`` is the level-triggered safety net behind the event stream: one relist of this
node's containers, compared with what every pending ``wait`` believes; any disagreement (a
container gone, or no longer running) makes that waiter re-inspect and judge. The same listing
says which images this node's containers use (``used_images``, for the image GC's records).

``usage()`` samples the running containers from the kernel's own files, with the pids podman
already gave (``runtime.podman.usage``), and OOM kills come from the kernel log
(``runtime.podman.oom``): neither calls podman.

**Images and disk.** The image store is podman's graph root (``podman info``'s
``store.graphRoot``, learnt from ``describe`` or, before that, from one info call when first
needed); its space is one ``statvfs``. While it is under ``image_gc_threshold`` percent free,
controllers refuse to pull (``reconciler.core.pulls``). Images are listed and removed by name or ID
for the image GC (``reconciler.agent.imagegc``), never forced.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Collection, Mapping
from typing import Any

from reconciler.core.clock import Clock
from reconciler.core.errors import PermanentError
from reconciler.core.executor import (
    DiskSpace,
    DriftKind,
    RuntimeContainer,
    RuntimeImage,
    RuntimeObserver,
    RuntimeUsage,
    Supervise,
)
from reconciler.core.model import NodeDescription, Task
from reconciler.core.pulls import pull_refusal
from runtime.podman.client import PodmanAPI
from runtime.podman.container import parse_timestamp_ns
from runtime.podman.controller import PodmanController
from runtime.podman.errors import ImageInUse, ImageMissing, NotFound
from runtime.podman.events import ContainerEvent, EventKind, EventStream
from runtime.podman.exits import ExitWatch
from runtime.podman.listing import Listing
from runtime.podman.oom import KernelLogOoms, OomKill
from runtime.podman.probe import Discover, Liveness
from runtime.podman.reach import Reachability
from runtime.podman.shared import Runtime
from runtime.podman.spec import (
    NODE_LABEL,
    ROLLED_BACK_FROM_LABEL,
    SPEC_HASH_LABEL,
    TASK_ID_LABEL,
    TASK_NAME_LABEL,
)
from runtime.podman.usage import Target, UsageReader

ORPHAN_STOP_TIMEOUT = 10.0
"""Seconds an orphan gets to exit on its stop signal before it is killed and removed."""


class PodmanExecutor:
    """Makes podman controllers for one node and owns their shared connection to podman."""

    def __init__(
        self,
        *,
        url: str,
        node_id: str,
        clock: Clock,
        observer: RuntimeObserver,
        agent_version: str,
        max_workers: int = 8,
        discover: Discover | None = None,
        image_gc_threshold: float,
        exit_watch: ExitWatch | None = None,
        node_info: Awaitable[Mapping[str, Any] | None] | None = None,
    ) -> None:
        """``discover``, when given, finds podman's socket again while podman is down (see the
        module docstring); leave it out for a URL the user gave. Pulls are refused while the
        image store has under ``image_gc_threshold`` percent free (0: never). ``exit_watch``
        replaces the watch on conmon's exit files (tests: one that cannot find them).
        ``node_info``, when given, is a ``podman info`` asked for at start-up (None if podman
        did not answer it): the first ``describe`` takes it rather than asking again."""
        if not node_id:
            raise ValueError("node_id must not be empty")
        self.url = url
        self.node_id = node_id
        self._agent_version = agent_version
        self._observer = observer
        self._reach = Reachability(observer, clock=clock)
        self._api = PodmanAPI(
            url=url, observer=observer, reachability=self._reach, max_workers=max_workers
        )
        self._events = EventStream(
            url=url, node_id=node_id, clock=clock, observer=observer, reachability=self._reach
        )
        self._liveness = Liveness(
            api=self._api,
            reachability=self._reach,
            clock=clock,
            discover=discover,
            moved=self._moved,
        )
        self._reach.add_listener(self._reachability_changed)
        self._rt = Runtime(
            api=self._api,
            events=self._events,
            clock=clock,
            observer=observer,
            node_id=node_id,
            is_up=lambda: self._reach.up,
            pull_refusal=self._pull_refusal,
            pulled=self._pulled,
            exits=exit_watch or ExitWatch(),
            listing=Listing(lambda: self._api.list(labels={NODE_LABEL: node_id})),
        )
        self._started = False
        self._closed = False
        self._usage = UsageReader()
        self._ooms = KernelLogOoms(self._oom_kill)
        self._graph_root: str | None = None
        self.image_gc_threshold = image_gc_threshold
        self._used_images: dict[str, str] = {}  # image id -> reference, at the last relist
        self._first_info = node_info
        self._pulled_images: dict[str, str] = {}  # pulled since the last relist

    # ------------------------------------------------------------------------ lifecycle

    async def start(self, *, supervise: Supervise | None = None) -> None:
        """Begin following podman's events and probing it, in the background. Never fails if
        podman is down. With ``supervise``, the event stream's loop runs under it."""
        if self._started:
            return
        self._started = True
        await self._events.start(supervise=supervise)
        await self._liveness.start()
        self._ooms.start()

    async def close(self) -> None:
        """Stop the probe, the event reader and the thread pools. Containers are left as they
        are."""
        if self._closed:
            return
        self._closed = True
        self._ooms.close()
        await self._liveness.close()
        await self._events.close()
        self._rt.exits.close()
        await self._api.close()

    def _reachability_changed(self, up: bool) -> None:
        if up:
            self._events.wake()
        else:
            # Hung or gone: nothing in flight will be answered. End it all now, so every
            # waiter retries when podman is back instead of waiting out its deadline.
            self._api.abort_inflight()
            self._events.interrupt()

    def _moved(self, url: str) -> None:
        self.url = url
        self._api.url = url
        self._events.set_url(url)

    async def __aenter__(self) -> PodmanExecutor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def runtime_up(self) -> bool:
        """Whether podman answered the last call or stream connection."""
        return self._reach.up

    @property
    def events(self) -> EventStream:
        return self._events

    @property
    def exits(self) -> ExitWatch:
        return self._rt.exits

    @property
    def api(self) -> PodmanAPI:
        return self._api

    @property
    def liveness(self) -> Liveness:
        return self._liveness

    @property
    def listing(self) -> Listing:
        """The shared first looks of re-attaching waits (``calls`` counts its list calls)."""
        assert self._rt.listing is not None
        return self._rt.listing

    async def ping(self) -> bool:
        """One ``/_ping`` in the probe's own lane (never queued behind other calls); updates
        ``runtime_up``."""
        return await self._liveness.check()

    # ------------------------------------------------------------------------- executor

    async def describe(self) -> NodeDescription:
        """The node from ``podman info``: the first call takes ``node_info``'s answer when
        there is one, the others ask podman. Raises ``TemporaryError`` when podman does not
        answer."""
        first, self._first_info = self._first_info, None
        info: Mapping[str, Any] | None = await first if first is not None else None
        if info is None:
            info = await self._api.info()
        host: dict[str, Any] = info.get("host") or {}
        version: dict[str, Any] = info.get("version") or {}
        distribution = host.get("distribution") or {}
        self._graph_root = str((info.get("store") or {}).get("graphRoot") or "") or None
        return NodeDescription(
            hostname=str(host.get("hostname") or ""),
            os=str(host.get("os") or distribution.get("distribution") or "linux"),
            arch=str(host.get("arch") or ""),
            cpus=int(host.get("cpus") or 0),
            memory_bytes=int(host.get("memTotal") or 0),
            runtime_name="podman",
            runtime_version=str(version.get("Version") or ""),
            agent_version=self._agent_version,
        )

    def controller(self, task: Task) -> PodmanController:
        """A controller for ``task``. Raises ``SpecError`` (a PermanentError) for a bad spec."""
        if task.node_id and task.node_id != self.node_id:
            raise PermanentError(f"task {task.id} is assigned to node {task.node_id}")
        ctlr = PodmanController(self._rt, task)
        self._rt.registry[ctlr.name] = ctlr
        return ctlr

    async def list_containers(self) -> list[RuntimeContainer]:
        """This node's labelled containers, from one list call (no inspect per container)."""
        listed = await self._api.list(labels={NODE_LABEL: self.node_id})
        out: list[RuntimeContainer] = []
        for c in listed:
            labels = c.get("Labels") or {}
            task_id = labels.get(TASK_ID_LABEL)
            name = labels.get(TASK_NAME_LABEL)
            if not task_id or not name or labels.get(NODE_LABEL) != self.node_id:
                continue
            state = str(c.get("State") or "")
            code = c.get("ExitCode")
            out.append(
                RuntimeContainer(
                    task_id=str(task_id),
                    name=str(name),
                    container_id=str(c.get("Id") or ""),
                    spec_hash=labels.get(SPEC_HASH_LABEL),
                    running=state in ("running", "paused", "stopping"),
                    started=_started(c),
                    exit_code=int(code) if isinstance(code, int) else None,
                    created=_created(c.get("Created")),
                    rolled_back_from=labels.get(ROLLED_BACK_FROM_LABEL) or None,
                )
            )
        return out

    async def remove_orphans(self, known_task_ids: Collection[str]) -> list[str]:
        known = set(known_task_ids)
        listed = await self._api.list(labels={NODE_LABEL: self.node_id})
        orphans: list[tuple[str, str]] = []
        for c in listed:
            labels = c.get("Labels") or {}
            task_id = labels.get(TASK_ID_LABEL)
            # Only this node's labelled containers; the list filter already asked for the
            # node label, and the check is repeated so that nothing else is ever touched.
            if not task_id or labels.get(NODE_LABEL) != self.node_id or task_id in known:
                continue
            orphans.append((str(c.get("Id")), str(task_id)))

        async def remove(cid: str, task_id: str) -> str | None:
            try:
                await self._api.remove(cid, stop_timeout=ORPHAN_STOP_TIMEOUT)
            except NotFound:
                return None
            self._observer.drift_corrected(DriftKind.ORPHAN_REMOVED)
            return task_id

        results = await asyncio.gather(
            *(remove(cid, tid) for cid, tid in orphans), return_exceptions=True
        )
        removed: list[str] = []
        first_error: BaseException | None = None
        for r in results:
            if isinstance(r, BaseException):
                first_error = first_error or r
            elif r is not None:
                removed.append(r)
        if first_error is not None and not removed:
            raise first_error
        return removed

    async def resync(self) -> None:
        """Relist this node's containers once and make every disagreeing waiter re-inspect.

        Raises ``TemporaryError`` when podman does not answer."""
        listed = await self._api.list(labels={NODE_LABEL: self.node_id})
        by_name: dict[str, dict[str, Any]] = {}
        used: dict[str, str] = {}
        for c in listed:
            for n in c.get("Names") or ():
                by_name[str(n).lstrip("/")] = c
            image_id = str(c.get("ImageID") or "")
            if image_id:
                used[image_id] = str(c.get("Image") or "")
        self._used_images, self._pulled_images = used, {}
        for cname, ctlr in list(self._rt.registry.items()):
            ctlr.observe(by_name.get(cname))
        for name in self._events.watched_names():
            seen = by_name.get(name)
            if seen is None or str(seen.get("State") or "") != "running":
                self._events.post(name, ContainerEvent(EventKind.RECHECK, name, detail="resync"))

    # ------------------------------------------------------------------------- usage

    async def usage(self) -> RuntimeUsage:
        """Usage of every running container a controller knows, from the kernel's files (see
        ``runtime.podman.usage``); no podman call. The graph root is known once ``describe``
        has run."""
        targets = []
        for ctlr in list(self._rt.registry.values()):
            status = ctlr.container_status()
            if status.container_id and status.pid and status.exit_code is None:
                task = ctlr.task
                targets.append(Target(task.id, task.name, status.container_id, status.pid))
        tasks = await asyncio.to_thread(self._usage.read, targets) if targets else []
        return RuntimeUsage(tasks=tuple(tasks), image_store=self._graph_root)

    def _oom_kill(self, kill: OomKill) -> None:
        """The kernel killed a process for memory: tell its controller and the observer."""
        for ctlr in list(self._rt.registry.values()):
            if ctlr.container_status().container_id == kill.container_id:
                ctlr.oom_killed(kill.pid, kill.process)
                self._observer.oom_killed(ctlr.task.name, ctlr.task.id)
                return

    # ------------------------------------------------------------------------- images

    def used_images(self) -> Mapping[str, str]:
        """Images of this node's containers at the last ``resync``, and images pulled since:
        image ID -> the reference used. No I/O."""
        return {**self._used_images, **self._pulled_images}

    def _pulled(self, image_id: str, ref: str) -> None:
        self._pulled_images[image_id] = ref

    async def list_images(self) -> list[RuntimeImage]:
        """Every image in podman's store, from one list call."""
        out = []
        for img in await self._api.images():
            tags = tuple(str(t) for t in img.get("RepoTags") or () if t and "<none>" not in t)
            containers = img.get("Containers")
            out.append(
                RuntimeImage(
                    id=str(img.get("Id") or ""),
                    names=tags,
                    size=int(img.get("Size") or 0),
                    containers=int(containers) if isinstance(containers, int) else 0,
                )
            )
        return [i for i in out if i.id]

    async def remove_image(self, ref: str) -> bool:
        """Remove one name of an image, or an untagged image by ID; never forced. Whether the
        image itself went (a container using it keeps it)."""
        try:
            return await self._api.remove_image(ref)
        except (ImageInUse, ImageMissing, NotFound):
            return False

    async def image_store_space(self) -> DiskSpace | None:
        """``statvfs`` of podman's graph root (learnt from ``podman info`` once)."""
        if self._graph_root is None:
            info = await self._api.info()
            self._graph_root = str((info.get("store") or {}).get("graphRoot") or "") or None
        return disk_space(self._graph_root)

    async def _pull_refusal(self) -> str | None:
        if self.image_gc_threshold <= 0:
            return None
        return pull_refusal(await self.image_store_space(), self.image_gc_threshold)


def disk_space(path: str | None) -> DiskSpace | None:
    """The space of the filesystem holding ``path`` (None when it cannot be read)."""
    if not path:
        return None
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return DiskSpace(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def _created(value: object) -> float:
    """podman's list ``Created``: an RFC 3339 string (libpod) or Unix seconds."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return parse_timestamp_ns(value) / 1e9
    return 0.0


def _started(listed: dict[str, Any]) -> bool:
    state = str(listed.get("State") or "")
    if state in ("running", "paused", "stopping", "exited", "stopped"):
        return True
    started = listed.get("StartedAt")
    return isinstance(started, int | float) and started > 0

"""One task's podman container: the ``Controller`` that ``reconciler.core.lifecycle.do`` drives.

This module owns the per-task semantics of the podman runtime and keeps podman round trips to
one per step where it can:

* **prepare** is one ``create`` (the pull policy, ``reconciler.core.pulls``, adds a pull only when
  it must). A name conflict is resolved by one inspect: the same task id means
  ``TaskPrepared``. A rollback is pinned: one inspect of the container it rolls back to gives
  the image ID it is created from (no pull), so a tag moved to another build meanwhile cannot
  bring that build back; its container is labelled with the failed spec's hash. Without that
  container, the spec's image is used, and the status message says so.
* **start** is one ``start`` for a container this controller created and has no health check;
  an adopted container is inspected first, and one that has ever run counts as started
  (``TaskStarted``), so a restart of the agent never runs a container twice. With a health
  check, ``start`` returns only once the container is healthy (as SwarmKit's docker
  controller does): after the check's ``interval`` (podman counts no failure within
  ``startPeriod``), one check per interval until podman's cumulative verdict is "healthy";
  "unhealthy" stops the container and fails the start with the health message. A start
  cancelled meanwhile (an update) lets the check in flight finish, and a start called again
  resumes waiting for the verdict of the running container.
* **wait** watches the container's events *before* inspecting it once, so no exit can fall
  between the two; then it sleeps on the event queue (no thread, no polling). Events older than
  the container's ``StartedAt`` are ignored. A running adopted container is re-attached, an
  exited one is judged by its exit code, a missing one is ``ContainerGone``. After that
  inspect it also subscribes to the container's exit file (``runtime.podman.exits``): when
  conmon writes it, one inspect and one read of podman's event log decide whether the exit can
  be judged before podman's events tell of it (``runtime.podman.exitrule``: only a logged
  ``kill``); otherwise the events decide, as before.
* **health checks** keep running inside ``wait`` on the spec's interval through the injected
  clock, one ``GET /containers/{name}/healthcheck`` per interval. podman's verdict already
  counts retries; "unhealthy" stops the container and ends the task with ``ExitError`` and a
  health message.
* **drift**: an exit or removal this controller did not cause is counted as
  ``container_exited`` / ``container_missing``.
* **update** applies resource limits live and verifies them in the container's cgroup, because
  inspect on podman 4.3 does not reflect live updates; anything it cannot verify raises
  ``PermanentError`` so the instance is replaced.

Every call addresses the container by its name (``<task>.<instance id>``), which podman accepts
wherever it accepts an id; so a controller made after an agent restart needs no lookup before
its first call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from reconciler.core.clock import Clock
from reconciler.core.errors import (
    ContainerGone,
    ExitError,
    PermanentError,
    ReconcilerError,
    TaskPrepared,
    TaskStarted,
    TemporaryError,
)
from reconciler.core.executor import ContainerStatus, DriftKind, RuntimeObserver, RuntimeOp
from reconciler.core.model import Rollback, Task
from reconciler.core.pulls import PullResult, prepare_image
from runtime.podman import cgroups
from runtime.podman.client import PodmanAPI
from runtime.podman.errors import ImageMissing, NameConflict, NotFound
from runtime.podman.events import ContainerEvent, EventKind, EventStream, Watch
from runtime.podman.exitrule import ExitSeen, judge_exit_file
from runtime.podman.exits import ExitWatch
from runtime.podman.listing import Listed, Listing, parent_pid
from runtime.podman.spec import (
    TASK_ID_LABEL,
    container_name,
    cpu_limits,
    create_kwargs,
    runs_healthcheck,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

log = logging.getLogger(__name__)

CONNECT_GRACE = 10.0
"""How long ``wait`` waits for the event stream to (re)connect before reporting it down."""

REMOVAL_WINDOW = 0.5
"""Seconds after an unexplained exit in which a following "remove" event makes it a removal."""

_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


def parse_timestamp_ns(text: str | None) -> int:
    """podman's RFC 3339 timestamps with nanoseconds as integer ns since the epoch (0 if unset)."""
    if not text:
        return 0
    m = _TS.match(text.strip())
    if m is None:
        return 0
    base, frac, tz = m.groups()
    tzs = "+00:00" if tz in (None, "Z") else tz
    if len(tzs) == 5:
        tzs = tzs[:3] + ":" + tzs[3:]
    dt = datetime.fromisoformat(base + tzs)
    if dt.year <= 1:
        return 0
    secs = int(dt.astimezone(UTC).timestamp())
    ns = int((frac or "0").ljust(9, "0")[:9])
    return secs * 1_000_000_000 + ns


async def _never_refused() -> str | None:
    return None


@dataclass
class Runtime:
    """What every controller of one executor shares."""

    api: PodmanAPI
    events: EventStream
    clock: Clock
    observer: RuntimeObserver
    node_id: str
    registry: dict[str, PodmanController] = field(default_factory=dict)
    is_up: Callable[[], bool] = lambda: True
    pull_refusal: Callable[[], Awaitable[str | None]] = _never_refused
    """Why a pull may not happen now (the image store is short of space), or None."""
    pulled: Callable[[str, str], None] = lambda image_id, ref: None
    """Told of every pulled image: its ID and the reference it was pulled by."""
    exits: ExitWatch = field(default_factory=ExitWatch)
    """conmon's exit files, which tell of an exit before podman's events do."""
    listing: Listing | None = None
    """Shared first looks (one list call for many waits); None: one inspect each."""


class PodmanController:
    """Runs one task instance as one podman container."""

    def __init__(self, runtime: Runtime, task: Task) -> None:
        self._rt = runtime
        self._task = task
        rollback = task.rollback
        self._kwargs = create_kwargs(
            task.spec,
            task_id=task.id,
            node_id=runtime.node_id,
            rolled_back_from=rollback.failed_hash if rollback is not None else None,
        )
        self.name = container_name(task.spec, task.id)
        self._cid: str | None = task.status.container_id
        self._pid: int | None = task.status.pid
        self._conmon_pid = 0  # from the last inspect: where the exit directory is found
        self._exit_code: int | None = task.status.exit_code
        self._created_here = False  # created by this controller and not yet started
        self._started_here = False  # this controller's start call started the container
        self._stopping = False  # the agent itself is stopping or removing the container
        self._killed_outside = False
        self._oom_kills: list[tuple[int | None, str]] = []  # (pid, process) the kernel killed
        self._health_detail = "unhealthy"

    # ------------------------------------------------------------------------ accessors

    @property
    def task(self) -> Task:
        return self._task

    def container_status(self) -> ContainerStatus:
        return ContainerStatus(self._cid, self._pid, self._exit_code)

    def observe(self, listed: dict[str, Any] | None) -> None:
        """Take what a relist saw of this container (no I/O)."""
        if listed is None:
            return
        self._cid = str(listed.get("Id") or self._cid or "") or None
        pid = listed.get("Pid")
        if isinstance(pid, int) and pid > 0:
            self._pid = pid

    # -------------------------------------------------------------------------- prepare

    async def prepare(self) -> str | None:
        spec = self._task.spec
        rollback = self._task.rollback
        note = None
        if rollback is not None:
            pinned = await self._pinned_image(rollback)
            if pinned is not None:
                with contextlib.suppress(ImageMissing):
                    await self._create(image=pinned)
                    self._rt.observer.image_pulled(PullResult.PRESENT)
                    self._created_here = True
                    return None
            note = (
                f"rollback not pinned: container {rollback.image_from} is gone, "
                f"so its image could not be used; using {spec.image} as the spec names it"
            )
            log.warning("%s task=%s", note, self.name)
        pulled = await prepare_image(
            spec.image,
            spec.pull,
            create=self._create,
            pull=self._pull,
            refusal=self._rt.pull_refusal,
            observe=self._rt.observer.image_pulled,
        )
        self._created_here = True
        if pulled is not None:
            log.warning("%s task=%s", pulled, self.name)
        return "; ".join(n for n in (note, pulled) if n) or None

    async def _pinned_image(self, rollback: Rollback) -> str | None:
        """The image ID of the container a rollback is pinned to, or None if it is gone."""
        try:
            info = await self._rt.api.inspect(rollback.image_from)
        except NotFound:
            return None
        image = str(info.get("Image") or "")
        return image or None

    async def _create(self, image: str | None = None) -> None:
        """One create call (from ``image`` instead of the spec's when given); a name conflict
        means our container exists: adopt it."""
        kwargs = self._kwargs if image is None else {**self._kwargs, "image": image}
        try:
            self._cid = await self._rt.api.create(kwargs)
        except NameConflict:
            await self._adopt_existing()
            raise TaskPrepared() from None

    async def _pull(self) -> None:
        image = self._task.spec.image
        try:
            image_id = await self._rt.api.pull(image)
        except TemporaryError:
            raise
        except ReconcilerError as err:
            # A registry refusing is worth retrying too: every failed pull under missing or
            # always is temporary (docs/desired-state.md, "Images and pulls").
            raise TemporaryError(f"pulling image {image} failed: {err}") from err
        if image_id:
            self._rt.pulled(image_id, image)

    async def _adopt_existing(self) -> None:
        """The name is taken: it is ours if it carries this task's id."""
        try:
            info = await self._rt.api.inspect(self.name)
        except NotFound:
            raise TemporaryError(f"container {self.name} vanished while being created") from None
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(TASK_ID_LABEL) != self._task.id:
            raise PermanentError(
                f"container name {self.name} is taken by a container of another task"
            )
        self._take_inspect(info)

    # ---------------------------------------------------------------------------- start

    async def start(self) -> None:
        if not self._created_here:
            info = await self._inspect_or_gone()
            state = info.get("State") or {}
            if state.get("Running") or parse_timestamp_ns(state.get("StartedAt")) > 0:
                # It has run before (maybe still runs): never run it a second time. A start
                # that was cancelled while it waited for the health verdict resumes that wait.
                if state.get("Running") and runs_healthcheck(self._task.spec):
                    await self._until_healthy(_health_status(state))
                raise TaskStarted()
        self._stopping = False
        try:
            started = await self._rt.api.start(self.name)
        except NotFound:
            raise ContainerGone() from None
        finally:
            # Started or not: a start cancelled while podman ran it must look at the container
            # when retried, and so resume the health verdict rather than skip it.
            self._created_here = False
        self._started_here = started
        if not started:
            raise TaskStarted()
        if runs_healthcheck(self._task.spec):
            await self._until_healthy("starting")

    async def _until_healthy(self, status: str) -> None:
        """Run the health check every interval until podman's cumulative verdict is healthy.

        ``status`` is the verdict known so far. An unhealthy verdict stops the container and
        raises ``ExitError``; a container that stopped meanwhile is left to ``wait``, which
        judges its exit. Retries are podman's, never counted here a second time."""
        hc = self._task.spec.healthcheck
        assert hc is not None
        while status != "healthy":
            if status == "unhealthy":
                await self._fail_unhealthy(self._health_detail)
            await self._rt.clock.sleep(hc.interval)
            try:
                verdict = await self._rt.api.healthcheck(self.name, check_timeout=hc.timeout)
            except NotFound:
                self._gone()
            except TemporaryError:
                raise
            except ReconcilerError:
                # The check could not run: the container no longer runs (wait judges the
                # exit), or podman refused it once; look at the container.
                info = await self._inspect_or_gone()
                state = info.get("State") or {}
                if not state.get("Running"):
                    return
                status = _health_status(state)
                continue
            if str(verdict.get("Status", "")).lower() == "healthy":
                return
            # One failed check reads "unhealthy" here; the stored verdict applies the retries
            # and the start period.
            info = await self._inspect_or_gone()
            state = info.get("State") or {}
            if not state.get("Running"):
                return
            stored = state.get("Health") or state.get("Healthcheck") or {}
            status = _health_status(state)
            self._health_detail = _health_detail(stored)

    # ----------------------------------------------------------------------------- wait

    async def wait(self) -> None:
        events = self._rt.events
        if not events.connected:
            # Block (cancellably) until the stream is back rather than failing at once: the
            # waiter then resumes as soon as podman answers again.
            try:  # asyncio.timeout: 3.11's wait_for can swallow the step's cancellation
                async with asyncio.timeout(CONNECT_GRACE):
                    await events.wait_connected()
            except TimeoutError:
                raise TemporaryError("podman's event stream is not connected") from None
        with events.watch(self.name) as w, contextlib.ExitStack() as exit_file:
            health: asyncio.Task[None] | None = None
            try:
                started = await self._check_state(first_look=True)
                if started is None:
                    return
                started_ns = started
                # After the inspect, which names the container's conmon (and so its exit
                # directory); an exit before the watch begins still comes as an event.
                exit_file.enter_context(self._watch_exit_file(w))
                if runs_healthcheck(self._task.spec):
                    health = asyncio.create_task(self._health_loop(), name=f"health {self.name}")
                while True:
                    ev = await w.get()
                    if ev.kind is EventKind.EXIT_FILE:
                        if await self._exited_early():
                            return
                        continue
                    if ev.kind is EventKind.DIED and ev.time_ns >= started_ns:
                        # ``podman rm -f`` also emits "died" first, and "remove" some 50-100
                        # ms later. An exit the agent did not cause is therefore given a short
                        # window in which a removal wins; then one inspect confirms the exit
                        # (it answers 404 if the container went after all). ``podman kill``
                        # announces itself with a "kill" event before "died" (``rm -f`` does
                        # not), so a kill is judged at once, without the window.
                        if (
                            not self._stopping
                            and not self._killed_outside
                            and await self._removed_soon(w)
                        ):
                            self._gone()
                        if await self._check_state() is None:
                            return
                        continue
                    if ev.kind is EventKind.KILL and not self._stopping:
                        self._killed_outside = True
                        # podman's "died" can trail a kill by a few hundred ms (it comes from
                        # the cleanup process conmon starts); a SIGKILLed container already
                        # inspects as exited, so look now. One that survives its signal is
                        # still running, and the wait goes on.
                        started = await self._check_state()
                        if started is None:
                            return
                        started_ns = started
                        continue
                    elif ev.kind is EventKind.REMOVE:
                        self._gone()
                    elif ev.kind is EventKind.RECHECK:
                        started = await self._check_state()
                        if started is None:
                            return
                        started_ns = started
                    elif ev.kind is EventKind.LOST:
                        raise TemporaryError(ev.detail or "podman's event stream was lost")
                    elif ev.kind is EventKind.UNHEALTHY:
                        await self._fail_unhealthy(ev.detail)
            finally:
                if health is not None:
                    health.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await health

    @contextlib.contextmanager
    def _watch_exit_file(self, w: Watch) -> Iterator[bool]:
        """Post ``EXIT_FILE`` to ``w`` when conmon writes this container's exit file."""
        cid = self._cid or ""

        def exited() -> None:
            w.put(ContainerEvent(EventKind.EXIT_FILE, self.name, container_id=cid))

        with self._rt.exits.subscribe(cid, self._conmon_pid, exited) as watching:
            yield watching

    async def _exited_early(self) -> bool:
        """The exit file appeared: judge the exit now if podman's own log agrees that the
        container was killed (``runtime.podman.exitrule``). Returns True for an exit with code
        0, raises ``ExitError`` for another code and ``ContainerGone`` when the container is
        missing; returns False to leave the verdict to podman's events."""
        if self._stopping:
            return False  # the agent's own stop or removal is judged as it always was
        try:
            # First the inspect: it waits for a kill in flight, which logs its event under
            # the container's lock, so the log read after it holds that event.
            info = await self._inspect_or_gone()
            state = info.get("State") or {}
            started_ns = parse_timestamp_ns(state.get("StartedAt"))
            killed = self._killed_outside or await self._rt.api.killed_since(
                str(info.get("Id") or self._cid or ""), started_ns
            )
        except ContainerGone:
            raise
        except ReconcilerError as err:  # a removal under way answers 500: the events decide
            log.debug("exit of %s left to podman's events: %s", self.name, err)
            return False
        code = state.get("ExitCode")
        verdict = judge_exit_file(
            ExitSeen(
                status=str(state.get("Status") or ""),
                exit_code=code if isinstance(code, int) else None,
                kill_seen=killed,
                agent_stopping=self._stopping,
            )
        )
        if verdict is None:
            return False
        self._rt.exits.count_early_exit()
        self._killed_outside = True
        self._judge(verdict.exit_code)
        return True

    async def _removed_soon(self, w: Watch) -> bool:
        """Whether a "remove" event arrives within ``REMOVAL_WINDOW`` (real time)."""
        try:
            async with asyncio.timeout(REMOVAL_WINDOW):
                while True:
                    ev = await w.get()
                    if ev.kind is EventKind.REMOVE:
                        return True
                    if ev.kind is EventKind.LOST:
                        return False
        except TimeoutError:
            return False

    async def _check_state(self, *, first_look: bool = False) -> int | None:
        """Inspect once: a running container's StartedAt (ns), or judge an exited one.

        Returns None when the container exited with code 0; raises ``ExitError`` for another
        code and ``ContainerGone`` when it is missing. A ``first_look`` at a container this
        controller did not start (one adopted after a restart) reads a shared list call
        instead of inspecting (``listing``)."""
        listing = self._rt.listing
        if first_look and listing is not None and not self._started_here:
            return self._judge_listed(await listing.look(self.name))
        info = await self._inspect_or_gone()
        state = info.get("State") or {}
        status = str(state.get("Status") or "")
        started_ns = parse_timestamp_ns(state.get("StartedAt"))
        if state.get("Running") or status in ("running", "paused", "stopping"):
            return started_ns
        if started_ns == 0 and status in ("created", "configured", "initialized"):
            raise PermanentError(f"container {self.name} was never started (state {status})")
        self._judge(int(state.get("ExitCode") or 0))
        return None

    def _judge_listed(self, listed: Listed | None) -> int | None:
        """``_check_state`` from a list entry (None: the container is gone)."""
        if listed is None:
            self._gone()
        self._cid = listed.id or self._cid
        if listed.pid is not None:
            self._pid = listed.pid
        if listed.running:
            # The exit-file watch needs conmon, whose child the container's process is.
            self._conmon_pid = parent_pid(listed.pid)
            return listed.started_ns
        if listed.started_ns == 0 and listed.state in ("created", "configured", "initialized"):
            raise PermanentError(f"container {self.name} was never started (state {listed.state})")
        self._judge(listed.exit_code)
        return None

    def _judge(self, code: int) -> None:
        """End the wait by exit code: return for 0, raise ``ExitError`` otherwise."""
        self._exit_code = code
        if not self._stopping:
            self._rt.observer.drift_corrected(DriftKind.CONTAINER_EXITED)
        if code == 0:
            return
        if self._killed_outside and not self._stopping:
            raise ExitError(code, f"container was killed outside the agent (exit code {code})")
        oom = self._oom_victim(code)
        if oom is not None:
            raise ExitError(code, f"out of memory: the kernel killed {oom} (exit code {code})")
        raise ExitError(code)

    def oom_killed(self, pid: int | None, process: str) -> None:
        """The kernel's OOM killer killed a process of this container (no I/O)."""
        self._oom_kills.append((pid, process))

    def _oom_victim(self, code: int) -> str | None:
        """What the OOM killer killed that explains exit ``code``: the main process, or for a
        SIGKILL exit (137) any process of the container; None if nothing does."""
        if any(pid is not None and pid == self._pid for pid, _ in self._oom_kills):
            return "the main process"
        if code == 137 and self._oom_kills:
            pid, process = self._oom_kills[-1]
            return f"process {process or '?'}, pid {pid or '?'}"
        return None

    def _gone(self) -> NoReturn:
        if not self._stopping:
            self._rt.observer.drift_corrected(DriftKind.CONTAINER_MISSING)
        raise ContainerGone()

    async def _inspect_or_gone(self) -> dict[str, Any]:
        try:
            info = await self._rt.api.inspect(self.name)
        except NotFound:
            self._gone()
        self._take_inspect(info)
        return info

    def _take_inspect(self, info: dict[str, Any]) -> None:
        self._cid = str(info.get("Id") or self._cid or "") or None
        state = info.get("State") or {}
        pid = state.get("Pid")
        if isinstance(pid, int) and pid > 0:
            self._pid = pid
        conmon = state.get("ConmonPid")
        self._conmon_pid = conmon if isinstance(conmon, int) else 0
        if state.get("Status") in ("exited", "stopped"):
            code = state.get("ExitCode")
            if isinstance(code, int):
                self._exit_code = code

    # --------------------------------------------------------------------------- health

    async def _health_loop(self) -> None:
        """Run the check every interval; post "unhealthy" once podman's verdict says so.

        On podman 4.3.1 the healthcheck endpoint answers the result of the one check it just
        ran (a single failure already reads "unhealthy", with FailingStreak 0), while the
        container's stored ``State.Health`` carries the verdict with ``retries`` applied. So a
        passing check costs one call, and a failing one is followed by one inspect whose
        cumulative verdict decides: retries are podman's, never counted here a second time.
        """
        hc = self._task.spec.healthcheck
        assert hc is not None
        clock = self._rt.clock
        while True:
            await clock.sleep(hc.interval)
            try:
                verdict = await self._rt.api.healthcheck(self.name, check_timeout=hc.timeout)
                if str(verdict.get("Status", "")).lower() != "unhealthy":
                    continue
                if int(verdict.get("FailingStreak") or 0) == 0:
                    info = await self._rt.api.inspect(self.name)
                    state = info.get("State") or {}
                    verdict = state.get("Health") or state.get("Healthcheck") or {}
            except ReconcilerError:
                # podman down (the event stream reports that), or the container no longer
                # runs (its exit arrives as an event): nothing to judge here.
                continue
            if str(verdict.get("Status", "")).lower() != "unhealthy":
                continue
            self._rt.events.post(
                self.name,
                ContainerEvent(EventKind.UNHEALTHY, self.name, detail=_health_detail(verdict)),
            )
            return

    async def _fail_unhealthy(self, detail: str) -> None:
        self._stopping = True
        await self._rt.api.stop(self.name, grace=self._task.spec.stop_grace_period)
        code = 1
        with contextlib.suppress(ReconcilerError):
            info = await self._rt.api.inspect(self.name)
            code = int((info.get("State") or {}).get("ExitCode") or 0)
        self._exit_code = code
        raise ExitError(code, f"health check failed: {detail}; container stopped")

    # -------------------------------------------------------------------- stop / remove

    async def shutdown(self) -> None:
        self._stopping = True
        with contextlib.suppress(NotFound):
            await self._rt.api.stop(self.name, grace=self._task.spec.stop_grace_period)

    async def terminate(self) -> None:
        self._stopping = True
        with contextlib.suppress(NotFound):
            await self._rt.api.kill(self.name)

    async def remove(self) -> None:
        self._stopping = True
        with contextlib.suppress(NotFound):
            await self._rt.api.remove(self.name)
        self._unregister()

    async def close(self) -> None:
        self._unregister()

    def _unregister(self) -> None:
        if self._rt.registry.get(self.name) is self:
            del self._rt.registry[self.name]

    # --------------------------------------------------------------------------- update

    async def update(self, task: Task) -> None:
        old = self._task.spec
        new = task.spec
        if task.id != self._task.id:
            raise PermanentError("update: a controller cannot change its task id")
        other = [f for f in new.fields_differing(old) if f not in ("resources",)]
        if other:
            raise PermanentError(
                f"cannot change {', '.join(other)} of a running container in place"
            )
        if new.resources == old.resources:
            self._task = task
            return
        body: dict[str, Any] = {}
        mem = new.resources.memory
        if mem != old.resources.memory:
            # podman creates containers with swap = 2 x memory; keep that, or raising memory
            # above the old swap limit fails under cgroup v1.
            body["memory"] = {"limit": mem, "swap": 2 * mem} if mem else {"limit": -1, "swap": -1}
        cpu = cpu_limits(new.resources.cpus)
        if new.resources.cpus != old.resources.cpus:
            period, quota = cpu if cpu is not None else (100_000, -1)
            body["cpu"] = {"period": period, "quota": quota}
        try:
            await self._rt.api.update_resources(self.name, body)
        except TemporaryError:
            raise
        except ReconcilerError as err:
            raise PermanentError(f"resources could not be changed in place: {err}") from err
        info = await self._inspect_or_gone()
        applied = cgroups.read_limits(str((info.get("State") or {}).get("CgroupPath") or ""))
        if applied is None:
            self._rt.observer.runtime_error(RuntimeOp.UPDATE)
            raise PermanentError("resources could not be verified in place (cgroup not readable)")
        problems = []
        if "memory" in body and not cgroups.memory_matches(applied.memory, mem):
            problems.append(f"memory is {applied.memory}, wanted {mem}")
        if "cpu" in body:
            want_quota = cpu[1] if cpu is not None else None
            if applied.cpu_quota != want_quota:
                problems.append(f"cpu quota is {applied.cpu_quota}, wanted {want_quota}")
        if problems:
            self._rt.observer.runtime_error(RuntimeOp.UPDATE)
            raise PermanentError("resources did not change in place: " + "; ".join(problems))
        self._task = task


def _health_status(state: dict[str, Any]) -> str:
    """podman's stored health verdict of an inspected container: starting, healthy or
    unhealthy (lowercase; "starting" when it has none yet)."""
    health = state.get("Health") or state.get("Healthcheck") or {}
    return str(health.get("Status") or "starting").lower()


def _health_detail(verdict: dict[str, Any]) -> str:
    streak = verdict.get("FailingStreak")
    detail = f"{streak} consecutive checks failed" if streak else "unhealthy"
    logs = verdict.get("Log") or []
    if logs and isinstance(logs[-1], dict):
        output = str(logs[-1].get("Output") or "").strip()
        if output:
            detail += f" (last output: {output[:200]})"
    return detail

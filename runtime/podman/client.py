"""The podman REST calls the runtime makes: each one round trip, in a lane, with a deadline.

podman-py is blocking, so every call runs in a thread of one of this module's lanes
(``lanes.Lane``), never the loop's default pool: quick calls (inspect, list, info, create, start,
kill, update, health checks) in one bounded pool (a start ahead of the other waiting calls),
long ones (stop, remove, pull) in another, and the liveness ping in a lane of its own, so no
slow call can delay the calls that decide whether podman is alive. Every call has a deadline
(``Deadlines``): a stop gets its grace period plus a margin, a pull a long one, everything else
seconds; at the deadline its socket is shut down and it fails as ``RuntimeUnavailable``.

Calls go straight to the REST API through podman-py's ``APIClient`` rather than its resource
managers, because the managers add round trips: ``containers.create()`` re-reads the container
after creating it, and ``Container.stop()`` fails to parse podman's 304 for a stopped container.
The create payload is still rendered by podman-py (through ``internals``), so ``spec.py`` speaks
podman-py's documented ``create()`` keywords.

Errors are translated by ``errors.translate`` alone. Whether podman is up is
``reach.Reachability``'s, and the liveness probe (``probe``) alone turns it down: a call that
gets no answer only asks the probe to look now, and any answer from podman counts as up.
While the runtime is down, calls fail at once with ``RuntimeUnavailable`` without
touching the socket (the probe keeps looking, and the agent retries everything when podman is
back), so nothing queues up behind a hung podman.

Every failure of a call that reached podman, except outcomes (``errors.QUIET``), is counted once
through ``RuntimeObserver.runtime_error(op)``; calls refused while the runtime is down and failed
liveness pings are not (``runtime_up`` reports those). A cancelled call lets its thread finish
before it re-raises ``CancelledError``, so no podman request is left half-observed.

Two calls are made before there is an agent to count them, from a thread that blocks anyway
(``lanes.direct``): ``ping``, with which discovery asks a candidate socket whether podman
answers there, and ``logs``, the ``reconciler logs`` command's stream. They have the same
deadlines, transport and error translation, but no lane and no ``Reachability``. Besides the
calls here, podman is asked only by the event stream's one reader (``events``: a long-lived
request on the same transport, which the liveness probe ends) and by the start-up ``podman
info`` (``earlyinfo``), the one request that bypasses the client, for a measured reason.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from podman.api import APIClient, stream_frames

from reconciler.core.errors import TemporaryError
from reconciler.core.executor import RuntimeObserver, RuntimeOp
from runtime.podman.errors import (
    QUIET,
    ImageMissing,
    NameConflict,
    NotFound,
    RuntimeUnavailable,
    translate,
)
from runtime.podman.internals import create_body
from runtime.podman.lanes import NORMAL, URGENT, Lane, direct
from runtime.podman.reach import Reachability
from runtime.podman.transport import AbortReason

__all__ = [
    "Deadlines",
    "ImageMissing",
    "NameConflict",
    "NotFound",
    "PodmanAPI",
    "Reachability",
    "RuntimeUnavailable",
    "logs",
    "ping",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long each kind of podman call may take, in seconds from when it starts."""

    probe: float = 1.5
    """The liveness ping: podman answers it at once unless it is hung."""
    read: float = 30.0
    """inspect, list, info."""
    write: float = 60.0
    """create, start, kill, update (podman takes locks and runs the OCI runtime)."""
    margin: float = 30.0
    """Added to a stop's grace period, a removal's stop timeout and a health check's timeout."""
    pull: float = 900.0


Work = Callable[[APIClient], T]


def _check(resp: Any) -> Any:
    resp.raise_for_status()
    return resp


class PodmanAPI:
    """The podman REST calls the runtime makes, each awaitable, each one round trip."""

    def __init__(
        self,
        *,
        url: str,
        observer: RuntimeObserver,
        reachability: Reachability,
        max_workers: int = 8,
        deadlines: Deadlines | None = None,
    ) -> None:
        self._observer = observer
        self._reach = reachability
        self.deadlines = deadlines or Deadlines()
        self.quick = Lane("call", size=max_workers, url=url)
        """inspect, list, info, create, start, kill, update, health checks."""
        self.slow = Lane("slow", size=max(1, max_workers // 2), url=url)
        """stop, remove, pull: calls that may rightly take long."""
        self.probe = Lane("probe", size=1, url=url)
        """The liveness ping only."""
        self._url = url
        self._closed = False

    @property
    def url(self) -> str:
        return self._url

    @url.setter
    def url(self, url: str) -> None:
        """Send later calls to another socket (calls in flight finish where they are)."""
        self._url = url
        for lane in (self.quick, self.slow, self.probe):
            lane.url = url

    def abort_inflight(self, reason: AbortReason = AbortReason.RUNTIME_DOWN) -> int:
        """End every call in flight (the probe's own excepted). Returns how many there were."""
        return self.quick.abort_all(reason) + self.slow.abort_all(reason)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(self.quick.close(), self.slow.close(), self.probe.close())

    # ------------------------------------------------------------------------------- core

    async def call(
        self,
        op: RuntimeOp,
        what: str,
        fn: Work[T],
        *,
        lane: Lane,
        deadline: float,
        priority: int = NORMAL,
    ) -> T:
        """Run ``fn`` in ``lane`` with a deadline (``priority`` among the lane's waiting
        calls); translate and count its failure as ``op``."""
        if self._closed:
            raise RuntimeUnavailable(f"{what}: the podman client is closed")
        if self._reach.down:
            raise RuntimeUnavailable(f"{what}: podman is not answering")
        try:
            result = await lane.run(fn, deadline=deadline, priority=priority)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # translated below
            err = translate(exc, what=what)
            if isinstance(err, RuntimeUnavailable):
                self._reach.suspect()
            else:
                self._reach.answered()
            if not isinstance(err, QUIET):
                self._observer.runtime_error(op)
            raise err from exc
        self._reach.answered()
        return result

    async def _quick(self, op: RuntimeOp, what: str, fn: Work[T], *, deadline: float) -> T:
        return await self.call(op, what, fn, lane=self.quick, deadline=deadline)

    async def _slow(self, op: RuntimeOp, what: str, fn: Work[T], *, deadline: float) -> T:
        return await self.call(op, what, fn, lane=self.slow, deadline=deadline)

    # ------------------------------------------------------------------------ containers

    async def create(self, kwargs: Mapping[str, Any]) -> str:
        """Create a container from podman-py ``create()`` keywords; return its id."""
        body = create_body(kwargs)
        name = kwargs.get("name", "")

        def run(api: APIClient) -> str:
            resp = api.post(
                "/containers/create", headers={"content-type": "application/json"}, data=body
            )
            _check(resp)
            return str(resp.json()["Id"])

        return await self._quick(
            RuntimeOp.CREATE, f"creating container {name}", run, deadline=self.deadlines.write
        )

    async def start(self, ref: str) -> bool:
        """Start a container. Returns False when it was already running (podman's 304)."""

        def run(api: APIClient) -> bool:
            resp = _check(api.post(f"/containers/{ref}/start"))
            return bool(resp.status_code != 304)

        # Urgent: a created container starts before more creates begin (see ``lanes``).
        return await self.call(
            RuntimeOp.START,
            f"starting container {ref}",
            run,
            lane=self.quick,
            deadline=self.deadlines.write,
            priority=URGENT,
        )

    async def stop(self, ref: str, *, grace: float) -> bool:
        """Stop with the container's stop signal, SIGKILL after ``grace`` seconds.

        Returns False when the container was not running."""
        t = max(0, round(grace))

        def run(api: APIClient) -> bool:
            resp = api.post(f"/containers/{ref}/stop", params={"timeout": t})
            if resp.status_code == 304:
                return False
            _check(resp)
            return True

        return await self._slow(
            RuntimeOp.STOP, f"stopping container {ref}", run, deadline=t + self.deadlines.margin
        )

    async def kill(self, ref: str, *, signal: str = "SIGKILL") -> bool:
        """Send a signal. Returns False when the container was not running."""

        def run(api: APIClient) -> bool:
            resp = api.post(f"/containers/{ref}/kill", params={"signal": signal})
            text = resp.text.lower() if resp.status_code >= 400 else ""
            if resp.status_code == 409 or any(
                m in text for m in ("not running", "state improper", "can only kill running")
            ):
                return False
            _check(resp)
            return True

        return await self._quick(
            RuntimeOp.STOP, f"killing container {ref}", run, deadline=self.deadlines.write
        )

    async def remove(self, ref: str, *, stop_timeout: float = 0) -> None:
        """Remove a container by force, with its anonymous volumes (never named ones)."""
        t = max(0, round(stop_timeout))

        def run(api: APIClient) -> None:
            _check(api.delete(f"/containers/{ref}", params={"force": True, "v": True, "t": t}))

        await self._slow(
            RuntimeOp.REMOVE, f"removing container {ref}", run, deadline=t + self.deadlines.margin
        )

    async def inspect(self, ref: str) -> dict[str, Any]:
        def run(api: APIClient) -> dict[str, Any]:
            return dict(_check(api.get(f"/containers/{ref}/json")).json())

        return await self._quick(
            RuntimeOp.INSPECT, f"inspecting container {ref}", run, deadline=self.deadlines.read
        )

    async def list(self, *, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Every container (running or not) carrying all of ``labels``."""
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})

        def run(api: APIClient) -> list[dict[str, Any]]:
            resp = _check(api.get("/containers/json", params={"all": True, "filters": filters}))
            return list(resp.json() or [])

        return await self._quick(
            RuntimeOp.LIST, "listing containers", run, deadline=self.deadlines.read
        )

    async def update_resources(self, ref: str, resources: Mapping[str, Any]) -> None:
        """POST /libpod/containers/{ref}/update with a LinuxResources body."""
        body = json.dumps(resources)

        def run(api: APIClient) -> None:
            _check(
                api.post(
                    f"/containers/{ref}/update",
                    data=body,
                    headers={"content-type": "application/json"},
                )
            )

        await self._quick(
            RuntimeOp.UPDATE, f"updating container {ref}", run, deadline=self.deadlines.write
        )

    async def killed_since(self, container_id: str, since_ns: int) -> bool:
        """Whether podman logged a ``kill`` event for ``container_id`` at or after
        ``since_ns`` (ns since the epoch). One read of podman's event log, not the stream:
        it answers with what is logged now, without the stream's delay."""
        params = {
            "stream": False,
            "since": str(since_ns // 1_000_000_000),
            "filters": json.dumps(
                {"type": ["container"], "event": ["kill"], "container": [container_id]}
            ),
        }

        def run(api: APIClient) -> bool:
            resp = _check(api.get("/events", params=params))
            for line in resp.text.splitlines():
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if (
                    isinstance(ev, dict)
                    and ev.get("Action") == "kill"
                    and (ev.get("Actor") or {}).get("ID") == container_id
                    and int(ev.get("timeNano") or 0) >= since_ns
                ):
                    return True
            return False

        return await self._quick(
            RuntimeOp.EVENTS,
            f"reading the kill events of {container_id}",
            run,
            deadline=self.deadlines.read,
        )

    async def healthcheck(self, ref: str, *, check_timeout: float) -> dict[str, Any]:
        """Run the container's health check once; podman's cumulative verdict."""

        def run(api: APIClient) -> dict[str, Any]:
            return dict(_check(api.get(f"/containers/{ref}/healthcheck")).json())

        return await self._quick(
            RuntimeOp.HEALTHCHECK,
            f"health check of {ref}",
            run,
            deadline=check_timeout + self.deadlines.margin,
        )

    # ---------------------------------------------------------------------------- images

    async def pull(self, image: str) -> str:
        """Pull ``image``; return the pulled image's ID. podman answers 200 and reports a
        failure inside the stream, which is raised as ``TemporaryError``. Registries are as
        the host's registries.conf configures them (an insecure one is marked there)."""

        def run(api: APIClient) -> str:
            resp = _check(
                api.post(
                    "/images/pull",
                    params={"reference": image, "quiet": True, "policy": "always"},
                )
            )
            image_id = ""
            for line in resp.text.splitlines():
                line = line.strip()
                if not line:
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(item, dict):
                    continue
                if item.get("error"):
                    raise TemporaryError(f"pulling image {image} failed: {item['error']}")
                image_id = str(item.get("id") or image_id)
            return image_id

        return await self._slow(
            RuntimeOp.PULL, f"pulling image {image}", run, deadline=self.deadlines.pull
        )

    async def images(self) -> builtins.list[dict[str, Any]]:
        """Every image in the store, as podman lists them (``Id``, ``RepoTags``, ``Size``,
        ``Containers``)."""

        def run(api: APIClient) -> builtins.list[dict[str, Any]]:
            return builtins.list(_check(api.get("/images/json")).json() or [])

        return await self._quick(
            RuntimeOp.LIST, "listing images", run, deadline=self.deadlines.read
        )

    async def remove_image(self, ref: str) -> bool:
        """Remove a name of an image, or an image by ID, never forced. Returns whether the
        image itself was deleted (removing one of several names only untags). Raises
        ``ImageInUse`` when a container uses it, ``NotFound``/``ImageMissing`` when it is gone.
        """

        def run(api: APIClient) -> bool:
            resp = _check(api.delete(f"/images/{ref}"))
            body = resp.json() if resp.content else {}
            return bool(isinstance(body, dict) and body.get("Deleted"))

        return await self._slow(
            RuntimeOp.REMOVE, f"removing image {ref}", run, deadline=self.deadlines.write
        )

    # ------------------------------------------------------------------------------ node

    async def info(self) -> dict[str, Any]:
        def run(api: APIClient) -> dict[str, Any]:
            return dict(_check(api.get("/info")).json())

        return await self._quick(
            RuntimeOp.INSPECT, "reading podman info", run, deadline=self.deadlines.read
        )

    async def ping(self) -> bool:
        """One ``/_ping`` in the probe's own lane, with the probe's short deadline.

        Returns whether podman answered it; never raises for podman's failure, and leaves
        ``Reachability`` to the caller (the liveness probe)."""

        def run(api: APIClient) -> bool:
            return bool(api.get("/_ping").ok)

        try:
            return await self.probe.run(run, deadline=self.deadlines.probe)
        except asyncio.CancelledError:
            raise
        except Exception:
            return False


# ---------------------------------------------------------------- outside the agent's loop


DEFAULT_DEADLINES = Deadlines()


def ping(url: str, *, deadline: float = DEFAULT_DEADLINES.probe) -> bool:
    """Whether podman answers ``/_ping`` on ``url`` within ``deadline`` seconds. Blocking, in
    the calling thread; never raises."""
    try:
        with direct(url, deadline=deadline) as call:
            return bool(call.api.get("/_ping").status_code == 200)
    except Exception:  # no answer, whatever the reason: not podman, or not now
        return False


def logs(
    url: str, ref: str, *, follow: bool, tail: int | None, deadline: float = DEFAULT_DEADLINES.read
) -> Iterator[bytes]:
    """The log of container ``ref`` (a name or an id), frame by frame as podman sends them
    (stdout and stderr both), the last ``tail`` lines only when ``tail`` is given. Blocking,
    in the calling thread.

    Whether the container exists is asked first, within ``deadline`` seconds: podman sends a
    followed log's answer only with its first line, so the log itself cannot show that podman
    answers. A followed log then streams for as long as the container runs, with no deadline (a
    quiet container is not a hung podman); a log not followed must be answered within the
    deadline, and each read of it is bounded by it too. Raises ``NotFound`` when there is no
    such container and another ``ReconcilerError`` (``RuntimeUnavailable`` included) when
    podman fails.
    """
    params: dict[str, Any] = {"follow": follow, "stdout": True, "stderr": True}
    if tail is not None:
        params["tail"] = tail
    try:
        with direct(url, deadline=deadline) as call:
            _check(call.api.get(f"/containers/{ref}/exists"))
            if follow:
                call.answered()
            # (connect, read): a followed log may be quiet for as long as it likes.
            timeout = (call.socket_timeout, None) if follow else call.socket_timeout
            resp = _check(
                call.api.get(f"/containers/{ref}/logs", params=params, stream=True, timeout=timeout)
            )
            call.answered()
            for frame in stream_frames(resp):
                yield cast(bytes, frame)  # demux is off: every frame is bytes
    except Exception as exc:
        raise translate(exc, what=f"reading the logs of {ref}") from exc

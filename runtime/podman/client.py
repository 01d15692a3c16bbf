"""Thin, async podman calls: lanes with deadlines, and the one place that translates errors.

podman-py is blocking, so every call runs in a thread of one of this module's lanes
(``lanes.Lane``), never the loop's default pool: quick calls (inspect, list, info, create, start,
kill, update, health checks) in one bounded pool, long ones (stop, remove, pull) in another, and
the liveness ping in a lane of its own, so no slow call can delay the calls that decide whether
podman is alive. Every call has a deadline (``Deadlines``): a stop gets its grace period plus a
margin, a pull a long one, everything else seconds; at the deadline its socket is shut down and
it fails as ``RuntimeUnavailable``.

Calls go straight to the REST API through podman-py's ``APIClient`` rather than its resource
managers, because the managers add round trips: ``containers.create()`` re-reads the container
after creating it, and ``Container.stop()`` fails to parse podman's 304 for a stopped container.
The create payload is still rendered by podman-py (``_render_payload``), so ``spec.py`` speaks
podman-py's documented ``create()`` keywords.

Error translation lives in ``translate()`` only:

* no answer (connection refused, socket missing, timeout, broken stream, deadline passed, call
  aborted) -> ``RuntimeUnavailable`` (a ``TemporaryError``);
* 404 -> ``NotFound``; a name already in use -> ``NameConflict``; an image not present ->
  ``ImageMissing``; these are outcomes the controller turns into idempotent results;
* a 5xx whose text says it is transient (locks, timeouts, "try again") -> ``TemporaryError``;
* any other 4xx/5xx -> ``PermanentError`` carrying podman's own explanation.

Whether podman is up is ``Reachability``'s, and the liveness probe (``probe``) alone turns it
down: a call that gets no answer only asks the probe to look now, and any answer from podman
counts as up. While the runtime is down, calls fail at once with ``RuntimeUnavailable`` without
touching the socket (the probe keeps looking, and the agent retries everything when podman is
back), so nothing queues up behind a hung podman.

Every failure of a call that reached podman, except the expected outcomes above, is counted once
through ``RuntimeObserver.runtime_error(op)``; calls refused while the runtime is down and failed
liveness pings are not (``runtime_up`` reports those). A cancelled call lets its thread finish
before it re-raises ``CancelledError``, so no podman request is left half-observed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import podman.errors
import requests
from podman import api as podman_api
from podman.api import APIClient
from podman.domain.containers_create import CreateMixin

from reconciler.clock import Clock
from reconciler.errors import PermanentError, ReconcilerError, TemporaryError
from reconciler.executor import RuntimeObserver
from runtime.podman.lanes import Lane
from runtime.podman.transport import Aborted, AbortReason

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


_TRANSIENT_MARKERS = (
    "timed out",
    "timeout",
    "deadline exceeded",
    "database is locked",
    "resource temporarily unavailable",
    "try again",
    "connection reset",
    "connection refused",
    "too many open files",
    "broken pipe",
)


class RuntimeUnavailable(TemporaryError):
    """podman did not answer: connection refused, socket missing, timeout, dropped stream."""


class NotFound(PermanentError):
    """No such container (or image)."""


class NameConflict(PermanentError):
    """A container with that name already exists."""


class ImageMissing(PermanentError):
    """The image is not in local storage."""


class Reachability:
    """Whether podman answers: the flag behind ``runtime_up``, and when podman last answered.

    ``set`` reports every change (and the first value) to the observer and the change
    listeners. ``answered`` records an answer from podman (any call's, or the event stream's) and
    sets up; ``suspect`` asks the liveness probe to look now. All of it runs on the event loop.
    """

    def __init__(self, observer: RuntimeObserver, *, clock: Clock) -> None:
        self._observer = observer
        self._clock = clock
        self._up: bool | None = None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[bool], None]] = []
        self._suspect_listeners: list[Callable[[], None]] = []
        self.answers = 0
        """How many answers podman has given (a count, so a probe can tell whether any came
        while its own ping was in flight)."""
        self.last_answer = float("-inf")
        """When podman last answered, on the clock's monotonic time."""

    @property
    def up(self) -> bool:
        return bool(self._up)

    @property
    def down(self) -> bool:
        """Known to be down (not merely not yet contacted)."""
        return self._up is False

    def add_listener(self, fn: Callable[[bool], None]) -> None:
        """Call ``fn(up)`` on every change."""
        self._listeners.append(fn)

    def add_suspect_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` whenever a call got no answer."""
        self._suspect_listeners.append(fn)

    def set(self, up: bool) -> None:
        with self._lock:
            if self._up is up:
                return
            self._up = up
        self._observer.runtime_up(up)
        for fn in list(self._listeners):
            fn(up)

    def answered(self) -> None:
        self.answers += 1
        self.last_answer = self._clock.monotonic()
        self.set(True)

    def suspect(self) -> None:
        for fn in list(self._suspect_listeners):
            fn()


def _explanation(err: podman.errors.APIError) -> str:
    text = getattr(err, "explanation", None) or ""
    if not text:
        text = str(err)
    return str(text)


def _is_connection_problem(err: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(
            cur,
            ConnectionError
            | TimeoutError
            | socket.timeout
            | FileNotFoundError
            | requests.exceptions.ConnectionError
            | requests.exceptions.Timeout
            | requests.exceptions.ChunkedEncodingError,
        ):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def translate(err: BaseException, *, what: str) -> ReconcilerError:
    """Turn any exception from podman-py / requests / sockets into a reconciler error."""
    if isinstance(err, ReconcilerError):
        return err
    if isinstance(err, Aborted):
        return RuntimeUnavailable(f"{what}: {err}")
    if isinstance(err, podman.errors.APIError):
        status = err.status_code
        text = _explanation(err)
        low = text.lower()
        if status is None or _is_connection_problem(err):
            return RuntimeUnavailable(f"{what}: podman is not answering ({_root_cause(err)})")
        if status == 404 or isinstance(err, podman.errors.NotFound):
            if "image not known" in low or "no such image" in low:
                return ImageMissing(f"{what}: {text}")
            return NotFound(f"{what}: {text}")
        if "no such container" in low or "does not exist in database" in low:
            # Inspecting a container in the middle of its removal answers 500 with this.
            return NotFound(f"{what}: {text}")
        if "already in use" in low:
            return NameConflict(f"{what}: {text}")
        if "image not known" in low or "no such image" in low:
            return ImageMissing(f"{what}: {text}")
        if status >= 500 and (
            status in (502, 503, 504) or any(m in low for m in _TRANSIENT_MARKERS)
        ):
            return TemporaryError(f"{what}: {text}")
        return PermanentError(f"{what}: {text}")
    if isinstance(err, podman.errors.PodmanError | requests.exceptions.RequestException | OSError):
        if _is_connection_problem(err) or isinstance(err, OSError):
            return RuntimeUnavailable(f"{what}: podman is not answering ({_root_cause(err)})")
        return TemporaryError(f"{what}: {err}")
    if isinstance(err, json.JSONDecodeError | ValueError):
        return TemporaryError(f"{what}: unexpected answer from podman ({err})")
    return PermanentError(f"{what}: {type(err).__name__}: {err}")


def _root_cause(err: BaseException) -> str:
    cur: BaseException = err
    for _ in range(10):
        nxt = cur.__cause__ or cur.__context__
        if nxt is None:
            break
        cur = nxt
    text = str(cur) or type(cur).__name__
    return text if len(text) < 300 else text[:300] + "..."


_QUIET: tuple[type[ReconcilerError], ...] = (NotFound, NameConflict, ImageMissing)

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

    async def call(self, op: str, what: str, fn: Work[T], *, lane: Lane, deadline: float) -> T:
        """Run ``fn`` in ``lane`` with a deadline; translate and count its failure as ``op``."""
        if self._closed:
            raise RuntimeUnavailable(f"{what}: the podman client is closed")
        if self._reach.down:
            raise RuntimeUnavailable(f"{what}: podman is not answering")
        try:
            result = await lane.run(fn, deadline=deadline)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # translated below
            err = translate(exc, what=what)
            if isinstance(err, RuntimeUnavailable):
                self._reach.suspect()
            else:
                self._reach.answered()
            if not isinstance(err, _QUIET):
                self._observer.runtime_error(op)
            raise err from exc
        self._reach.answered()
        return result

    async def _quick(self, op: str, what: str, fn: Work[T], *, deadline: float) -> T:
        return await self.call(op, what, fn, lane=self.quick, deadline=deadline)

    async def _slow(self, op: str, what: str, fn: Work[T], *, deadline: float) -> T:
        return await self.call(op, what, fn, lane=self.slow, deadline=deadline)

    # ------------------------------------------------------------------------ containers

    async def create(self, kwargs: Mapping[str, Any]) -> str:
        """Create a container from podman-py ``create()`` keywords; return its id."""
        body = podman_api.prepare_body(CreateMixin._render_payload(dict(kwargs)))
        name = kwargs.get("name", "")

        def run(api: APIClient) -> str:
            resp = api.post(
                "/containers/create", headers={"content-type": "application/json"}, data=body
            )
            _check(resp)
            return str(resp.json()["Id"])

        return await self._quick(
            "create", f"creating container {name}", run, deadline=self.deadlines.write
        )

    async def start(self, ref: str) -> bool:
        """Start a container. Returns False when it was already running (podman's 304)."""

        def run(api: APIClient) -> bool:
            resp = _check(api.post(f"/containers/{ref}/start"))
            return bool(resp.status_code != 304)

        return await self._quick(
            "start", f"starting container {ref}", run, deadline=self.deadlines.write
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
            "stop", f"stopping container {ref}", run, deadline=t + self.deadlines.margin
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
            "stop", f"killing container {ref}", run, deadline=self.deadlines.write
        )

    async def remove(self, ref: str, *, stop_timeout: float = 0) -> None:
        """Remove a container by force, with its anonymous volumes (never named ones)."""
        t = max(0, round(stop_timeout))

        def run(api: APIClient) -> None:
            _check(api.delete(f"/containers/{ref}", params={"force": True, "v": True, "t": t}))

        await self._slow(
            "remove", f"removing container {ref}", run, deadline=t + self.deadlines.margin
        )

    async def inspect(self, ref: str) -> dict[str, Any]:
        def run(api: APIClient) -> dict[str, Any]:
            return dict(_check(api.get(f"/containers/{ref}/json")).json())

        return await self._quick(
            "inspect", f"inspecting container {ref}", run, deadline=self.deadlines.read
        )

    async def list(self, *, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Every container (running or not) carrying all of ``labels``."""
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})

        def run(api: APIClient) -> list[dict[str, Any]]:
            resp = _check(api.get("/containers/json", params={"all": True, "filters": filters}))
            return list(resp.json() or [])

        return await self._quick("list", "listing containers", run, deadline=self.deadlines.read)

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

        await self._quick("update", f"updating container {ref}", run, deadline=self.deadlines.write)

    async def healthcheck(self, ref: str, *, check_timeout: float) -> dict[str, Any]:
        """Run the container's health check once; podman's cumulative verdict."""

        def run(api: APIClient) -> dict[str, Any]:
            return dict(_check(api.get(f"/containers/{ref}/healthcheck")).json())

        return await self._quick(
            "healthcheck",
            f"health check of {ref}",
            run,
            deadline=check_timeout + self.deadlines.margin,
        )

    # ---------------------------------------------------------------------------- images

    async def pull(self, image: str) -> None:
        """Pull ``image``. podman answers 200 and reports a failure inside the stream."""

        def run(api: APIClient) -> None:
            resp = _check(
                api.post(
                    "/images/pull",
                    params={"reference": image, "quiet": True, "policy": "always"},
                )
            )
            for line in resp.text.splitlines():
                line = line.strip()
                if not line:
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict) and item.get("error"):
                    raise TemporaryError(f"pulling image {image} failed: {item['error']}")

        await self._slow("pull", f"pulling image {image}", run, deadline=self.deadlines.pull)

    # ------------------------------------------------------------------------------ node

    async def info(self) -> dict[str, Any]:
        def run(api: APIClient) -> dict[str, Any]:
            return dict(_check(api.get("/info")).json())

        return await self._quick(
            "inspect", "reading podman info", run, deadline=self.deadlines.read
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

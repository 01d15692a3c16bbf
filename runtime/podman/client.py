"""Thin, async podman calls: one bounded thread pool, one place that translates errors.

podman-py is blocking, so every call runs in this module's own ``ThreadPoolExecutor`` (never the
loop's default pool, which other parts of the agent share). The pool is bounded: a hung podman
can tie up at most ``max_workers`` threads, and every request carries a socket timeout.

Calls go straight to the REST API through podman-py's ``APIClient`` rather than its resource
managers, because the managers add round trips: ``containers.create()`` re-reads the container
after creating it, and ``Container.stop()`` fails to parse podman's 304 for a stopped container.
The create payload is still rendered by podman-py (``_render_payload``), so ``spec.py`` speaks
podman-py's documented ``create()`` keywords.

Error translation lives in ``translate()`` only:

* no answer (connection refused, socket missing, timeout, broken stream) -> ``RuntimeUnavailable``
  (a ``TemporaryError``) and the runtime is reported down;
* 404 -> ``NotFound``; a name already in use -> ``NameConflict``; an image not present ->
  ``ImageMissing``; these are outcomes the controller turns into idempotent results;
* a 5xx whose text says it is transient (locks, timeouts, "try again") -> ``TemporaryError``;
* any other 4xx/5xx -> ``PermanentError`` carrying podman's own explanation.

Every failure except the expected outcomes above is counted once through
``RuntimeObserver.runtime_error(op)``. A cancelled call lets its thread finish before it
re-raises ``CancelledError``, so no podman request is left half-observed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import podman
import podman.errors
import requests
from podman import api as podman_api
from podman.api.uds import UDSAdapter, UDSConnection, UDSConnectionPool, UDSPoolManager, UDSSocket

from reconciler.errors import PermanentError, ReconcilerError, TemporaryError
from reconciler.executor import RuntimeObserver

T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0
"""Socket timeout for ordinary calls (seconds). Stops and pulls get longer ones."""

PULL_TIMEOUT = 900.0

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
    """Whether podman answers, reported to the observer on every change (and the first time)."""

    def __init__(self, observer: RuntimeObserver) -> None:
        self._observer = observer
        self._up: bool | None = None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def up(self) -> bool:
        return bool(self._up)

    def add_listener(self, fn: Callable[[bool], None]) -> None:
        self._listeners.append(fn)

    def set(self, up: bool) -> None:
        with self._lock:
            if self._up is up:
                return
            self._up = up
        self._observer.runtime_up(up)
        for fn in list(self._listeners):
            fn(up)


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


class _ClosingUDSConnection(UDSConnection):
    """podman-py's UDS connection leaks its socket when connecting fails (podman down), which
    surfaces as ResourceWarnings on every retry; this one closes it."""

    def connect(self) -> None:
        sock = UDSSocket(self.uds)
        sock.settimeout(self.timeout)
        try:
            sock.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _ClosingUDSPool(UDSConnectionPool):
    ConnectionCls = _ClosingUDSConnection


class _ClosingUDSPoolManager(UDSPoolManager):
    def __init__(self, num_pools: int = 10, headers: Any = None, **kwargs: Any) -> None:
        super().__init__(num_pools, headers, **kwargs)  # type: ignore[no-untyped-call]
        self.pool_classes_by_scheme = {"http": _ClosingUDSPool, "http+ssh": _ClosingUDSPool}


class _ClosingUDSAdapter(UDSAdapter):
    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **kw: Any
    ) -> None:
        pool_kwargs = dict(kw)
        pool_kwargs.update(self._pool_kwargs)
        self.poolmanager = _ClosingUDSPoolManager(
            num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )


def make_client(
    url: str, *, timeout: float | None = None, max_pool_size: int | None = None
) -> podman.PodmanClient:
    """A podman-py client whose unix-socket connections never leak when podman is down."""
    client = podman.PodmanClient(base_url=url, timeout=timeout, max_pool_size=max_pool_size)
    api = client.api
    if api.base_url.scheme == "http+unix":
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        if max_pool_size is not None:
            kwargs["pool_maxsize"] = max_pool_size
        for prefix in ("http://", "https://"):
            old = api.adapters[prefix]
            api.mount(prefix, _ClosingUDSAdapter(api.base_url.geturl(), **kwargs))
            old.close()
    return client


_QUIET: tuple[type[ReconcilerError], ...] = (NotFound, NameConflict, ImageMissing)


class PodmanAPI:
    """The podman REST calls the runtime makes, each awaitable, each one round trip."""

    def __init__(
        self,
        *,
        url: str,
        observer: RuntimeObserver,
        reachability: Reachability,
        max_workers: int = 8,
    ) -> None:
        self.url = url
        self._observer = observer
        self._reach = reachability
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="podman-call"
        )
        # One connection per worker thread, kept alive between calls.
        self._client = make_client(url, timeout=DEFAULT_TIMEOUT, max_pool_size=max_workers)
        self._api = self._client.api
        self._closed = False

    @property
    def client(self) -> podman.PodmanClient:
        return self._client

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown_blocking)

    def _shutdown_blocking(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------------------------- core

    async def call(self, op: str, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the pool; translate and count its failure as ``op``."""
        if self._closed:
            raise RuntimeUnavailable(f"{what}: the podman client is closed")
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, fn)
        try:
            result = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # Let the thread finish so the call's effect is settled before re-raising.
            while not fut.done():
                try:
                    await asyncio.wait([fut])
                except asyncio.CancelledError:
                    continue
            if not fut.cancelled() and fut.exception() is None:
                self._reach.set(True)
            raise
        except BaseException as exc:  # translated below
            err = translate(exc, what=what)
            if isinstance(err, RuntimeUnavailable):
                self._reach.set(False)
            else:
                self._reach.set(True)
            if not isinstance(err, _QUIET):
                self._observer.runtime_error(op)
            raise err from exc
        self._reach.set(True)
        return result

    def _check(self, resp: Any) -> Any:
        resp.raise_for_status()
        return resp

    # ------------------------------------------------------------------------ containers

    async def create(self, kwargs: Mapping[str, Any]) -> str:
        """Create a container from podman-py ``create()`` keywords; return its id."""
        body = podman_api.prepare_body(self._client.containers._render_payload(dict(kwargs)))
        name = kwargs.get("name", "")

        def run() -> str:
            resp = self._api.post(
                "/containers/create", headers={"content-type": "application/json"}, data=body
            )
            self._check(resp)
            return str(resp.json()["Id"])

        return await self.call("create", f"creating container {name}", run)

    async def start(self, ref: str) -> bool:
        """Start a container. Returns False when it was already running (podman's 304)."""

        def run() -> bool:
            resp = self._check(self._api.post(f"/containers/{ref}/start"))
            return bool(resp.status_code != 304)

        return await self.call("start", f"starting container {ref}", run)

    async def stop(self, ref: str, *, grace: float) -> bool:
        """Stop with the container's stop signal, SIGKILL after ``grace`` seconds.

        Returns False when the container was not running."""
        t = max(0, round(grace))

        def run() -> bool:
            resp = self._api.post(
                f"/containers/{ref}/stop", params={"timeout": t}, timeout=t + DEFAULT_TIMEOUT
            )
            if resp.status_code == 304:
                return False
            self._check(resp)
            return True

        return await self.call("stop", f"stopping container {ref}", run)

    async def kill(self, ref: str, *, signal: str = "SIGKILL") -> bool:
        """Send a signal. Returns False when the container was not running."""

        def run() -> bool:
            resp = self._api.post(f"/containers/{ref}/kill", params={"signal": signal})
            text = resp.text.lower() if resp.status_code >= 400 else ""
            if resp.status_code == 409 or any(
                m in text for m in ("not running", "state improper", "can only kill running")
            ):
                return False
            self._check(resp)
            return True

        return await self.call("stop", f"killing container {ref}", run)

    async def remove(self, ref: str, *, stop_timeout: float = 0) -> None:
        """Remove a container by force, with its anonymous volumes (never named ones)."""
        t = max(0, round(stop_timeout))

        def run() -> None:
            self._check(
                self._api.delete(
                    f"/containers/{ref}",
                    params={"force": True, "v": True, "t": t},
                    timeout=t + DEFAULT_TIMEOUT,
                )
            )

        await self.call("remove", f"removing container {ref}", run)

    async def inspect(self, ref: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            data = self._check(self._api.get(f"/containers/{ref}/json")).json()
            return dict(data)

        return await self.call("inspect", f"inspecting container {ref}", run)

    async def list(self, *, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Every container (running or not) carrying all of ``labels``."""
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})

        def run() -> list[dict[str, Any]]:
            resp = self._check(
                self._api.get("/containers/json", params={"all": True, "filters": filters})
            )
            return list(resp.json() or [])

        return await self.call("list", "listing containers", run)

    async def update_resources(self, ref: str, resources: Mapping[str, Any]) -> None:
        """POST /libpod/containers/{ref}/update with a LinuxResources body."""
        body = json.dumps(resources)

        def run() -> None:
            self._check(
                self._api.post(
                    f"/containers/{ref}/update",
                    data=body,
                    headers={"content-type": "application/json"},
                )
            )

        await self.call("update", f"updating container {ref}", run)

    async def healthcheck(self, ref: str, *, check_timeout: float) -> dict[str, Any]:
        """Run the container's health check once; podman's cumulative verdict."""

        def run() -> dict[str, Any]:
            resp = self._check(
                self._api.get(
                    f"/containers/{ref}/healthcheck", timeout=check_timeout + DEFAULT_TIMEOUT
                )
            )
            return dict(resp.json())

        return await self.call("healthcheck", f"health check of {ref}", run)

    # ---------------------------------------------------------------------------- images

    async def pull(self, image: str) -> None:
        """Pull ``image``. podman answers 200 and reports a failure inside the stream."""

        def run() -> None:
            resp = self._check(
                self._api.post(
                    "/images/pull",
                    params={"reference": image, "quiet": True, "policy": "always"},
                    timeout=PULL_TIMEOUT,
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

        await self.call("pull", f"pulling image {image}", run)

    # ------------------------------------------------------------------------------ node

    async def info(self) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            return dict(self._check(self._api.get("/info")).json())

        return await self.call("inspect", "reading podman info", run)

    async def ping(self) -> bool:
        def run() -> bool:
            resp = self._api.get("/_ping", timeout=10)
            return bool(resp.ok)

        try:
            return await self.call("inspect", "pinging podman", run)
        except ReconcilerError:
            return False

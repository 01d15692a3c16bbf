"""Lanes, deadlines and the liveness probe, against a tiny fake podman API on a unix socket.

The fake answers each path as a test says: at once, never (it holds the request until the test
ends), or one byte at a time. No podman is needed. Deadlines here are short real times; the
tests assert outcomes (which call failed, how), and every wait has a generous hang guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import shutil
import socketserver
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler.core.clock import FakeClock, SystemClock, settle
from reconciler.testing.polling import eventually
from runtime.podman.client import Deadlines, PodmanAPI
from runtime.podman.errors import RuntimeUnavailable, translate
from runtime.podman.probe import PROBE_INTERVAL, Liveness
from runtime.podman.reach import Reachability
from runtime.podman.transport import Aborted, AbortReason
from tests.e2e.podman_support import RecordingObserver

HANG_GUARD = 30.0


@dataclass
class Route:
    """How the fake answers one path: ``"ok"``, ``"hang"`` or ``"trickle"``."""

    how: str = "ok"
    body: object = field(default_factory=dict)


class FakePodman:
    """An HTTP server on a unix socket, answering podman API paths by their last segments."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.routes: dict[str, Route] = {}
        self.hits: list[str] = []
        self.release = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                route = fake.route(self.path)
                fake.hits.append(self.path.split("?")[0])
                if route.how == "hang":
                    fake.release.wait()
                    return
                body = json.dumps(route.body).encode()
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                if route.how == "trickle":
                    for i in range(len(head)):
                        if fake.release.wait(0.05):
                            return
                        self.wfile.write(head[i : i + 1])
                        self.wfile.flush()
                    return
                self.wfile.write(head + body)
                self.wfile.flush()

            do_GET = do_POST = do_DELETE = _answer

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self._server = Server(str(path), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def route(self, path: str) -> Route:
        bare = path.split("?")[0]
        for suffix, route in self.routes.items():
            if bare.endswith(suffix):
                return route
        return Route()

    def count(self, suffix: str) -> int:
        return sum(1 for p in self.hits if p.endswith(suffix))

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fake() -> Iterator[FakePodman]:
    base = Path(tempfile.mkdtemp(prefix="rcl-", dir="/tmp"))
    server = FakePodman(base / "p.sock")
    server.start()
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(base, ignore_errors=True)


SHORT = Deadlines(probe=1.0, read=0.5, write=0.5, margin=0.5, pull=1.0)


@dataclass
class World:
    api: PodmanAPI
    reach: Reachability
    observer: RecordingObserver


@pytest.fixture
async def world(fake: FakePodman) -> AsyncIterator[World]:
    observer = RecordingObserver()
    reach = Reachability(observer, clock=SystemClock())
    api = PodmanAPI(
        url=fake.url, observer=observer, reachability=reach, max_workers=2, deadlines=SHORT
    )
    try:
        yield World(api, reach, observer)
    finally:
        await api.close()


# ------------------------------------------------------------------------------ deadlines


def test_an_aborted_call_translates_to_runtime_unavailable_naming_the_deadline() -> None:
    err = translate(Aborted(AbortReason.DEADLINE, timeout=3.0), what="inspecting container x")
    assert isinstance(err, RuntimeUnavailable)
    assert str(err) == "inspecting container x: podman did not answer within 3s"
    down = translate(Aborted(AbortReason.RUNTIME_DOWN), what="starting container x")
    assert str(down) == "starting container x: podman stopped answering"


async def test_a_call_that_is_never_answered_fails_at_its_deadline(
    fake: FakePodman, world: World
) -> None:
    fake.routes["/containers/x/json"] = Route("hang")
    with pytest.raises(RuntimeUnavailable, match=r"did not answer within 0\.5s"):
        await asyncio.wait_for(world.api.inspect("x"), HANG_GUARD)
    assert world.observer.errors["inspect"] == 1
    assert not world.reach.down  # one silent call does not decide; the probe does
    # The lane's thread is free again: the next call is answered.
    fake.routes["/containers/x/json"] = Route("ok", {"Id": "x"})
    assert (await world.api.inspect("x"))["Id"] == "x"


async def test_an_answer_trickled_byte_by_byte_is_cut_at_the_deadline(
    fake: FakePodman, world: World
) -> None:
    # Every byte comes well within a socket timeout, so only a deadline can end it.
    fake.routes["/containers/x/json"] = Route("trickle", {"Id": "x"})
    with pytest.raises(RuntimeUnavailable, match="did not answer within"):
        await asyncio.wait_for(world.api.inspect("x"), HANG_GUARD)


async def test_a_stop_gets_its_grace_period_on_top_of_the_margin(
    fake: FakePodman, world: World
) -> None:
    fake.routes["/containers/x/stop"] = Route("hang")
    with pytest.raises(RuntimeUnavailable, match=r"within 1\.5s"):
        await asyncio.wait_for(world.api.stop("x", grace=1), HANG_GUARD)


# ---------------------------------------------------------------------------------- lanes


async def test_hung_stops_do_not_hold_up_quick_calls_or_the_ping(fake: FakePodman) -> None:
    observer = RecordingObserver()
    reach = Reachability(observer, clock=SystemClock())
    slow_stops = Deadlines(probe=5, read=5, write=5, margin=HANG_GUARD, pull=5)
    api = PodmanAPI(
        url=fake.url, observer=observer, reachability=reach, max_workers=2, deadlines=slow_stops
    )
    fake.routes["/stop"] = Route("hang")
    fake.routes["/containers/x/json"] = Route("ok", {"Id": "x"})
    try:
        assert api.slow.size == 1
        stops = [asyncio.create_task(api.stop(f"c{i}", grace=60)) for i in range(3)]
        await eventually(lambda: fake.count("/stop") == 1, "the first stop reaching podman")
        assert api.slow.busy == 1  # the slow lane is full; two stops queue behind it

        assert await asyncio.wait_for(api.ping(), HANG_GUARD) is True
        assert (await asyncio.wait_for(api.inspect("x"), HANG_GUARD))["Id"] == "x"
        assert (await asyncio.wait_for(api.list(labels={"a": "b"}), HANG_GUARD)) == []
        assert not any(s.done() for s in stops)
        assert fake.count("/stop") == 1
    finally:
        api.abort_inflight()
        await api.close()
    for s in stops:
        with contextlib.suppress(RuntimeUnavailable, RuntimeError):
            await s


async def test_aborting_calls_in_flight_ends_them_at_once_as_unavailable(fake: FakePodman) -> None:
    observer = RecordingObserver()
    reach = Reachability(observer, clock=SystemClock())
    api = PodmanAPI(
        url=fake.url,
        observer=observer,
        reachability=reach,
        deadlines=Deadlines(read=HANG_GUARD * 10, write=HANG_GUARD * 10),
    )
    fake.routes["/containers/x/json"] = Route("hang")
    fake.routes["/containers/x/start"] = Route("hang")
    try:
        calls = [asyncio.create_task(api.inspect("x")), asyncio.create_task(api.start("x"))]
        await eventually(lambda: api.quick.busy == 2 and len(fake.hits) == 2, "both in flight")
        assert api.abort_inflight() == 2
        for call in calls:
            with pytest.raises(RuntimeUnavailable, match="podman stopped answering"):
                await asyncio.wait_for(call, HANG_GUARD)
    finally:
        await api.close()


async def test_calls_fail_at_once_while_the_runtime_is_down(fake: FakePodman, world: World) -> None:
    world.reach.set(False)
    with pytest.raises(RuntimeUnavailable, match="podman is not answering"):
        await world.api.create({"name": "x", "image": "busybox"})
    assert fake.hits == []  # nothing reached the socket
    assert world.observer.errors["create"] == 0  # not a podman call: runtime_up says it
    world.reach.answered()
    assert (await world.api.inspect("x")) == {}


async def test_a_cancelled_call_lets_its_thread_finish_first(fake: FakePodman) -> None:
    observer = RecordingObserver()
    reach = Reachability(observer, clock=SystemClock())
    api = PodmanAPI(
        url=fake.url, observer=observer, reachability=reach, deadlines=Deadlines(read=1.5)
    )
    fake.routes["/containers/x/json"] = Route("hang")
    try:
        call = asyncio.create_task(api.inspect("x"))
        await eventually(lambda: fake.count("/containers/x/json") == 1, "the call in flight")
        call.cancel()
        await settle()
        assert not call.done()  # still waiting for its thread, which the deadline then ends
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, HANG_GUARD)
        assert api.quick.busy == 0
    finally:
        await api.close()


async def test_a_new_url_is_used_by_the_next_call(fake: FakePodman, world: World) -> None:
    base = Path(tempfile.mkdtemp(prefix="rcl-", dir="/tmp"))
    other = FakePodman(base / "q.sock")
    other.start()
    try:
        world.api.url = other.url
        await world.api.inspect("x")
        assert other.count("/containers/x/json") == 1
        assert fake.count("/containers/x/json") == 0
    finally:
        other.close()
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------- probe


@dataclass
class Probed:
    liveness: Liveness
    api: PodmanAPI
    reach: Reachability
    observer: RecordingObserver
    clock: FakeClock


@pytest.fixture
async def probed(fake: FakePodman) -> AsyncIterator[Probed]:
    clock = FakeClock()
    observer = RecordingObserver()
    reach = Reachability(observer, clock=clock)
    api = PodmanAPI(url=fake.url, observer=observer, reachability=reach, deadlines=SHORT)
    liveness = Liveness(api=api, reachability=reach, clock=clock)
    await liveness.start()
    try:
        yield Probed(liveness, api, reach, observer, clock)
    finally:
        await liveness.close()
        await api.close()


async def _settled(probed: Probed, pings: int) -> None:
    await eventually(lambda: probed.liveness.pings >= pings, f"{pings} pings")
    await eventually(lambda: probed.api.probe.busy == 0, "the ping answered")
    await settle()


async def test_an_idle_podman_is_pinged_once_per_interval_and_a_busy_one_not_at_all(
    fake: FakePodman, probed: Probed
) -> None:
    await _settled(probed, 1)
    assert probed.observer.up == [True]
    await probed.clock.advance(PROBE_INTERVAL - 0.1)
    assert fake.count("/_ping") == 1
    await probed.clock.advance(0.1)
    await _settled(probed, 2)
    assert fake.count("/_ping") == 2

    # Calls that are answered keep the probe quiet.
    for _ in range(4):
        await probed.clock.advance(PROBE_INTERVAL / 2)
        await probed.api.inspect("x")
    await settle()
    assert fake.count("/_ping") == 2


async def test_a_hung_ping_turns_the_runtime_down_and_an_answer_up_again(
    fake: FakePodman, probed: Probed
) -> None:
    await _settled(probed, 1)
    fake.routes["/_ping"] = Route("hang")
    await probed.clock.advance(PROBE_INTERVAL)
    await eventually(lambda: probed.observer.up[-1] is False, "runtime reported down")
    assert probed.reach.down

    fake.routes["/_ping"] = Route("ok")
    pings = probed.liveness.pings
    await probed.clock.advance(1.0)  # the down backoff is at most a second
    await eventually(lambda: probed.observer.up[-1] is True, "runtime reported up")
    assert probed.liveness.pings == pings + 1
    assert probed.observer.up == [True, False, True]


async def test_a_call_that_gets_no_answer_makes_the_probe_look_now(
    fake: FakePodman, probed: Probed
) -> None:
    await _settled(probed, 1)
    fake.routes["/containers/x/json"] = Route("hang")
    fake.routes["/_ping"] = Route("hang")
    with pytest.raises(RuntimeUnavailable):
        await probed.api.inspect("x")
    # No clock time passed: the probe pinged because the call got no answer.
    await eventually(lambda: probed.observer.up[-1] is False, "runtime reported down")
    assert probed.liveness.pings == 2


async def test_a_slow_ping_while_other_calls_are_answered_is_not_down(
    fake: FakePodman, probed: Probed
) -> None:
    await _settled(probed, 1)
    fake.routes["/_ping"] = Route("hang")
    check = asyncio.create_task(probed.liveness.check())
    await eventually(lambda: fake.count("/_ping") == 2, "the ping in flight")
    await probed.api.inspect("x")  # podman answers something while the ping hangs
    assert await asyncio.wait_for(check, HANG_GUARD) is True
    assert False not in probed.observer.up

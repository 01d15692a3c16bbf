"""TLS that never falls back to plaintext: the agent, the manager and every manager command.

Where a URL is ``tls://`` or a CA is given, nothing may be sent before a TLS handshake whose
server certificate verifies. Two kinds of server check it:

- ``PlaintextServer``, a fake that a real nats-server cannot be made into: its INFO asks for
  credentials but not for TLS, and it records every byte each connection sends. A client that
  honours the contract sends it nothing at all; one that trusts the INFO (nats-py does) sends
  CONNECT with the password. This is also what fails if nats-py stops calling the hook that
  ``reconciler.fleet.connect`` refuses through.
- real nats-server 2.9 with a ``tls`` block and certificates from ``TestCA``: the right CA
  connects, over ``tls://`` and over ``nats://`` with the CA; a stranger's CA, a certificate
  for another name, and no CA at all (the system's CAs do not know a test CA) are refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.core.clock import SystemClock
from reconciler.core.session import ConnectionChanged, SessionMessage
from reconciler.fleet.connect import PlaintextRefused, connect_first
from reconciler.fleet.options import NatsOptions
from reconciler.sessions.nats import NatsSession
from reconciler.testing.natsserver import NatsServer, NatsServerMissing
from reconciler.testing.polling import eventually
from reconciler.testing.ports import free_port
from reconciler.testing.tasks import ended
from reconciler.testing.tlscerts import TestCA
from tests.contract import missing
from tests.fleet.support import IMAGE, Manager, TcpProxy

PASSWORD = "n0t-for-the-wire"
RECONCILER = Path(sys.executable).with_name("reconciler")
INFO = {
    "server_id": "FAKE",
    "version": "2.9.10",
    "proto": 1,
    "headers": True,
    "jetstream": True,
    "max_payload": 1048576,
    "auth_required": True,
}


class PlaintextServer:
    """A fake NATS server offering no TLS; see the module docstring. Anything a client sends
    is answered with an authorization error, so a client that does send fails at once."""

    def __init__(self) -> None:
        self.accepted = 0
        self.received: list[bytes] = []  # what each connection sent, once it ended
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, scheme: str) -> str:
        assert self._server is not None
        return f"{scheme}://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def everything(self) -> bytes:
        return b"".join(self.received)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for w in list(self._writers):
            w.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.accepted += 1
        data = b""
        try:
            writer.write(b"INFO " + json.dumps(INFO).encode() + b"\r\n")
            await writer.drain()
            while chunk := await reader.read(65536):
                data += chunk
                writer.write(b"-ERR 'Authorization Violation'\r\n")
        except OSError:
            pass
        finally:
            self.received.append(data)
            self._writers.discard(writer)
            writer.close()


@pytest.fixture
async def plaintext() -> AsyncIterator[PlaintextServer]:
    server = PlaintextServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    path = tmp_path / "manager.creds"
    path.write_text(f"user: manager\npassword: {PASSWORD}\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The refusals ``reconciler.fleet.connect`` logged."""
    return [
        r
        for r in caplog.records
        if r.name == "reconciler.fleet.connect" and "refused before CONNECT" in r.getMessage()
    ]


# ----------------------------------------------------------- a server offering no TLS


async def test_plain_nats_without_a_ca_sends_credentials_in_clear_as_before(
    plaintext: PlaintextServer, creds: Path
) -> None:
    """The fake server sees what a client sends: a one-machine try-out on nats:// still works
    as it did, and this is what every test below proves does not happen."""
    options = NatsOptions(servers=(plaintext.url("nats"),), creds=creds)
    with pytest.raises(ConnectionError):
        await connect_first(options, options.servers)
    await eventually(lambda: plaintext.received, "the connection ended")
    assert b"CONNECT" in plaintext.everything() and PASSWORD.encode() in plaintext.everything()


@pytest.mark.parametrize(("scheme", "with_ca"), [("tls", False), ("tls", True), ("nats", True)])
async def test_the_agent_sends_nothing_to_a_server_offering_no_tls_and_keeps_trying(
    plaintext: PlaintextServer,
    creds: Path,
    ca: TestCA,
    caplog: pytest.LogCaptureFixture,
    scheme: str,
    with_ca: bool,
) -> None:
    caplog.set_level(logging.INFO)
    options = NatsOptions(
        servers=(plaintext.url(scheme),), creds=creds, tls_ca=ca.cert if with_ca else None
    )
    session = NatsSession(node_id="node-a", options=options, clock=SystemClock())
    messages: list[SessionMessage] = []

    async def consume() -> None:
        async for message in session.messages():
            messages.append(message)

    consumer = asyncio.create_task(consume())
    try:
        await eventually(lambda: len(plaintext.received) >= 3, "three attempts, each refused")
    finally:
        await ended(asyncio.ensure_future(session.close()), "the session's close")
        await ended(consumer, "the consumer of the session's messages")
    await eventually(lambda: len(plaintext.received) == plaintext.accepted, "every socket closed")
    assert plaintext.everything() == b""
    assert ConnectionChanged(True) not in messages
    logged = refusals(caplog)
    assert {r.levelno for r in logged} == {logging.WARNING}
    # one line per attempt (an attempt cut short by close() may not have read INFO yet)
    assert plaintext.accepted - 1 <= len(logged) <= plaintext.accepted
    assert all(plaintext.url(scheme) in r.getMessage() for r in logged)
    outage = [r for r in caplog.records if r.name == "reconciler.sessions.nats"]
    assert any("does not require TLS" in r.getMessage() for r in outage)


def test_the_refusal_names_the_url_without_its_user_info() -> None:
    err = PlaintextRefused("tls://node-a:s3cret@host:4222")
    assert isinstance(err, ConnectionError)
    assert "tls://host:4222" in str(err) and "s3cret" not in str(err)


@dataclass(frozen=True)
class Command:
    args: tuple[str, ...]
    runs: bool = False  # runs until stopped, retrying; the others fail and exit


SERVICES = "{services}"
LISTEN = "{listen}"
OUT = "{out}"
USERS = "{users}"

# Every `reconciler manager` command that reaches NATS; adding one is one line.
COMMANDS = {
    "init": Command(("init",)),
    "run": Command(("run", "--listen", LISTEN), runs=True),
    "apply": Command(("apply", "-f", SERVICES)),
    "rm": Command(("rm", "web")),
    "ps": Command(("ps",)),
    "nodes": Command(("nodes",)),
    "drain": Command(("drain", "node-a")),
    "pause": Command(("pause", "node-a")),
    "activate": Command(("activate", "node-a")),
    "node add": Command(("node", "add", "edge-9", "--out", OUT, "--users-file", USERS)),
    "node rm": Command(("node", "rm", "edge-9", "--users-file", USERS)),
    "node ls": Command(("node", "ls")),
    "node users-file": Command(("node", "users-file", "--users-file", USERS)),
}


def command_line(tmp_path: Path, command: Command, *flags: str) -> list[str]:
    services = tmp_path / "services.yaml"
    web = {"name": "web", "image": IMAGE}
    services.write_text(
        json.dumps({"apiVersion": "reconciler/v1", "kind": "ServiceSet", "services": [web]})
    )
    fill = {
        SERVICES: str(services),
        LISTEN: f"127.0.0.1:{free_port()}",
        OUT: str(tmp_path / "edge-9.creds"),
        USERS: str(tmp_path / "fleet-users.conf"),
    }
    args = [fill.get(a, a) for a in command.args]
    return [str(RECONCILER), "manager", *args, *flags]


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize(("scheme", "with_ca"), [("tls", False), ("nats", True)])
async def test_manager_commands_send_nothing_to_a_server_offering_no_tls(
    tmp_path: Path,
    plaintext: PlaintextServer,
    creds: Path,
    ca: TestCA,
    name: str,
    scheme: str,
    with_ca: bool,
) -> None:
    command = COMMANDS[name]
    flags = ["--nats", plaintext.url(scheme), "--creds", str(creds)]
    if with_ca:
        flags += ["--tls-ca", str(ca.cert)]
    proc = await asyncio.create_subprocess_exec(
        *command_line(tmp_path, command, *flags),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    if command.runs:
        try:
            await eventually(lambda: len(plaintext.received) >= 2, "the manager retried")
        finally:
            proc.terminate()
    out, err = await proc.communicate()
    assert plaintext.accepted >= 1, "the command never reached the server"
    assert plaintext.everything() == b""
    assert "does not require TLS" in err.decode(), err.decode()
    assert PASSWORD not in out.decode() + err.decode()
    if not command.runs:
        assert proc.returncode == 1
    assert not (tmp_path / "edge-9.creds").exists()  # node add issues nothing it cannot record


# ---------------------------------------------------------------- real TLS servers


def tls_server(
    workdir: Path, ca: TestCA, *, dns: tuple[str, ...] = ("localhost",), ips: bool = True
) -> NatsServer:
    """A started nats-server -js whose clients must speak TLS, with a certificate from ``ca``
    for ``dns`` (and 127.0.0.1 with ``ips``)."""
    pair = ca.issue(f"server-{dns[0]}", dns=dns, ips=("127.0.0.1",) if ips else ())
    try:
        server = NatsServer(
            workdir, extra=f'tls {{ cert_file: "{pair.cert}", key_file: "{pair.key}" }}'
        )
    except NatsServerMissing as err:
        missing(str(err))
    server.start()
    return server


@pytest.fixture
def secure(tmp_path: Path, ca: TestCA) -> Iterator[NatsServer]:
    server = tls_server(tmp_path / "nats", ca)
    yield server
    server.kill()


def tls_url(server: NatsServer) -> str:
    return server.url.replace("nats://", "tls://")


async def test_the_agent_connects_over_tls_with_the_ca(secure: NatsServer, ca: TestCA) -> None:
    manager = await Manager.connect(secure.url, tls=ssl.create_default_context(cafile=ca.cert))
    try:
        await manager.init()
        for url in (tls_url(secure), secure.url):  # tls://, then nats:// with the CA
            session = NatsSession(
                node_id="node-a",
                options=NatsOptions(servers=(url,), tls_ca=ca.cert),
                clock=SystemClock(),
            )
            messages = session.messages()
            try:
                assert await anext(messages) == ConnectionChanged(True)
                assert session.connected
            finally:
                await session.close()
                await messages.aclose()
    finally:
        await manager.close()


async def test_manager_commands_connect_over_tls_with_the_ca(
    tmp_path: Path, secure: NatsServer, ca: TestCA
) -> None:
    for url, command in ((tls_url(secure), "init"), (secure.url, "ps"), (tls_url(secure), "nodes")):
        proc = await asyncio.create_subprocess_exec(
            *command_line(tmp_path, COMMANDS[command], "--nats", url, "--tls-ca", str(ca.cert)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        assert proc.returncode == 0, f"{command} over {url}: {err.decode()}"
        assert "eof_received" not in err.decode()  # asyncio's TLS noise is not an operator's


async def refused(url: str, ca: Path | None) -> str:
    """Why ``url`` was refused, with ``ca``."""
    options = NatsOptions(servers=(url,), tls_ca=ca)
    with pytest.raises(ConnectionError) as err:
        await connect_first(options, options.servers)
    return str(err.value)


async def test_a_certificate_from_another_ca_is_refused(tmp_path: Path, secure: NatsServer) -> None:
    stranger = TestCA(tmp_path / "stranger", name="stranger")
    for url in (tls_url(secure), secure.url):
        assert "certificate verify failed" in await refused(url, stranger.cert)


async def test_without_a_ca_the_systems_cas_verify_the_server(
    secure: NatsServer, ca: TestCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No CA: verified against the system's CAs, which do not know the test CA; pointing
    OpenSSL's system default at the test CA (SSL_CERT_FILE) makes the same URL connect."""
    for url in (tls_url(secure), secure.url):
        assert "certificate verify failed" in await refused(url, None)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert))
    nc, _ = await connect_first(NatsOptions(servers=(tls_url(secure),)), [tls_url(secure)])
    await nc.close()


async def test_a_certificate_for_another_name_is_refused(tmp_path: Path, ca: TestCA) -> None:
    server = tls_server(tmp_path / "elsewhere", ca, dns=("elsewhere.example",), ips=False)
    try:
        why = await refused(tls_url(server), ca.cert)
        assert "certificate verify failed" in why and "127.0.0.1" in why
    finally:
        server.kill()


# ------------------------------------------------------------- the managers setting


async def test_published_plain_managers_are_ignored_by_an_agent_on_tls(
    secure: NatsServer, ca: TestCA, plaintext: PlaintextServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    configured, published = TcpProxy(secure.port, free_port()), TcpProxy(secure.port, free_port())
    await configured.start()
    await published.start()
    manager = await Manager.connect(secure.url, tls=ssl.create_default_context(cafile=ca.cert))
    configured_url = f"tls://127.0.0.1:{configured.port}"
    session = NatsSession(
        node_id="node-a",
        options=NatsOptions(servers=(configured_url,), tls_ca=ca.cert),
        clock=SystemClock(),
    )
    messages: list[SessionMessage] = []

    async def consume() -> None:
        async for message in session.messages():
            messages.append(message)

    consumer = asyncio.create_task(consume())
    try:
        await manager.init()
        await eventually(lambda: session.connected, "connected through the configured URL")
        managers = [plaintext.url("nats"), f"tls://127.0.0.1:{published.port}"]
        await manager.fleet(managers=managers)
        await eventually(lambda: session.settings.managers == tuple(managers), "managers read")
        await configured.cut()  # for good: only the published tls:// URL leads back
        await eventually(
            lambda: messages.count(ConnectionChanged(True)) == 2, "reconnected over tls://"
        )
        assert plaintext.accepted == 0
        ignoring = [r for r in caplog.records if "ignoring managers" in r.getMessage()]
        assert len(ignoring) == 1 and ignoring[0].levelno == logging.WARNING
        assert plaintext.url("nats") in ignoring[0].getMessage()
    finally:
        await ended(asyncio.ensure_future(session.close()), "the session's close")
        await ended(consumer, "the consumer of the session's messages")
        await manager.close()
        await published.cut()

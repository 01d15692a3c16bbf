"""The ``reconciler`` command line, and the composition root.

This is the only module that picks concrete implementations: the podman runtime, the file
session, the system clock. Everything else receives them as arguments, which is what keeps the
core testable with fakes. (import-linter allows ``reconciler.cli -> runtime`` and nothing else.)

Conventions from PRODUCT.md: exit 0 on success, 1 on a runtime failure (including "not found"),
2 on a usage or validation error. Every command takes ``--config FILE``, a YAML map whose keys
are the long flag names without dashes; flags given on the command line win. Logs are
``key=value`` lines on stderr.

argparse (the standard library) is enough here: the commands are few, and it keeps the agent's
start-up time and memory small.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from reconciler import __version__
from reconciler.errors import StoreError, UnknownTask
from reconciler.model import spec_to_dict, status_to_dict
from reconciler.snapshot import TaskView

if TYPE_CHECKING:
    from reconciler.clock import Clock
    from reconciler.fleet.connect import NatsOptions
    from reconciler.model import NodeDescription
    from reconciler.store import Store, StoreOrigin

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("reconciler")


class UsageError(Exception):
    """A bad flag, config key or value: exit 2."""


# ------------------------------------------------------------------------------- logging


MAX_TRACEBACK = 8000
"""The longest traceback a log line carries (its tail, where the error is)."""


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..."`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds")
        msg = record.getMessage()
        line = (
            f"ts={ts.replace('+00:00', 'Z')} level={record.levelname.lower()} "
            f"logger={record.name} msg={json.dumps(msg)}"
        )
        if record.exc_info:
            exc = self.formatException(record.exc_info)
            if len(exc) > MAX_TRACEBACK:  # a RecursionError's traceback is ~400 KB
                exc = "..." + exc[-MAX_TRACEBACK:]
            line += " exc=" + json.dumps(exc)
        return line


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # podman-py and urllib3 are chatty at debug; keep them at warning unless asked.
    for noisy in ("urllib3", "podman"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


# -------------------------------------------------------------------------------- config


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/reconciler")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "reconciler"


def default_desired_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/etc/reconciler/desired.d")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "reconciler" / "desired.d"


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--listen: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_labels(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    labels = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--node-label: expected KEY=VALUE, got {item!r}")
        labels.append((key, value))
    return tuple(labels)


def apply_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill options not given on the command line from ``--config FILE``."""
    path = getattr(args, "config", None)
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"--config {path}: {err}") from err
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a map of flag names to values")
    known = {a.dest: a for a in parser._actions}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        action = known.get(dest)
        if action is None or dest in ("help", "config", "command"):
            raise UsageError(f"--config {path}: unknown key {key!r}")
        if getattr(args, dest) not in (None, [], False):
            continue  # the command line wins
        if isinstance(getattr(args, dest), list) and not isinstance(value, list):
            value = [value]
        setattr(args, dest, value)


# ------------------------------------------------------------------------------- parsing


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="YAML file of flag values")
    common.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=None,
        help="log level (default info)",
    )
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Keep this host's podman containers equal to the desired tasks.",
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subs: dict[str, argparse.ArgumentParser] = {}

    run = sub.add_parser("run", parents=[common], help="run the agent in the foreground")
    run.add_argument("--desired", metavar="DIR", help="desired-state directory")
    run.add_argument("--state-dir", metavar="DIR", help="state directory")
    run.add_argument("--podman-url", metavar="URL", help="podman API, unix:///path")
    run.add_argument("--listen", metavar="HOST:PORT", help="HTTP listen address")
    run.add_argument("--node-id", metavar="ID", help="node id (default: generated once)")
    run.add_argument("--resync-interval", metavar="DURATION", help="full resync period")
    run.add_argument("--manager", metavar="URL", help="fleet manager: nats://HOST:PORT[,...]")
    run.add_argument("--manager-creds", metavar="FILE")
    run.add_argument("--manager-tls-ca", metavar="FILE")
    run.add_argument("--node-label", metavar="KEY=VALUE", action="append", default=[])
    subs["run"] = run

    validate = sub.add_parser("validate", parents=[common], help="check desired-state files")
    validate.add_argument("paths", nargs="+", metavar="PATH")
    subs["validate"] = validate

    apply = sub.add_parser("apply", parents=[common], help="apply one desired-state file")
    apply.add_argument("-f", "--file", required=True, metavar="FILE")
    apply.add_argument("--desired", metavar="DIR")
    apply.add_argument("--dry-run", action="store_true")
    subs["apply"] = apply

    ps = sub.add_parser("ps", parents=[common], help="list tasks")
    ps.add_argument("--state-dir", metavar="DIR")
    ps.add_argument("-a", "--all", action="store_true", help="include the history")
    ps.add_argument("-o", "--output", choices=["table", "json"], default=None)
    ps.add_argument("--watch", action="store_true", help="refresh the table in place")
    subs["ps"] = ps

    inspect = sub.add_parser("inspect", parents=[common], help="show one task as JSON")
    inspect.add_argument("ref", metavar="NAME|ID")
    inspect.add_argument("--state-dir", metavar="DIR")
    inspect.add_argument("--show-env", action="store_true")
    subs["inspect"] = inspect

    logs = sub.add_parser("logs", parents=[common], help="print a task's container logs")
    logs.add_argument("ref", metavar="NAME|ID")
    logs.add_argument("--state-dir", metavar="DIR")
    logs.add_argument("--podman-url", metavar="URL")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--tail", type=int, metavar="N")
    subs["logs"] = logs

    manager = sub.add_parser("manager", help="fleet manager commands (NATS JetStream)")
    manager_sub = manager.add_subparsers(dest="manager_command", required=True, metavar="COMMAND")
    init = manager_sub.add_parser("init", parents=[common], help="create the fleet's buckets")
    init.add_argument("--nats", metavar="URL", help="NATS server(s): nats://HOST:PORT[,...]")
    init.add_argument("--creds", metavar="FILE", help="NATS credentials of a manager user")
    init.add_argument("--tls-ca", metavar="FILE", help="CA bundle that signs the servers' certs")
    init.set_defaults(config_parser="manager init")
    subs["manager init"] = init
    return parser, subs


# ----------------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    from reconciler.clock import SystemClock
    from reconciler.desired import parse_duration
    from reconciler.desired.manager import check_records
    from reconciler.statedir import StateDirLock, load_node_id, prepare_state_dir
    from reconciler.store import open_store

    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    desired = Path(args.desired) if args.desired else default_desired_dir()
    host, port = parse_listen(args.listen or "127.0.0.1:9469")
    try:
        resync = parse_duration(args.resync_interval or "30s")
    except ValueError as err:
        raise UsageError(f"--resync-interval: {err}") from err
    labels = parse_labels(args.node_label or [])
    manager = fleet_options(args.manager, args.manager_creds, args.manager_tls_ca, "--manager")

    prepare_state_dir(state_dir)
    # 1. the state-dir lock: a second agent exits here, with code 1, before any store is
    #    opened, moved aside or rebuilt
    lock = StateDirLock(state_dir)
    try:
        lock.acquire()
        opened = open_store(state_dir, verify=check_records)
    except StoreError as err:
        print(f"reconciler: {err}", file=sys.stderr)
        lock.release()
        return EXIT_FAILURE
    store = opened.store
    try:
        node_id = load_node_id(state_dir, args.node_id)
        if manager is not None:
            from reconciler.fleet.buckets import check_node_id

            try:
                check_node_id(node_id)
            except ValueError as err:
                raise UsageError(f"--node-id: {err}") from err
        log.info(
            "starting version=%s node_id=%s state_dir=%s store=%s",
            __version__,
            node_id,
            state_dir,
            opened.origin.value,
        )
        return asyncio.run(
            _run_agent(
                store=store,
                store_origin=opened.origin,
                state_dir=state_dir,
                desired=desired,
                listen=(host, port),
                podman_url=args.podman_url,
                node_id=node_id,
                resync=resync,
                labels=labels,
                clock=SystemClock(),
                manager=manager,
            )
        )
    finally:
        store.close()
        lock.release()


def fleet_options(
    servers: str | None, creds: str | None, tls_ca: str | None, flag: str
) -> NatsOptions | None:
    """NATS connection options from flags, checked now (a bad one is a usage error)."""
    if not servers:
        if creds or tls_ca:
            raise UsageError(f"credentials and a TLS CA need {flag}")
        return None
    from reconciler.fleet.connect import ConfigError, checked_options

    try:
        return checked_options(servers, creds=creds, tls_ca=tls_ca)
    except ConfigError as err:
        raise UsageError(f"{flag}: {err}") from err


async def _run_agent(
    *,
    store: Store,
    store_origin: StoreOrigin,
    state_dir: Path,
    desired: Path,
    listen: tuple[str, int],
    podman_url: str | None,
    node_id: str,
    resync: float,
    labels: tuple[tuple[str, str], ...],
    clock: Clock,
    manager: NatsOptions | None = None,
) -> int:
    from reconciler import http
    from reconciler.agent import Agent, AgentConfig
    from reconciler.session import Session
    from runtime.podman.discovery import find_podman, rediscovery
    from runtime.podman.executor import PodmanExecutor

    agent = Agent(
        config=AgentConfig(node_id=node_id, resync_interval=resync, labels=labels),
        store=store,
        clock=clock,
        store_origin=store_origin,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # 2. the listener
    try:
        server = await http.serve(
            *listen, snapshot=agent.snapshot, metrics=agent.metrics, changes=agent.changes
        )
    except OSError as err:
        print(f"reconciler: cannot listen on {listen[0]}:{listen[1]}: {err}", file=sys.stderr)
        return EXIT_FAILURE
    log.info("listening addr=%s:%d", *listen)

    async def serve_http() -> None:
        """The supervised HTTP loop: serve; if the server fails, bind again."""
        nonlocal server
        if not server.is_serving():
            server.close()
            server = await http.serve(
                *listen, snapshot=agent.snapshot, metrics=agent.metrics, changes=agent.changes
            )
        await server.serve_forever()

    # 3. podman (never fatal: the agent retries and /readyz says why)
    url, service = await asyncio.to_thread(find_podman, podman_url, state_dir)
    executor = PodmanExecutor(
        url=url,
        node_id=node_id,
        clock=clock,
        observer=agent,
        agent_version=__version__,
        discover=rediscovery(podman_url, state_dir),
    )
    session: Session
    if manager is not None:
        from reconciler.fleet.connect import redact
        from reconciler.sessions.nats import NatsSession

        def describe() -> tuple[NodeDescription | None, bool]:
            snap = agent.snapshot()
            return snap.node, snap.ready

        session = NatsSession(
            node_id=node_id, options=manager, clock=clock, describe=describe, labels=labels
        )
        log.info("fleet mode managers=%s", ",".join(redact(u) for u in manager.servers))
    else:
        from reconciler.sessions.files import FileSession

        session = FileSession(desired)
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


# ------------------------------------------------------------------- validate and apply


def cmd_validate(args: argparse.Namespace) -> int:
    from reconciler.desired import DesiredStateError, load_paths

    try:
        result = load_paths(args.paths)
    except DesiredStateError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    print(f"ok: {len(result.tasks)} task(s)")
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from reconciler.desired import DesiredStateError, apply_file

    desired = Path(args.desired) if args.desired else default_desired_dir()
    try:
        lines = apply_file(Path(args.file), desired, dry_run=args.dry_run)
    except DesiredStateError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        print(f"reconciler: cannot write into {desired}: {err}", file=sys.stderr)
        return EXIT_FAILURE
    for line in lines:
        print(line)
    return EXIT_OK


# --------------------------------------------------------------------- ps, inspect, logs


def read_views(state_dir: Path) -> list[TaskView]:
    from reconciler.desired.manager import views_from_store
    from reconciler.store import Store

    store = Store.open(state_dir, read_only=True)
    try:
        return views_from_store(store)
    finally:
        store.close()


def _fmt_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_table(views: Sequence[TaskView]) -> str:
    header = (
        "NAME",
        "ID",
        "DESIRED",
        "STATE",
        "RESTARTS",
        "EXIT",
        "CONTAINER",
        "UPDATED",
        "MESSAGE",
    )
    rows = [header]
    for v in views:
        message = v.message or ""
        if v.err and v.err not in message:
            message = f"{message}: {v.err}" if message else v.err
        rows.append(
            (
                v.name if v.current else f"  {v.name}",
                v.id,
                v.desired_state.label,
                v.state.label,
                str(v.restarts),
                "" if v.exit_code is None else str(v.exit_code),
                (v.container_id or "")[:12],
                _fmt_time(v.updated_at),
                message,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    out = []
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
        out.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(out)


def cmd_ps(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    output = args.output or "table"

    def current() -> list[TaskView]:
        views = read_views(state_dir)
        return views if args.all else [v for v in views if v.current]

    try:
        if args.watch:
            if output != "table":
                raise UsageError("--watch shows the table; drop -o json")
            while True:
                text = render_table(current())
                stamp = dt.datetime.now(tz=dt.UTC).strftime("%H:%M:%S")
                sys.stdout.write(f"\x1b[H\x1b[2J{text}\n\nrefreshed {stamp} (Ctrl-C to quit)\n")
                sys.stdout.flush()
                time.sleep(1.0)
        views = current()
    except KeyboardInterrupt:
        return EXIT_OK
    except StoreError as err:
        print(f"reconciler: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if output == "json":
        print(json.dumps([v.to_json() for v in views], indent=2))
    else:
        print(render_table(views))
    return EXIT_OK


def find_view(views: Sequence[TaskView], ref: str) -> TaskView | None:
    """NAME means the current instance; an id matches any instance."""
    for v in views:
        if v.current and v.name == ref:
            return v
    for v in views:
        if v.id == ref:
            return v
    return None


def cmd_inspect(args: argparse.Namespace) -> int:
    from reconciler.store import Store

    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    try:
        store = Store.open(state_dir, read_only=True)
    except StoreError as err:
        print(f"reconciler: {err}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        from reconciler.desired.manager import views_from_store

        view = find_view(views_from_store(store), args.ref)
        if view is None:
            print(f"reconciler: no task named or with id {args.ref!r}", file=sys.stderr)
            return EXIT_FAILURE
        try:
            task = store.get_task(view.id)
        except UnknownTask:
            print(f"reconciler: task {view.id} has no stored record", file=sys.stderr)
            return EXIT_FAILURE
        spec = spec_to_dict(task.spec)
        spec["env"] = {k: (v if args.show_env else "<redacted>") for k, v in task.spec.env}
        spec["labels"] = dict(task.spec.labels)
        out = {
            "id": task.id,
            "name": task.name,
            "nodeId": task.node_id,
            "current": view.current,
            "desiredState": task.desired_state.label,
            "restarts": view.restarts,
            "spec": spec,
            "status": {**status_to_dict(task.status), "state": task.status.state.label},
            "view": view.to_json(),
        }
        print(json.dumps(out, indent=2))
        return EXIT_OK
    finally:
        store.close()


def cmd_logs(args: argparse.Namespace) -> int:
    from runtime.podman.discovery import candidates, container_logs

    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    try:
        views = read_views(state_dir)
    except StoreError as err:
        print(f"reconciler: {err}", file=sys.stderr)
        return EXIT_FAILURE
    view = find_view(views, args.ref)
    if view is None:
        print(f"reconciler: no task named or with id {args.ref!r}", file=sys.stderr)
        return EXIT_FAILURE
    ref = view.container_id or f"{view.name}.{view.id}"
    from runtime.podman.discovery import answers

    urls = [args.podman_url] if args.podman_url else candidates(state_dir)
    url = next((u for u in urls if answers(u)), None)
    if url is None:
        print("reconciler: no podman API answers; pass --podman-url", file=sys.stderr)
        return EXIT_FAILURE
    try:
        container_logs(url, ref, follow=args.follow, tail=args.tail)
    except LookupError as err:
        print(f"reconciler: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        pass
    return EXIT_OK


# ------------------------------------------------------------------------------- manager


def cmd_manager(args: argparse.Namespace) -> int:
    """``reconciler manager init``: the other manager commands come with the manager."""
    if not args.nats:
        raise UsageError("--nats URL is required")
    options = fleet_options(args.nats, args.creds, args.tls_ca, "--nats")
    assert options is not None
    return asyncio.run(_manager_init(options))


async def _manager_init(options: NatsOptions) -> int:
    from reconciler.fleet.buckets import default_replicas, init_buckets
    from reconciler.fleet.connect import connect_first

    try:
        nc, _ = await connect_first(options, options.servers)
    except ConnectionError as err:
        print(f"reconciler: {err}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        results = await init_buckets(nc.jetstream(), replicas=default_replicas(nc))
    except Exception as err:
        print(f"reconciler: creating the buckets failed: {str(err) or type(err)}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await nc.close()
    for bucket, result in results:
        print(f"{result.value} {bucket}")
    return EXIT_OK


# ---------------------------------------------------------------------------------- main

COMMANDS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "apply": cmd_apply,
    "ps": cmd_ps,
    "inspect": cmd_inspect,
    "logs": cmd_logs,
    "manager": cmd_manager,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser, subs = build_parser()
    args = parser.parse_args(argv)
    try:
        apply_config(args, subs[getattr(args, "config_parser", args.command)])
        setup_logging(args.log_level or "info")
        return COMMANDS[args.command](args)
    except UsageError as err:
        print(f"reconciler: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

"""Every command and flag of the ``reconciler`` command line, declared as data.

One table (``COMMANDS``) says which commands exist, which flags each takes, and what each flag
means. ``reconciler.cli.parser`` builds the argparse parser from it and checks ``--config FILE``
against it, and the docs test reads it.

Defaults that depend on the user live here once: as root the state dir is
``/var/lib/reconciler`` and the desired dir ``/etc/reconciler/desired.d``; otherwise they are
under ``$XDG_STATE_HOME`` and ``$XDG_CONFIG_HOME``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from reconciler.cli.exits import UsageError
from reconciler.fleet.buckets import DEFAULT_LEASE
from reconciler.fleet.identity import Role

__all__ = [
    "COMMANDS",
    "CREDS_OUT",
    "CommandSpec",
    "Flag",
    "Kind",
    "UsageError",
    "default_desired_dir",
    "default_state_dir",
    "desired_dir",
    "state_dir",
]


class Kind(Enum):
    """How a flag takes its value."""

    VALUE = "value"  # --flag VALUE
    INT = "int"  # --flag N
    SWITCH = "switch"  # --flag (true when given)
    REPEAT = "repeat"  # --flag V, repeatable


@dataclass(frozen=True, slots=True)
class Flag:
    """One option: ``name`` is its long name without dashes, as ``--config`` keys spell it."""

    name: str
    help: str
    metavar: str | None = None
    kind: Kind = Kind.VALUE
    short: str | None = None
    choices: tuple[str, ...] = ()
    required: bool = False
    default: str | None = None  # the one place a default is written; the help shows it

    @property
    def text(self) -> str:
        """The help line, with the default."""
        return f"{self.help} (default {self.default})" if self.default is not None else self.help

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def unset(self) -> Any:
        """What argparse leaves when the flag is not given."""
        return {Kind.SWITCH: False, Kind.REPEAT: []}.get(self.kind)


@dataclass(frozen=True, slots=True)
class Positional:
    name: str
    metavar: str
    help: str = ""
    many: bool = False
    optional: bool = False  # with many: none at all is fine too


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command: ``path`` is its words after ``reconciler`` (``("manager", "init")``)."""

    path: tuple[str, ...]
    help: str
    flags: tuple[Flag, ...] = ()
    positionals: tuple[Positional, ...] = ()
    fleet: bool = field(default=False)  # a command of fleet mode

    @property
    def name(self) -> str:
        return " ".join(self.path)


COMMON = (
    Flag("config", "YAML file of flag values (keys: the long flag names)", "FILE"),
    Flag("log-level", "log level", choices=("debug", "info", "warning", "error"), default="info"),
)

STATE_DIR = Flag("state-dir", "state directory", "DIR")
DESIRED = Flag("desired", "desired-state directory", "DIR")
PODMAN_URL = Flag("podman-url", "podman API, unix:///path", "URL")
NATS = Flag("nats", "NATS server(s): nats://HOST:PORT[,...]", "URL")
POLICY_FLAGS = (
    Flag(
        "allow-bind",
        "fleet tasks may bind-mount host paths under this prefix, repeatable",
        "PATH",
        Kind.REPEAT,
    ),
    Flag(
        "allow-device",
        "fleet tasks may pass host devices under this path, repeatable",
        "PATH",
        Kind.REPEAT,
    ),
    Flag(
        "allow-cap",
        "fleet tasks may add this capability (ALL: any), repeatable",
        "CAP",
        Kind.REPEAT,
    ),
    Flag("allow-host-network", "fleet tasks may use network: host", kind=Kind.SWITCH),
    Flag(
        "allow-registry",
        "fleet tasks' images only from this registry (localhost: local images), repeatable",
        "HOST",
        Kind.REPEAT,
    ),
)
"""``reconciler run``'s policy for fleet tasks (``reconciler.core.policy``)."""

NATS_CREDS = Flag("creds", "NATS credentials of a manager user", "FILE")
NATS_TLS_CA = Flag("tls-ca", "CA bundle that signs the NATS servers' certificates", "FILE")
HTTP_HOST = Flag(
    "http-host",
    "a name the status page and /v1/* answer to besides IP addresses and localhost, repeatable",
    "NAME",
    Kind.REPEAT,
)
OUTPUT = Flag("output", "output format", short="-o", choices=("table", "json"), default="table")
BUCKET_QUOTAS = (
    # no default here: each bucket's own is the contract's (reconciler.fleet.buckets, fleet.md)
    Flag(
        "bucket-max-bytes",
        "what a bucket may hold (BUCKET: status or reconciler_status, ...), repeatable "
        "(default: each bucket's own, docs/fleet.md#quotas)",
        "BUCKET=SIZE",
        Kind.REPEAT,
    ),
    Flag(
        "bucket-max-value",
        "the largest value a bucket takes, repeatable (default: each bucket's own)",
        "BUCKET=SIZE",
        Kind.REPEAT,
    ),
)
USERS_FILE = Flag(
    "users-file",
    "the users file to regenerate (every server of the fleet includes it)",
    "FILE",
    default="fleet-users.conf",  # the name deploy/nats/fleet.conf includes
)
CREDS_OUT = "{name}.creds"
"""Where ``manager node add NAME`` writes the credentials without ``--out``."""
FLEET_CONNECTION = (NATS, NATS_CREDS, NATS_TLS_CA)
NAME = Positional("name", "NAME", "the identity's name (a node's is its node id)")
NODE = Positional("node", "NODE", "the node id")
LABEL_RM = Flag("rm", "remove this label, repeatable", "KEY", kind=Kind.REPEAT)

COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec(
        ("run",),
        "run the agent in the foreground",
        (
            DESIRED,
            STATE_DIR,
            PODMAN_URL,
            Flag("listen", "HTTP listen address", "HOST:PORT", default="127.0.0.1:9469"),
            HTTP_HOST,
            Flag("node-id", "node id (default: generated once, kept in the state dir)", "ID"),
            Flag("resync-interval", "full resync period", "DURATION", default="30s"),
            Flag("stats-interval", "usage sampling period (0: off)", "DURATION", default="10s"),
            Flag(
                "image-gc-threshold",
                "remove the agent's unneeded images while the image store has less than this "
                "percent free, and refuse pulls meanwhile (0: off)",
                "PERCENT",
                default="15",
            ),
            Flag(
                "manager", "fleet mode: the manager's NATS server(s), nats://HOST:PORT[,...]", "URL"
            ),
            Flag("manager-creds", "fleet mode: this node's NATS credentials", "FILE"),
            Flag("manager-tls-ca", "fleet mode: CA bundle for the NATS servers' TLS", "FILE"),
            Flag("node-label", "a label of this node, repeatable", "KEY=VALUE", Kind.REPEAT),
            *POLICY_FLAGS,
        ),
    ),
    CommandSpec(
        ("validate",),
        "check desired-state files",
        positionals=(Positional("paths", "PATH", "files or directories", many=True),),
    ),
    CommandSpec(
        ("apply",),
        "apply one desired-state file",
        (
            Flag("file", "the file to apply", "FILE", short="-f", required=True),
            DESIRED,
            Flag("dry-run", "print the plan, write nothing", kind=Kind.SWITCH),
        ),
    ),
    CommandSpec(
        ("ps",),
        "list tasks",
        (
            STATE_DIR,
            Flag("all", "include the history", kind=Kind.SWITCH, short="-a"),
            OUTPUT,
            Flag("watch", "refresh the table in place", kind=Kind.SWITCH),
        ),
    ),
    CommandSpec(
        ("inspect",),
        "show one task as JSON",
        (STATE_DIR, Flag("show-env", "show env values instead of <redacted>", kind=Kind.SWITCH)),
        (Positional("ref", "NAME|ID"),),
    ),
    CommandSpec(
        ("logs",),
        "print a task's container logs",
        (
            STATE_DIR,
            PODMAN_URL,
            Flag("follow", "keep printing new output", kind=Kind.SWITCH, short="-f"),
            Flag("tail", "only the last N lines", "N", Kind.INT),
        ),
        (Positional("ref", "NAME|ID"),),
    ),
    CommandSpec(
        ("manager", "init"),
        "create the fleet's buckets (idempotent)",
        (NATS, NATS_CREDS, NATS_TLS_CA, *BUCKET_QUOTAS),
        fleet=True,
    ),
    CommandSpec(
        ("manager", "run"),
        "run a fleet manager in the foreground (one leads, the others stand by)",
        (
            NATS,
            NATS_CREDS,
            NATS_TLS_CA,
            Flag("listen", "HTTP listen address", "HOST:PORT", default="127.0.0.1:9470"),
            HTTP_HOST,
            Flag(
                "node-grace",
                "a node without a ready heartbeat this long is down",
                "DURATION",
                default="15s",
            ),
            Flag(
                "lease",
                "leadership lease, the leader key's age limit",
                "DURATION",
                default=f"{DEFAULT_LEASE:g}s",  # the buckets' contract: manager init uses it too
            ),
            *BUCKET_QUOTAS,
        ),
        fleet=True,
    ),
    CommandSpec(
        ("manager", "apply"),
        "validate a ServiceSet file and write its services",
        (
            Flag("file", "the ServiceSet file", "FILE", short="-f", required=True),
            NATS,
            NATS_CREDS,
            NATS_TLS_CA,
            Flag(
                "dry-run",
                "print what would change and where tasks would go, write nothing",
                kind=Kind.SWITCH,
            ),
            Flag("prune", "also remove the services the file does not name", kind=Kind.SWITCH),
        ),
        fleet=True,
    ),
    CommandSpec(
        ("manager", "rm"),
        "remove services (their tasks are removed from every node)",
        (NATS, NATS_CREDS, NATS_TLS_CA),
        (Positional("services", "SERVICE", "service names", many=True),),
        fleet=True,
    ),
    CommandSpec(
        ("manager", "ps"),
        "list the fleet's tasks: service, task, node, state, restarts",
        (NATS, NATS_CREDS, NATS_TLS_CA, OUTPUT),
        fleet=True,
    ),
    CommandSpec(
        ("manager", "nodes"),
        "list the fleet's nodes",
        (NATS, NATS_CREDS, NATS_TLS_CA, OUTPUT),
        fleet=True,
    ),
    CommandSpec(
        ("manager", "node", "add"),
        "issue an identity's credentials and regenerate the users file",
        (
            Flag(
                "role",
                "what it may do",
                choices=tuple(
                    r.value for r in (Role.NODE, Role.OPERATOR, Role.VIEWER, Role.MANAGER)
                ),
                default=Role.NODE.value,
            ),
            Flag("out", f"its credentials file (default {CREDS_OUT.format(name='NAME')})", "FILE"),
            USERS_FILE,
            Flag("rotate", "issue new credentials for an existing identity", kind=Kind.SWITCH),
            Flag("force", "replace an existing credentials file", kind=Kind.SWITCH),
            Flag(
                "bootstrap",
                "make the fleet's first manager without NATS: its credentials and a users file "
                "holding it alone",
                kind=Kind.SWITCH,
            ),
            *FLEET_CONNECTION,
        ),
        (NAME,),
        fleet=True,
    ),
    CommandSpec(
        ("manager", "node", "rm"),
        "revoke an identity, regenerate the users file, and forget the node's keys",
        (USERS_FILE, *FLEET_CONNECTION),
        (NAME,),
        fleet=True,
    ),
    CommandSpec(
        ("manager", "node", "ls"),
        "list the identities: names and roles",
        (*FLEET_CONNECTION, OUTPUT),
        fleet=True,
    ),
    CommandSpec(
        ("manager", "node", "users-file"),
        "regenerate the users file from the list in NATS",
        (USERS_FILE, *FLEET_CONNECTION),
        fleet=True,
    ),
    *(
        CommandSpec(
            ("manager", word),
            help,
            (NATS, NATS_CREDS, NATS_TLS_CA, OUTPUT),
            (NODE,),
            fleet=True,
        )
        for word, help in (
            ("drain", "move every task off a node"),
            ("pause", "keep a node's tasks, place no new ones on it"),
            ("activate", "make a node take tasks again"),
        )
    ),
    CommandSpec(
        ("manager", "label"),
        "set or remove the labels operators give a node (node.labels.KEY in constraints)",
        (LABEL_RM, *FLEET_CONNECTION, OUTPUT),
        (NODE, Positional("labels", "KEY=VALUE", many=True, optional=True)),
        fleet=True,
    ),
)


# ---------------------------------------------------------------------------- defaults


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


def state_dir(args: argparse.Namespace) -> Path:
    """``--state-dir``, or the default for this user."""
    return Path(args.state_dir) if getattr(args, "state_dir", None) else default_state_dir()


def desired_dir(args: argparse.Namespace) -> Path:
    """``--desired``, or the default for this user."""
    return Path(args.desired) if getattr(args, "desired", None) else default_desired_dir()


def command(path: Sequence[str]) -> CommandSpec:
    """The spec of one command by its words. Raises ``KeyError``."""
    for spec in COMMANDS:
        if spec.path == tuple(path):
            return spec
    raise KeyError(" ".join(path))

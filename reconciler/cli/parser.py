"""The ``reconciler`` command line's parser, built from the table in ``reconciler.cli.options``.

``build_parser`` turns ``COMMANDS`` into argparse subcommands (parsed arguments carry their
command's spec as ``spec``); ``apply_config`` fills the flags not given on the command line from
``--config FILE`` (its keys are the long flag names without dashes; the command line wins);
``apply_defaults`` then gives every flag still unset its declared default. Nothing reaches into
argparse's private state.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from reconciler import __version__
from reconciler.cli.exits import UsageError
from reconciler.cli.options import COMMANDS, COMMON, CommandSpec, Flag, Kind

__all__ = ["all_flags", "apply_config", "apply_defaults", "build_parser"]


def _add_flag(parser: argparse.ArgumentParser, flag: Flag) -> None:
    names = [f"--{flag.name}"] + ([flag.short] if flag.short else [])
    kw: dict[str, Any] = {"dest": flag.dest, "help": flag.text}
    if flag.kind is Kind.SWITCH:
        kw["action"] = "store_true"
    elif flag.kind is Kind.REPEAT:
        kw.update(action="append", default=[], metavar=flag.metavar)
    else:
        kw.update(metavar=flag.metavar, default=None)
        if flag.kind is Kind.INT:
            kw["type"] = int
        if flag.choices:
            kw["choices"] = flag.choices
            kw.pop("metavar")
    if flag.required:
        kw["required"] = True
    parser.add_argument(*names, **kw)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every command in ``COMMANDS``. Parsed arguments carry the
    command's spec as ``spec``."""
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Keep this host's podman containers equal to the desired tasks.",
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    groups: dict[tuple[str, ...], argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    groups[()] = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for spec in COMMANDS:
        for depth in range(1, len(spec.path)):
            prefix = spec.path[:depth]
            if prefix not in groups:
                group = groups[prefix[:-1]].add_parser(
                    prefix[-1], help=f"{' '.join(prefix)} commands (fleet mode, NATS JetStream)"
                )
                groups[prefix] = group.add_subparsers(
                    dest="_".join(prefix) + "_command", required=True, metavar="COMMAND"
                )
        sub = groups[spec.path[:-1]].add_parser(spec.path[-1], help=spec.help)
        for flag in (*spec.flags, *COMMON):
            _add_flag(sub, flag)
        for pos in spec.positionals:
            sub.add_argument(
                pos.name,
                metavar=pos.metavar,
                nargs=("*" if pos.optional else "+") if pos.many else None,
                help=pos.help or None,
            )
        sub.set_defaults(spec=spec)
    return parser


def all_flags(spec: CommandSpec) -> Iterator[Flag]:
    yield from spec.flags
    yield from COMMON


def apply_config(args: argparse.Namespace, spec: CommandSpec) -> None:
    """Fill the flags not given on the command line from ``--config FILE``.

    Raises ``UsageError`` for an unreadable file, a key that is not a long flag of this
    command, or a value of the wrong shape.
    """
    path = getattr(args, "config", None)
    if not path:
        return
    # Only for --config: PyYAML takes about 17 ms to import, kept off every other start.
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"--config {path}: {err}") from err
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a map of flag names to values")
    flags = {f.name: f for f in all_flags(spec) if f.name != "config"}
    for key, value in data.items():
        flag = flags.get(str(key))
        if flag is None:
            raise UsageError(f"--config {path}: unknown key {key!r} for reconciler {spec.name}")
        if getattr(args, flag.dest) != flag.unset:
            continue  # the command line wins
        setattr(args, flag.dest, _config_value(flag, value, path))


def apply_defaults(args: argparse.Namespace, spec: CommandSpec) -> None:
    """Give every flag still unset (neither on the command line nor in ``--config``) its
    declared default, so commands read one value and never spell a default again."""
    for flag in all_flags(spec):
        if flag.default is not None and getattr(args, flag.dest, None) is None:
            setattr(args, flag.dest, flag.default)


def _config_value(flag: Flag, value: Any, path: str) -> Any:
    where = f"--config {path}: {flag.name}"
    if flag.kind is Kind.SWITCH:
        if not isinstance(value, bool):
            raise UsageError(f"{where}: expected true or false")
        return value
    if flag.kind is Kind.REPEAT:
        items = value if isinstance(value, list) else [value]
        return [str(v) for v in items]
    if flag.kind is Kind.INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{where}: expected an integer")
        return value
    if isinstance(value, dict | list):
        raise UsageError(f"{where}: expected a single value")
    text = str(value)
    if flag.choices and text not in flag.choices:
        raise UsageError(f"{where}: expected one of {', '.join(flag.choices)}")
    return text

"""The commands that work on desired files and on the store: ``validate``, ``apply``, ``ps``
and ``inspect``. Each returns data; ``render`` shows it.

``ps`` and ``inspect`` open the store read-only, so they work whether or not the agent runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reconciler.cli.exits import Failure, NotFound, UsageError
from reconciler.cli.options import desired_dir, state_dir
from reconciler.cli.render import task_table, watch_frame
from reconciler.core.codec import spec_to_dict, status_to_dict
from reconciler.core.errors import UnknownTask
from reconciler.core.snapshot import TaskView
from reconciler.local.views import views_from_store
from reconciler.spec.apply import apply_file
from reconciler.spec.loader import load_paths
from reconciler.spec.plan import PlanLine
from reconciler.store.rocks import RocksStore

__all__ = [
    "apply",
    "find_view",
    "inspect",
    "ps",
    "ps_command",
    "ps_watch",
    "read_views",
    "validate",
]


def validate(args: argparse.Namespace) -> int:
    """Validate files and directories. Returns how many tasks they hold; raises
    ``DesiredStateError`` with every problem."""

    return len(load_paths(args.paths).tasks)


def apply(args: argparse.Namespace) -> list[PlanLine]:
    """Plan (and unless ``--dry-run``, write) one file into the desired directory. Returns the
    plan lines; raises ``DesiredStateError`` (nothing written) or ``Failure``."""

    target = desired_dir(args)
    try:
        return apply_file(Path(args.file), target, dry_run=args.dry_run)
    except OSError as err:
        raise Failure(f"cannot write into {target}: {err}") from err


def read_views(state: Path) -> list[TaskView]:
    """Every instance, as ``ps -a`` lists them, from the store opened read-only."""

    store = RocksStore.open(state, read_only=True)
    try:
        return views_from_store(store)
    finally:
        store.close()


def ps(args: argparse.Namespace) -> list[TaskView]:
    """The current instance of every name (with ``-a``, the history too)."""
    if args.watch and args.output != "table":
        raise UsageError("--watch shows the table; drop -o json")
    views = read_views(state_dir(args))
    return views if args.all else [v for v in views if v.current]


def ps_command(args: argparse.Namespace) -> list[TaskView] | None:
    """``ps``: the views to render, or, with ``--watch``, None after redrawing until
    interrupted."""
    if args.watch:
        ps_watch(args, lambda text: (sys.stdout.write(text), sys.stdout.flush()))
        return None
    return ps(args)


def ps_watch(args: argparse.Namespace, write: Any) -> None:
    """Redraw the ``ps`` table every second until interrupted."""
    try:
        while True:
            write(watch_frame(task_table(ps(args)), time.time()))
            time.sleep(1.0)
    except KeyboardInterrupt:
        return


def find_view(views: Sequence[TaskView], ref: str) -> TaskView:
    """NAME means the current instance; an id matches any instance. Raises ``NotFound``."""
    for v in views:
        if v.current and v.name == ref:
            return v
    for v in views:
        if v.id == ref:
            return v
    raise NotFound(f"no task named or with id {ref!r}")


def inspect(args: argparse.Namespace) -> dict[str, Any]:
    """The stored task, its spec (env values redacted unless ``--show-env``) and status."""

    store = RocksStore.open(state_dir(args), read_only=True)
    try:
        view = find_view(views_from_store(store), args.ref)
        try:
            task = store.get_task(view.id)
        except UnknownTask:
            raise NotFound(f"task {view.id} has no stored record") from None
    finally:
        store.close()
    spec = spec_to_dict(task.spec)
    spec["env"] = {k: (v if args.show_env else "<redacted>") for k, v in task.spec.env}
    spec["labels"] = dict(task.spec.labels)
    return {
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

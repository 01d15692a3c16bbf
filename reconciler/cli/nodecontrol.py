"""What operators set on a node from the command line: ``reconciler manager drain|pause|activate
NODE`` (its availability) and ``reconciler manager label NODE KEY=VALUE... [--rm KEY...]`` (its
labels, which ``node.labels.KEY`` constraints read). Each changes only its own field of
``reconciler_control/node.<node>`` (``reconciler.manager.control``). Labels follow the one label
rule that ``--node-label`` follows too (``reconciler.cli.values.parse_labels``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from reconciler.cli.exits import UsageError
from reconciler.cli.manager import fleet_call, nats_options
from reconciler.cli.values import parse_labels
from reconciler.core.model import Availability
from reconciler.fleet.buckets import check_node_id
from reconciler.manager.control import Labelled, set_availability, set_labels

__all__ = ["manager_availability", "manager_label", "render_availability", "render_label"]

_WORDS = {"drain": Availability.DRAIN, "pause": Availability.PAUSE, "activate": Availability.ACTIVE}
_NOT_JOINED = "no heartbeat from this node yet; it applies when the node joins"


def _node(text: str) -> str:
    try:
        return check_node_id(text)
    except ValueError as err:
        raise UsageError(f"NODE: {err}") from err


def manager_availability(args: argparse.Namespace) -> dict[str, Any]:
    """``manager drain|pause|activate NODE``: write the node's availability."""
    availability = _WORDS[args.spec.path[-1]]
    node = _node(args.node)
    known = fleet_call(set_availability(nats_options(args), node, availability))
    return {"node": node, "availability": availability.value, "known": known}


def render_availability(result: dict[str, Any], args: Any) -> str:
    if args.output == "json":
        return json.dumps(result, indent=2)
    line = f"node {result['node']}: {result['availability']}"
    if not result["known"]:
        line += f" ({_NOT_JOINED})"
    return line


def manager_label(args: argparse.Namespace) -> Labelled:
    """``manager label NODE KEY=VALUE... [--rm KEY...]``: set and remove operator labels."""
    node = _node(args.node)
    put = dict(parse_labels(args.labels, "KEY=VALUE"))
    remove = list(args.rm)
    for key in remove:
        if not key or "=" in key:
            raise UsageError(f"--rm: expected a label key, got {key!r}")
    both = sorted(set(put) & set(remove))
    if both:
        raise UsageError(f"--rm: {', '.join(both)} is also set by KEY=VALUE")
    if not put and not remove:
        raise UsageError("give KEY=VALUE to set a label, or --rm KEY to remove one")
    return fleet_call(set_labels(nats_options(args), node, put, remove))


def render_label(result: Labelled, args: Any) -> str:
    if args.output == "json":
        out = {"node": result.node, "labels": dict(result.labels), "known": result.known}
        return json.dumps(out, indent=2)
    shown = ",".join(f"{k}={v}" for k, v in result.labels.items()) or "none"
    lines = [f"node {result.node}: labels {shown}"]
    if result.replaced:
        lines.append("(its stored labels were not valid labels: replaced)")
    if not result.known:
        lines.append(f"({_NOT_JOINED})")
    return "\n".join(lines)

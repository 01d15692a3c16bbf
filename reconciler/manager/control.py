"""What operators set on a node: ``reconciler_control/node.<node>``, written by ``reconciler
manager drain|pause|activate`` (its ``availability``) and ``reconciler manager label`` (its
``labels``, which ``node.labels.KEY`` in a constraint reads; a node's own ``--node-label``s are
``engine.labels``).

Each command changes only its own field: it reads the key (its value and revision, or the
revision of its delete marker), changes its field in the stored object, keeps every other field
as it was stored, and writes the result compare-and-set; when the key changed meanwhile it does
so again from a fresh read, so that a label and a drain given at the same moment both land. A
stored value that is not a JSON object is replaced, and a ``labels`` field that breaks the label
rule (``reconciler.fleet.values.parse_labels``) is replaced by the labels the command sets.

It reads and writes only what an operator's credentials may (``reconciler.fleet.identity``): a
watch of the node's control key and of its node key, and a put of the control key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from reconciler.core.codec import compact
from reconciler.core.model import Availability
from reconciler.fleet.buckets import CONTROL, NODES, node_control_key
from reconciler.fleet.options import NatsOptions
from reconciler.fleet.values import MAX_LABELS, BadValue, load_json, parse_labels
from reconciler.fleet.watch import KeyWatch
from reconciler.manager.admin import FleetError, Link, connected, read_keys
from reconciler.manager.writes import Conflict, publish

__all__ = ["ATTEMPTS", "Labelled", "change_control", "set_availability", "set_labels"]

ATTEMPTS: Final = 20
"""Compare-and-set attempts before a command gives up on a key that keeps changing."""


@dataclass(frozen=True, slots=True)
class Labelled:
    """What ``set_labels`` did: the node's operator labels now, whether the node has a value
    in ``reconciler_nodes`` (it has joined), and whether a broken ``labels`` field was
    replaced."""

    node: str
    labels: Mapping[str, str]
    known: bool
    replaced: bool = False


async def _read_control(link: Link, node: str) -> tuple[dict[str, Any], int]:
    """The node's control value as an object ({} when absent or not an object) and the
    revision to write it at (0: never written)."""
    key = node_control_key(node)
    watch = KeyWatch(link.nc, CONTROL, key)
    try:
        entries = await link.guarded(watch.start(), f"reading {CONTROL}/{key}")
    finally:
        await watch.stop()
    entry = entries.get(key)
    if entry is None or entry.value is None:
        return {}, watch.deleted.get(key, 0)
    try:
        doc = load_json(entry.value)
    except BadValue:
        doc = None
    return (dict(doc) if isinstance(doc, dict) else {}), entry.revision


async def change_control(
    link: Link, node: str, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """Apply ``change`` (stored object in, object to store out) to the node's control value,
    compare-and-set, from a fresh read after each conflict. Returns what was stored. Raises
    ``FleetError``."""
    key = node_control_key(node)
    for _ in range(ATTEMPTS):
        stored, revision = await _read_control(link, node)
        new = change(dict(stored))
        if revision and new == stored:
            return new
        write = publish(link.jetstream(), CONTROL, key, compact(new, sort_keys=True), last=revision)
        try:
            await link.guarded(write, f"writing {CONTROL}/{key}")
        except Conflict:
            continue
        return new
    raise FleetError(f"{CONTROL}/{key} kept changing under this command: run it again")


async def _known(link: Link, node: str) -> bool:
    return node in await read_keys(link, NODES, node)


async def set_availability(options: NatsOptions, node: str, availability: Availability) -> bool:
    """Write the node's availability, keeping its labels; True when the node has a value in
    the fleet. Raises ``FleetError``."""

    def change(doc: dict[str, Any]) -> dict[str, Any]:
        doc["availability"] = availability.value
        return doc

    async with connected(options) as link:
        await change_control(link, node, change)
        return await _known(link, node)


async def set_labels(
    options: NatsOptions, node: str, put: Mapping[str, str], remove: Sequence[str]
) -> Labelled:
    """Set ``put`` and remove ``remove`` among the node's operator labels, keeping its
    availability. Raises ``FleetError`` (also when the node would have more than
    ``MAX_LABELS``)."""
    replaced = False

    def change(doc: dict[str, Any]) -> dict[str, Any]:
        nonlocal replaced
        try:
            labels = parse_labels(doc.get("labels"))
            replaced = False
        except BadValue:
            labels, replaced = {}, True
        labels.update(put)
        for key in remove:
            labels.pop(key, None)
        if len(labels) > MAX_LABELS:
            raise FleetError(f"node {node} would have {len(labels)} labels, over {MAX_LABELS}")
        doc["labels"] = dict(sorted(labels.items()))
        return doc

    async with connected(options) as link:
        stored = await change_control(link, node, change)
        known = await _known(link, node)
    return Labelled(node, stored["labels"], known, replaced)

"""Bringing a fleet made by an older version to this version's format, once: run by
``reconciler.fleet.provision.init_buckets`` (``reconciler manager init``, and every manager at
start-up), after the buckets.

The format is ``formatVersion`` in ``reconciler_control/fleet`` (``FLEET_FORMAT``). In format 2,
``node.labels.KEY`` in a constraint reads the labels operators set (``reconciler manager
label``, kept in ``reconciler_control/node.<node>``), no longer the labels each agent claims
(``--node-label``, now ``engine.labels.KEY``). A fleet made before has no ``formatVersion``, and
its services' constraints were written against the agents' labels, so ``upgrade_fleet`` copies
each node's own labels (its value in ``reconciler_nodes``) into its operator labels, then records
the version (keeping the fleet value's other fields: ``heartbeatPeriod``, ``managers``) and logs
what it copied. Every write is compare-and-set and keeps what else the key holds (a node's
availability, a label an operator set already, which wins).

- A fleet whose control bucket was created just now is new: the version is recorded first, and
  nothing is ever copied.
- A fleet with the version recorded: nothing is done, so a copy happens once and only once.
- The version is recorded last: an upgrade cut short copies again next time, and a copy is a
  merge, so two managers starting at once reach the same labels.
- A node label that breaks the label rule (``reconciler.fleet.values.check_label``), or a node
  value that is not JSON, is not copied, and the log says so. A fleet value that cannot be read
  is left alone, with an error in the log: the manager would not read it either.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError

from reconciler.core.cancel import cancellable
from reconciler.core.codec import compact
from reconciler.fleet.buckets import CONTROL, FLEET_KEY, NODES, node_control_key
from reconciler.fleet.values import (
    FLEET_FORMAT,
    BadValue,
    check_label,
    load_json,
    parse_fleet,
    parse_labels,
)

__all__ = ["upgrade_fleet"]

log = logging.getLogger(__name__)

ATTEMPTS: Final = 20
_SHOWN: Final = 20  # nodes named in the log line at most


async def upgrade_fleet(js: Any, *, new: bool) -> list[str] | None:
    """Bring the fleet to ``FLEET_FORMAT`` (see the module docstring). ``js``: a manager's
    JetStream context; ``new``: the control bucket was created just now. Returns the nodes
    whose labels were copied, or None when the version was recorded already (or the fleet
    value cannot be read). Raises nats-py's errors when NATS refuses or does not answer."""
    control = await cancellable(js.key_value(CONTROL))
    for _ in range(ATTEMPTS):
        doc, revision = await _read(control, FLEET_KEY)
        try:
            version = parse_fleet(compact(doc or {})).format_version if doc is not None else None
        except BadValue as err:
            doc = None
            log.error("%s/%s: %s: the fleet's format is not upgraded", CONTROL, FLEET_KEY, err)
        if doc is None:
            return None
        if version is not None and version >= FLEET_FORMAT:
            return None
        copied = [] if new else await _copy_labels(js, control)
        doc["formatVersion"] = FLEET_FORMAT
        if await _write(control, FLEET_KEY, doc, revision):
            _report(version, copied, new=new)
            return copied
    raise RuntimeError(f"{CONTROL}/{FLEET_KEY} kept changing: run reconciler manager init again")


def _report(version: int | None, copied: list[str], *, new: bool) -> None:
    if new:
        log.debug("fleet format recorded version=%d (a new fleet)", FLEET_FORMAT)
        return
    shown = ",".join(copied[:_SHOWN]) + (
        f",+{len(copied) - _SHOWN}" if len(copied) > _SHOWN else ""
    )
    log.warning(
        "fleet format upgraded from=%d to=%d: node.labels in constraints now reads the labels "
        "operators set (reconciler manager label), engine.labels what agents claim; each "
        "node's own labels were copied to its operator labels once nodes=%d copied=%s",
        version or 1,
        FLEET_FORMAT,
        len(copied),
        shown or "-",
    )


async def _read(kv: Any, key: str) -> tuple[dict[str, Any] | None, int]:
    """``key``'s value as an object ({} when absent; None when not a JSON object) and the
    revision to write it at (a delete marker's, or 0)."""
    try:
        entry = await cancellable(kv.get(key))
    except KeyNotFoundError as err:
        deleted = getattr(err, "entry", None)
        return {}, int(deleted.revision or 0) if deleted is not None else 0
    try:
        doc = load_json(entry.value or b"{}")
    except BadValue:
        return None, int(entry.revision or 0)
    return (doc if isinstance(doc, dict) else None), int(entry.revision or 0)


async def _write(kv: Any, key: str, doc: dict[str, Any], revision: int) -> bool:
    """Write ``doc`` if ``key`` is still at ``revision``; False when it changed meanwhile."""
    value = compact(doc, sort_keys=True)
    try:
        if revision:
            await cancellable(kv.update(key, value, last=revision))
        else:
            await cancellable(kv.create(key, value))
    except KeyWrongLastSequenceError:
        return False
    return True


async def _copy_labels(js: Any, control: Any) -> list[str]:
    """Copy every node's own labels into its operator labels; the nodes changed."""
    nodes = await cancellable(js.key_value(NODES))
    try:
        keys = sorted(await cancellable(nodes.keys()))
    except NoKeysError:
        return []
    copied = []
    for node in keys:
        labels = _engine_labels(node, await _read(nodes, node))
        if labels and await _merge(control, node, labels):
            copied.append(node)
    return copied


def _engine_labels(node: str, read: tuple[dict[str, Any] | None, int]) -> dict[str, str]:
    doc = read[0]
    raw = doc.get("labels") if doc is not None else None
    if not isinstance(raw, dict):
        if raw is not None or doc is None:
            log.warning("%s/%s: no labels to copy: not a node value", NODES, node)
        return {}
    labels = {}
    for key, value in raw.items():
        try:
            check_label(str(key), value if isinstance(value, str) else "\x00")
        except ValueError as err:
            log.warning("%s/%s: label not copied: %s", NODES, node, err)
            continue
        labels[str(key)] = value
    return labels


async def _merge(control: Any, node: str, engine: dict[str, str]) -> bool:
    """Add ``engine`` to the node's operator labels (a label operators set wins), keeping the
    rest of its control value; False when nothing was to add."""
    key = node_control_key(node)
    for _ in range(ATTEMPTS):
        doc, revision = await _read(control, key)
        doc = doc if doc is not None else {}
        try:
            have = parse_labels(doc.get("labels"))
        except BadValue:
            have = {}
        merged = _merged(engine, have)
        if merged == have and "labels" in doc:
            return False
        doc["labels"] = merged
        if await _write(control, key, doc, revision):
            return True
    raise RuntimeError(f"{CONTROL}/{key} kept changing: run reconciler manager init again")


def _merged(engine: dict[str, str], have: dict[str, str]) -> dict[str, str]:
    return dict(sorted({**engine, **have}.items()))

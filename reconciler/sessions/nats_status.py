"""The fleet session's status writes: each named task's status, compare-and-set on its key.

The agent writes the status of each named task to ``reconciler_status/<node>.<name>``. Writes
are compare-and-set on the key's revision: ``StatusWrites`` remembers the revision it last
wrote or read per key; if the key has moved on, it reads the stored status and writes only if
the new one supersedes it (``reconciler.fleet.values.status_supersedes``), so a late retry
never overwrites a newer state. A status that the stored one supersedes is dropped, which is
success. A stored status that is not a valid value counts as absent, and is overwritten.

``NatsSession.report`` (``reconciler.sessions.nats``) runs these writes on the connection of
the moment; the revisions outlive a connection, and a name removed from the node's
assignments is forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from reconciler.core.session import NamedStatus
from reconciler.fleet.buckets import STATUS, status_key
from reconciler.fleet.values import (
    BadValue,
    StoredStatus,
    parse_status,
    status_supersedes,
    status_value,
)

__all__ = ["CAS_ATTEMPTS", "StatusWrites"]

log = logging.getLogger(__name__)

BadStatus = Callable[[str, str, int, str, str], None]
"""Told of a bad stored status: bucket, key, revision, why, and what the agent does instead."""

CAS_ATTEMPTS = 5
"""Writes of one status tried while the key keeps moving under the agent."""


class StatusWrites:
    """Compare-and-set status writes of one node; see the module docstring."""

    def __init__(self, node_id: str, bad: BadStatus | None = None) -> None:
        self._node_id = node_id
        self._bad = bad
        # per status key: the revision last written or read, and the status it holds
        self._known: dict[str, tuple[int | None, StoredStatus | None]] = {}

    def forget(self, name: str) -> None:
        """The name left the node's assignments: its key's revision is not known any more."""
        self._known.pop(status_key(self._node_id, name), None)

    async def write(self, kv: KeyValue, name: str, status: NamedStatus) -> None:
        """Write ``status`` unless the stored one supersedes it. Raises ``ConnectionError``
        when the key keeps changing, and nats-py's errors when a write or read fails."""
        key = status_key(self._node_id, name)
        value = status_value(status)
        revision, stored = self._known.get(key, (None, None))
        for _ in range(CAS_ATTEMPTS):
            if not status_supersedes(status, stored):
                log.debug("status superseded name=%s id=%s", name, status.id)
                return
            try:
                if revision is None:
                    written = await kv.create(key, value)
                else:
                    written = await kv.update(key, value, last=revision)
            except KeyWrongLastSequenceError:
                stored, revision = await self._read_status(kv, key)
                continue
            self._known[key] = (written, _stored(status))
            return
        raise ConnectionError(f"status key {STATUS}/{key} kept changing under the agent")

    async def _read_status(self, kv: KeyValue, key: str) -> tuple[StoredStatus | None, int | None]:
        """The stored status (None when absent, deleted or bad: a bad one is overwritten)
        and its revision."""
        try:
            entry = await kv.get(key)
        except KeyNotFoundError as err:
            deleted = getattr(err, "entry", None)
            return None, (deleted.revision if deleted is not None else None)
        try:
            stored = parse_status(entry.value or b"")
        except BadValue as err:
            if self._bad is not None:
                self._bad(STATUS, key, entry.revision or 0, str(err), "overwriting it")
            stored = None
        return stored, entry.revision


def _stored(status: NamedStatus) -> StoredStatus:
    return StoredStatus(id=status.id, state=status.state, updated_at=status.updated_at)

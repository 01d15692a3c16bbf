"""What the fleet session does with a bad value: skip it, and log and count it once.

Every value the agent reads from NATS (its assignments, its control keys, its own status keys
on a compare-and-set conflict) is parsed as hostile input (``reconciler.fleet.values``). A value
that breaks the contract is skipped: an assignment keeps the task's last valid spec, a control
value keeps the settings or availability in force, a status is read as absent (and so
overwritten by the next status). Whichever, it is logged once per key and revision, however
often a reconnect reads it again, and counted in ``reconciler_session_bad_values_total{bucket}``
(``bad_value``, the agent's metric). It never ends the session, and never touches another key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from reconciler.core.session import DesiredTasks
from reconciler.fleet.buckets import ASSIGNMENTS
from reconciler.fleet.values import BadValues
from reconciler.sessions.assignments import note_rejections

__all__ = ["Rejections"]

log = logging.getLogger(__name__)


class Rejections:
    """The bad values one node's session read; see the module docstring."""

    def __init__(self, node_id: str, bad_value: Callable[[str], None] | None = None) -> None:
        self._node_id = node_id
        self._bad_value = bad_value
        self._seen = BadValues()

    def assignments(self, message: DesiredTasks, revisions: Mapping[str, int]) -> DesiredTasks:
        """Count the rejections in ``message`` not reported yet; mark the others ``reported``,
        so that the pump logs each key and revision once."""
        message, new = note_rejections(ASSIGNMENTS, self._node_id, message, revisions, self._seen)
        for _ in range(new):
            self._count(ASSIGNMENTS)
        return message

    def bad(self, bucket: str, key: str, revision: int, why: str, keeping: str) -> None:
        """A bad value read from ``bucket/key``: logged and counted once per revision;
        ``keeping`` says what the agent does instead."""
        if self._seen.first(bucket, key, revision):
            log.error("%s/%s rejected (revision %d), %s: %s", bucket, key, revision, keeping, why)
            self._count(bucket)

    def good(self, bucket: str, key: str) -> None:
        """``bucket/key`` holds a good value now, or none."""
        self._seen.good(bucket, key)

    def _count(self, bucket: str) -> None:
        if self._bad_value is not None:
            self._bad_value(bucket)

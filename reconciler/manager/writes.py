"""The leader's writes: a plan's assignment puts and deletes, and the status keys it collects.

Every write is compare-and-set on the key's revision (JetStream's expected last subject
sequence), so a manager that lost the lead, or whose picture lags, cannot overwrite a newer
decision; a write that finds the key changed raises ``Conflict``. ``PlanWriter`` writes a
plan ``write_window`` writes at a time while its manager leads (checked before each write),
applies each acknowledged write to the manager's picture at once (so the next plan counts it),
and counts reschedules.

**Status keys.** ``StatusKeys`` keeps every key of ``reconciler_status`` that the manager's
watch shows (whatever its value: a node's own keys are counted even when they hold no status
the manager can read), counted per node for ``reconciler_manager_node_keys``, and those that
match no assignment (*orphans*), each with the moment, on the manager's clock, since which it
has been an orphan and unchanged. ``PlanWriter.collect_statuses`` deletes the orphans that
stayed so for longer than a grace period (the node grace): an agent whose assignment was just
removed still reports its task's last states meanwhile, and each of its writes starts the wait
again, so a delete never races them. The delete is compare-and-set on the revision the watch
showed; one that fails (the key changed, or NATS did not answer) is tried again a grace period
later. All of it is fed by the watches the
manager has anyway: it reads nothing else from NATS.

Kept apart from the driver (``reconciler.manager.driver``), which decides *when* to plan and
write; this module is *how* a write lands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any, Final

from nats.js.errors import APIError
from nats.js.kv import KeyValue

from reconciler.core.supervisor import describe_error
from reconciler.fleet.buckets import ASSIGNMENTS, STATUS, key_subject, stream_name
from reconciler.fleet.watch import Entry
from reconciler.manager.metrics import ManagerMetrics
from reconciler.manager.scheduler import Delete, Plan, Put, Reason
from reconciler.manager.view import FleetView

__all__ = ["Conflict", "Outcome", "PlanWriter", "StatusKeys", "kv", "publish"]

log = logging.getLogger(__name__)

_WRONG_LAST_SEQUENCE: Final = 10071
_HEADER_OP: Final = "KV-Operation"
_HEADER_LAST: Final = "Nats-Expected-Last-Subject-Sequence"


class Conflict(Exception):
    """A compare-and-set write found the key at another revision."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a plan's writes went: ``landed`` when every one did; ``conflicts``: keys found
    changed (the picture lags: read the assignments afresh before planning again)."""

    landed: bool
    conflicts: int = 0


def kv(js: Any, bucket: str) -> KeyValue:
    """A handle on ``bucket`` that needs no stream lookup."""
    return KeyValue(
        name=bucket, stream=stream_name(bucket), pre=key_subject(bucket, ""), js=js, direct=True
    )


async def publish(js: Any, bucket: str, key: str, value: bytes | None, *, last: int | None) -> int:
    """Put ``value`` (None: a delete marker) into ``bucket/key``; with ``last``, only if the key
    is at that revision (0: absent). Returns the new revision. Raises ``Conflict``."""
    headers: dict[str, str] = {}
    if value is None:
        headers[_HEADER_OP] = "DEL"
    if last is not None:
        headers[_HEADER_LAST] = str(last)
    try:
        ack = await js.publish(key_subject(bucket, key), value or b"", headers=headers or None)
    except APIError as err:
        if err.err_code == _WRONG_LAST_SEQUENCE:
            raise Conflict(key) from None
        raise
    return int(ack.seq)


class StatusKeys:
    """The status keys the manager's watch shows, per node, and the orphans among them (see
    the module docstring). ``assigned`` is the manager's assignments by key (``FleetView``'s);
    ``now`` its monotonic clock."""

    def __init__(self) -> None:
        self.revisions: dict[str, int] = {}  # every key present, at its revision
        self.per_node: dict[str, int] = {}  # keys per node; a node with none is absent
        self._orphans: dict[str, float] = {}  # key -> orphan and unchanged since; oldest first

    @property
    def orphans(self) -> Mapping[str, float]:
        return self._orphans

    def load(
        self, bucket: str, entries: Mapping[str, Entry], assigned: Container[str], now: float
    ) -> None:
        """A watch of ``bucket`` started with ``entries`` (that bucket's whole picture)."""
        if bucket == STATUS:
            old = self.revisions
            self.revisions, self.per_node = {}, {}
            for key, entry in entries.items():
                if entry.value is not None:
                    self._add(key, entry.revision)
            kept = {k: t for k, t in self._orphans.items() if self.revisions.get(k) == old.get(k)}
        elif bucket == ASSIGNMENTS:
            kept = dict(self._orphans)
        else:
            return
        orphans = {k: kept.get(k, now) for k in self.revisions if k not in assigned}
        self._orphans = dict(sorted(orphans.items(), key=lambda item: item[1]))

    def seen(self, bucket: str, entry: Entry, assigned: Container[str], now: float) -> None:
        """One put or delete of ``bucket`` (a watch's, or the manager's own write), applied to
        ``assigned`` already."""
        key = entry.key
        if bucket == STATUS:
            if entry.value is None:
                self.gone(key)
                return
            if key not in self.revisions:
                self._add(key, entry.revision)
            self.revisions[key] = entry.revision
            if key not in assigned:
                self._mark(key, now)  # changed: the wait starts again
        elif bucket == ASSIGNMENTS and key in self.revisions:
            if key in assigned:
                self._orphans.pop(key, None)
            elif key not in self._orphans:
                self._orphans[key] = now

    def gone(self, key: str) -> None:
        """The key was deleted. Idempotent."""
        if self.revisions.pop(key, None) is None:
            return
        self._orphans.pop(key, None)
        node = _node(key)
        left = self.per_node[node] - 1
        if left:
            self.per_node[node] = left
        else:
            del self.per_node[node]

    def due(self, now: float, grace: float) -> list[str]:
        """The orphans unchanged for longer than ``grace``."""
        due = []
        for key, since in self._orphans.items():
            if now - since <= grace:
                break
            due.append(key)
        return due

    def next_due(self, grace: float) -> float | None:
        """When the oldest orphan is due, if there is one."""
        for since in self._orphans.values():
            return since + grace
        return None

    def retry(self, key: str, now: float) -> None:
        """Its delete failed: due again a grace period from ``now``."""
        if key in self._orphans:
            self._mark(key, now)

    def _add(self, key: str, revision: int) -> None:
        self.revisions[key] = revision
        node = _node(key)
        self.per_node[node] = self.per_node.get(node, 0) + 1

    def _mark(self, key: str, now: float) -> None:
        self._orphans.pop(key, None)
        self._orphans[key] = now


def _node(key: str) -> str:
    return key.partition(".")[0]


class PlanWriter:
    """Writes plans into ``view``'s buckets for a manager; see the module docstring.
    ``leading()`` says whether the manager still leads; ``metrics()`` its metrics, if any;
    ``monotonic()`` its clock. ``keys``: the status keys, which the manager feeds from its
    watches."""

    def __init__(
        self,
        *,
        view: FleetView,
        leading: Callable[[], bool],
        metrics: Callable[[], ManagerMetrics | None],
        monotonic: Callable[[], float],
        window: int,
        grace: float,
    ) -> None:
        self._view = view
        self._leading = leading
        self._metrics = metrics
        self._monotonic = monotonic
        self._window = window
        self._grace = grace
        self.keys = StatusKeys()

    async def write(self, js: Any, plan: Plan) -> Outcome:
        """Write the plan, ``window`` writes in flight at a time, while leading (checked
        before each write)."""
        ops: list[Put | Delete] = [*plan.puts, *plan.deletes]
        log.info(
            "scheduling puts=%d deletes=%d unassigned=%d",
            len(plan.puts),
            len(plan.deletes),
            len(plan.unassigned),
        )
        outcome = {"conflicts": 0, "failures": 0}
        slots = asyncio.Semaphore(self._window)

        async def write(op: Put | Delete) -> None:
            try:
                await self._apply(js, op)
            except Conflict:
                outcome["conflicts"] += 1
            except Exception as err:
                outcome["failures"] += 1
                if outcome["failures"] == 1:
                    log.warning(
                        "assignment write failed key=%s.%s err=%s",
                        op.node,
                        op.task,
                        describe_error(err),
                    )
            finally:
                slots.release()

        writes: list[asyncio.Task[None]] = []
        stopped = False
        try:
            for op in ops:
                await slots.acquire()
                if not self._leading():
                    slots.release()
                    stopped = True
                    log.warning("stopped writing: no longer leading")
                    break
                writes.append(asyncio.create_task(write(op)))
            await asyncio.gather(*writes)
        finally:
            for task in writes:
                task.cancel()
        conflicts = outcome["conflicts"]
        if conflicts:
            log.info(
                "assignments changed under the manager (%d keys): reading them again", conflicts
            )
        landed = not stopped and not conflicts and not outcome["failures"]
        return Outcome(landed=landed, conflicts=conflicts)

    async def _apply(self, js: Any, op: Put | Delete) -> None:
        view = self._view
        key = f"{op.node}.{op.task}"
        value = op.value if isinstance(op, Put) else None
        put = isinstance(op, Put)
        last = (op.revision or view.revisions.get(key, 0)) if put else op.revision
        view.expect(key, value)
        try:
            revision = await publish(js, ASSIGNMENTS, key, value, last=last)
        except BaseException:
            view.failed(key)
            raise
        view.wrote(key, value, revision)
        self.keys.seen(
            ASSIGNMENTS, Entry(key, value, revision), view.assignments, self._monotonic()
        )
        if isinstance(op, Put):
            if op.moved_from is not None:
                log.info(
                    "task moved task=%s from=%s to=%s reason=%s",
                    op.task,
                    op.moved_from,
                    op.node,
                    op.reason,
                )
            return
        if op.reason is not None:
            metrics = self._metrics()
            if metrics is not None:
                metrics.rescheduled(op.reason)
            if op.reason is not Reason.NODE_DOWN:
                log.info("task taken off task=%s node=%s reason=%s", op.task, op.node, op.reason)
        else:
            log.debug("assignment deleted key=%s why=%s", key, op.why)

    def statuses_due(self) -> float | None:
        """When the oldest status key without an assignment is due for deletion."""
        return self.keys.next_due(self._grace)

    async def collect_statuses(self, js: Any, now: float) -> None:
        """Delete the status keys that have matched no assignment, unchanged, for longer than
        a grace period, ``window`` at a time while leading. A delete that fails is tried
        again a grace period later."""
        keys = self.keys
        due = keys.due(now, self._grace)
        deleted = 0
        for start in range(0, len(due), self._window):
            if not self._leading():
                return
            chunk = due[start : start + self._window]
            results = await asyncio.gather(
                *(publish(js, STATUS, k, None, last=keys.revisions[k]) for k in chunk),
                return_exceptions=True,
            )
            for key, result in zip(chunk, results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, Exception):
                        raise result  # cancelled
                    keys.retry(key, now)
                    log.debug("status key delete failed key=%s err=%s", key, describe_error(result))
                    continue
                keys.gone(key)
                self._view.statuses.pop(key, None)
                deleted += 1
        if deleted:
            log.debug("status keys without an assignment deleted count=%d", deleted)

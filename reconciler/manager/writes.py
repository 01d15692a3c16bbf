"""The leader's writes: a plan's assignment puts and deletes, and the status keys it collects.

Every write is compare-and-set on the key's revision (JetStream's expected last subject
sequence), so a manager that lost the lead, or whose picture lags, cannot overwrite a newer
decision; a write that finds the key changed raises ``Conflict``. ``PlanWriter`` writes a
plan ``write_window`` writes at a time while its manager leads (checked before each write),
applies each acknowledged write to the manager's picture at once (so the next plan counts it),
and counts reschedules. It also deletes status keys whose assignment has been gone for a grace
period (an agent may still report a removed task's last state meanwhile).

Kept apart from the driver (``reconciler.manager.driver``), which decides *when* to plan and
write; this module is *how* a write lands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from nats.js.errors import APIError
from nats.js.kv import KeyValue

from reconciler.core.supervisor import describe_error
from reconciler.fleet.buckets import ASSIGNMENTS, STATUS, key_subject, stream_name
from reconciler.manager.metrics import ManagerMetrics
from reconciler.manager.scheduler import Delete, Plan, Put, Reason
from reconciler.manager.view import FleetView

__all__ = ["Conflict", "Outcome", "PlanWriter", "kv", "publish"]

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


class PlanWriter:
    """Writes plans into ``view``'s buckets for a manager; see the module docstring.
    ``leading()`` says whether the manager still leads; ``metrics()`` its metrics, if any."""

    def __init__(
        self,
        *,
        view: FleetView,
        leading: Callable[[], bool],
        metrics: Callable[[], ManagerMetrics | None],
        window: int,
        grace: float,
    ) -> None:
        self._view = view
        self._leading = leading
        self._metrics = metrics
        self._window = window
        self._grace = grace
        self._orphaned: dict[str, float] = {}

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

    async def collect_statuses(self, js: Any, now: float) -> tuple[bool, float | None]:
        """Delete status keys whose assignment has been gone for a grace period. Returns
        whether it finished (False: it stopped leading) and when keys not due yet will be."""
        view = self._view
        orphans = {k for k in view.statuses if k not in view.assignments}
        self._orphaned = {k: self._orphaned.get(k, now) for k in orphans}
        due = [k for k, since in self._orphaned.items() if now - since > self._grace]
        if not due:
            first = min(self._orphaned.values()) + self._grace if self._orphaned else None
            return True, first
        for start in range(0, len(due), self._window):
            if not self._leading():
                return False, None
            chunk = due[start : start + self._window]
            await asyncio.gather(
                *(publish(js, STATUS, k, None, last=self._status_revision(k)) for k in chunk),
                return_exceptions=True,
            )
            for k in chunk:
                view.statuses.pop(k, None)
                self._orphaned.pop(k, None)
        log.debug("status keys of removed tasks deleted count=%d", len(due))
        return True, None

    def _status_revision(self, key: str) -> int | None:
        reported = self._view.statuses.get(key)
        return reported.revision if reported is not None else None

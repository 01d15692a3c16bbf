"""Adoption: after the store was created or rebuilt, a name's running container becomes its
instance again instead of an orphan that a fresh instance would replace.

Two halves, one for each side of the local manager:

* **Which container** (``adopt``, for the driver's ``LocalManager.adopt()``): each task name's
  newest container labelled with this node is recorded as *adopted* (older ones are orphans
  the worker removes); names that already have a record are left alone. Nothing is decided
  until a desired set has been read, since the desired set is unknown until then.
* **What becomes of it** (``take_adopted``, the first step of ``decide()`` for such a name,
  ``reconciler.local.decide``): the container becomes the current instance with the desired
  spec and keeps its id. It is replaced at once (``reconciler.local.updates``) if it runs
  another spec; a rollback's container, made after the desired spec failed its update, is
  kept, and the desired spec is remembered as failed.

Pure functions of values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from reconciler.core.codec import spec_hash
from reconciler.core.executor import RuntimeContainer
from reconciler.local import updates
from reconciler.local.draft import RUNNING, SHUTDOWN, Draft
from reconciler.local.records import ADOPTED, Adopted, Instance, NameRecord

__all__ = ["adopt", "take_adopted"]


def adopt(
    containers: Iterable[RuntimeContainer], records: Mapping[str, NameRecord]
) -> dict[str, NameRecord]:
    """A record for each name without one, adopting its newest container; by name, sorted."""
    newest: dict[str, RuntimeContainer] = {}
    for c in containers:
        have = newest.get(c.name)
        if have is None or (c.created, c.task_id) > (have.created, have.task_id):
            newest[c.name] = c
    adopted: dict[str, NameRecord] = {}
    for name, c in sorted(newest.items()):
        if name not in records:
            a = Adopted(
                c.task_id,
                c.container_id,
                c.spec_hash,
                c.running,
                c.started,
                c.exit_code,
                c.created,
                c.rolled_back_from,
            )
            adopted[name] = NameRecord(name, adopted=a)
    return adopted


def take_adopted(d: Draft, a: Adopted) -> bool:
    """An adopted container becomes the current instance, with the desired spec. Returns
    whether another step may follow."""
    desired = SHUTDOWN if d.want.desired_state >= SHUTDOWN else RUNNING
    inst = Instance(
        a.task_id,
        d.want.spec,
        desired,
        a.created or d.now,
        ADOPTED,
        started_at=d.now if a.running else None,
        initial=a.status(d.now),
    )
    d.set(current=inst, adopted=None)
    if a.rolled_back_from is not None and a.rolled_back_from == spec_hash(d.want.spec):
        d.set(failed_hash=a.rolled_back_from)
    d.assign = True
    d.events.append(f"adopted instance name={d.rec.name} id={inst.id}")
    if desired == RUNNING and not a.matches(d.want.spec):
        return updates.begin(d, "")
    return False

"""Opening the agent's store for the agent, and what to do when it is corrupt.

``RocksStore.open`` (``reconciler.store.rocks``, by the rules of ``reconciler.store.opening``)
opens a store, never re-creating it silently, and refuses a damaged one (``StoreCorrupt``);
this module decides what the agent does then. A corrupt store is moved aside to
``tasks.db.corrupt-<UTC timestamp>`` (logged once, kept for a post-mortem) and a new one is
created, marked ``adopt-pending``: the agent then rebuilds it from the runtime's containers.
A lock or an I/O error is never taken for corruption: it is raised, and the agent exits.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.errors import StoreCorrupt
from reconciler.core.store import ADOPT_PENDING, StoreOrigin
from reconciler.store.opening import db_path
from reconciler.store.rocks import RocksStore

__all__ = ["OpenedStore", "StoreOrigin", "open_store"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OpenedStore:
    store: RocksStore
    origin: StoreOrigin
    moved_to: Path | None = None  # where a corrupt store went
    reason: str = ""  # why it was corrupt

    @property
    def adopt_pending(self) -> bool:
        """Whether the runtime's containers must be adopted before anything else."""
        return self.store.get_meta(ADOPT_PENDING) is not None


def _corrupt_name(path: Path, now: float) -> Path:
    stamp = dt.datetime.fromtimestamp(now, tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
    return target


def open_store(
    state_dir: str | os.PathLike[str],
    *,
    verify: Callable[[RocksStore], None] = lambda store: None,
    now: Callable[[], float] = time.time,
) -> OpenedStore:
    """Open the agent's store read-write, never silently re-creating it.

    The caller holds the state dir's lock. ``verify`` may read the store further (the local
    manager's records) and raise ``StoreCorrupt``. A corrupt store is moved aside to
    ``tasks.db.corrupt-<UTC timestamp>`` (logged once) and a new one created; a new store,
    created or rebuilt, is marked ``adopt-pending``. Raises ``StateDirInUse``,
    ``StoreVersionError`` and ``StoreError`` (I/O, permissions) as ``RocksStore.open`` does; those
    are never taken for corruption.
    """
    path = db_path(state_dir)
    existed = path.exists()
    try:
        store = RocksStore.open(state_dir)
        try:
            verify(store)
        except BaseException:
            store.close()
            raise
    except StoreCorrupt as err:
        moved = _corrupt_name(path, now())
        os.rename(path, moved)
        log.error(
            "store is corrupt; moved it aside and rebuilding from the runtime's containers "
            "(history and restart counters are lost) path=%s moved_to=%s err=%r",
            path,
            moved,
            str(err),
        )
        store = RocksStore.open(state_dir)
        store.put_meta(ADOPT_PENDING, StoreOrigin.REBUILT.value)
        return OpenedStore(store, StoreOrigin.REBUILT, moved, str(err))
    if not existed:
        return OpenedStore(store, StoreOrigin.CREATED)
    return OpenedStore(store, StoreOrigin.OPENED)

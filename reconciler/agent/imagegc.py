"""The image GC: which of the agent's own images go when the image store runs short of space.

This module owns the records of the images the agent pulled or used, and the choice of what
to remove; the runtime only lists and removes images (``Executor.list_images``,
``remove_image``) and tells which ones this node's containers use (``used_images``).

**Records** (``ImageRecord``, one per image ID, in the store's metadata under ``img/``): an
image is recorded when the agent pulled it or created one of its containers from it, with the
reference it used and its last use, which moves on while that stays so (written at most once
per ``RECORD_EVERY`` per image, unsynced). Images nobody recorded (an operator's, another
agent's) are never candidates.

**Choice** (``select``, a pure function): while the filesystem of the image store is under
``--image-gc-threshold`` percent free, the recorded images are removed least recently used
first, except an image that

* a container uses (any container, of any owner: the runtime would refuse anyway),
* this node's containers use or a pull just brought in (``used_images``),
* a desired task needs: its reference is that of any instance the local manager keeps
  (current, replacement or history) or of the desired set, so an offline host can always
  start what it must,
* carries a name the agent never used (someone else tagged it: it is theirs too).

An image goes with its last name: each of the agent's names is removed (never forced), or the
image ID for an image without names.

**The driver** (``ImageCollector.run``) runs once per resync pass. It is cheap when there is
nothing to do: the records come from memory, and the space is one ``statvfs``; only an image
store under the threshold costs an image listing. After each removed image the space is read
again, and removal stops once it is back over the threshold.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.core.clock import Clock
from reconciler.core.errors import StoreError
from reconciler.core.executor import Executor, RuntimeImage
from reconciler.core.pulls import short_of_space
from reconciler.core.store import Store
from reconciler.core.supervisor import describe_error

__all__ = [
    "RECORD_EVERY",
    "ImageCollector",
    "ImageRecord",
    "Removal",
    "matches",
    "select",
]

log = logging.getLogger(__name__)

RECORD_EVERY = 60.0
"""An image in use has its last use written at most this often (seconds)."""

_ID = re.compile(r"^(?:sha256:)?([0-9a-f]{12,64})$")


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """An image the agent pulled or used: the references it used it by, and when it last did."""

    last_used: float
    names: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"lastUsed": self.last_used, "names": list(self.names)}

    @classmethod
    def from_json(cls, d: Any) -> ImageRecord:
        return cls(float(d["lastUsed"]), tuple(str(n) for n in d.get("names", ())))


@dataclass(frozen=True, slots=True)
class Removal:
    """One image to remove, and what to remove of it: its names, or its ID when it has none."""

    image: RuntimeImage
    refs: tuple[str, ...]


def _image_id(ref: str) -> str | None:
    m = _ID.match(ref)
    return m.group(1) if m else None


def _with_tag(ref: str) -> str:
    """``ref`` with ``:latest`` when it names neither a tag nor a digest."""
    if "@" in ref or ":" in ref.rsplit("/", 1)[-1]:
        return ref
    return ref + ":latest"


def matches(ref: str, image: RuntimeImage) -> bool:
    """Whether a task's image reference may denote ``image``: its ID (or a prefix of it), or one
    of its names, a short name matching any registry's. Errs on the side of a match, which only
    ever keeps an image."""
    image_id = _image_id(ref)
    if image_id is not None and image.id.startswith(image_id):
        return True
    return any(_name_matches(ref, name) for name in image.names)


def _name_matches(ref: str, name: str) -> bool:
    want = _with_tag(ref)
    return name == want or name.endswith("/" + want)


def select(
    images: Iterable[RuntimeImage],
    records: Mapping[str, ImageRecord],
    *,
    in_use: Collection[str],
    needed: Collection[str],
) -> list[Removal]:
    """The images the GC may remove, least recently used first; see the module docstring.

    ``in_use`` are image IDs this node's containers use (or a pull just brought in);
    ``needed`` are the image references of every kept instance and desired task."""
    out: list[tuple[float, str, Removal]] = []
    for image in images:
        rec = records.get(image.id)
        if rec is None or image.containers > 0 or image.id in in_use:
            continue
        if any(matches(ref, image) for ref in needed):
            continue
        if any(not any(_name_matches(ours, name) for ours in rec.names) for name in image.names):
            continue  # someone else's name is on it
        refs = image.names or (image.id,)
        out.append((rec.last_used, image.id, Removal(image, refs)))
    out.sort(key=lambda item: (item[0], item[1]))
    return [removal for *_, removal in out]


class ImageCollector:
    """Keeps the image records and runs the GC, once per resync pass. On the event loop."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        threshold_percent: float,
        on_removed: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._store = store
        self._clock = clock
        self.threshold = threshold_percent
        self._on_removed = on_removed
        self._records: dict[str, ImageRecord] | None = None
        self._unwritten: dict[str, ImageRecord | None] = {}
        self._stuck = False  # short of space with nothing left to remove (logged once)

    @property
    def records(self) -> dict[str, ImageRecord]:
        """The records, loaded from the store on first use."""
        if self._records is None:
            self._records = {}
            for image_id, value in self._store.image_records().items():
                try:
                    self._records[image_id] = ImageRecord.from_json(value)
                except (KeyError, TypeError, ValueError):
                    log.warning("dropping an unreadable image record image=%s", image_id)
                    self._unwritten[image_id] = None
        return self._records

    def note_used(self, used: Mapping[str, str]) -> None:
        """Record what the agent's containers and pulls use now: image ID -> its reference."""
        now = self._clock.time()
        records = self.records
        for image_id, ref in used.items():
            rec = records.get(image_id)
            name = ref if ref and _image_id(ref) is None else None
            names = rec.names if rec is not None else ()
            if name is not None and name not in names:
                names = (*names, name)
            elif rec is not None and now - rec.last_used < RECORD_EVERY:
                continue
            records[image_id] = self._unwritten[image_id] = ImageRecord(now, names)

    def _forget(self, image_id: str) -> None:
        if self.records.pop(image_id, None) is not None:
            self._unwritten[image_id] = None

    def _flush(self) -> None:
        if not self._unwritten:
            return
        items = [(k, v.to_json() if v is not None else None) for k, v in self._unwritten.items()]
        try:
            self._store.put_image_records(items)
        except StoreError as err:
            log.debug("image records not written yet err=%s", describe_error(err))
            return
        self._unwritten.clear()

    async def run(self, executor: Executor, needed: Collection[str]) -> int:
        """One pass: record what is used; while the image store is short of space, remove
        the agent's images as ``select`` orders them. Returns how many images were removed.
        Raises ``TemporaryError`` if the runtime stops answering (the records are kept)."""
        used = executor.used_images()
        self.note_used(used)
        try:
            if self.threshold <= 0:
                return 0
            space = await executor.image_store_space()
            if not short_of_space(space, self.threshold):
                self._stuck = False
                return 0
            images = await executor.list_images()
            present = {image.id for image in images}
            for image_id in [i for i in self.records if i not in present]:
                self._forget(image_id)
            removed = 0
            for removal in select(images, self.records, in_use=used.keys(), needed=needed):
                if await self._remove(executor, removal):
                    removed += 1
                    self._on_removed(1)
                space = await executor.image_store_space()
                if not short_of_space(space, self.threshold):
                    break
            if removed:
                self._stuck = False
                log.info("image GC removed images n=%d", removed)
            if short_of_space(space, self.threshold) and not self._stuck:
                self._stuck = True
                log.warning(
                    "the image store is short of space and none of the agent's unneeded "
                    "images is left to remove free_percent=%.1f threshold=%g",
                    space.free_percent if space is not None else -1.0,
                    self.threshold,
                )
            return removed
        finally:
            self._flush()

    async def _remove(self, executor: Executor, removal: Removal) -> bool:
        """Remove an image's names one by one (it goes with the last). Whether it went."""
        for ref in removal.refs:
            if await executor.remove_image(ref):
                log.info(
                    "image removed image=%s names=%s size=%d",
                    removal.image.id[:12],
                    ",".join(removal.image.names) or "-",
                    removal.image.size,
                )
                self._forget(removal.image.id)
                return True
        return False

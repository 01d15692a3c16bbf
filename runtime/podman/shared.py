"""``Runtime``: what every controller of one executor shares.

The executor builds one and hands it to each controller it makes; the controller's parts
(``container``, ``health``, ``wait``) reach podman, the event stream, the clock and the observer
through it. It is a module of its own so that those parts and the controller can all import it
without importing each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reconciler.core.clock import Clock
from reconciler.core.executor import RuntimeObserver
from runtime.podman.client import PodmanAPI
from runtime.podman.events import EventStream
from runtime.podman.exits import ExitWatch
from runtime.podman.listing import Listing

if TYPE_CHECKING:  # the controller imports this module
    from runtime.podman.controller import PodmanController

__all__ = ["Runtime"]


async def _never_refused() -> str | None:
    return None


@dataclass
class Runtime:
    """What every controller of one executor shares."""

    api: PodmanAPI
    events: EventStream
    clock: Clock
    observer: RuntimeObserver
    node_id: str
    registry: dict[str, PodmanController] = field(default_factory=dict)
    is_up: Callable[[], bool] = lambda: True
    pull_refusal: Callable[[], Awaitable[str | None]] = _never_refused
    """Why a pull may not happen now (the image store is short of space), or None."""
    pulled: Callable[[str, str], None] = lambda image_id, ref: None
    """Told of every pulled image: its ID and the reference it was pulled by."""
    exits: ExitWatch = field(default_factory=ExitWatch)
    """conmon's exit files, which tell of an exit before podman's events do."""
    listing: Listing | None = None
    """Shared first looks (one list call for many waits); None: one inspect each."""

"""Node health as the manager judges it: heartbeats seen, on the manager's own clock. Pure.

An agent puts its node value into ``reconciler_nodes/<node>`` every heartbeat period. NATS 2.9
does not tell watchers when a key ages out, and the ``heartbeatAt`` an agent writes comes from
its own clock (which may be wrong, or jump at boot on a device without a real-time clock), so
the manager never reads time from a value. It times the puts it sees on its own monotonic
clock (``now`` below is always that clock):

* **ready**: the latest value says ``ready: true``, and a put saying so was seen within the
  grace period;
* **not-ready**: heard from within the grace period (or the grace period since the manager began
  watching has not run out), but not ready now;
* **down**: no put with ``ready: true`` seen for longer than the grace period, counted from the
  later of that put and the moment the manager began watching (``watching``).

The initial values a watch reads are not puts *seen*: nobody knows how old they are. So a
manager that starts, reconnects or takes over gives every node a full grace period before it
judges it down, and takes a node as ready only once it sees a live heartbeat: a failover never
reschedules a healthy fleet, and never places tasks on a node that died long ago.

``parse_heartbeat`` reads what the scheduler needs from a node value (labels, capacity,
pressure), each value being possibly hostile: ``BadValue`` says what is wrong. The node's
description in it is read by the one node codec (``reconciler.core.codec.node_from_dict``):
whole, or null until the agent's runtime answered. A node claims its own capacity, so a claim
outside sane bounds (``CPUS``, ``MEMORY_BYTES``) counts as no claim: the scheduler then places
on it only tasks that declare no resources.

``Health`` is the verdict; ``NodeState`` (``node_state``) is the word the page and the metrics
use for a node, its health and its availability together.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from reconciler.core.codec import node_from_dict
from reconciler.core.model import Availability, Condition, NodeDescription
from reconciler.fleet.values import BadValue, load_json

__all__ = [
    "CPUS",
    "MEMORY_BYTES",
    "Health",
    "Heartbeat",
    "NodeHealth",
    "NodeState",
    "node_state",
    "parse_heartbeat",
]

_PRESSURE: Final = tuple(Condition)

CPUS: Final = (1, 4096)
"""The CPU counts a node may claim; a claim outside counts as none (capacity not described)."""
MEMORY_BYTES: Final = (16 << 20, 64 << 40)
"""The memory a node may claim, 16 MiB to 64 TiB; a claim outside counts as none."""


class Health(enum.StrEnum):
    """How the manager judges a node from the heartbeats it saw (see the module docstring)."""

    READY = "ready"
    NOT_READY = "not-ready"  # heard from within the grace period, but not ready (yet)
    DOWN = "down"


class NodeState(enum.StrEnum):
    """The manager's word for a node, its health and availability in one: what its status page
    shows and ``reconciler_manager_nodes{state}`` counts. In the page's order."""

    READY = "ready"
    NOT_READY = "not-ready"
    PAUSED = "paused"
    DRAINING = "draining"
    DOWN = "down"


def node_state(health: Health, availability: Availability) -> NodeState:
    """Down above all, then draining or paused, then ready or not."""
    if health is Health.DOWN:
        return NodeState.DOWN
    if availability is Availability.DRAIN:
        return NodeState.DRAINING
    if availability is Availability.PAUSE:
        return NodeState.PAUSED
    return NodeState.READY if health is Health.READY else NodeState.NOT_READY


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What a node value says, as far as the manager cares: ``node`` is its description (None
    until its runtime answered), read by the one node codec."""

    ready: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    node: NodeDescription | None = None
    pressure: tuple[Condition, ...] = ()
    version: str | None = None
    heartbeat_at: str | None = None

    @property
    def cpus(self) -> float | None:
        """The node's CPUs; None (not described) when absent or outside ``CPUS``."""
        cpus = self.node.cpus if self.node is not None else None
        return float(cpus) if cpus is not None and CPUS[0] <= cpus <= CPUS[1] else None

    @property
    def memory(self) -> int | None:
        """The node's memory; None (not described) when absent or outside ``MEMORY_BYTES``."""
        memory = self.node.memory_bytes if self.node is not None else None
        return (
            memory if memory is not None and MEMORY_BYTES[0] <= memory <= MEMORY_BYTES[1] else None
        )

    @property
    def hostname(self) -> str | None:
        return self.node.hostname if self.node is not None else None


def _text(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    return value if isinstance(value, str) else None


def _pressure(doc: Mapping[str, Any]) -> tuple[Condition, ...]:
    """``conditions`` as a map (``{"diskPressure": true}``) or a list of names; absent: none."""
    raw = doc.get("conditions")
    if isinstance(raw, dict):
        return tuple(c for c in _PRESSURE if raw.get(c.key) is True)
    if isinstance(raw, list):
        return tuple(c for c in _PRESSURE if c.key in raw)
    return ()


def parse_heartbeat(data: bytes) -> Heartbeat:
    """Read a ``reconciler_nodes`` value. Raises ``BadValue``."""
    doc = load_json(data)
    if not isinstance(doc, dict):
        raise BadValue("expected a JSON object")
    ready = doc.get("ready")
    if not isinstance(ready, bool):
        raise BadValue("ready: expected true or false")
    labels = doc.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise BadValue("labels: expected a map of strings")
    try:
        node = node_from_dict(doc)
    except ValueError as err:
        raise BadValue(str(err)) from None
    return Heartbeat(
        ready=ready,
        labels=labels,
        node=node,
        pressure=_pressure(doc),
        version=_text(doc, "version"),
        heartbeat_at=_text(doc, "heartbeatAt"),
    )


class NodeHealth:
    """The heartbeats seen per node and the verdicts they give; see the module docstring."""

    def __init__(self, grace: float) -> None:
        if grace <= 0:
            raise ValueError(f"the grace period must be positive, got {grace}")
        self.grace = grace
        self._watching = 0.0
        self._beats: dict[str, Heartbeat | None] = {}
        self._ready_seen: dict[str, float] = {}
        self._ends: list[float] | None = None  # every verdict's end, sorted; None: stale

    def watching(self, now: float) -> None:
        """The manager (re)started watching the nodes at ``now``: nothing it missed before
        counts against a node."""
        self._watching = now
        self._ends = None

    def initial(self, node: str, beat: Heartbeat | None) -> None:
        """A value read when the watch started (its age unknown): the node's description."""
        self._beats[node] = beat

    def seen(self, node: str, beat: Heartbeat | None, now: float) -> None:
        """A put seen at ``now``; ``beat`` None: the value could not be read (not ready)."""
        self._beats[node] = beat
        if beat is not None and beat.ready:
            self._ready_seen[node] = now
            self._ends = None

    def known(self, node: str) -> None:
        """A node named elsewhere (an assignment): judged like one without a value."""
        if node not in self._beats:
            self._beats[node] = None
            self._ends = None

    def forget(self, node: str) -> None:
        """The node's key was deleted: forget it."""
        self._beats.pop(node, None)
        self._ready_seen.pop(node, None)
        self._ends = None

    def beat(self, node: str) -> Heartbeat | None:
        return self._beats.get(node)

    def nodes(self) -> Iterator[str]:
        return iter(self._beats)

    def health(self, node: str, now: float) -> Health:
        beat = self._beats.get(node)
        seen = self._ready_seen.get(node)
        if beat is not None and beat.ready and seen is not None and now - seen <= self.grace:
            return Health.READY
        since = self._watching if seen is None else max(seen, self._watching)
        return Health.NOT_READY if now - since <= self.grace else Health.DOWN

    def next_change(self, now: float) -> float | None:
        """The earliest time, not before ``now``, after which a verdict may change by time
        alone (a verdict holds up to and including that time: look just after it). Cheap when
        called again and again: the times are kept sorted until a heartbeat moves them."""
        if self._ends is None:
            ends: set[float] = set()
            for node in self._beats:
                seen = self._ready_seen.get(node)
                since = self._watching if seen is None else max(seen, self._watching)
                ends.add(since + self.grace)
                if seen is not None:
                    ends.add(seen + self.grace)
            self._ends = sorted(ends)
        i = bisect.bisect_left(self._ends, now)
        return self._ends[i] if i < len(self._ends) else None

"""The agent's read-only API: ``/metrics``, ``/v1/tasks`` and ``/v1/node``, from the snapshot.

Each route reads the agent's current immutable ``Snapshot`` (and ``Metrics.render()``, which
reads it too); nothing here calls podman or the store, so a request costs the same whatever the
runtime does. JSON bodies are cached per snapshot object, so repeated requests against an
unchanged agent cost an identity check. ``/v1/tasks`` is ``TaskView.to_json()``, which carries
no spec, so never an env value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from reconciler.core.codec import compact
from reconciler.core.snapshot import Changes, Snapshot
from reconciler.observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from reconciler.observe.metrics import Metrics
from reconciler.web.agent_page import AgentPage
from reconciler.web.server import (
    DEFAULT_LIMITS,
    Limits,
    Response,
    Route,
    Server,
    probe_routes,
    serve_routes,
)
from reconciler.web.state import node_json

__all__ = ["agent_routes", "serve_agent"]

_JSON: Final = "application/json"


def agent_routes(snapshot: Callable[[], Snapshot], metrics: Metrics) -> dict[str, Route]:
    """The agent's routes over ``snapshot`` and ``metrics`` (the probes and the page are the
    server's: ``reconciler.web.server.probe_routes``, ``serve``)."""

    def cached(body: Callable[[Snapshot], object]) -> Route:
        last: tuple[Snapshot | None, bytes] = (None, b"")

        def route() -> Response:
            nonlocal last
            snap = snapshot()
            if last[0] is not snap:
                last = (snap, compact(body(snap)))
            return 200, _JSON, last[1]

        return route

    return {
        "/metrics": lambda: (200, METRICS_CONTENT_TYPE, metrics.render()),
        "/v1/tasks": cached(lambda snap: [t.to_json() for t in snap.tasks]),
        "/v1/node": cached(node_json),
    }


async def serve_agent(
    host: str,
    port: int,
    *,
    snapshot: Callable[[], Snapshot],
    metrics: Metrics,
    changes: Changes | None = None,
    hosts: frozenset[str] = frozenset(),
    limits: Limits = DEFAULT_LIMITS,
) -> Server:
    """Serve the agent's routes, its probes (from the snapshot) and its status page on
    ``host:port``, as ``reconciler.web.server.serve_routes`` does (``hosts`` and ``limits``
    as there)."""
    routes = agent_routes(snapshot, metrics)
    routes.update(probe_routes(lambda: snapshot().health(), lambda: snapshot().readiness()))
    page = AgentPage(snapshot)
    return await serve_routes(
        host, port, routes, page=page, changes=changes, hosts=hosts, limits=limits
    )

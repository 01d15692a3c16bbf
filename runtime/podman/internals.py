"""Everything the runtime borrows from podman-py's internals, in one place.

podman-py is the client we are asked to use, but two things it does well are not public API:

* rendering ``containers.create()`` keywords into the REST payload (``CreateMixin.
  _render_payload``): we post the payload ourselves, in one round trip, instead of calling
  ``create()``, which reads the container back;
* its unix-socket transport classes (``podman.api.uds``): ``transport.py`` subclasses them so
  that a request can be cut from outside at a deadline, and a failed connect closes its socket.

``check()`` verifies that these are still there with the shape we rely on, and raises
``PodmanPyChanged`` saying what moved; ``tests/runtime/test_podman_internals.py`` runs it, so an
upgrade of podman-py that breaks us fails loudly in CI, not on an edge host.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from podman import api as podman_api
from podman.api.uds import UDSAdapter, UDSConnection, UDSConnectionPool, UDSPoolManager, UDSSocket
from podman.domain.containers_create import CreateMixin

__all__ = [
    "PodmanPyChanged",
    "UDSAdapter",
    "UDSConnection",
    "UDSConnectionPool",
    "UDSPoolManager",
    "UDSSocket",
    "check",
    "create_body",
]


class PodmanPyChanged(RuntimeError):
    """podman-py no longer has an internal that the runtime relies on."""


def create_body(kwargs: Mapping[str, Any]) -> str:
    """The JSON body of ``POST /containers/create`` for podman-py ``create()`` keywords."""
    return str(podman_api.prepare_body(CreateMixin._render_payload(dict(kwargs))))


def check() -> None:
    """Raise ``PodmanPyChanged`` if an internal we use is gone or changed shape."""
    problems = []
    render = getattr(CreateMixin, "_render_payload", None)
    if render is None:
        problems.append("CreateMixin._render_payload is gone")
    elif list(inspect.signature(render).parameters) != ["kwargs"]:
        problems.append(f"CreateMixin._render_payload{inspect.signature(render)} changed")
    if not callable(getattr(podman_api, "prepare_body", None)):
        problems.append("podman.api.prepare_body is gone")
    for cls, attr in (
        (UDSConnection, "connect"),
        (UDSConnectionPool, "ConnectionCls"),
        (UDSPoolManager, "pool_classes_by_scheme"),
        (UDSAdapter, "init_poolmanager"),
    ):
        if not hasattr(cls, attr) and attr not in cls.__init__.__code__.co_names:
            problems.append(f"{cls.__name__}.{attr} is gone")
    if problems:
        raise PodmanPyChanged("podman-py changed: " + "; ".join(problems))

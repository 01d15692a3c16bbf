"""podman's failures, translated once into the core's error values.

Every exception podman-py, ``requests`` or a socket can raise on a call is turned here, and only
here, into an error value of ``reconciler.core.errors``, so the controller and the core never need
to
know what podman's errors look like:

* no answer (connection refused, socket missing, timeout, broken stream, deadline passed, call
  aborted) -> ``RuntimeUnavailable`` (a ``TemporaryError``);
* 404 -> ``NotFound``; a name already in use -> ``NameConflict``; an image not present ->
  ``ImageMissing``; an image a container uses -> ``ImageInUse``; these are outcomes the
  controller and the image GC turn into idempotent results;
* a 5xx whose text says it is transient (locks, timeouts, "try again") -> ``TemporaryError``;
* any other 4xx/5xx -> ``PermanentError`` carrying podman's own explanation.
"""

from __future__ import annotations

import json
import socket

import podman.errors
import requests

from reconciler.core.errors import PermanentError, ReconcilerError, TemporaryError
from reconciler.core.pulls import ImageAbsent
from runtime.podman.transport import Aborted

__all__ = [
    "QUIET",
    "ImageInUse",
    "ImageMissing",
    "NameConflict",
    "NotFound",
    "RuntimeUnavailable",
    "translate",
]

_TRANSIENT_MARKERS = (
    "timed out",
    "timeout",
    "deadline exceeded",
    "database is locked",
    "resource temporarily unavailable",
    "try again",
    "connection reset",
    "connection refused",
    "too many open files",
    "broken pipe",
)


class RuntimeUnavailable(TemporaryError):
    """podman did not answer: connection refused, socket missing, timeout, dropped stream."""


class NotFound(PermanentError):
    """No such container (or image)."""


class NameConflict(PermanentError):
    """A container with that name already exists."""


class ImageMissing(ImageAbsent):
    """The image is not in local storage."""


class ImageInUse(PermanentError):
    """The image cannot be removed: a container uses it."""


def _explanation(err: podman.errors.APIError) -> str:
    text = getattr(err, "explanation", None) or ""
    if not text:
        text = str(err)
    return str(text)


def _is_connection_problem(err: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(
            cur,
            ConnectionError
            | TimeoutError
            | socket.timeout
            | FileNotFoundError
            | requests.exceptions.ConnectionError
            | requests.exceptions.Timeout
            | requests.exceptions.ChunkedEncodingError,
        ):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def translate(err: BaseException, *, what: str) -> ReconcilerError:
    """Turn any exception from podman-py / requests / sockets into a reconciler error."""
    if isinstance(err, ReconcilerError):
        return err
    if isinstance(err, Aborted):
        return RuntimeUnavailable(f"{what}: {err}")
    if isinstance(err, podman.errors.APIError):
        status = err.status_code
        text = _explanation(err)
        low = text.lower()
        if status is None or _is_connection_problem(err):
            return RuntimeUnavailable(f"{what}: podman is not answering ({_root_cause(err)})")
        if status == 404 or isinstance(err, podman.errors.NotFound):
            if "image not known" in low or "no such image" in low:
                return ImageMissing(f"{what}: {text}")
            return NotFound(f"{what}: {text}")
        if "no such container" in low or "does not exist in database" in low:
            # Inspecting a container in the middle of its removal answers 500 with this.
            return NotFound(f"{what}: {text}")
        if "already in use" in low:
            return NameConflict(f"{what}: {text}")
        if "image is in use" in low or "in use by a container" in low:
            return ImageInUse(f"{what}: {text}")
        if "image not known" in low or "no such image" in low:
            return ImageMissing(f"{what}: {text}")
        if status >= 500 and (
            status in (502, 503, 504) or any(m in low for m in _TRANSIENT_MARKERS)
        ):
            return TemporaryError(f"{what}: {text}")
        return PermanentError(f"{what}: {text}")
    if isinstance(err, podman.errors.PodmanError | requests.exceptions.RequestException | OSError):
        if _is_connection_problem(err) or isinstance(err, OSError):
            return RuntimeUnavailable(f"{what}: podman is not answering ({_root_cause(err)})")
        return TemporaryError(f"{what}: {err}")
    if isinstance(err, json.JSONDecodeError | ValueError):
        return TemporaryError(f"{what}: unexpected answer from podman ({err})")
    return PermanentError(f"{what}: {type(err).__name__}: {err}")


def _root_cause(err: BaseException) -> str:
    cur: BaseException = err
    for _ in range(10):
        nxt = cur.__cause__ or cur.__context__
        if nxt is None:
            break
        cur = nxt
    text = str(cur) or type(cur).__name__
    return text if len(text) < 300 else text[:300] + "..."


QUIET: tuple[type[ReconcilerError], ...] = (NotFound, NameConflict, ImageMissing, ImageInUse)
"""Outcomes, not failures: they are not counted as runtime errors."""

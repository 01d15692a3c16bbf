"""How a prepare gets its image: the pull policy, the local image standing in for a failed
pull, the refusal to pull while the image store is short of space, and the outcome of each.

This module owns one rule and its vocabulary, so that every runtime applies it the same way:
the podman controller and the fake runtime both call ``prepare_image`` with their own
``create`` and ``pull``. Per ``pull`` policy:

* ``never``: create from the local image; an absent image is a permanent error naming it.
* ``missing``: create first; only an absent image is pulled (so a present image never costs a
  registry round trip), then created.
* ``always``: pull, then create. When the pull fails (the registry cannot be reached, say) or
  is refused, the local image stands in, and the task's status message says so; only without
  a local image is it an error.

A failed pull is temporary (the task manager retries it with backoff). A pull is **refused**
only while the filesystem of the runtime's image store is already under the image GC
threshold (``short_of_space``): a pull then would fill the disk that the image GC is trying to
free. A refusal with no local image is a temporary error whose message says why.

Every decision is counted once through ``observe`` with a ``PullResult`` (the metric
``reconciler_image_pulls_total{result}``); the enum belongs to the executor port, whose
observer reports it, and is re-exported here beside the rule that decides it. A prepare that
finds its container already created (``TaskPrepared``) made no decision and counts nothing,
unless it had pulled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from reconciler.core.errors import PermanentError, TemporaryError
from reconciler.core.executor import DiskSpace, PullResult
from reconciler.core.model import PullPolicy

__all__ = [
    "ImageAbsent",
    "PullResult",
    "prepare_image",
    "pull_refusal",
    "short_of_space",
]


class ImageAbsent(PermanentError):
    """Raised by a runtime's ``create`` when the image is not in its local store."""


def short_of_space(space: DiskSpace | None, threshold_percent: float) -> bool:
    """Whether the image store's filesystem is under the threshold (0 turns the rule off; an
    unknown space never counts as short)."""
    return threshold_percent > 0 and space is not None and space.free_percent < threshold_percent


def pull_refusal(space: DiskSpace | None, threshold_percent: float) -> str | None:
    """Why a pull may not happen now (the image store is short of space), or None."""
    if space is None or not short_of_space(space, threshold_percent):
        return None
    return (
        f"the image store's filesystem has {space.free_percent:.1f}% free, under the image GC "
        f"threshold of {threshold_percent:g}%"
    )


Step = Callable[[], Awaitable[None]]


async def prepare_image(
    image: str,
    policy: PullPolicy,
    *,
    create: Step,
    pull: Step,
    refusal: Callable[[], Awaitable[str | None]],
    observe: Callable[[PullResult], None],
) -> str | None:
    """Create the container from ``image`` under ``policy``; see the module docstring.

    ``create`` raises ``ImageAbsent`` when the image is not present (and ``TaskPrepared`` when
    the container already exists, which propagates); ``pull`` raises ``TemporaryError`` for
    any failure; ``refusal`` says why a pull may not happen now, or None. Returns a note for
    the status message (the local image stood in), or None. Raises ``TemporaryError`` for a
    failed or refused pull without a local image, ``PermanentError`` for an absent image under
    ``never``.
    """
    if policy == PullPolicy.NEVER:
        try:
            await create()
        except ImageAbsent:
            raise PermanentError(
                f"image {image} is not present and the pull policy is never"
            ) from None
        observe(PullResult.PRESENT)
        return None

    if policy == PullPolicy.MISSING:
        try:
            await create()
        except ImageAbsent:
            pass
        else:
            observe(PullResult.PRESENT)
            return None
        why = await refusal()
        if why is not None:
            observe(PullResult.REFUSED)
            raise TemporaryError(f"image {image} is not present and is not pulled now: {why}")
        await _pull(pull, observe)
        await _create_pulled(image, create)
        return None

    # always: the registry first; the local image stands in when the pull fails or is refused
    why = await refusal()
    refused = why is not None
    if why is None:
        try:
            await pull()
        except TemporaryError as err:
            why = str(err)
        else:
            observe(PullResult.PULLED)
            await _create_pulled(image, create)
            return None
    try:
        await create()
    except ImageAbsent:
        if refused:
            observe(PullResult.REFUSED)
            raise TemporaryError(
                f"image {image} is not present and is not pulled now: {why}"
            ) from None
        observe(PullResult.FAILED)
        raise TemporaryError(why) from None
    observe(PullResult.FALLBACK)
    if refused:
        return f"using the local image {image}, not pulled: {why}"
    return f"using the local image {image}: {why}"


async def _pull(pull: Step, observe: Callable[[PullResult], None]) -> None:
    try:
        await pull()
    except TemporaryError:
        observe(PullResult.FAILED)
        raise
    observe(PullResult.PULLED)


async def _create_pulled(image: str, create: Step) -> None:
    try:
        await create()
    except ImageAbsent as err:
        raise TemporaryError(f"image {image} is still missing after a pull") from err

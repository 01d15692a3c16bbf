"""One container's health check, run by the agent itself through podman's API.

Hosts without systemd as PID 1 never fire podman's own healthcheck timers, so the agent runs the
check: one ``GET /containers/{name}/healthcheck`` per ``interval`` on the injected clock. This
module owns when the check runs and how its answers are read, in the two places a task needs a
verdict:

* **Until healthy** (``HealthChecks.until_healthy``, inside ``start``): a start with a health
  check returns only once podman's verdict is "healthy" (as SwarmKit's docker controller does);
  podman counts no failure within ``startPeriod``. A container that stops meanwhile is left to
  ``wait``, which judges its exit.
* **While running** (``HealthChecks.watch``, beside ``wait``): the check keeps running, and an
  "unhealthy" verdict is posted to the wait as an ``UNHEALTHY`` event.

Either way "unhealthy" stops the container and fails the task with ``ExitError`` and a health
message (``stop_unhealthy``). On podman 4.3.1 the endpoint answers the one check it just ran (a
single failure reads "unhealthy", with ``FailingStreak`` 0), while the container's stored
``State.Health`` carries podman's verdict with ``retries`` applied. So a passing check costs one
call, and a failing one is followed by one inspect whose cumulative verdict decides: retries
are podman's, never counted here a second time.
"""

from __future__ import annotations

import contextlib
from typing import Any, NoReturn

from reconciler.core.errors import ExitError, ReconcilerError, TemporaryError
from reconciler.core.model import HealthCheck
from reconciler.core.text import printable
from runtime.podman.container import Container
from runtime.podman.errors import NotFound
from runtime.podman.events import ContainerEvent, EventKind

__all__ = ["HealthChecks", "health_detail", "health_status", "stop_unhealthy"]


class HealthChecks:
    """The health check of one container (a task whose spec has one that runs)."""

    def __init__(self, container: Container, check: HealthCheck, *, grace: float) -> None:
        self._c = container
        self._check = check
        self._grace = grace
        self._detail = "unhealthy"  # the last stored verdict's detail, for the failure message

    async def until_healthy(self, status: str) -> None:
        """Run the health check every interval until podman's cumulative verdict is healthy.

        ``status`` is the verdict known so far. An unhealthy verdict stops the container and
        raises ``ExitError``; a container that stopped meanwhile is left to ``wait``, which
        judges its exit. Retries are podman's, never counted here a second time."""
        c, hc = self._c, self._check
        while status != "healthy":
            if status == "unhealthy":
                await stop_unhealthy(c, grace=self._grace, detail=self._detail)
            await c.rt.clock.sleep(hc.interval)
            try:
                verdict = await c.rt.api.healthcheck(c.name, check_timeout=hc.timeout)
            except NotFound:
                c.gone()
            except TemporaryError:
                raise
            except ReconcilerError:
                # The check could not run: the container no longer runs (wait judges the
                # exit), or podman refused it once; look at the container.
                info = await c.inspect_or_gone()
                state = info.get("State") or {}
                if not state.get("Running"):
                    return
                status = health_status(state)
                continue
            if str(verdict.get("Status", "")).lower() == "healthy":
                return
            # One failed check reads "unhealthy" here; the stored verdict applies the retries
            # and the start period.
            info = await c.inspect_or_gone()
            state = info.get("State") or {}
            if not state.get("Running"):
                return
            stored = state.get("Health") or state.get("Healthcheck") or {}
            status = health_status(state)
            self._detail = health_detail(stored)

    async def watch(self) -> None:
        """Run the check every interval; post "unhealthy" to the container's wait once
        podman's verdict says so, and return."""
        c, hc = self._c, self._check
        while True:
            await c.rt.clock.sleep(hc.interval)
            try:
                verdict = await c.rt.api.healthcheck(c.name, check_timeout=hc.timeout)
                if str(verdict.get("Status", "")).lower() != "unhealthy":
                    continue
                if int(verdict.get("FailingStreak") or 0) == 0:
                    info = await c.rt.api.inspect(c.name)
                    state = info.get("State") or {}
                    verdict = state.get("Health") or state.get("Healthcheck") or {}
            except ReconcilerError:
                # podman down (the event stream reports that), or the container no longer
                # runs (its exit arrives as an event): nothing to judge here.
                continue
            if str(verdict.get("Status", "")).lower() != "unhealthy":
                continue
            c.rt.events.post(
                c.name,
                ContainerEvent(EventKind.UNHEALTHY, c.name, detail=health_detail(verdict)),
            )
            return


async def stop_unhealthy(container: Container, *, grace: float, detail: str) -> NoReturn:
    """Stop an unhealthy container (its stop signal, SIGKILL after ``grace`` seconds) and
    fail the task with ``ExitError``: its exit code, and the health message."""
    c = container
    c.stopping = True
    await c.rt.api.stop(c.name, grace=grace)
    code = 1
    with contextlib.suppress(ReconcilerError):
        info = await c.rt.api.inspect(c.name)
        code = int((info.get("State") or {}).get("ExitCode") or 0)
    c.exit_code = code
    raise ExitError(code, f"health check failed: {detail}; container stopped")


def health_status(state: dict[str, Any]) -> str:
    """podman's stored health verdict of an inspected container: starting, healthy or
    unhealthy (lowercase; "starting" when it has none yet)."""
    health = state.get("Health") or state.get("Healthcheck") or {}
    return str(health.get("Status") or "starting").lower()


def health_detail(verdict: dict[str, Any]) -> str:
    streak = verdict.get("FailingStreak")
    detail = f"{streak} consecutive checks failed" if streak else "unhealthy"
    logs = verdict.get("Log") or []
    if logs and isinstance(logs[-1], dict):
        # a check that prints in colour must not put escape sequences in a status message
        output = printable(str(logs[-1].get("Output") or "")).strip()
        if output:
            detail += f" (last output: {output[:200]})"
    return detail

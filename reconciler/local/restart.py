"""The restart policy: whether an instance that ended is replaced, and after how long.

When the current instance ends (``complete``, ``failed``, ``rejected``, or its record gone)
while its name is desired running, the restart policy decides: ``any`` restarts it whatever
the end, ``on-failure`` unless it completed, ``none`` never; with ``maxAttempts``, no more
than that many restarts within ``window`` seconds. The replacement waits out
``restart_delay``, a deadline kept in the record (wall-clock), which the driver's timer
serves: the decision that follows it (``due``) makes the new instance.

``restart_delay`` is the contract's own formula, not a retry backoff: exactly ``delay`` after
a ``complete`` (the backoff resets, so a periodic job keeps its period), ``delay`` doubled per
consecutive failure up to ``maxDelay`` otherwise; an instance that ran for ``RESET_AFTER``
seconds resets the count. No jitter: an operator must be able to predict it. A replacement
whose new instance failed to start waits by the same formula
(``reconciler.local.replacement``).

An instance the node's policy for fleet tasks rejected (``reconciler.core.policy``) is not
restarted: its spec would be refused again. It stays ``rejected`` until the spec changes
(which replaces it) or the agent restarts with a policy that allows it (a new instance then).

These are steps of ``decide()`` (``reconciler.local.decide``) on its ``Draft``: pure.
"""

from __future__ import annotations

from reconciler.core.model import RestartCondition, RestartPolicy, TaskState, TaskStatus
from reconciler.local.draft import Draft
from reconciler.local.records import Instance

__all__ = ["RESET_AFTER", "on_end", "restart_delay"]

RESET_AFTER = 600.0
"""An instance that ran this long (seconds) resets its name's failure count."""


def restart_delay(policy: RestartPolicy, *, complete: bool, failures: int) -> float:
    """The wait before a restart; see the module docstring. ``failures`` counts this one."""
    if complete:
        return policy.delay
    cap = max(policy.max_delay, policy.delay)
    return min(cap, policy.delay * 2.0 ** min(max(failures - 1, 0), 64))


def on_end(d: Draft, cur: Instance) -> bool:
    """The current instance ended: judge it once, and restart it when its wait is served.
    Returns whether another step may follow (never: a restart is the last step)."""
    rec = d.rec
    policy = d.want.spec.restart
    if rec.paused:
        return False
    if rec.restart_at is not None:
        if d.due:
            d.due = False
            _restart(d, cur)
        return False
    if cur.end_handled:
        if cur.refused and (d.refuses is None or not d.refuses(d.target())):
            _policy_allows(d, cur)
        return False
    status = d.status(cur) or TaskStatus(TaskState.FAILED)
    if status.state == TaskState.REJECTED and d.refuses is not None and d.refuses(cur.spec):
        d.set_current(end_handled=True, refused=True)
        d.events.append(f"refused by the node's policy name={rec.name} id={cur.id}")
        return False
    gone = d.gone(cur)
    complete = status.state == TaskState.COMPLETE and not gone
    restart = policy.condition == RestartCondition.ANY or (
        policy.condition == RestartCondition.ON_FAILURE and not complete
    )
    if restart and policy.max_attempts > 0:
        recent = [t for t in rec.attempts if policy.window <= 0 or t > d.now - policy.window]
        if len(recent) >= policy.max_attempts:
            restart = False
            d.events.append(
                f"restart limit reached name={rec.name} attempts={len(recent)} "
                f"window={policy.window}"
            )
    d.set_current(end_handled=True)
    if not restart:
        return False
    failures = rec.failures
    if complete:
        failures = 0
    else:
        ran = status.timestamp - cur.started_at if cur.started_at is not None and not gone else 0.0
        failures = (0 if ran >= RESET_AFTER else failures) + 1
    delay = restart_delay(policy, complete=complete, failures=failures)
    d.set(failures=failures, restart_at=d.now + delay)
    d.events.append(
        f"instance ended name={rec.name} id={cur.id} state={status.state.label} "
        f"restart_in={delay:.3f}s"
    )
    return False


def _policy_allows(d: Draft, cur: Instance) -> None:
    """The node's policy now allows what it refused (the agent restarted with other flags):
    a new instance, not counted as a restart."""
    d.retire()
    new = d.new_instance("")
    d.events.append(f"allowed by the node's policy name={d.rec.name} old={cur.id} new={new.id}")


def _restart(d: Draft, cur: Instance) -> None:
    """The wait is served: a new instance replaces the ended one, counted as a restart."""
    policy = d.want.spec.restart
    attempts = d.rec.attempts
    if policy.max_attempts > 0:
        attempts = (*attempts, d.now)[-policy.max_attempts :]
    d.set(restart_at=None, restarts=d.rec.restarts + 1, attempts=attempts)
    d.retire()
    new = d.new_instance("")
    d.events.append(
        f"restarted name={d.rec.name} old={cur.id} new={new.id} restarts={d.rec.restarts}"
    )

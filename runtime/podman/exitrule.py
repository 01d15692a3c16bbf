"""The rule that turns a container's exit file into an early verdict, or leaves it to the events.

conmon writes a container's exit file (its exit code) the moment the container's main process
dies, a few ms after a kill. podman's ``died`` event reaches the agent much later: podman writes
it once it reads the exit file (``podman kill`` with SIGKILL does before it answers; otherwise
the cleanup process conmon starts, 100-200 ms on), and its events API follows its event log by
polling it every 250 ms, so even the ``kill`` event, logged at once, arrives 0-250 ms late.
Watching the exit directory (``runtime.podman.exits``) tells the agent of an exit first; this
module decides what the exit file is worth. It is pure: no I/O, no clock.

An exit file is not yet a verdict. ``podman rm -f`` and ``podman stop`` kill the container too,
and a removal must still end as "container removed", not as exit 137. podman's record cannot
tell them apart early: whoever inspects the container first after its exit file appeared (the
agent, here) makes podman read the file, and the container then reads ``stopped`` with the exit
code, whether it was killed, stopped or is being removed. What tells them apart is podman's own
event log: ``podman kill`` logs a ``kill`` event (under the container's lock, before it lets go
of it), while a stop or a removal signals the container without one. So the agent inspects once
after the exit file (which waits for a ``kill`` in flight to let go of the lock, so its event is
logged by then), then asks podman's event log, not the stream, whether a ``kill`` was logged for
the container since it started.

The rule: judge early only when podman logged a ``kill`` for the container (or the stream showed
one), podman's record says the container ``stopped`` or ``exited``, and the agent did not stop it
itself. The verdict is the exit code podman reports. Everything else (no ``kill``: a stop, a
removal, or a process that exited by itself; ``running``: a file from an earlier run; a state
this rule does not know) is left to podman's events, which stay the source of truth, with the
relist as the safety net. A ``kill`` that a ``rm -f`` follows is judged as the kill, as the
event stream's path has always judged it.
"""

from __future__ import annotations

from dataclasses import dataclass

EXITED_STATES = frozenset({"stopped", "exited"})
"""podman's states of a container whose process is gone and which is still there."""


@dataclass(frozen=True, slots=True)
class ExitSeen:
    """What the agent knows once a container's exit file appeared and it looked again."""

    status: str
    """podman's state of the container in the inspect after the exit file."""
    exit_code: int | None
    """The exit code that inspect reports."""
    kill_seen: bool
    """podman logged a ``kill`` event for the container since it started."""
    agent_stopping: bool
    """The agent itself is stopping, killing or removing the container."""


@dataclass(frozen=True, slots=True)
class EarlyExit:
    """The container was killed outside the agent: judge it now, by this exit code."""

    exit_code: int


def judge_exit_file(seen: ExitSeen) -> EarlyExit | None:
    """The early verdict for an exit file, or None to wait for podman's events."""
    if seen.agent_stopping or not seen.kill_seen or seen.exit_code is None:
        return None
    if seen.status not in EXITED_STATES:
        return None
    return EarlyExit(exit_code=seen.exit_code)

"""What the agent does before its loops start: the host-reboot check and adoption.

* **The host rebooted.** If the kernel's boot id changed since the last start, every instance
  that was running ended with the host: its stored status becomes ``failed``, "host rebooted",
  and the restart policy brings it back. Runs on the store alone, before the worker starts.
* **Adoption.** A store that was just created or rebuilt (marked ``adopt-pending``) knows no
  task, while the runtime may hold this node's containers. They are listed, retrying until the
  runtime answers, and recorded by the local manager, so they are adopted, not restarted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

from reconciler.agent.observer import INIT_NOT_DONE, NO_ANSWER, AgentState
from reconciler.agent.storewatch import StoreWatch
from reconciler.core.backoff import Backoff, Retry
from reconciler.core.errors import TemporaryError
from reconciler.core.executor import Executor, RuntimeContainer
from reconciler.core.model import TaskState
from reconciler.core.store import ADOPT_PENDING, Store, StoreOrigin
from reconciler.core.supervisor import describe_error
from reconciler.local.manager import LocalManager

__all__ = ["HOST_REBOOTED", "RUNTIME_RETRY", "adopt", "mark_host_reboot", "read_boot_id"]

log = logging.getLogger(__name__)

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
HOST_REBOOTED = "host rebooted"

RUNTIME_RETRY = Backoff(initial=0.5, cap=5.0)
"""How often start-up asks a runtime that does not answer for its containers."""


def read_boot_id() -> str:
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return ""


def mark_host_reboot(store: Store, boot_id: str, *, now: float) -> list[str]:
    """If the boot id changed since the last start, fail every instance that was running.

    Returns the ids marked failed. Raises ``StoreError`` if the store cannot be written.
    """
    previous = store.get_meta("boot_id")
    marked: list[str] = []
    if previous is not None and boot_id and previous != boot_id:
        for task_id, status in list(store.walk_statuses()):
            if TaskState.STARTING <= status.state <= TaskState.RUNNING:
                failed = replace(
                    status,
                    state=TaskState.FAILED,
                    message=HOST_REBOOTED,
                    err=HOST_REBOOTED,
                    pid=None,
                    timestamp=now,
                )
                store.put_status(task_id, failed)
                marked.append(task_id)
    if boot_id and previous != boot_id:
        store.put_meta("boot_id", boot_id)
    return marked


async def list_until_answered(state: AgentState, executor: Executor) -> list[RuntimeContainer]:
    """The runtime's containers for this node, asked again until the runtime answers."""
    retry = Retry(RUNTIME_RETRY, clock=state.clock)
    while True:
        try:
            containers = await executor.list_containers()
            break
        except asyncio.CancelledError:
            raise
        except TemporaryError:
            state.set_runtime_up(False, NO_ANSWER)
            await retry.wait()
        except Exception as err:
            state.set_runtime_up(False, f"container runtime error: {describe_error(err)}")
            await retry.wait()
    state.set_runtime_up(True, "ready")
    return containers


async def adopt(
    state: AgentState, executor: Executor, manager: LocalManager, watch: StoreWatch
) -> None:
    """Record the runtime's containers for this node in a new store, retrying until the
    runtime answers and while the store fails."""
    state.starting_reason = "adopting the runtime's containers into a new store"
    state.changed()
    containers = await list_until_answered(state, executor)
    why = state.store.get_meta(ADOPT_PENDING)
    n = await watch.stored(lambda: manager.adopt(containers))
    if why == StoreOrigin.REBUILT.value:
        log.warning(
            "store rebuilt from the runtime's containers; history and restart counters "
            "were lost adopted=%d",
            n,
        )
    else:
        log.info("new store: adopted the runtime's containers for this node adopted=%d", n)
    state.starting_reason = INIT_NOT_DONE

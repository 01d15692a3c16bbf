"""bench fleet's simulated nodes: many whole agents in one process, one event loop.

    python -m bench._fleet_agents NATS_URL DIR NODE_ID...

Each node is the real ``Agent`` on the fake runtime (``reconciler/testing/fake.py``: containers in a
dict, so 10,000 tasks cost no podman) with its own store under DIR and its own
``NatsSession`` to NATS_URL: what a fleet of edge hosts looks like to NATS and the manager.
Commands on stdin, one per line: ``stop NODE`` (the agent stops: its heartbeats end, its fake
containers stay), ``start NODE`` (it comes back on the same store), ``quit``. It prints
``ready`` once every agent runs, and ``ok`` after each command.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from reconciler.assemble.agent import assemble_agent
from reconciler.core.clock import SystemClock
from reconciler.core.model import NodeDescription
from reconciler.store.rocks import RocksStore
from reconciler.testing.agents import agent_options
from reconciler.testing.fake import FakeExecutor


class Node:
    def __init__(self, url: str, base: Path, node_id: str) -> None:
        self.url = url
        self.node_id = node_id
        self.clock = SystemClock()
        self.state = base / node_id
        self.store = RocksStore.open(self.state)
        self.executor = FakeExecutor(
            clock=self.clock,
            node_id=node_id,
            node=NodeDescription(
                hostname=node_id,
                os="linux",
                arch="amd64",
                cpus=64,
                memory_bytes=64 << 30,
                runtime_name="fake",
                runtime_version="0",
                agent_version="0",
            ),
        )
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        assembled = assemble_agent(
            agent_options(self.state, "--manager", self.url, "--resync-interval", "60s"),
            store=self.store,
            node_id=self.node_id,
            clock=self.clock,
            runtime=lambda _: self.executor,
            boot_id="bench",
        )
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(assembled.run(self.stop_event))

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            self.stop_event.set()
            await task


async def main(url: str, base: Path, node_ids: list[str]) -> None:
    nodes = {n: Node(url, base, n) for n in node_ids}
    for node in nodes.values():
        node.start()
    print("ready", flush=True)
    while True:
        line = (await asyncio.to_thread(sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        command, node_id = line[0], line[1]
        if command == "stop":
            await nodes[node_id].stop()
        elif command == "start":
            nodes[node_id].start()
        print("ok", flush=True)
    for node in nodes.values():
        await node.stop()
        node.store.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:]))

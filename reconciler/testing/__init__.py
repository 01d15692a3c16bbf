"""Aids for the tests and the benchmarks, shipped beside the product (as aiohttp ships
``aiohttp.test_utils``) so that ``bench/`` needs nothing of ``tests/``; no product module imports
them (an import-linter contract says so).

- ``fake`` (with ``fakehost`` and ``fakecontroller``): the fake runtime behind the executor port;
  ``faultproxy``: a unix-socket proxy that makes podman look down, hung, slow or flaky;
  ``podman``: a private podman service.
- ``agents``: agent options read by the command line's own parser, for ``assemble_agent``.
- ``fleetworld``: a fleet as the manager sees it, without NATS.
- ``natsserver``: real ``nats-server -js`` processes, one or a cluster; ``ports``: free loopback
  ports.
- ``polling``: the one way to wait for a condition (``eventually``, ``wait_until``), with a
  generous deadline whose failure says what was awaited.
- ``tasks``: where asyncio tasks wait, and stopping a task with a deadline that names it.
- ``hostile``: hostile desired-state files and the strategies that make more.
"""

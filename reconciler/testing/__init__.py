"""Aids for the tests and the benchmarks, shipped beside the product (as aiohttp.test_utils is) so
that ``bench/`` needs nothing of ``tests/``; no product module imports them (an import-linter
contract says so).

- ``fake``: the fake runtime behind the executor port; ``faultproxy``: a unix-socket proxy that
  makes podman look down, hung, slow or flaky; ``podman``: a private podman service.
- ``natsserver``: real ``nats-server -js`` processes, one or a cluster; ``ports``: free loopback
  ports.
- ``polling``: the one way to wait for a condition (``eventually``, ``wait_until``), with a
  generous deadline whose failure says what was awaited.
- ``tasks``: where asyncio tasks wait, and stopping a task with a deadline that names it.
- ``hostile``: hostile desired-state files and the strategies that make more.
"""

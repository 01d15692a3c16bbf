"""Test aids shipped beside the product, as aiohttp ships ``aiohttp.test_utils``.

The fake runtime (``fake``, ``fakehost``, ``fakecontroller``), agent options read by the command
line's own parser (``agents``), a private podman service (``podman``), a proxy that makes podman
misbehave (``faultproxy``), a fleet as the manager sees it without NATS (``fleetworld``) and the
hostile-input corpus (``hostile``). ``tests/`` and ``bench/`` use them; no product module imports
them (import-linter checks it), and ``bench/`` imports nothing from ``tests/``.
"""

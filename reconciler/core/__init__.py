"""The agent core: the model, the state machine, the worker, and the ports to everything else.

Pure by contract: nothing here imports an I/O library, not even indirectly (import-linter checks
it). The runtime, the store and the manager session are ports (``executor``, ``store``,
``session``) that other packages implement, and time is injected (``clock``), so the core runs in
tests on fakes without sleeping. docs/architecture.md has the map.
"""

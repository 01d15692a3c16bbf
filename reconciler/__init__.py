"""reconciler: an edge-host container agent modelled on the SwarmKit agent, and its fleet manager.

One package per role (docs/architecture.md has the map and the layers): ``core`` (the agent
core, pure), ``spec`` (the task language), ``fleet`` (the fleet's wire contract), ``store``
(RocksDB), ``local`` (the local manager), ``observe`` (metrics and usage), ``web`` (HTTP and the
pages), ``sessions`` (the manager sessions), ``agent`` and ``manager`` (the two programs),
``assemble`` (the composition layer), ``cli`` and ``testing`` (test aids). Container runtimes
live in the sibling package ``runtime`` and are chosen only by ``reconciler.assemble``.
"""

__version__ = "0.1.0"

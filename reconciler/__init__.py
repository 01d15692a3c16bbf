"""reconciler: an edge-host container agent modelled on the SwarmKit agent.

The package is the agent core (pure logic, the embedded store, sessions and wiring). Container
runtimes live in the sibling package ``runtime`` and are chosen only by ``reconciler.cli``.
"""

__version__ = "0.1.0"

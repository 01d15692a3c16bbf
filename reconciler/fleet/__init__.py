"""The fleet: what the agents and the manager share on NATS JetStream.

NATS holds all fleet state in KV buckets, so the agents and the manager are stateless clients
of it. This package owns the parts both sides use:

- ``buckets``: the bucket names and settings of the contract, key and subject helpers, and
  ``init_buckets`` (``reconciler manager init``).
- ``values``: the JSON values in those buckets (node heartbeats, task statuses, fleet and node
  control), as pure functions.
- ``connect``: connection options (server URLs, credentials, TLS) and the one way to connect.
- ``watch``: watching keys through a consumer whose create subject carries its filter, so that
  permissions can confine a node to its own keys.

The manager (``reconciler manager run``) builds on them:

- ``services``: ServiceSet files and service values, and how a service becomes named tasks.
- ``scheduler``: the pure scheduling decision (services, nodes, assignments in; puts and
  deletes out).
- ``health``: node health judged from the heartbeats seen, on the manager's own clock.
- ``view``: the manager's picture of the buckets, fed by its watches.
- ``leader``: leader election on the ``leader`` key.
- ``manager``: the driver that owns NATS, timers and leadership around the scheduler.
- ``metrics``: the manager's Prometheus metrics.
- ``admin``: what the other ``reconciler manager`` commands read and write.

The agent's side of the session is ``reconciler.sessions.nats``. Only this package and
``reconciler.sessions`` import ``nats``.
"""

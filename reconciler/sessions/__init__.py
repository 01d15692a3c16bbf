"""Sessions: the implementations of ``reconciler.core.session.Session``.

- ``files``: the desired directory of YAML files, watched with ``watchfiles`` (offline manager).
- ``nats``: the fleet manager over NATS JetStream (``assignments`` reads its values, purely;
  ``nats_connection`` is one connection's plumbing, ``nats_status`` the status writes and
  ``nats_heartbeat`` the heartbeat loop).
- ``memory``: a session in memory, for tests, benchmarks and embedding.

The composition layer imports the one it picks, so that running one session never loads the
other's I/O library.
"""

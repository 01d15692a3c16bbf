"""The agent's store: RocksDB (rocksdict), the one implementation of ``core.store.Store``.

``rocks`` (reads, writes, write failures and recovery), ``rows`` (the key layout and the
encodings), ``opening`` (options, open errors, format versions), ``recovery`` (a store is never
re-created silently: a corrupt one is moved aside and rebuilt from the runtime's labels) and
``statedir`` (the state dir's lock and the node id). Only this package imports ``rocksdict``.
"""

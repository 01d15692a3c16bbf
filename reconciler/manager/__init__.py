"""The fleet manager program (``reconciler manager``): schedules services onto nodes over NATS.

Stateless: everything it knows is in the fleet's buckets (``reconciler.fleet``). The driver
(``driver``, with ``watches`` and ``writes``) owns the connection, leadership (``leader``) and
time; the decision is the pure ``scheduler`` over the manager's picture (``view``) and node
health (``health``). ``services`` reads ServiceSet files, ``snapshot`` and ``page`` are its
status page, ``metrics`` its metrics, ``admin`` what the other manager commands do.
"""

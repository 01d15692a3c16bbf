"""The local manager: named desired tasks in, task instances out, on every node.

The pure ``decide()`` (``decide`` and the rules beside it: ``updates``, ``restart``,
``dependencies``, ``adoption``, on a ``draft``) says what one name needs; the driver
(``manager``) owns the lock, the timers and the store, and hands the worker full assignments.
``records`` is what it keeps per name, ``views`` how operators see it.
"""

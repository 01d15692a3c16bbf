"""The task language: what a valid task is, shared by the desired directory and the fleet.

From bytes to ``DesiredTask`` values: bounded YAML with the line of every value
(``yamlsource``), the schema (``schema``, ``formats``, ``messages``, ``convert``), units
(``units``), checks over a whole set (``deps``), the directory rules (``loader``), and
``reconciler apply``'s plan and write (``plan``, ``apply``). Every problem is one
``PATH:LINE: FIELD: problem`` line (``problems``). docs/desired-state.md is its reference.
"""

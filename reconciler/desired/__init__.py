"""The desired state of the offline manager: schema, validation, file loading and planning.

This package owns everything between "bytes in the desired directory" and "a validated set of
``DesiredTask`` values": the task schema (``schema``; docs/desired-state.md is its reference),
human units (``units``), safe YAML loading that keeps line numbers (``yamlsource``), the
directory rules and ownership checks (``loader``), the create/replace/update/remove plan
(``plan``) and ``reconciler apply``'s atomic write (``apply``). The local manager (``manager``,
instances and restart policy) builds on it. Nothing here imports an I/O library other than
``yaml`` and ``jsonschema``; watching the directory is ``reconciler.sessions.files``' job.

The public API is re-exported here; every error is a ``Problem`` printed as
``PATH:LINE: FIELD: problem`` and raised inside a ``DesiredStateError``.
"""

from reconciler.desired.apply import apply_file
from reconciler.desired.loader import DesiredSet, is_desired_file_name, load_directory, load_paths
from reconciler.desired.plan import PlanLine, changed_fields, plan
from reconciler.desired.problems import DesiredStateError, Problem
from reconciler.desired.schema import parse_task
from reconciler.desired.units import UnitError, parse_duration, parse_size

__all__ = [
    "DesiredSet",
    "DesiredStateError",
    "PlanLine",
    "Problem",
    "UnitError",
    "apply_file",
    "changed_fields",
    "is_desired_file_name",
    "load_directory",
    "load_paths",
    "parse_duration",
    "parse_size",
    "parse_task",
    "plan",
]

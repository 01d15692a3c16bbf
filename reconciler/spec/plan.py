"""What a change of desired state will do to each named task, in words an operator reads.

This module owns the classification that ``reconciler apply`` prints, which mirrors what the
local manager does: a change to ``resources`` alone updates the current instance in place, a
change to ``desiredState`` alone stops it or starts it, a change to ``update`` or ``dependsOn``
replaces nothing, and any other change (or a mix of other fields) replaces the instance. Field
names are spelled as in the YAML (``capAdd``, ``logs``).

A change of ``resources`` together with ``desiredState`` (and nothing else) is an update too:
neither part needs a new instance now, and with ``shutdown`` the new limits only matter for the
instance that a later ``running`` starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from reconciler.core.session import DesiredTask

__all__ = ["IN_PLACE_FIELDS", "YAML_FIELD_NAMES", "PlanLine", "changed_fields", "plan"]

Action = Literal["create", "replace", "update", "remove", "unchanged"]

YAML_FIELD_NAMES: dict[str, str] = {
    "cap_add": "capAdd",
    "cap_drop": "capDrop",
    "stop_signal": "stopSignal",
    "stop_grace_period": "stopGracePeriod",
    "log_max_size": "logs",
    "depends_on": "dependsOn",
}
"""``TaskSpec`` field names whose YAML spelling differs; the rest are spelled the same."""

IN_PLACE_FIELDS = frozenset({"resources", "desiredState", "update", "dependsOn"})
"""Fields whose change alone keeps the current instance."""


@dataclass(frozen=True, slots=True)
class PlanLine:
    """One task's fate: ``create NAME``, ``replace NAME (image, env)``, ``unchanged NAME``..."""

    action: Action
    name: str
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.fields:
            return f"{self.action} {self.name} ({', '.join(self.fields)})"
        return f"{self.action} {self.name}"


def changed_fields(old: DesiredTask, new: DesiredTask) -> list[str]:
    """The YAML names of the fields that differ, in schema order, ``desiredState`` last."""
    fields = [YAML_FIELD_NAMES.get(f, f) for f in old.spec.fields_differing(new.spec)]
    if old.desired_state != new.desired_state:
        fields.append("desiredState")
    return fields


def classify(old: DesiredTask, new: DesiredTask) -> PlanLine:
    """The plan line for one name present before and after."""
    fields = changed_fields(old, new)
    if not fields:
        return PlanLine("unchanged", new.name)
    action: Action = "update" if set(fields) <= IN_PLACE_FIELDS else "replace"
    return PlanLine(action, new.name, tuple(fields))


def plan(old: Mapping[str, DesiredTask], new: Mapping[str, DesiredTask]) -> list[PlanLine]:
    """One line per name in either set, sorted by name. Pure; never raises."""
    lines: list[PlanLine] = []
    for name in sorted(old.keys() | new.keys()):
        if name not in old:
            lines.append(PlanLine("create", name))
        elif name not in new:
            lines.append(PlanLine("remove", name))
        else:
            lines.append(classify(old[name], new[name]))
    return lines

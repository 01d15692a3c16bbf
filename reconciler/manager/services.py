"""The fleet's services: ``kind: ServiceSet`` files, the values in ``reconciler_services``, and
how a service becomes named tasks. Pure.

A ServiceSet file is read like a TaskSet (bounded YAML with line numbers,
``reconciler.spec.yamlsource``) and each service is checked by the same task schema
(``reconciler.spec.schema``), so its problems read ``PATH:LINE: FIELD: problem``::

    apiVersion: reconciler/v1
    kind: ServiceSet
    services:
      - name: web                  # every task field of a TaskSet task, plus:
        image: localhost/web:1
        replicas: 3                # default 1; 0 keeps the service without a task
        placement:
          constraints: ["node.labels.site==north", "node.id!=edge-3"]
      - name: logship
        image: localhost/logship:2
        mode: global               # one task on every eligible node instead of replicas

**Task names.** A replicated service ``web`` becomes ``web-1`` … ``web-<replicas>`` (slots from 1,
as in SwarmKit); a global one becomes one task per node named ``logship`` (the assignment key
``<node>.logship`` keeps them apart). So that a task name always says which service and slot it
is, a service name is a DNS label that does not end in ``-<digits>`` and leaves room for the
longest slot suffix (``SERVICE_NAME_MAX`` characters). ``owner`` reads a task name back.

**Constraints.** ``node.labels.KEY==VALUE`` (a label that operators set, ``reconciler manager
label``), ``engine.labels.KEY==VALUE`` (a label the node's agent claims, ``--node-label``),
``node.id==ID``, and the same with ``!=``. A node without the label fails ``==`` and passes
``!=``. A node's own claim never satisfies ``node.labels``.

**Values.** ``Service.value`` is what ``reconciler manager apply`` writes: the service with the
YAML's field names, ``mode`` and (replicated) ``replicas`` filled in, env and label values as
the text written. ``Service.assignment`` is what the manager writes for each of its tasks: the
task fields alone, without ``name`` (the key gives it), exactly what the agent's session reads
(``reconciler.sessions.assignments``). ``read_service`` checks a value read back from the
bucket, where anyone with access could have written anything.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from reconciler.core.codec import compact
from reconciler.core.session import DesiredTask
from reconciler.fleet.values import BadValue, load_json
from reconciler.spec.formats import API_VERSION
from reconciler.spec.loader import MAX_PROBLEMS_PER_FILE
from reconciler.spec.messages import schema_problems
from reconciler.spec.problems import DesiredStateError, Problem
from reconciler.spec.schema import task_problems
from reconciler.spec.yamlsource import SourceMap, decode, load_documents

__all__ = [
    "KIND",
    "MAX_REPLICAS",
    "SERVICE_NAME_MAX",
    "Constraint",
    "Mode",
    "Service",
    "Subject",
    "check_service_name",
    "owner",
    "parse_constraint",
    "parse_service_file",
    "read_service",
]

KIND = "ServiceSet"
MAX_REPLICAS = 100_000
"""Replicas of one service at most: enough for any edge fleet, small enough to plan quickly."""
SERVICE_NAME_MAX = 63 - len(f"-{MAX_REPLICAS}")
"""A service name leaves room for ``-<slot>`` within a 63-character task name."""

SERVICE_FIELDS = ("replicas", "mode", "placement")
"""The fields a service has beyond a task's."""

_SLOT_SUFFIX = re.compile(r"-[0-9]+$")
_CONSTRAINT = re.compile(
    r"^\s*(?:node\.(?P<id>id)|(?P<kind>node|engine)\.labels\.(?P<key>[^=!\s]+))"
    r"\s*(?P<op>==|!=)\s*(?P<value>\S(?:.*\S)?)\s*$"
)


class Mode(enum.StrEnum):
    REPLICATED = "replicated"
    GLOBAL = "global"


class Subject(enum.StrEnum):
    """What a constraint reads of a node, spelt as the constraint's left side begins."""

    NODE_ID = "node.id"
    NODE_LABEL = "node.labels"  # a label that operators set
    ENGINE_LABEL = "engine.labels"  # a label the node's agent claims


@dataclass(frozen=True, slots=True)
class Constraint:
    """One placement constraint: ``node.id`` (``label`` None), ``node.labels.<label>`` or
    ``engine.labels.<label>``."""

    label: str | None
    equal: bool
    value: str
    subject: Subject = Subject.NODE_LABEL

    def matches(
        self, node_id: str, labels: Mapping[str, str], engine_labels: Mapping[str, str]
    ) -> bool:
        """Whether a node passes: ``labels`` the operators' labels, ``engine_labels`` its own."""
        if self.label is None:
            have: str | None = node_id
        else:
            held = engine_labels if self.subject is Subject.ENGINE_LABEL else labels
            have = held.get(self.label)
        return (have == self.value) == self.equal

    def __str__(self) -> str:
        left = self.subject.value if self.label is None else f"{self.subject}.{self.label}"
        return f"{left}{'==' if self.equal else '!='}{self.value}"


def parse_constraint(text: str) -> Constraint:
    """``node.labels.KEY==VALUE``, ``engine.labels.KEY!=VALUE``, ``node.id!=ID``, ... Raises
    ``ValueError`` saying why not."""
    m = _CONSTRAINT.match(text)
    if m is None:
        raise ValueError(
            f"{text!r} is not a constraint such as node.labels.site==north, "
            "engine.labels.arch==arm64 or node.id!=edge-3"
        )
    if m["id"]:
        subject = Subject.NODE_ID
    else:
        subject = Subject.ENGINE_LABEL if m["kind"] == "engine" else Subject.NODE_LABEL
    return Constraint(label=m["key"], equal=m["op"] == "==", value=m["value"], subject=subject)


def check_service_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` can name a service (see the module docstring)."""
    if len(name) > SERVICE_NAME_MAX:
        raise ValueError(
            f"{name!r} is {len(name)} characters long; a service name has at most "
            f"{SERVICE_NAME_MAX}, leaving room for the task's -<slot>"
        )
    if _SLOT_SUFFIX.search(name):
        raise ValueError(
            f"{name!r} ends in -<digits>, which task names keep for the slot (web-1, web-2, ...)"
        )


_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("constraint", raises=(ValueError,))
def _check_constraint(instance: object) -> bool:
    if isinstance(instance, str):
        parse_constraint(instance)
    return True


@_FORMATS.checks("service-name", raises=(ValueError,))
def _check_name(instance: object) -> bool:
    if isinstance(instance, str):
        check_service_name(instance)
    return True


# What a service adds to a task. The task fields themselves are the task schema's business.
SERVICE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "reconciler/v1 service (beyond the task fields)",
    "type": "object",
    "properties": {
        "name": {"type": "string", "format": "service-name"},
        "replicas": {"type": "integer", "minimum": 0, "maximum": MAX_REPLICAS},
        "mode": {"enum": [m.value for m in Mode]},
        "placement": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "constraints": {
                    "type": "array",
                    "items": {"type": "string", "format": "constraint"},
                }
            },
        },
    },
    "if": {"properties": {"mode": {"const": "global"}}, "required": ["mode"]},
    "then": {
        "properties": {
            "replicas": {"not": {}, "x-message": "a global service runs one task per node"}
        }
    },
}

DOCUMENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "reconciler/v1 ServiceSet",
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "services"],
    "properties": {
        "apiVersion": {"const": API_VERSION},
        "kind": {"const": KIND},
        "services": {"type": "array"},
    },
}

_SERVICE = Draft202012Validator(SERVICE_SCHEMA, format_checker=_FORMATS)
_DOCUMENT = Draft202012Validator(DOCUMENT_SCHEMA, format_checker=_FORMATS)


@dataclass(frozen=True, slots=True, eq=False)
class Service:
    """One valid service. ``task`` is its task as the schema reads it (named after the
    service); ``assignment`` the value written for each of its tasks; ``value`` the service
    as stored in ``reconciler_services``."""

    name: str
    mode: Mode
    replicas: int
    constraints: tuple[Constraint, ...]
    task: DesiredTask
    assignment: bytes
    value: bytes
    line: int = 0

    @property
    def cpus(self) -> float | None:
        return self.task.spec.resources.cpus

    @property
    def memory(self) -> int | None:
        return self.task.spec.resources.memory

    def task_names(self) -> tuple[str, ...]:
        """The named tasks of a replicated service, slot order; a global service's name."""
        if self.mode is Mode.GLOBAL:
            return (self.name,)
        return tuple(f"{self.name}-{slot}" for slot in range(1, self.replicas + 1))

    def matches(
        self, node_id: str, labels: Mapping[str, str], engine_labels: Mapping[str, str]
    ) -> bool:
        """Whether a node passes every constraint: ``labels`` are the labels operators set on
        it, ``engine_labels`` those its agent claims."""
        return all(c.matches(node_id, labels, engine_labels) for c in self.constraints)


def owner(task: str) -> tuple[str, int | None]:
    """The service a task name belongs to and its slot (None: a global service's task)."""
    base, dash, slot = task.rpartition("-")
    if dash and slot.isdigit() and slot[0] != "0" and base:
        return base, int(slot)
    return task, None


def _build(
    data: Mapping[str, Any], *, path: str, field: str, source: SourceMap, limit: int | None
) -> tuple[Service | None, list[Problem]]:
    """Check one service value and build it; problems instead of exceptions."""
    problems = schema_problems(_SERVICE, data, path=path, field=field, source=source, limit=limit)
    fields = {k: v for k, v in data.items() if k not in SERVICE_FIELDS}
    left = None if limit is None else max(1, limit - len(problems))
    task, more = task_problems(fields, path=path, field=field, source=source, limit=left)
    problems.extend(p for p in more if p not in problems)
    if task is None or problems:
        return None, problems
    spec = task.spec
    # env and label values as the text written (1.10 stays "1.10"), as the task read them
    if "env" in fields:
        fields["env"] = dict(spec.env)
    if "labels" in fields:
        fields["labels"] = dict(spec.labels)
    mode = Mode(data.get("mode", Mode.REPLICATED.value))
    replicas = 0 if mode is Mode.GLOBAL else int(data.get("replicas", 1))
    constraints = tuple(
        parse_constraint(c) for c in (data.get("placement") or {}).get("constraints", ())
    )
    stored: dict[str, Any] = {**fields, "mode": mode.value}
    if mode is Mode.REPLICATED:
        stored["replicas"] = replicas
    if constraints:
        stored["placement"] = {"constraints": [str(c) for c in constraints]}
    assignment = {k: v for k, v in fields.items() if k != "name"}
    service = Service(
        name=spec.name,
        mode=mode,
        replicas=replicas,
        constraints=constraints,
        task=task,
        assignment=compact(assignment, sort_keys=True),
        value=compact(stored, sort_keys=True),
        line=source.line(("name",)),
    )
    return service, []


def parse_service_file(data: bytes, path: str) -> list[Service]:
    """Every service of a ServiceSet file, in file order.

    Raises ``DesiredStateError`` with every problem (at most ``MAX_PROBLEMS_PER_FILE``, plus
    a line saying more were left out): YAML that cannot be read or breaks the reader's limits,
    a document that is not a ServiceSet, an invalid service, a name given twice. One bad
    service rejects the whole file.
    """
    text, problems = decode(data, path)
    if text is None:
        raise DesiredStateError(problems)
    documents, problems = load_documents(text, path)
    refused = {p.field for p in problems}
    services: list[Service] = []
    where: dict[str, int] = {}
    for doc in documents:
        if len(problems) > MAX_PROBLEMS_PER_FILE:
            break
        if doc.data is None:
            problems.append(Problem(path, doc.start_line, "document", "document is empty"))
            continue
        found = schema_problems(_DOCUMENT, doc.data, path=path, field="", source=doc.source)
        problems.extend(p for p in found if p.field not in refused)
        items = doc.data.get("services") if isinstance(doc.data, dict) else None
        for i, item in enumerate(items if isinstance(items, list) else ()):
            field = f"services[{i}]"
            source = doc.source.child(("services", i))
            if not isinstance(item, dict):
                problems.append(Problem(path, source.line(()), field, "must be a mapping"))
                continue
            left = MAX_PROBLEMS_PER_FILE + 1 - len(problems)
            if left <= 0:
                break
            service, more = _build(item, path=path, field=field, source=source, limit=left)
            problems.extend(p for p in more if p.field not in refused)
            if service is None:
                continue
            if service.name in where:
                problems.append(
                    Problem(
                        path,
                        service.line,
                        f"{field}.name",
                        f"duplicate service {service.name!r}, also declared at "
                        f"{path}:{where[service.name]}",
                    )
                )
                continue
            where[service.name] = service.line
            services.append(service)
    if problems:
        problems = sorted(dict.fromkeys(problems), key=lambda p: (p.line, p.field, p.message))
        if len(problems) > MAX_PROBLEMS_PER_FILE:
            rest = problems[MAX_PROBLEMS_PER_FILE:]
            problems = problems[:MAX_PROBLEMS_PER_FILE]
            problems.append(
                Problem(
                    path, rest[0].line, "file", f"stopped after {MAX_PROBLEMS_PER_FILE} problems"
                )
            )
        raise DesiredStateError(problems)
    return services


def read_service(bucket: str, key: str, value: bytes) -> Service:
    """A service value from ``bucket/key``. Raises ``DesiredStateError`` (path ``bucket/key``,
    line 0) when it is not a valid service named ``key``."""
    path = f"{bucket}/{key}"
    try:
        doc = load_json(value)
    except BadValue as err:
        raise DesiredStateError([Problem(path, 0, "value", str(err))]) from None
    if not isinstance(doc, dict):
        raise DesiredStateError([Problem(path, 0, "value", "expected a JSON object")])
    if doc.get("name", key) != key:
        raise DesiredStateError(
            [Problem(path, 0, "service.name", f"{doc.get('name')!r} does not match the key")]
        )
    doc.setdefault("name", key)
    service, problems = _build(doc, path=path, field="service", source=SourceMap(), limit=None)
    if service is None:
        raise DesiredStateError(problems)
    return service

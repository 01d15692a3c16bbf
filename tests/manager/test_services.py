"""ServiceSet files and service values: validation with file:line errors, task names, values."""

from __future__ import annotations

import json
import textwrap

import pytest

from reconciler.core.session import DesiredTask
from reconciler.fleet.buckets import SERVICES
from reconciler.manager.services import (
    SERVICE_NAME_MAX,
    Mode,
    owner,
    parse_constraint,
    parse_service_file,
    read_service,
)
from reconciler.sessions.assignments import read_assignment
from reconciler.spec.problems import DesiredStateError


def parse(text: str, path: str = "fleet.yaml") -> list[object]:
    return list(parse_service_file(textwrap.dedent(text).encode(), path))


def problems(text: str) -> list[str]:
    with pytest.raises(DesiredStateError) as err:
        parse_service_file(textwrap.dedent(text).encode(), "fleet.yaml")
    return [str(p) for p in err.value.problems]


GOOD = """\
    apiVersion: reconciler/v1
    kind: ServiceSet
    services:
      - name: web
        image: localhost/busybox:latest
        replicas: 3
        env: {VERSION: 1.10}
        placement:
          constraints: ["node.labels.site==north", "node.id != edge-3"]
      - name: logship
        image: localhost/busybox:latest
        mode: global
"""


def test_a_service_set_reads_into_services_with_their_modes_and_constraints() -> None:
    web, logship = parse_service_file(textwrap.dedent(GOOD).encode(), "fleet.yaml")
    assert (web.name, web.mode, web.replicas) == ("web", Mode.REPLICATED, 3)
    assert [str(c) for c in web.constraints] == ["node.labels.site==north", "node.id!=edge-3"]
    assert web.task_names() == ("web-1", "web-2", "web-3")
    assert (logship.mode, logship.task_names()) == (Mode.GLOBAL, ("logship",))
    assert web.line == 4


def test_the_assignment_value_is_what_the_agent_reads_with_env_text_as_written() -> None:
    (web, _) = parse_service_file(textwrap.dedent(GOOD).encode(), "fleet.yaml")
    read = read_assignment("reconciler_assignments", "edge-1", "edge-1.web-2", web.assignment)
    assert isinstance(read, DesiredTask)
    assert read.name == "web-2" and dict(read.spec.env) == {"VERSION": "1.10"}
    assert "replicas" not in json.loads(web.assignment)


def test_a_stored_value_reads_back_as_the_same_service() -> None:
    (web, logship) = parse_service_file(textwrap.dedent(GOOD).encode(), "fleet.yaml")
    again = read_service(SERVICES, "web", web.value)
    assert again.value == web.value and again.assignment == web.assignment
    assert read_service(SERVICES, "logship", logship.value).mode is Mode.GLOBAL


def test_every_problem_names_the_file_line_and_field() -> None:
    found = problems(
        """\
        apiVersion: reconciler/v1
        kind: ServiceSet
        services:
          - name: web
            image: localhost/busybox:latest
            replicas: -1
            placement:
              constraints: ["node.zone=north"]
          - name: db
            imag: localhost/busybox:latest
        """
    )
    assert "fleet.yaml:6: services[0].replicas: must be at least 0, not -1" in found
    assert any(p.startswith("fleet.yaml:8: services[0].placement.constraints[0]:") for p in found)
    assert any(
        p.startswith("fleet.yaml:10: services[1].imag: unknown field (did you mean 'image'?)")
        for p in found
    )
    assert any(p.startswith("fleet.yaml:9: services[1].image: required") for p in found)


def test_a_global_service_takes_no_replicas_and_names_leave_room_for_the_slot() -> None:
    found = problems(
        f"""\
        apiVersion: reconciler/v1
        kind: ServiceSet
        services:
          - {{name: agent, image: x, mode: global, replicas: 2}}
          - {{name: web-2, image: x}}
          - {{name: {"a" * (SERVICE_NAME_MAX + 1)}, image: x}}
          - {{name: twice, image: x}}
          - {{name: twice, image: x}}
        """
    )
    assert "fleet.yaml:4: services[0].replicas: a global service runs one task per node" in found
    assert any(p.startswith("fleet.yaml:5: services[1].name:") and "-<digits>" in p for p in found)
    assert any(p.startswith("fleet.yaml:6: services[2].name:") for p in found)
    assert any(
        p.startswith("fleet.yaml:8: services[4].name: duplicate service 'twice'") for p in found
    )


def test_a_file_that_is_not_a_service_set_is_refused() -> None:
    found = problems("apiVersion: reconciler/v1\nkind: TaskSet\ntasks: []\n")
    assert any("kind: must be ServiceSet" in p for p in found)
    assert problems("") == ["fleet.yaml:1: file: file is empty"]


def test_a_bad_stored_value_is_refused_with_its_key() -> None:
    with pytest.raises(DesiredStateError) as err:
        read_service(SERVICES, "web", b'{"image": 5}')
    assert str(err.value).startswith("reconciler_services/web:0: service.image:")
    with pytest.raises(DesiredStateError):
        read_service(SERVICES, "web", b'{"name": "other", "image": "x"}')
    with pytest.raises(DesiredStateError):
        read_service(SERVICES, "web", b"\xff")


def test_task_names_read_back_to_their_service_and_slot() -> None:
    assert owner("web-12") == ("web", 12)
    assert owner("my-web-1") == ("my-web", 1)
    assert owner("logship") == ("logship", None)
    assert owner("web-01") == ("web-01", None)


def test_constraints_match_labels_and_ids() -> None:
    north = parse_constraint("node.labels.site==north")
    assert north.matches("a", {"site": "north"}, {}) and not north.matches("a", {}, {})
    assert not north.matches("a", {}, {"site": "north"})  # a node's own claim never does
    assert parse_constraint("node.labels.site!=north").matches("a", {}, {})
    assert parse_constraint("node.id == a").matches("a", {}, {})
    engine = parse_constraint("engine.labels.site==north")
    assert engine.matches("a", {}, {"site": "north"}) and not engine.matches(
        "a", {"site": "north"}, {}
    )
    assert str(engine) == "engine.labels.site==north"
    assert parse_constraint("engine.labels.site != north").matches("a", {}, {"site": "south"})
    for bad in ("node.labels.site=north", "engine.id==a", "engine.site==a"):
        with pytest.raises(ValueError):
            parse_constraint(bad)

"""Schema errors, one field at a time, each with its exact file, line and field path.

Every case writes a file whose task starts on line 4 (name), has its image on line 5 and puts
the field under test on line 6, so LINE is checked exactly, as is FIELD; the message is
checked by a fragment.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from reconciler.core.model import (
    Device,
    HealthCheck,
    Mount,
    PortMapping,
    Resources,
    RestartPolicy,
    TaskSpec,
    TaskState,
)
from reconciler.spec.loader import load_paths
from reconciler.spec.problems import DesiredStateError, Problem
from reconciler.spec.schema import DOCUMENT_SCHEMA, TASK_SCHEMA, parse_task
from reconciler.spec.yamlsource import format_field
from tests.spec.helpers import HEADER, write

TASK_HEAD = "  - name: web\n    image: localhost/busybox:latest\n"


def problems_of(tmp_path: Path, text: str) -> tuple[str, list[Problem]]:
    path = write(tmp_path / "tasks.yaml", text)
    with pytest.raises(DesiredStateError) as e:
        load_paths([path])
    return str(path), e.value.problems


# (field line(s) under the task, expected LINE, expected FIELD, message fragment)
FIELD_CASES = [
    ("command: httpd", 6, "tasks[0].command", "must be a list, not the string 'httpd'"),
    ("command: []", 6, "tasks[0].command", "must not be empty"),
    ("command: [sleep, 30]", 6, "tasks[0].command[1]", "must be a string, not the integer 30"),
    ("entrypoint: {a: b}", 6, "tasks[0].entrypoint", "must be a list, not a mapping"),
    ("env: MODE=edge", 6, "tasks[0].env", "must be a mapping, not the string 'MODE=edge'"),
    ("env: {A: [1, 2]}", 6, "tasks[0].env.A", "must be a scalar"),
    ("env:\n      A: ok\n      B: {c: d}", 8, "tasks[0].env.B", "lists and maps are not allowed"),
    ('env: {"A=B": x}', 6, 'tasks[0].env["A=B"]', "not a usable environment variable name"),
    ("labels: {reconciler.node: x}", 6, 'tasks[0].labels["reconciler.node"]', "is reserved"),
    ("labels: {tier: [a]}", 6, "tasks[0].labels.tier", "must be a scalar"),
    ("desiredState: stopped", 6, "tasks[0].desiredState", "must be one of running, shutdown"),
    ("resources: {cpus: 0}", 6, "tasks[0].resources.cpus", "must be greater than 0"),
    ("resources: {cpus: '1'}", 6, "tasks[0].resources.cpus", "must be a number"),
    ("resources: {memory: 64MB}", 6, "tasks[0].resources.memory", "unknown suffix 'MB'"),
    ("resources: {memory: 0}", 6, "tasks[0].resources.memory", "must be at least 1"),
    ("resources: {memory: '0Mi'}", 6, "tasks[0].resources.memory", "must be greater than 0"),
    ("resources: {memory: true}", 6, "tasks[0].resources.memory", "must be a size"),
    ("resources:\n      mem: 64Mi", 7, "tasks[0].resources.mem", "did you mean 'memory'?"),
    ("resources: [1]", 6, "tasks[0].resources", "must be a mapping, not a list"),
    ("ports: ['80']", 6, "tasks[0].ports[0]", "is not a port mapping"),
    ("ports: ['8080:80/sctp']", 6, "tasks[0].ports[0]", "protocol must be tcp or udp"),
    ("ports: ['70000:80']", 6, "tasks[0].ports[0]", "port 70000 is outside 1-65535"),
    ("ports: ['0:80']", 6, "tasks[0].ports[0]", "port 0 is outside 1-65535"),
    ("ports: ['x.y:80:80']", 6, "tasks[0].ports[0]", "'x.y' is not an IP address"),
    ("ports: [22:22]", 6, "tasks[0].ports[0]", 'must be a string such as "8080:80/tcp"'),
    (
        "ports: ['8080:80', '8080:81/tcp']",
        6,
        "tasks[0].ports[1]",
        "host port 8080/tcp is already published by ports[0]",
    ),
    ("ports: '80:80'", 6, "tasks[0].ports", "must be a list"),
    (
        "mounts:\n      - {type: bind, target: /data}",
        7,
        "tasks[0].mounts[0].source",
        "required for a bind mount",
    ),
    (
        "mounts:\n      - type: volume\n        target: /data",
        7,
        "tasks[0].mounts[0].source",
        "required for a volume mount",
    ),
    (
        "mounts:\n      - {type: volume, source: /srv/x, target: /data}",
        7,
        "tasks[0].mounts[0].source",
        "is not a volume name",
    ),
    (
        "mounts:\n      - {type: bind, source: srv, target: /data}",
        7,
        "tasks[0].mounts[0].source",
        "'srv' is not an absolute path",
    ),
    (
        "mounts:\n      - {type: tmpfs, source: x, target: /tmp}",
        7,
        "tasks[0].mounts[0].source",
        "a tmpfs mount takes no source",
    ),
    (
        "mounts:\n      - {type: nfs, target: /data}",
        7,
        "tasks[0].mounts[0].type",
        "must be one of bind, volume, tmpfs, not 'nfs'",
    ),
    ("mounts:\n      - {target: /data}", 7, "tasks[0].mounts[0].type", "required field"),
    (
        "mounts:\n      - {type: tmpfs}",
        7,
        "tasks[0].mounts[0].target",
        "required field is missing",
    ),
    (
        "mounts:\n      - {type: tmpfs, target: tmp}",
        7,
        "tasks[0].mounts[0].target",
        "not an absolute path",
    ),
    (
        "mounts:\n      - type: tmpfs\n        target: /tmp\n        readOnly: 'yes'",
        9,
        "tasks[0].mounts[0].readOnly",
        "must be true or false, not the string 'yes'",
    ),
    (
        "mounts:\n      - {type: tmpfs, target: /tmp, ro: true}",
        7,
        "tasks[0].mounts[0].ro",
        "unknown field",
    ),
    (
        "mounts:\n      - {type: tmpfs, target: /tmp}\n      - {type: tmpfs, target: /tmp/}",
        8,
        "tasks[0].mounts[1].target",
        "already mounted by mounts[0]",
    ),
    ("network: overlay", 6, "tasks[0].network", "must be one of bridge, host, none"),
    ("user: 'a b'", 6, "tasks[0].user", "is not a user"),
    ("user: [1]", 6, "tasks[0].user", "must be a string or an integer"),
    ("user: -1", 6, "tasks[0].user", "must be at least 0"),
    ("workdir: srv", 6, "tasks[0].workdir", "not an absolute path"),
    ("devices: [ttyUSB0]", 6, "tasks[0].devices[0]", "is not a device"),
    ("devices: ['/dev/a:dev/b']", 6, "tasks[0].devices[0]", "is not a device"),
    ("capAdd: ['NET ADMIN']", 6, "tasks[0].capAdd[0]", "is not a capability name"),
    ("capDrop: ALL", 6, "tasks[0].capDrop", "must be a list"),
    ("stopSignal: SIGFOO", 6, "tasks[0].stopSignal", "'SIGFOO' is not a signal name"),
    ("stopSignal: 15", 6, "tasks[0].stopSignal", "must be a string"),
    ("stopGracePeriod: 10", 6, "tasks[0].stopGracePeriod", "must be a duration such as"),
    ("stopGracePeriod: 10x", 6, "tasks[0].stopGracePeriod", "invalid duration '10x'"),
    ("pull: sometimes", 6, "tasks[0].pull", "must be one of missing, always, never"),
    ("logs: {maxSize: 10MB}", 6, "tasks[0].logs.maxSize", "unknown suffix 'MB'"),
    ("logs: {max: 1}", 6, "tasks[0].logs.max", "unknown field"),
    ("restart: {condition: always}", 6, "tasks[0].restart.condition", "any, on-failure, none"),
    ("restart: {delay: 5}", 6, "tasks[0].restart.delay", "must be a duration"),
    ("restart: {maxDelay: 1m, delay: 2m}", 6, "tasks[0].restart.maxDelay", "must not be shorter"),
    ("restart: {delay: 10m}", 6, "tasks[0].restart.delay", "maxDelay (5m) must not be shorter"),
    ("restart: {maxAttempts: -1}", 6, "tasks[0].restart.maxAttempts", "must be at least 0"),
    ("restart: {maxAttempts: 1.5}", 6, "tasks[0].restart.maxAttempts", "must be an integer"),
    ("restart: {window: forever}", 6, "tasks[0].restart.window", "invalid duration"),
    ("restart: {windows: 1m}", 6, "tasks[0].restart.windows", "did you mean 'window'?"),
    (
        "healthcheck:\n      interval: 5s",
        7,
        "tasks[0].healthcheck.test",
        "required field is missing",
    ),
    ("healthcheck: {test: wget}", 6, "tasks[0].healthcheck.test", "must be a list"),
    ("healthcheck: {test: []}", 6, "tasks[0].healthcheck.test", "must not be empty"),
    ("healthcheck: {test: [CMD-SHELL]}", 6, "tasks[0].healthcheck.test", "exactly one shell"),
    ("healthcheck: {test: [CMD]}", 6, "tasks[0].healthcheck.test", "CMD needs a command"),
    ("healthcheck: {test: [SHELL, x]}", 6, "tasks[0].healthcheck.test[0]", "must be CMD"),
    ("healthcheck: {test: [NONE, x]}", 6, "tasks[0].healthcheck.test", "NONE takes no"),
    ("healthcheck: {test: [CMD, x], retries: 0}", 6, "tasks[0].healthcheck.retries", "at least 1"),
    ("healthcheck: {test: [CMD, x], timeout: 0s}", 6, "tasks[0].healthcheck.timeout", "than 0"),
    ("healthcheck: {test: [CMD, x], interval: 1}", 6, "tasks[0].healthcheck.interval", "duration"),
    ("healthcheck: {test: [CMD, x], startPeriod: x}", 6, "tasks[0].healthcheck.startPeriod", "inv"),
    ("healthcheck: {test: [CMD, x], every: 1s}", 6, "tasks[0].healthcheck.every", "unknown"),
    ("imagePull: always", 6, "tasks[0].imagePull", "unknown field"),
    ("restrat: {}", 6, "tasks[0].restrat", "did you mean 'restart'?"),
]


@pytest.mark.parametrize(
    ("lines", "line", "field", "fragment"),
    FIELD_CASES,
    ids=[f"{c[2]}:{c[3][:30]}" for c in FIELD_CASES],
)
def test_each_field_error_names_file_line_and_field(
    tmp_path: Path, lines: str, line: int, field: str, fragment: str
) -> None:
    path, problems = problems_of(tmp_path, HEADER + TASK_HEAD + "    " + lines + "\n")
    assert len(problems) == 1, problems
    p = problems[0]
    assert (p.path, p.line, p.field) == (path, line, field)
    assert fragment in p.message
    assert str(p) == f"{path}:{line}: {field}: {p.message}"


@pytest.mark.parametrize(
    ("task", "line", "field", "fragment"),
    [
        ("  - image: x\n", 4, "tasks[0].name", "required field is missing"),
        ("  - name: web\n", 4, "tasks[0].image", "required field is missing"),
        ("  - {name: web}\n", 4, "tasks[0].image", "required field is missing"),
        ("  - name: Web\n    image: x\n", 4, "tasks[0].name", "not a DNS label"),
        ("  - name: web-\n    image: x\n", 4, "tasks[0].name", "start and end with a letter"),
        ("  - name: " + "a" * 64 + "\n    image: x\n", 4, "tasks[0].name", "at most 63"),
        ("  - name: web_1\n    image: x\n", 4, "tasks[0].name", "only lowercase letters"),
        ("  - name: 5\n    image: x\n", 4, "tasks[0].name", "must be a string"),
        ("  - name: off\n    image: x\n", 4, "tasks[0].name", 'boolean false; quote it ("off")'),
        ("  - name: web\n    image: 'a b'\n", 5, "tasks[0].image", "not an image reference"),
        ("  - name: web\n    image: ''\n", 5, "tasks[0].image", "not an image reference"),
        ("  - web\n", 4, "tasks[0]", "must be a mapping, not the string 'web'"),
    ],
)
def test_name_and_image_errors(
    tmp_path: Path, task: str, line: int, field: str, fragment: str
) -> None:
    path, problems = problems_of(tmp_path, HEADER + task)
    assert [(p.path, p.line, p.field) for p in problems] == [(path, line, field)]
    assert fragment in problems[0].message


def test_missing_required_field_is_reported_at_the_line_where_the_task_starts(
    tmp_path: Path,
) -> None:
    text = HEADER + TASK_HEAD + "  - name: two\n    command: [x]\n    network: host\n"
    path, problems = problems_of(tmp_path, text)
    assert [str(p) for p in problems] == [f"{path}:6: tasks[1].image: required field is missing"]


@pytest.mark.parametrize(
    ("text", "line", "field", "fragment"),
    [
        ("apiVersion: v2\nkind: TaskSet\ntasks: []\n", 1, "apiVersion", "must be reconciler/v1"),
        ("apiVersion: reconciler/v1\nkind: ServiceSet\ntasks: []\n", 2, "kind", "must be TaskSet"),
        ("apiVersion: reconciler/v1\nkind: TaskSet\n", 1, "tasks", "required field is missing"),
        ("kind: TaskSet\ntasks: []\n", 1, "apiVersion", "required field is missing"),
        ("apiVersion: reconciler/v1\nkind: TaskSet\ntasks: {}\n", 3, "tasks", "must be a list"),
        (
            "apiVersion: reconciler/v1\nkind: TaskSet\ntasks:\n",
            3,
            "tasks",
            "must be a list, not null",
        ),
        (HEADER + "  []\nextra: 1\n", 5, "extra", "unknown field"),
        ("- a\n- b\n", 1, "document", "must be a mapping, not a list"),
        ("just text\n", 1, "document", "must be a mapping"),
        ("apiVersion: [\n", 2, "yaml", "invalid YAML"),
        ("apiVersion: reconciler/v1\nkind: TaskSet\n  tasks: []\n", 3, "yaml", "invalid YAML"),
        (
            "apiVersion: reconciler/v1\napiVersion: reconciler/v1\nkind: TaskSet\ntasks: []\n",
            2,
            "apiVersion",
            "duplicate key (first given at line 1)",
        ),
        ("!!python/object/apply:os.system ['true']\n", 1, "document", "invalid YAML"),
        ("a: &x [*x]\n", 1, "a[0]", "recursive YAML alias"),
    ],
)
def test_document_errors(tmp_path: Path, text: str, line: int, field: str, fragment: str) -> None:
    path, problems = problems_of(tmp_path, text)
    matching = [p for p in problems if (p.path, p.line, p.field) == (path, line, field)]
    assert matching, problems
    assert fragment in matching[0].message


def test_unsafe_yaml_tags_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"!!python/object/apply:os.system ['touch {marker}']\n"
    problems_of(tmp_path, text)
    assert not marker.exists()


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    _, problems = problems_of(tmp_path, "\n".join(lines) + "\n")
    assert any("alias bomb" in p.message for p in problems)


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        HEADER
        + "  - name: Web\n    image: x\n    pull: never-ever\n"
        + "  - name: ok\n    image: x\n    resources: {memory: lots}\n"
    )
    _, problems = problems_of(tmp_path, text)
    assert [(p.line, p.field) for p in problems] == [
        (4, "tasks[0].name"),
        (6, "tasks[0].pull"),
        (9, "tasks[1].resources.memory"),
    ]


EXAMPLE = """\
  - name: web
    image: localhost/busybox:latest
    command: ["httpd", "-f", "-p", "8080"]
    entrypoint: ["/bin/sh", "-c"]
    env: {MODE: edge, VERSION: 1.10, DEBUG: yes, PORT: 8080, EMPTY: ""}
    labels: {tier: web}
    desiredState: running
    resources: {cpus: 0.5, memory: 64Mi}
    ports: ["8080:80/tcp", "127.0.0.1:9000:9000/udp", "[::1]:9001:9001"]
    mounts:
      - {type: bind, source: /srv/web, target: /data, readOnly: true}
      - {type: volume, source: webdata, target: /var/lib/web}
      - {type: tmpfs, target: /tmp}
    network: bridge
    user: "1000:1000"
    workdir: /srv
    devices: ["/dev/ttyUSB0", "/dev/ttyS1:/dev/modem"]
    capAdd: [NET_ADMIN]
    capDrop: [ALL]
    stopSignal: term
    stopGracePeriod: 10s
    pull: missing
    logs: {maxSize: 10Mi}
    restart:
      condition: on-failure
      delay: 500ms
      maxDelay: 5m
      maxAttempts: 3
      window: 1h30m
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O- localhost:8080"]
      interval: 30s
      timeout: 3s
      retries: 3
      startPeriod: 1s
"""
"""A task using every field, as the reference shows one."""

EXAMPLE_SPEC = TaskSpec(
    name="web",
    image="localhost/busybox:latest",
    command=("httpd", "-f", "-p", "8080"),
    entrypoint=("/bin/sh", "-c"),
    env=(
        ("DEBUG", "yes"),
        ("EMPTY", ""),
        ("MODE", "edge"),
        ("PORT", "8080"),
        ("VERSION", "1.10"),
    ),
    labels=(("tier", "web"),),
    resources=Resources(cpus=0.5, memory=64 * 1024 * 1024),
    ports=(
        PortMapping(8080, 80, "tcp", ""),
        PortMapping(9000, 9000, "udp", "127.0.0.1"),
        PortMapping(9001, 9001, "tcp", "::1"),
    ),
    mounts=(
        Mount("bind", "/data", "/srv/web", True),
        Mount("volume", "/var/lib/web", "webdata", False),
        Mount("tmpfs", "/tmp", "", False),
    ),
    network="bridge",
    user="1000:1000",
    workdir="/srv",
    devices=(Device("/dev/ttyUSB0", "/dev/ttyUSB0"), Device("/dev/ttyS1", "/dev/modem")),
    cap_add=("NET_ADMIN",),
    cap_drop=("ALL",),
    stop_signal="SIGTERM",
    stop_grace_period=10.0,
    pull="missing",
    log_max_size=10 * 1024 * 1024,
    restart=RestartPolicy("on-failure", 0.5, 300.0, 3, 5400.0),
    healthcheck=HealthCheck(("CMD-SHELL", "wget -q -O- localhost:8080"), 30.0, 3.0, 3, 1.0),
)
"""``EXAMPLE`` in canonical form: units, durations and defaults resolved."""


def test_product_example_parses_to_the_canonical_spec(tmp_path: Path) -> None:
    desired = load_paths([write(tmp_path / "web.yaml", HEADER + EXAMPLE)])
    task = desired.tasks["web"]
    assert task.desired_state == TaskState.RUNNING
    assert task.spec == EXAMPLE_SPEC
    assert desired.origin == {"web": (str(tmp_path / "web.yaml"), 4)}


def test_defaults_match_the_product_contract(tmp_path: Path) -> None:
    desired = load_paths([write(tmp_path / "t.yaml", HEADER + TASK_HEAD)])
    task = desired.tasks["web"]
    assert task.desired_state == TaskState.RUNNING
    assert task.spec == TaskSpec(name="web", image="localhost/busybox:latest")
    assert task.spec.restart == RestartPolicy("any", 5.0, 300.0, 0, 0.0)
    assert task.spec.stop_grace_period == 10.0
    assert task.spec.log_max_size == 10 * 1024 * 1024


def test_yaml_anchors_and_merge_keys_work_and_explicit_keys_override(tmp_path: Path) -> None:
    text = (
        HEADER
        + """\
  - &base
    name: one
    image: localhost/busybox:latest
    env: {A: "1"}
  - <<: *base
    name: two
    desiredState: shutdown
"""
    )
    desired = load_paths([write(tmp_path / "t.yaml", text)])
    assert sorted(desired.tasks) == ["one", "two"]
    assert desired.tasks["two"].spec.env == (("A", "1"),)
    assert desired.tasks["two"].desired_state == TaskState.SHUTDOWN


def test_parse_task_reads_a_json_spec_with_the_yaml_field_names() -> None:
    task = parse_task(
        {
            "name": "api",
            "image": "localhost/busybox:latest",
            "env": {"A": 1, "B": True, "C": None, "D": "x", "E": 1.5},
            "resources": {"memory": 1048576, "cpus": 1},
            "stopGracePeriod": "30s",
            "desiredState": "shutdown",
        }
    )
    assert task.desired_state == TaskState.SHUTDOWN
    assert task.spec.env == (("A", "1"), ("B", "true"), ("C", ""), ("D", "x"), ("E", "1.5"))
    assert task.spec.resources == Resources(cpus=1.0, memory=1048576)
    assert task.spec.stop_grace_period == 30.0


def test_parse_task_raises_with_every_problem_in_the_same_format() -> None:
    with pytest.raises(DesiredStateError) as e:
        parse_task({"name": "Bad", "ports": ["x"], "extra": 1}, path="nats:node1.api", field="spec")
    assert str(e.value).splitlines() == [str(p) for p in e.value.problems]
    assert [p.field for p in e.value.problems] == [
        "spec.extra",
        "spec.image",
        "spec.name",
        "spec.ports[0]",
    ]
    assert all(p.path == "nats:node1.api" and p.line == 0 for p in e.value.problems)


def test_published_schemas_are_valid_json_schemas() -> None:
    Draft202012Validator.check_schema(TASK_SCHEMA)
    Draft202012Validator.check_schema(DOCUMENT_SCHEMA)


def test_duplicate_key_in_a_task_is_an_error_at_the_second_key(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, HEADER + TASK_HEAD + "    image: other\n")
    assert [str(p) for p in problems] == [
        f"{path}:6: tasks[0].image: duplicate key (first given at line 5)"
    ]


def test_keys_that_are_not_identifiers_are_quoted_in_field_paths() -> None:
    assert format_field(("tasks", 0, "labels", "app.example/tier")) == (
        'tasks[0].labels["app.example/tier"]'
    )
    assert format_field(("env", "MY_VAR"), "task") == "task.env.MY_VAR"
    assert format_field(()) == "document"

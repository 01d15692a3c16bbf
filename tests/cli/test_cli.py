"""The command line: exit codes, config files, validate/apply output, ps/inspect on a store."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler import __version__
from reconciler.cli import main
from reconciler.core.clock import FakeClock, settle
from reconciler.store.statedir import load_node_id
from reconciler.testing.fake import FakeExecutor
from tests.agent.test_agent import desired, running_agent
from tests.spec.helpers import safe_dir, task_set, write

WEB = """  - name: web
    image: localhost/busybox:latest
    env: {TOKEN: s3cret}
    command: ["httpd", "-f"]
"""
JOB = """  - name: job
    image: localhost/busybox:latest
"""


def test_version_prints_and_exits_zero(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_usage_error_exits_two(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        main(["ps", "--bogus"])
    assert info.value.code == 2


def test_validate_ok_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    d = safe_dir(tmp_path / "d")
    write(d / "a.yaml", task_set(WEB))
    assert main(["validate", str(d)]) == 0
    bad = write(d / "b.yaml", task_set("  - name: Bad_Name\n    image: x\n"))
    assert main(["validate", str(d)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4: tasks[0].name:" in err


def test_apply_prints_plan_and_writes_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    d = safe_dir(tmp_path / "d")
    src = write(tmp_path / "web.yaml", task_set(WEB, JOB))
    assert main(["apply", "-f", str(src), "--desired", str(d), "--dry-run"]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == ["create job", "create web"]
    assert not (d / "web.yaml").exists()
    assert main(["apply", "-f", str(src), "--desired", str(d)]) == 0
    assert (d / "web.yaml").read_text() == src.read_text()
    write(src, task_set(WEB.replace("httpd", "nc")))
    capsys.readouterr()
    assert main(["apply", "-f", str(src), "--desired", str(d)]) == 0
    assert capsys.readouterr().out.splitlines() == ["remove job", "replace web (command)"]


def test_apply_refuses_a_name_declared_in_another_file(tmp_path: Path, capsys):
    d = safe_dir(tmp_path / "d")
    write(d / "other.yaml", task_set(WEB))
    src = write(tmp_path / "mine.yaml", task_set(WEB))
    assert main(["apply", "-f", str(src), "--desired", str(d)]) == 2
    assert "web" in capsys.readouterr().err
    assert not (d / "mine.yaml").exists()


def test_config_file_supplies_flags_and_flags_win(tmp_path: Path, capsys):
    d = safe_dir(tmp_path / "d")
    other = safe_dir(tmp_path / "other")
    src = write(tmp_path / "web.yaml", task_set(WEB))
    cfg = write(tmp_path / "c.yaml", f"desired: {d}\ndry-run: true\n")
    assert main(["apply", "-f", str(src), "--config", str(cfg)]) == 0
    assert not (d / "web.yaml").exists()  # dry-run came from the config file
    cfg2 = write(tmp_path / "c2.yaml", f"desired: {d}\n")
    assert main(["apply", "-f", str(src), "--config", str(cfg2), "--desired", str(other)]) == 0
    assert (other / "web.yaml").exists() and not (d / "web.yaml").exists()


def test_unknown_config_key_is_a_usage_error(tmp_path: Path, capsys):
    cfg = write(tmp_path / "c.yaml", "state-dri: /x\n")
    assert main(["ps", "--config", str(cfg)]) == 2
    assert "unknown key 'state-dri'" in capsys.readouterr().err


def test_node_id_is_generated_once_and_kept(tmp_path: Path):
    first = load_node_id(tmp_path, None)
    assert first and load_node_id(tmp_path, None) == first
    assert load_node_id(tmp_path, "explicit") == "explicit"


def make_state(state: Path) -> None:
    async def go() -> None:
        clock = FakeClock()

        tasks = desired("web", "job")
        web = replace(tasks.tasks[0], spec=replace(tasks.tasks[0].spec, env=(("TOKEN", "s3cret"),)))
        async with running_agent(state, clock, FakeExecutor(clock=clock)) as r:
            r.session.send(replace(tasks, tasks=(web, tasks.tasks[1])))
            await settle()

    asyncio.run(go())


def test_ps_json_lists_current_instances_with_contract_keys(tmp_path: Path, capsys):
    make_state(tmp_path)
    assert main(["ps", "--state-dir", str(tmp_path), "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["job", "web"]
    assert set(rows[0]) == {
        "name",
        "id",
        "desiredState",
        "state",
        "message",
        "error",
        "containerId",
        "exitCode",
        "updatedAt",
        "restarts",
    }
    assert rows[0]["state"] == "running" and rows[0]["desiredState"] == "running"
    assert rows[0]["error"] is None and rows[0]["exitCode"] is None
    assert rows[0]["updatedAt"].endswith("Z")
    assert main(["ps", "--state-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["NAME", "ID", "DESIRED", "STATE"]
    assert len(table) == 3


def test_ps_without_a_store_fails(tmp_path: Path, capsys):
    assert main(["ps", "--state-dir", str(tmp_path / "none")]) == 1
    assert "no store" in capsys.readouterr().err


def test_inspect_redacts_env_and_exits_one_when_missing(tmp_path: Path, capsys):
    make_state(tmp_path)
    assert main(["inspect", "web", "--state-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    out = json.loads(text)
    assert out["name"] == "web" and out["status"]["state"] == "running"
    assert out["spec"]["env"] == {"TOKEN": "<redacted>"}
    assert "s3cret" not in text
    assert main(["inspect", out["id"], "--state-dir", str(tmp_path), "--show-env"]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["env"] == {"TOKEN": "s3cret"}
    assert main(["inspect", "nope", "--state-dir", str(tmp_path)]) == 1
    assert "nope" in capsys.readouterr().err


def test_ps_watch_redraws_the_table_until_interrupted(tmp_path: Path):
    make_state(tmp_path)
    with subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "ps", "--watch", "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        seen = b""
        while seen.count(b"\x1b[H\x1b[2J") < 2:  # two full redraws, each clearing the screen
            chunk = proc.stdout.read1(4096)
            assert chunk, proc.stderr.read()
            seen += chunk
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    assert seen.count(b"NAME") >= 2 and b"web" in seen


def test_starting_a_command_loads_neither_the_fleet_nor_podman_nor_the_schema_checker() -> None:
    # What a restart of the agent waits for: each command imports only what it runs.

    code = (
        "import sys; import reconciler.cli.main; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('nats', 'podman', 'jsonschema', 'yaml', 'runtime') or m == 'reconciler.cli.manager'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_run_command_loads_neither_podman_py_nor_nats_before_asking_podman_info() -> None:
    # ``reconciler run`` asks podman for its info before anything heavy is imported, and a node
    # on a desired directory never loads the NATS client at all.
    code = (
        "import sys; import reconciler.cli.agent; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'nats', 'podman', 'requests', "
        "'watchfiles'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""``reconciler run``'s fleet flags: bad ones are usage errors (exit 2) before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli import main


def run(tmp_path: Path, *flags: str) -> int:
    return main(["run", "--state-dir", str(tmp_path / "state"), *flags])


def test_credentials_without_a_manager_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, "--manager-creds", str(tmp_path / "c")) == 2
    assert "need --manager" in capsys.readouterr().err


def test_a_bad_manager_url_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, "--manager", "https://node-a:s3cret@host:4222") == 2
    err = capsys.readouterr().err
    assert "--manager" in err and "s3cret" not in err


def test_an_unreadable_credentials_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = tmp_path / "creds"
    creds.write_text("password: s3cret\n")
    assert run(tmp_path, "--manager", "nats://127.0.0.1:1", "--manager-creds", str(creds)) == 2
    err = capsys.readouterr().err
    assert str(creds) in err and "s3cret" not in err


def test_a_bad_tls_ca_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    assert run(tmp_path, "--manager", "tls://127.0.0.1:1", "--manager-tls-ca", str(ca)) == 2
    assert "TLS CA file" in capsys.readouterr().err


def node_creds(tmp_path: Path, user: str) -> Path:
    creds = tmp_path / f"{user}.creds"
    creds.write_text(f'user: "{user}"\npassword: "s3cret"\n')
    creds.chmod(0o600)
    return creds


def test_credentials_of_another_node_exit_2_naming_file_user_and_node_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = node_creds(tmp_path, "node-a")
    flags = ("--manager", "nats://127.0.0.1:1", "--manager-creds", str(creds))
    assert run(tmp_path, *flags, "--node-id", "node-b") == 2
    err = capsys.readouterr().err
    assert f"--manager-creds {creds}" in err and "'node-a'" in err and "'node-b'" in err
    assert "s3cret" not in err
    assert not (tmp_path / "state").exists()  # refused before anything was touched


def test_credentials_that_do_not_match_the_generated_node_id_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = node_creds(tmp_path, "node-a")
    assert run(tmp_path, "--manager", "nats://127.0.0.1:1", "--manager-creds", str(creds)) == 2
    generated = (tmp_path / "state" / "node-id").read_text().strip()
    err = capsys.readouterr().err
    assert f"user 'node-a', but this node's id is {generated!r}" in err

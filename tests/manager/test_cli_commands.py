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

"""Connection settings: server URLs, credentials files, redaction, and when TLS is required."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.fleet.options import (
    ConfigError,
    NatsOptions,
    load_credentials,
    parse_servers,
    published_servers,
    redact,
    requires_tls,
    uses_tls,
)

CA = Path("/etc/reconciler/ca.pem")


def test_servers_are_a_comma_separated_list_of_nats_or_tls_urls() -> None:
    assert parse_servers("nats://a:4222, tls://b:4223,,nats://a:4222") == (
        "nats://a:4222",
        "tls://b:4223",
    )


def test_a_scheme_in_capitals_is_written_back_in_lower_case() -> None:
    # nats-py matches the scheme as written: a TLS:// it does not know must not reach it
    assert parse_servers("TLS://a:4222,Nats://b:4223") == ("tls://a:4222", "nats://b:4223")


@pytest.mark.parametrize("text", ["", "http://a:4222", "a:4222", "nats://", "nats://a:99999"])
def test_bad_server_urls_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_servers(text)


def test_urls_are_logged_without_their_user_info() -> None:
    assert redact("nats://node-a:s3cret@host:4222") == "nats://host:4222"
    assert redact("nats://host:4222") == "nats://host:4222"
    with pytest.raises(ConfigError) as err:
        parse_servers("http://node-a:s3cret@host:4222")
    assert "s3cret" not in str(err.value)


def test_credentials_file_with_user_and_password(tmp_path: Path) -> None:
    path = tmp_path / "creds"
    path.write_text("user: node-a\npassword: s3cret\n")
    assert load_credentials(path) == {"user": "node-a", "password": "s3cret"}
    path.write_text("token: t0ken\n")
    assert load_credentials(path) == {"token": "t0ken"}


def test_a_nats_credentials_file_is_handed_to_the_client(tmp_path: Path) -> None:
    path = tmp_path / "node.creds"
    path.write_text("-----BEGIN NATS USER JWT-----\neyJ0\n------END NATS USER JWT------\n")
    assert load_credentials(path) == {"user_credentials": str(path)}


@pytest.mark.parametrize("content", ["password: s3cret\n", "- s3cret\n", "user: [s3cret\n"])
def test_unusable_credentials_name_the_file_never_the_secret(tmp_path: Path, content: str) -> None:
    path = tmp_path / "creds"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_credentials(path)
    assert str(path) in str(err.value) and "s3cret" not in str(err.value)


def test_a_missing_credentials_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_credentials(tmp_path / "absent")


@pytest.mark.parametrize(
    ("url", "ca", "required"),
    [
        ("tls://a:4222", None, True),
        ("tls://a:4222", CA, True),
        ("nats://a:4222", CA, True),
        ("nats://a:4222", None, False),
    ],
)
def test_tls_is_required_for_a_tls_url_or_wherever_a_ca_is_given(
    url: str, ca: Path | None, required: bool
) -> None:
    assert requires_tls(NatsOptions(servers=(url,), tls_ca=ca), url) is required
    assert uses_tls(NatsOptions(servers=(url,), tls_ca=ca)) is required


def test_one_tls_url_among_the_servers_means_the_settings_use_tls() -> None:
    options = NatsOptions(servers=("nats://a:4222", "tls://b:4222"))
    assert uses_tls(options)
    assert not requires_tls(options, "nats://a:4222")


PUBLISHED = ("nats://m1:4222", "tls://m2:4222", "nats://m3:4222")


@pytest.mark.parametrize(
    "options",
    [
        NatsOptions(servers=("tls://a:4222",)),
        NatsOptions(servers=("nats://a:4222",), tls_ca=CA),
        NatsOptions(servers=("nats://a:4222", "tls://b:4222")),
    ],
)
def test_settings_with_tls_ignore_published_plain_urls(options: NatsOptions) -> None:
    assert published_servers(options, PUBLISHED) == (
        ("tls://m2:4222",),
        ("nats://m1:4222", "nats://m3:4222"),
    )


def test_plain_settings_take_every_published_url() -> None:
    options = NatsOptions(servers=("nats://a:4222",))
    assert published_servers(options, PUBLISHED) == (PUBLISHED, ())
    assert published_servers(options, ()) == ((), ())

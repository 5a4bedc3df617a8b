"""Settings read from a mapping standing in for the environment, and from the env file; what does
not parse names the variable, its value and what was expected."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from app.config import ConfigError, Settings, check_service, redact_url


@pytest.fixture
def environ(tmp_path) -> dict[str, str]:
    """An environment of nothing but an env file of the test's own, empty so far."""
    return {"IMAGEJOBS_ENV_FILE": str(tmp_path / "imagejobs.env")}


@pytest.mark.parametrize(("variable", "value", "field", "read"), [
    ("DATABASE_URL", "postgres://app:pw@db:5432/images", "database_url",
     "postgresql+psycopg://app:pw@db:5432/images"),
    ("DATABASE_URL", "postgresql://app@db/images", "database_url",
     "postgresql+psycopg://app@db/images"),
    ("REDIS_URL", "rediss://cache:6380/2", "redis_url", "rediss://cache:6380/2"),
    ("IMAGEJOBS_LEASE_SECONDS", " 45 ", "lease_seconds", 45),
    ("IMAGEJOBS_SHUTDOWN_SECONDS", "2.5", "shutdown_seconds", 2.5),
    ("IMAGEJOBS_SECRET_KEY", "new-key, old-key", "secret_keys", ["new-key", "old-key"]),
    ("IMAGEJOBS_ALLOWED_NETWORKS", "127.0.0.1/32, 10.1.2.3/8", "allowed_networks",
     (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"))),
    ("IMAGEJOBS_BUILD_REMOTE_ADD", "Allow", "build_remote_add_allowed", True),
    ("IMAGEJOBS_LOG_FORMAT", "JSON", "log_format", "json"),
    ("IMAGEJOBS_NODE_ID", "node-1", "node_id", "node-1"),
    # Blank is unset: the default.
    ("IMAGEJOBS_MAX_ATTEMPTS", "  ", "max_attempts", 3),
])
def test_a_variable_is_read_into_its_setting(environ, variable, value, field, read):
    assert getattr(Settings.from_env({**environ, variable: value}), field) == read


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("IMAGEJOBS_LEASE_SECONDS", "thirty",
     "IMAGEJOBS_LEASE_SECONDS='thirty': expected a whole number above 0, such as 30"),
    ("IMAGEJOBS_LEASE_SECONDS", "1.5",
     "IMAGEJOBS_LEASE_SECONDS='1.5': expected a whole number above 0, such as 30"),
    ("IMAGEJOBS_SHUTDOWN_SECONDS", "-5",
     "IMAGEJOBS_SHUTDOWN_SECONDS='-5': expected a number above 0, such as 20"),
    ("IMAGEJOBS_MAX_ATTEMPTS", "0", "IMAGEJOBS_MAX_ATTEMPTS='0': expected a whole number above 0"),
    ("IMAGEJOBS_ALLOWED_NETWORKS", "127.0.0.1/32,intranet",
     "IMAGEJOBS_ALLOWED_NETWORKS: 'intranet' is not a network; expected CIDRs separated by commas"),
    ("IMAGEJOBS_BUILD_REMOTE_ADD", "yes",
     "IMAGEJOBS_BUILD_REMOTE_ADD='yes': expected one of refuse, allow"),
    ("IMAGEJOBS_LOG_FORMAT", "yaml", "IMAGEJOBS_LOG_FORMAT='yaml': expected one of text, json"),
    ("REDIS_URL", "http://127.0.0.1:6379", "REDIS_URL='http://127.0.0.1:6379': expected a Redis URL"),
    ("DATABASE_URL", "mysql://imagejobs:hunter2@db/imagejobs",
     "DATABASE_URL='mysql://imagejobs:***@db/imagejobs': expected a Postgres URL"),
])
def test_a_variable_that_does_not_parse_is_named_with_its_value(environ, variable, value,
                                                                 message):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**environ, variable: value})
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_the_env_file_is_read_and_the_environment_wins(environ, tmp_path):
    (tmp_path / "imagejobs.env").write_text("# kept outside the repository\n"
                                            "DATABASE_URL=postgresql://app:pw@db/images\n"
                                            "IMAGEJOBS_LEASE_SECONDS=thirty\n")
    with pytest.raises(ConfigError, match="IMAGEJOBS_LEASE_SECONDS='thirty'"):
        Settings.from_env(environ)
    settings = Settings.from_env({**environ, "IMAGEJOBS_LEASE_SECONDS": "40"})
    assert settings.database_url == "postgresql+psycopg://app:pw@db/images"
    assert settings.lease_seconds == 40


def test_secret_keys_are_read_from_their_file(environ, tmp_path):
    (tmp_path / "keys").write_text("first\nsecond\n")
    settings = Settings.from_env({**environ, "IMAGEJOBS_SECRET_KEY_FILE": str(tmp_path / "keys")})
    assert settings.secret_keys == ["first", "second"]
    (tmp_path / "keys").write_text("\n")
    with pytest.raises(ConfigError, match="IMAGEJOBS_SECRET_KEY_FILE=.* is empty"):
        Settings.from_env({**environ, "IMAGEJOBS_SECRET_KEY_FILE": str(tmp_path / "keys")})


def test_an_empty_environment_gives_the_defaults_settings_are_built_with(environ):
    read = Settings.from_env(environ)
    assert read == Settings()
    assert (read.shutdown_seconds, read.lease_seconds, read.log_format) == (20.0, 30, "text")


def test_settings_built_directly_read_no_environment(monkeypatch):
    monkeypatch.setenv("IMAGEJOBS_LEASE_SECONDS", "thirty")
    settings = Settings(lease_seconds=7, secret_keys=["k"])
    assert settings.lease_seconds == 7 and settings.max_attempts == 3
    assert settings.node_id == socket.gethostname() and not settings.node_id_chosen
    assert Settings(node_id="node-1").node_id_chosen


def test_a_service_without_a_secret_key_is_refused():
    with pytest.raises(ConfigError, match="IMAGEJOBS_SECRET_KEY is not set"):
        check_service(Settings(), worker=False)
    check_service(Settings(secret_keys=["k"]), worker=False)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://app:hunter2@db:5432/images", "postgresql://app:***@db:5432/images"),
    ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
    ("postgresql://app@db/images", "postgresql://app@db/images"),
])
def test_a_url_is_named_without_its_password(url, shown):
    assert redact_url(url) == shown


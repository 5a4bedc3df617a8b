"""Settings an operator gets wrong are refused at start, in one line naming the variable; settings
kept in the env file are used; credentials sealed with another key end their job in `error`; the
API and the worker run on the settings they are given."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
import subprocess
import sys

import pytest
import requests
from cryptography.fernet import Fernet
from sqlalchemy import select

from app import create_app, vault
from app.config import get_settings, use_settings
from app.db import transaction
from app.models import Hub, Image, ImageSource
from tests.api_calls import assert_failed, create_image, create_source, import_and_wait, oci_origin
from tests.processes import ApiClient, api_server, free_port, own_database
from tests.services import AUTH_PASSWORD, AUTH_USER, ROOT, TEST_DATABASE


def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture
def bare_env(tmp_path) -> dict[str, str]:
    """The test environment without a secret key, and with an env file of this test's own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("IMAGEJOBS_SECRET_KEY", "IMAGEJOBS_SECRET_KEY_FILE")}
    env["IMAGEJOBS_ENV_FILE"] = str(tmp_path / "imagejobs.env")
    return env


@pytest.mark.parametrize("command", [["api", "--port", "1"], ["worker"]])
def test_the_api_and_workers_refuse_to_start_without_a_secret_key(bare_env, command):
    result = run_cli(*command, env=bare_env)
    assert result.returncode != 0
    assert "IMAGEJOBS_SECRET_KEY is not set" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("IMAGEJOBS_LEASE_SECONDS", "thirty", "expected a whole number above 0"),
    ("IMAGEJOBS_SHUTDOWN_SECONDS", "-5", "expected a number above 0"),
    ("IMAGEJOBS_MAX_ATTEMPTS", "0", "expected a whole number above 0"),
    ("IMAGEJOBS_ALLOWED_NETWORKS", "127.0.0.1/32,intranet", "'intranet' is not a network"),
    ("IMAGEJOBS_BUILD_REMOTE_ADD", "yes", "expected one of refuse, allow"),
    ("REDIS_URL", "http://127.0.0.1:6379", "expected a Redis URL"),
    ("DATABASE_URL", "mysql://imagejobs:hunter2-db-pass@db/imagejobs", "expected a Postgres URL"),
])
@pytest.mark.parametrize("command", [["api", "--port", "1"], ["worker"]])
def test_a_setting_that_does_not_parse_is_named_with_its_value(name, value, expected, command):
    env = {**os.environ, name: value}
    result = run_cli(*command, env=env)
    assert result.returncode != 0
    line = result.stderr.strip()
    assert line.count("\n") == 0 and "Traceback" not in line, line
    assert name in line and expected in line
    # The value is shown so the operator sees what was read, but never a password in it.
    assert "hunter2-db-pass" not in line


def test_a_secret_key_file_is_made_once_and_kept(bare_env, tmp_path):
    path = tmp_path / "keys" / "secret.key"
    first = run_cli("secret-key", "--file", str(path), env=bare_env)
    assert first.returncode == 0 and "wrote" in first.stdout
    key = path.read_text().strip()
    assert len(key) >= 32 and key not in first.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = run_cli("secret-key", "--file", str(path), env=bare_env)
    assert again.returncode == 0 and "kept" in again.stdout
    assert path.read_text().strip() == key
    printed = run_cli("secret-key", env=bare_env).stdout.strip()
    assert printed and printed != key


def test_a_key_file_that_cannot_be_read_is_named(bare_env, tmp_path):
    env = {**bare_env, "IMAGEJOBS_SECRET_KEY_FILE": str(tmp_path / "missing.key")}
    result = run_cli("worker", env=env)
    assert result.returncode != 0
    assert f"IMAGEJOBS_SECRET_KEY_FILE={tmp_path / 'missing.key'} cannot be read" in result.stderr


def test_settings_in_the_env_file_are_used_and_the_environment_wins(bare_env, tmp_path):
    # The services script keeps the database password there, outside the repository.
    url = f"postgresql://postgres@127.0.0.1:5432/{TEST_DATABASE}"
    (tmp_path / "imagejobs.env").write_text(f"# made by deploy/local-services.sh\nDATABASE_URL={url}\n"
                                            "IMAGEJOBS_LEASE_SECONDS=thirty\n")
    env = {k: v for k, v in bare_env.items() if k != "DATABASE_URL"}
    env["IMAGEJOBS_LEASE_SECONDS"] = "30"
    result = run_cli("hub", "create", "from-the-env-file", env=env)
    assert result.returncode == 0, result.stderr
    with transaction() as session:
        hub = session.get(Hub, result.stdout.strip())
        assert hub is not None and hub.name == "from-the-env-file"
    # The file's bad value shows once the environment no longer overrides it.
    del env["IMAGEJOBS_LEASE_SECONDS"]
    refused = run_cli("worker", env={**env, "IMAGEJOBS_SECRET_KEY": "k"})
    assert "IMAGEJOBS_LEASE_SECONDS='thirty'" in refused.stderr


def _seal_with_another_key(values: dict) -> bytes:
    other = base64.urlsafe_b64encode(os.urandom(32))
    return Fernet(other).encrypt(json.dumps(values).encode())


@pytest.mark.docker
def test_credentials_sealed_with_a_key_the_worker_lacks_end_the_import_in_error(api, worker):
    source = create_source(api, oci_origin("private/busybox:latest", username=AUTH_USER,
                                           token=AUTH_PASSWORD))
    image = create_image(api, source["id"])
    # As if the API that stored them had been given another IMAGEJOBS_SECRET_KEY.
    foreign = _seal_with_another_key(vault.unseal(_stored_secrets(image["id"])))
    with transaction() as session:
        session.get(Image, image["id"]).origin_secrets = foreign
        session.get(ImageSource, source["id"]).origin_secrets = foreign

    job = import_and_wait(api, image["id"])
    assert_failed(job, api.get(f"/v1/images/{image['id']}").get_json()["data"],
                  "cannot be decrypted with this server's IMAGEJOBS_SECRET_KEY")
    assert job["state"]["error"]["message"].count("Traceback") == 0

    # Editing the source keeps its stored secrets only if they can be read; sending them again
    # seals them with the current key.
    blank = api.patch(f"/v1/images/sources/{source['id']}", json={"origin": source["origin"]})
    assert blank.status_code == 422
    assert "Send the origin's secrets again" in blank.get_json()["error"]["detail"]
    resent = api.patch(f"/v1/images/sources/{source['id']}", json={"origin": oci_origin(
        "private/busybox:latest", username=AUTH_USER, token=AUTH_PASSWORD)})
    assert resent.status_code == 200
    with transaction() as session:
        stored = session.scalar(select(ImageSource.origin_secrets)
                                .where(ImageSource.id == source["id"]))
    assert AUTH_PASSWORD in json.dumps(vault.unseal(stored))


def _stored_secrets(image_id: str) -> bytes:
    with transaction() as session:
        return session.get(Image, image_id).origin_secrets


def test_reseal_lets_the_old_key_go(bare_env):
    env, headers = own_database("imagejobs_test_reseal", bare_env)
    origin = oci_origin("private/busybox:latest", username=AUTH_USER, token=AUTH_PASSWORD)
    with api_server("reseal-old-key", env={**env, "IMAGEJOBS_SECRET_KEY": "old-key"}) as base:
        source = ApiClient(base, headers).call("POST", "/v1/images/sources",
                                               json={"type": "direct", "origin": origin})

    def keeps_blank_secrets(base: str) -> int:
        # Sending the origin back as shown (secrets blank) keeps the stored ones, if readable.
        return requests.patch(f"{base}/v1/images/sources/{source['id']}", headers=headers,
                              json={"origin": source["origin"]}, timeout=10).status_code

    new_only = {**env, "IMAGEJOBS_SECRET_KEY": "new-key"}
    with api_server("reseal-new-key", env=new_only) as base:
        assert keeps_blank_secrets(base) == 422
        result = run_cli("reseal", env={**env, "IMAGEJOBS_SECRET_KEY": "new-key,old-key"})
        assert result.returncode == 0, result.stderr
        assert "resealed the credentials of 1 source or image rows" in result.stdout
        assert keeps_blank_secrets(base) == 200


def test_a_database_out_of_reach_is_one_line_without_its_password(bare_env):
    url = f"postgresql://imagejobs:hunter2-db-pass@127.0.0.1:{free_port()}/imagejobs"
    result = run_cli("hub", "create", "nowhere", env={**bare_env, "DATABASE_URL": url})
    assert result.returncode != 0
    line = result.stderr.strip()
    assert line.startswith("Error: cannot use the database at postgresql+psycopg://imagejobs:***@")
    assert "Connection refused" in line and "\n" not in line and "hunter2-db-pass" not in line


def test_the_api_runs_on_the_settings_it_is_given():
    before = get_settings()
    given = dataclasses.replace(before, max_body_bytes=2048, page_size_max=7)
    try:
        app = create_app(given)
        assert get_settings() is given
        assert app.config["MAX_CONTENT_LENGTH"] == 2048
    finally:
        use_settings(before)


def test_the_worker_runs_on_the_settings_it_is_given(bare_env):
    # In a process of its own: the worker's Celery app becomes its process's default.
    script = """if True:
        from app.config import Settings, get_settings
        from workers.celery_app import create_worker_app
        given = Settings(secret_keys=["k"], node_id="node-7", shutdown_seconds=7,
                         redis_url="redis://cache.example:6379/3")
        app = create_worker_app(given)
        print(get_settings() is given, app.conf.broker_url, app.conf.worker_soft_shutdown_timeout)
        """
    # Importing the module makes the app `celery -A` runs, from this environment.
    environment = {**bare_env, "IMAGEJOBS_SECRET_KEY": "env-key", "IMAGEJOBS_NODE_ID": "env-node"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=environment, cwd=ROOT, timeout=60)
    assert result.stdout.split() == ["True", "redis://cache.example:6379/3", "7"], result.stderr
